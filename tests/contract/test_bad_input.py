"""Bad input on both transports: an RPC gets an error reply, a task is dead-lettered, a broadcast is dropped; and
the app keeps serving. The bad messages go in below Otter's client, which would never send them."""

from __future__ import annotations

import asyncio
import logging
import queue
import time
import uuid
from collections.abc import Callable
from typing import Any

import orjson
import pytest

import otter
from otter import protocol
from otter.codec import JsonCodec
from otter.config import DEFAULTS
from otter.transports import open_transport

from .conftest import Serve
from .helpers import BrokerProbe

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
    serve: Serve, names: dict[str, Any], probe: BrokerProbe, content_type: str | None, expected: str | None
) -> None:
    client = serve(echo_app(names))
    reply = probe.rpc("svc.echo", b"[1, 2]", content_type)
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
    probe: BrokerProbe,
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
        probe.publish_task(work, body, content_type)
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
