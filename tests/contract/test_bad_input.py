"""Bad input on both transports: an RPC gets an error reply saying why, a task is dead-lettered with the reason, a
broadcast is logged and dropped; and the app keeps serving. The bad messages go in below Otter's client, which would
never send them: through the transports' own calls and the ``probe`` fixture (first part), and through ``RawBroker``
straight to the exchanges, or ``MemoryBroker.publish_raw`` on ``memory://`` (second part, one service per transport
that must survive every test's bad input in turn). Missing headers and content type are not errors: that is what a
kiwipy program sends.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import queue
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson
import pytest

import otter
from conftest import AMQP_URL, unique_names
from helpers_process import wait_until
from otter import Client, Otter, protocol
from otter.codec import JsonCodec
from otter.config import DEFAULTS
from otter.dlq import DeadLetter, list_dead_letters
from otter.protocol import ATTEMPTS_HEADER
from otter.testing import ServedApp
from otter.transports import open_transport
from otter.transports.memory import MemoryBroker
from rawbroker import RawBroker, raw_key, raw_text, unique

from .conftest import TRANSPORTS, Serve

MAX_SIZE = 1024
OVERSIZE_JSON = orjson.dumps("x" * (MAX_SIZE + 10))

BAD_BODIES = [
    pytest.param(b"not json", "MessageError", id="not-json"),
    pytest.param(b"\xff\xfe\x00", "MessageError", id="not-utf8"),
    pytest.param(OVERSIZE_JSON, "MessageTooLarge", id="too-large"),
]


def raw_transport_call(url: str, names: dict[str, Any], name: str, body: bytes) -> Any:
    """Send raw bytes through a transport's ``call`` and return the decoded reply."""

    async def call() -> Any:
        transport = open_transport(url, {**DEFAULTS, **names})
        await transport.connect()
        try:
            reply = await transport.call(name, body, correlation_id=uuid.uuid4().hex, timeout=5, headers={})
            return JsonCodec().decode(reply.body, reply.content_type)
        finally:
            await transport.close()

    return asyncio.run(call())


def raw_transport_task(url: str, names: dict[str, Any], queue_name: str, body: bytes) -> None:
    async def send() -> None:
        transport = open_transport(url, {**DEFAULTS, **names})
        await transport.connect()
        try:
            await transport.publish_task(queue_name, body, correlation_id=uuid.uuid4().hex)
        finally:
            await transport.close()

    asyncio.run(send())


def echo_app(names: dict[str, Any]) -> otter.Otter:
    app = otter.Otter(**names)
    app.add_rpc("svc.echo")(lambda comm, data: {"echo": data})
    return app


@pytest.mark.parametrize(("body", "error_type"), BAD_BODIES)
def test_bad_rpc_bytes_get_an_error_reply(
    serve: Serve, broker_url: str, names: dict[str, Any], body: bytes, error_type: str
) -> None:
    client = serve(echo_app(names), MAX_MESSAGE_SIZE=MAX_SIZE)
    reply = raw_transport_call(broker_url, names, "svc.echo", body)
    assert reply["error"]["type"] == error_type
    with pytest.raises(otter.RemoteError) as caught:
        protocol.raise_for_reply(reply)
    assert caught.value.remote_type == error_type
    assert client.rpc("svc.echo", 1).result(timeout=5) == {"echo": 1}  # still serving


def test_good_raw_rpc_bytes_get_a_result(broker_url: str, names: dict[str, Any], serve: Serve) -> None:
    serve(echo_app(names), MAX_MESSAGE_SIZE=MAX_SIZE)
    assert raw_transport_call(broker_url, names, "svc.echo", b'{"a":1}') == {"result": {"echo": {"a": 1}}}


@pytest.mark.parametrize(
    ("content_type", "expected"),
    [
        ("application/x-yaml", "MessageError"),
        ("application/python-pickle", "MessageError"),
        (None, None),  # a kiwipy sender with a JSON encoder sets no content type: read as JSON
        ("application/json", None),
    ],
)
def test_rpc_content_type(
    serve: Serve, names: dict[str, Any], probe: RawBroker, content_type: str | None, expected: str | None
) -> None:
    client = serve(echo_app(names))
    reply = orjson.loads(probe.reply(probe.rpc("svc.echo", b"[1, 2]", content_type=content_type), timeout=5))
    if expected is None:
        assert reply == {"result": {"echo": [1, 2]}}
    else:
        assert reply["error"]["type"] == expected
        assert "content type" in reply["error"]["message"]
    assert client.rpc("svc.echo", 3).result(timeout=5) == {"echo": 3}


TASK_BODIES = [
    pytest.param(b"not json", None, "MessageError", id="not-json"),
    pytest.param(b'{"not": "a list"}', None, "MessageError", id="not-kiwipy-shape"),
    pytest.param(b"[1, 2, 3]", None, "MessageError", id="three-items"),
    pytest.param(OVERSIZE_JSON, None, "MessageTooLarge", id="too-large"),
    pytest.param(b'["task", true]', "application/x-yaml", "MessageError", id="yaml-content-type"),
]


@pytest.mark.parametrize(("body", "content_type", "error_type"), TASK_BODIES)
def test_bad_task_bytes_are_dead_lettered(
    serve: Serve,
    broker_url: str,
    names: dict[str, Any],
    queue_name: Callable[[str], str],
    probe: RawBroker,
    body: bytes,
    content_type: str | None,
    error_type: str,
) -> None:
    app = otter.Otter(**names)
    work = queue_name("work")
    seen: queue.Queue[Any] = queue.Queue()
    app.add_task(work)(lambda comm, task: seen.put(task))
    client = serve(app, MAX_MESSAGE_SIZE=MAX_SIZE)

    if content_type is None:
        raw_transport_task(broker_url, names, work, body)
    else:
        probe.task(work, body, content_type=content_type)
    [dead] = probe.dead_letters(1)
    assert dead.headers["x-otter-reason"] == "bad-message"
    assert dead.headers["x-otter-error-type"] == error_type
    assert dead.headers["x-otter-queue"] == work
    assert dead.body == body  # kept as it came, for whoever investigates

    client.task(work, "good")
    assert seen.get(timeout=5) == "good"
    assert seen.empty()  # the bad one never reached the handler


def test_bad_broadcasts_are_dropped(
    serve: Serve, broker_url: str, names: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    app = otter.Otter(**names)
    got: queue.Queue[Any] = queue.Queue()
    app.add_broadcast("#")(lambda comm, body, sender, subject, cid: got.put((body, subject)))
    client = serve(app, CONCURRENCY=1)  # in order: the good broadcast is handled after the bad ones

    async def send_bad() -> None:
        transport = open_transport(broker_url, {**DEFAULTS, **names})
        await transport.connect()
        try:
            for body in (b"garbage", b'{"no": "body"}', b'{"body": 1, "subject": 5}'):
                await transport.publish_broadcast(body)
        finally:
            await transport.close()

    def dropped() -> list[logging.LogRecord]:
        return [r for r in caplog.records if r.name.startswith("otter") and "broadcast" in r.getMessage()]

    with caplog.at_level(logging.WARNING, logger="otter"):
        asyncio.run(send_bad())
        # Broadcasts are unconfirmed, and two connections are not ordered: wait for the drops, then check the app
        # still serves and handled none of the bad ones.
        deadline = time.monotonic() + 10
        while len(dropped()) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        client.broadcast("good", subject="a.b")
        assert got.get(timeout=5) == ("good", "a.b")
    assert got.empty()
    assert len(dropped()) == 3


# == one service per transport, raw messages straight to its exchanges ================================================
LIMIT = 64 * 1024
JSON = "application/json"
TOO_DEEP = b"[" * 20_000 + b"]" * 20_000  # well under the size limit, far over the decoder's depth limit
DEEP_BUT_READABLE = b"[" * 1000 + b"]" * 1000  # decodes, but no reply can carry it back


@dataclass
class Service:
    url: str
    names: dict[str, Any]
    task: str
    raw: RawBroker
    client: Client
    task_bodies: list[Any]
    broadcasts: list[Any]

    def no_task_ran_but_a_marker(self, since: int) -> None:
        """Barrier: a marker task queued after the bad ones runs (one at a time, in order), and nothing else ran."""
        marker = uuid.uuid4().hex
        self.raw.task(self.task, orjson.dumps([marker, True]))
        wait_until(lambda: marker in self.task_bodies, what="the marker task")
        assert self.task_bodies[since:] == [marker], "a bad task reached the handler"

    def no_broadcast_heard_but_a_marker(self, since: int) -> None:
        """Barrier: a marker broadcast sent after the bad ones is heard, and nothing else was."""
        marker = uuid.uuid4().hex
        self.raw.broadcast(orjson.dumps({"body": marker, "sender": "test", "subject": "probe.marker",
                                         "correlation_id": None}))
        wait_until(lambda: marker in self.broadcasts, what="the marker broadcast")
        assert self.broadcasts[since:] == [marker], "a bad broadcast reached the handler"

    def still_serves(self) -> None:
        marker = uuid.uuid4().hex
        assert self.client.rpc("echo", marker, timeout=10).result() == marker

    def dead_letter(self, correlation_id: str) -> DeadLetter:
        def find() -> DeadLetter | None:
            letters = list_dead_letters(self.url, self.names)
            return next((letter for letter in letters if letter.correlation_id == correlation_id), None)

        letter: DeadLetter = wait_until(find, what=f"the dead letter {correlation_id}")
        return letter


@pytest.fixture(scope="module", params=TRANSPORTS)
def service(request: pytest.FixtureRequest) -> Iterator[Service]:
    """One app per transport for the whole module: it must survive every test's bad input in turn."""
    if request.param == "memory":
        url = f"memory://bad-input-{uuid.uuid4().hex}"
    else:
        url = request.getfixturevalue("rabbitmq4_url") if request.param == "rabbitmq4" else AMQP_URL
    names = unique_names("bad")
    task = unique("work")
    app = Otter(MAX_MESSAGE_SIZE=LIMIT, CONCURRENCY=1, **names)  # one at a time, in order: markers are barriers
    task_bodies: list[Any] = []
    broadcasts: list[Any] = []

    @app.add_rpc("echo")
    def echo(comm: Any, data: Any) -> Any:
        return data

    @app.add_task(task)
    def work(comm: Any, body: Any) -> None:
        task_bodies.append(body)

    @app.add_broadcast(["probe.*"])
    def on_probe(comm: Any, body: Any, sender: Any, subject: Any, correlation_id: Any) -> None:
        broadcasts.append(body)

    with RawBroker.open(url, names) as raw:
        with ServedApp(app, url, **names), Client(url, **names) as client:
            yield Service(url, names, task, raw, client, task_bodies, broadcasts)
        raw.delete(task)
    if request.param == "memory":
        MemoryBroker.reset(url.partition("://")[2])


@pytest.fixture
def log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.WARNING, logger="otter")
    return caplog


def logged(caplog: pytest.LogCaptureFixture, *fragments: str) -> bool:
    return any(all(fragment in record.getMessage() for fragment in fragments) for record in caplog.records)


# Each case: name, body, message properties, the error type the caller/dead letter names, and why (a fragment).
UNREADABLE = [
    pytest.param(b"{not json", {"content_type": JSON}, "MessageError", "not valid JSON", id="undecodable"),
    pytest.param(b'"fine"', {"content_type": "application/x-yaml"}, "MessageError", "unsupported content type",
                 id="wrong-content-type"),
    pytest.param(b'"caf\xe9"', {"content_type": JSON}, "MessageError", "not valid UTF-8", id="invalid-utf8"),
    pytest.param(TOO_DEEP, {"content_type": JSON}, "MessageError", "depth limit", id="deeply-nested"),
    pytest.param(b'"' + b"a" * (LIMIT - 1) + b'"', {"content_type": JSON}, "MessageTooLarge", "over the limit",
                 id="over-the-size-limit"),
]


# -- RPC -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("body", "properties", "error_type", "why"), [
    *UNREADABLE,
    pytest.param(b'"x"', {"headers": {protocol.DEADLINE_HEADER: "soon"}}, "MessageError", protocol.DEADLINE_HEADER,
                 id="deadline-as-string"),
    pytest.param(b'"x"', {"headers": {protocol.DEADLINE_HEADER: 1.5e9}}, "MessageError", protocol.DEADLINE_HEADER,
                 id="deadline-as-float"),
])
def test_an_unreadable_rpc_gets_an_error_reply_saying_why(
    service: Service, log: pytest.LogCaptureFixture, body: bytes, properties: dict[str, Any], error_type: str,
    why: str,
) -> None:
    correlation_id = service.raw.rpc("echo", body, **properties)
    reply = orjson.loads(service.raw.reply(correlation_id))
    assert reply["error"]["type"] == error_type and why in reply["error"]["message"]
    assert reply["exception"].startswith(error_type)  # what a kiwipy caller reads
    assert logged(log, "bad request", correlation_id, why)
    service.still_serves()


def test_an_rpc_whose_result_cannot_be_encoded_gets_an_error_reply(
    service: Service, log: pytest.LogCaptureFixture
) -> None:
    correlation_id = service.raw.rpc("echo", DEEP_BUT_READABLE, content_type=JSON)
    reply = orjson.loads(service.raw.reply(correlation_id))
    assert reply["error"]["type"] == "MessageError" and "could not be encoded" in reply["error"]["message"]
    assert logged(log, "not serialisable")
    service.still_serves()


def test_an_rpc_without_headers_or_content_type_is_served_as_kiwipy_sends_it(service: Service) -> None:
    correlation_id = service.raw.rpc("echo", b'{"from": "kiwipy"}')
    assert orjson.loads(service.raw.reply(correlation_id)) == {"result": {"from": "kiwipy"}}


def test_an_unreadable_rpc_without_reply_to_is_logged_and_dropped(
    service: Service, log: pytest.LogCaptureFixture
) -> None:
    correlation_id = service.raw.rpc("echo", b"{not json", reply_to=None)
    wait_until(lambda: logged(log, "bad request", correlation_id, "not valid JSON"), what="the log line")
    service.still_serves()


def test_a_reply_to_a_queue_that_does_not_exist_is_dropped_and_serving_goes_on(service: Service) -> None:
    """Replies are at-most-once like the calls they answer: the broker drops one whose caller is gone."""
    service.raw.rpc("echo", b'"x"', reply_to=f"no-such-queue-{uuid.uuid4().hex}")
    for _ in range(3):
        service.still_serves()


def test_a_direct_reply_to_that_does_not_exist_does_not_break_replying(service: Service) -> None:
    """RabbitMQ drops such a reply without telling; the channel replies go out on must stay open."""
    service.raw.rpc("echo", b'"x"', reply_to=f"amq.rabbitmq.reply-to.{uuid.uuid4().hex}")
    service.raw.rpc("echo", b'"x"', reply_to="amq.rabbitmq.reply-to.g1h2AA5yZXBseUAxMjM0NTY3OAAAAAAAAAAAAAAAAA==")
    for _ in range(3):
        service.still_serves()


# -- tasks -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("body", "properties", "error_type", "why"), [
    *UNREADABLE,
    pytest.param(b'{"not": "a list"}', {"content_type": JSON}, "MessageError", "[task, no_reply]", id="wrong-shape"),
    pytest.param(b'["x", true]', {"headers": {ATTEMPTS_HEADER: "garbage"}}, "MessageError", ATTEMPTS_HEADER,
                 id="attempts-garbage"),
    pytest.param(b'["x", true]', {"headers": {ATTEMPTS_HEADER: -3}}, "MessageError", ATTEMPTS_HEADER,
                 id="attempts-negative"),
])
def test_an_unreadable_task_is_dead_lettered_with_the_reason(
    service: Service, log: pytest.LogCaptureFixture, body: bytes, properties: dict[str, Any], error_type: str,
    why: str,
) -> None:
    ran_before = len(service.task_bodies)
    correlation_id = service.raw.task(service.task, body, **properties)
    letter = service.dead_letter(correlation_id)
    assert (letter.reason, letter.error_type, letter.queue) == ("bad-message", error_type, service.task)
    assert why in (letter.error_message or "")
    assert letter.body == body  # the original bytes, to fix and replay
    assert logged(log, "bad message, dead-lettered", correlation_id, why)
    service.no_task_ran_but_a_marker(since=ran_before)
    service.still_serves()


def test_an_unreadable_task_whose_sender_waits_gets_the_error_and_is_dead_lettered(
    service: Service, log: pytest.LogCaptureFixture
) -> None:
    """The body says whether the sender waits (``no_reply``), and it cannot be read: a sender who gave a
    ``reply_to`` hears why at once rather than waiting out its deadline, and the task is dead-lettered as any."""
    correlation_id = service.raw.task(service.task, b"[1, fals", content_type=JSON, wants_reply=True)
    reply = orjson.loads(service.raw.reply(correlation_id))
    assert reply["error"]["type"] == "MessageError" and "not valid JSON" in reply["error"]["message"]
    letter = service.dead_letter(correlation_id)
    assert (letter.reason, letter.error_type) == ("bad-message", "MessageError")
    service.still_serves()


def test_a_dead_letter_keeps_the_senders_own_headers_of_every_type(service: Service) -> None:
    headers = {
        "trace": {"span": "abc", "hops": [1, "two", 3.5]},
        "blob": b"\x00\x01",
        "sent": datetime.datetime(2024, 5, 1, 12, 30, tzinfo=datetime.timezone.utc),
        "flag": True,
        ATTEMPTS_HEADER: "garbage",
    }
    correlation_id = service.raw.task(service.task, b'["x", true]', headers=headers)
    letter = service.dead_letter(correlation_id)
    assert letter.headers["trace"] == headers["trace"]
    assert letter.headers["blob"] == b"\x00\x01" and letter.headers["flag"] is True
    assert letter.headers["sent"].replace(tzinfo=datetime.timezone.utc) == headers["sent"]
    service.still_serves()


def test_a_task_without_headers_or_content_type_runs_as_kiwipy_sends_it(service: Service) -> None:
    marker = uuid.uuid4().hex
    service.raw.task(service.task, orjson.dumps([marker, True]))
    wait_until(lambda: marker in service.task_bodies, what="the task to run")


# -- broadcasts ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("body", "properties", "error_type", "why"), [
    *UNREADABLE,
    pytest.param(b"[1, 2]", {"content_type": JSON}, "MessageError", "must be a mapping", id="wrong-shape"),
    pytest.param(b'{"body": 1, "subject": 5}', {}, "MessageError", "subject must be a string",
                 id="subject-not-a-string"),
])
def test_an_unreadable_broadcast_is_logged_and_dropped(
    service: Service, log: pytest.LogCaptureFixture, body: bytes, properties: dict[str, Any], error_type: str,
    why: str,
) -> None:
    heard_before = len(service.broadcasts)
    service.raw.broadcast(body, **properties)
    wait_until(lambda: logged(log, "broadcast: bad message dropped", why), what="the log line")
    service.no_broadcast_heard_but_a_marker(since=heard_before)
    service.still_serves()


def test_a_broadcast_without_content_type_is_received_as_kiwipy_sends_it(service: Service) -> None:
    marker = uuid.uuid4().hex
    service.raw.broadcast(orjson.dumps({"body": marker, "sender": "kiwipy", "subject": "probe.x",
                                        "correlation_id": None}))
    wait_until(lambda: marker in service.broadcasts, what="the broadcast to arrive")


# -- what only a hostile AMQP client can send ---------------------------------------------------------------------
# memory:// hands bytes over in process: there is no frame encoding to break, so these run on RabbitMQ only.
amqp_only = pytest.mark.parametrize("service", ["amqp"], indirect=True)


@amqp_only
def test_a_task_with_text_that_is_not_utf8_in_properties_and_headers_is_dead_lettered(
    service: Service, log: pytest.LogCaptureFixture
) -> None:
    """pamqp alone would fail to decode the frame and close the connection, then the redelivery would close it
    again, forever; and it cannot encode such headers back when the task is dead-lettered."""
    service.raw.task(
        service.task, b'["x", true]', hostile=True,
        content_type=raw_text(b"application/\xff"),
        correlation_id=raw_text(b"hostile-\xfe"),
        headers={"small-negative": -3, "not-utf8": raw_text(b"\xff\xfe"), raw_key(b"key-\xff"): 1},
    )
    letter = service.dead_letter("hostile-\ufffd")
    assert (letter.reason, letter.error_type) == ("bad-message", "MessageError")
    assert "unsupported content type" in (letter.error_message or "")
    assert letter.headers["small-negative"] == -3
    assert bytes(letter.headers["not-utf8"]) == b"\xff\xfe"
    assert letter.headers["key-\ufffd"] == 1
    assert logged(log, "bad message, dead-lettered", "hostile-\ufffd")
    service.still_serves()


@amqp_only
def test_an_rpc_and_a_broadcast_with_a_content_type_that_is_not_utf8_are_refused(
    service: Service, log: pytest.LogCaptureFixture
) -> None:
    heard_before = len(service.broadcasts)
    service.raw.rpc("echo", b'"x"', reply_to=None, hostile=True, content_type=raw_text(b"\xff"),
                    correlation_id="hostile-rpc")
    service.raw.broadcast(b'{"body": 1, "subject": "probe.x"}', hostile=True, content_type=raw_text(b"\xfe"))
    wait_until(lambda: logged(log, "bad request", "hostile-rpc", "unsupported content type"), what="the rpc log")
    wait_until(lambda: logged(log, "broadcast: bad message dropped", "unsupported content type"),
               what="the broadcast log")
    service.no_broadcast_heard_but_a_marker(since=heard_before)
    service.still_serves()


# -- the size limit, before decoding ---------------------------------------------------------------------------------
def test_a_large_task_is_dead_lettered_for_its_size_not_parsed(service: Service) -> None:
    """Ten times the limit of nesting: parsing would fail on depth; the size check refuses it first."""
    correlation_id = service.raw.task(service.task, b"[" * (LIMIT * 10), content_type=JSON)
    letter = service.dead_letter(correlation_id)
    assert (letter.error_type, letter.size) == ("MessageTooLarge", LIMIT * 10)
    service.still_serves()
