"""Property tests over the decode and dispatch path: any bytes, content type and headers.

- ``codec.decode`` and ``protocol.read_task``/``read_broadcast``/``raise_for_reply`` either return or raise an
  ``OtterError`` saying what is wrong; nothing else escapes.
- The worker's consumers, fed fake deliveries on the memory transport, never raise, and settle every message
  exactly once: a task is acked, dead-lettered or parked for a retry (each exactly once); an RPC is acked and gets
  exactly one reply unless its deadline had passed; a broadcast is acked and reaches the handler only when it is a
  well-formed broadcast on a matching subject.

Example counts are modest so the module runs in seconds; the strategies are biased towards the inputs that matter
(the headers Otter reads, JSON that nearly has the right shape, bodies around the size limit).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from conftest import unique_names
from otter import Otter, protocol
from otter.codec import JsonCodec
from otter.errors import MessageError, OtterError, RemoteError
from otter.protocol import ATTEMPTS_HEADER
from otter.routing import BroadcastRoute, RpcRoute, TaskRoute
from otter.transports import Delivery
from otter.transports.memory import MemoryBroker
from otter.worker import Worker

LIMIT = 512
FUZZ = settings(max_examples=150, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

json_texts = st.text(st.characters(exclude_categories=["Cs"]), max_size=20)  # JSON cannot carry lone surrogates
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False, allow_infinity=False)
    | json_texts,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(json_texts, children, max_size=4),
    max_leaves=12,
)
nested = st.integers(1, 1500).map(lambda depth: [[]] if depth == 1 else _nest(depth))
content_types = st.none() | st.just("application/json") | st.text(max_size=20) | st.sampled_from(
    ["application/json", "text/json; charset=utf-8", "", "text/yaml", "application/x-pickle"])
header_values = (st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=20)
                 | st.binary(max_size=8) | st.lists(st.integers(), max_size=3)
                 | st.dictionaries(st.text(max_size=4), st.integers(), max_size=2))
deadlines = st.floats(-100, -1) | st.floats(5, 100)
headers = st.just({}) | st.fixed_dictionaries({}, optional={
    protocol.DEADLINE_HEADER: header_values | deadlines.map(lambda offset: int((time.time() + offset) * 1000)),
    ATTEMPTS_HEADER: header_values | st.integers(0, 5),
    "x-death": header_values,
    "x-otter-reason": header_values,
}) | st.dictionaries(st.text(max_size=12), header_values, max_size=3)


def _nest(depth: int) -> Any:
    value: Any = []
    for _ in range(depth - 1):
        value = [value]
    return value


def bodies(shaped: st.SearchStrategy[Any]) -> st.SearchStrategy[bytes]:
    """Raw bytes, JSON of any shape, JSON of nearly the right shape, and bodies around the size limit."""
    return st.one_of(
        st.binary(max_size=64),
        json_values.map(orjson.dumps),
        shaped.map(orjson.dumps),
        st.binary(min_size=LIMIT - 2, max_size=LIMIT + 2),
        st.integers(1000, 3000).map(lambda depth: b"[" * depth + b"]" * depth),
    )


task_bodies = st.sampled_from([b'["ok", true]', b'["fail", true]', b'["bad-args", false]']) | bodies(
    st.tuples(st.sampled_from(["ok", "fail", "bad-args"]) | json_values, st.booleans() | json_values).map(list))
broadcast_bodies = bodies(st.fixed_dictionaries(
    {"body": json_values},
    optional={"subject": st.sampled_from(["fuzz.hit", "fuzz.a.b", "other"]) | json_values,
              "sender": json_values, "correlation_id": json_values},
))


# -- pure functions ----------------------------------------------------------------------------------------------
@FUZZ
@given(st.binary(max_size=2 * LIMIT), content_types)
def test_decode_returns_a_value_or_raises_message_error(body: bytes, content_type: str | None) -> None:
    with contextlib.suppress(MessageError):
        JsonCodec(LIMIT).decode(body, content_type)


def read_everything(payload: Any) -> None:
    for reader in (protocol.read_task, protocol.read_broadcast):
        with contextlib.suppress(MessageError):
            reader(payload)
    try:
        protocol.raise_for_reply(payload)
    except (MessageError, RemoteError) as exc:
        assert len(str(exc)) < 10_000  # a message about a payload, not the payload


@FUZZ
@given(json_values | nested)
def test_the_protocol_readers_return_or_raise_otter_errors(payload: Any) -> None:
    read_everything(payload)


@pytest.mark.parametrize("depth", [900, 1024, 3000])
def test_the_protocol_readers_describe_deeply_nested_payloads_without_recursing(depth: int) -> None:
    """The decoder accepts 1024 levels; a plain repr or str of that raises RecursionError. (Not a hypothesis
    example: hypothesis cannot print such a value.)"""
    read_everything(_nest(depth))
    read_everything({"error": {"type": "ValidationError", "details": {"messages": _nest(depth)}}})
    read_everything({"error": {"type": "ValidationError", "details": {"messages": {"field": [_nest(depth)]}}}})


# -- the worker's consumers -------------------------------------------------------------------------------------
class FakeDelivery(Delivery):
    """A delivery that records how it was settled."""

    __slots__ = ("settlements",)

    def __init__(self, body: bytes, **properties: Any) -> None:
        super().__init__(body, **properties)
        self.settlements: list[str] = []

    async def ack(self) -> None:
        self.settlements.append("ack")

    async def requeue(self) -> None:
        self.settlements.append("requeue")


@dataclass
class Harness:
    """A started worker on a private memory broker, and what its handlers saw."""

    loop: asyncio.AbstractEventLoop
    worker: Worker
    broker: MemoryBroker
    names: dict[str, Any]
    reply_to: str
    task_queue: str
    replies: list[Any] = field(default_factory=list)
    runs: list[tuple[str, Any]] = field(default_factory=list)

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def route(self, kind: type) -> Any:
        """The pipeline of the app's one route of ``kind``."""
        table = self.worker.table
        return next(p for p in (*table.rpcs, *table.tasks.values(), *table.broadcasts) if isinstance(p.route, kind))

    def dead_letters(self) -> int:
        return len(self.broker.messages_in(self.names["DEAD_LETTER_QUEUE"]))

    def take_replies(self) -> list[Any]:
        self.run(asyncio.sleep(0))  # let the reply callbacks already scheduled on the loop run
        replies, self.replies[:] = list(self.replies), []
        return replies


@pytest.fixture
def harness() -> Iterator[Harness]:
    names = unique_names("fuzz")
    url = f"memory://fuzz-{uuid.uuid4().hex}"
    task_queue = f"fuzz-{uuid.uuid4().hex[:8]}"
    app = Otter(MAX_MESSAGE_SIZE=LIMIT, CONCURRENCY=2, **names)
    runs: list[tuple[str, Any]] = []

    @app.add_rpc("fuzz.rpc")
    def rpc(comm: Any, data: Any) -> Any:
        runs.append(("rpc", data))
        if data == "fail":
            raise ValueError("asked to fail")
        return data

    @app.add_task(task_queue, max_retries=1, backoff=3600.0)  # retries stay parked for the whole test
    def task(comm: Any, body: Any) -> None:
        runs.append(("task", body))
        if body == "fail":
            raise OSError("asked to fail")
        if body == "bad-args":
            from otter.errors import ValidationError

            raise ValidationError({"body": ["not acceptable"]})

    @app.add_broadcast(["fuzz.*"])
    def broadcast(comm: Any, body: Any, sender: Any, subject: Any, correlation_id: Any) -> None:
        runs.append(("broadcast", body))

    loop = asyncio.new_event_loop()
    worker = app.start_worker(app.resolve_config(url))
    loop.run_until_complete(worker.start())
    broker = MemoryBroker.named(url.partition("://")[2])
    reply_to = f"fuzz.reply.{uuid.uuid4().hex}"
    harness = Harness(loop, worker, broker, names, reply_to, task_queue, runs=runs)
    broker.reply_targets[reply_to] = (loop, lambda message: harness.replies.append(orjson.loads(message.body)))
    try:
        yield harness
    finally:
        loop.run_until_complete(worker.stop())
        loop.close()
        MemoryBroker.reset(url.partition("://")[2])


def test_the_task_consumer_settles_any_message_exactly_once(harness: Harness) -> None:
    consumer = harness.worker._task_consumer(harness.route(TaskRoute))
    outcomes: set[str] = set()

    # The examples make sure every way out is taken at least once, whatever hypothesis draws.
    @FUZZ
    @given(body=task_bodies, content_type=content_types, headers=headers,
           correlation_id=st.none() | st.text(max_size=10))
    @example(body=b'["ok", true]', content_type=None, headers={}, correlation_id=None)
    @example(body=b'["fail", true]', content_type="application/json", headers={ATTEMPTS_HEADER: 0},
             correlation_id="c")
    @example(body=b'["fail", true]', content_type=None, headers={ATTEMPTS_HEADER: 1}, correlation_id=None)
    def check(body: bytes, content_type: str | None, headers: Mapping[str, Any], correlation_id: str | None) -> None:
        delivery = FakeDelivery(body, queue=harness.task_queue, content_type=content_type, headers=headers,
                                correlation_id=correlation_id)
        letters, parked, runs = harness.dead_letters(), harness.broker.delayed(harness.task_queue), len(harness.runs)
        harness.run(consumer(delivery))
        assert delivery.settlements == ["ack"]
        dead_lettered = harness.dead_letters() - letters
        retried = harness.broker.delayed(harness.task_queue) - parked
        succeeded = len(harness.runs) > runs and not (dead_lettered or retried)
        assert dead_lettered + retried + succeeded == 1, (dead_lettered, retried, succeeded)
        outcomes.add("dead-lettered" if dead_lettered else "retried" if retried else "succeeded")

    check()
    assert outcomes == {"dead-lettered", "retried", "succeeded"}  # the examples reached every way out


def test_the_rpc_consumer_acks_and_replies_exactly_once_unless_the_deadline_passed(harness: Harness) -> None:
    consumer = harness.worker._rpc_consumer(harness.route(RpcRoute))
    outcomes: set[str] = set()

    @FUZZ
    @given(body=st.one_of(bodies(json_values), st.just(b'"fail"'), st.just(b'"ok"')), content_type=content_types,
           headers=headers, deadline=st.none() | deadlines, ours=st.booleans(),
           other_reply_to=st.none() | st.text(max_size=10))
    @example(body=b'"ok"', content_type=None, headers={}, deadline=None, ours=True, other_reply_to=None)
    @example(body=b'"fail"', content_type=None, headers={}, deadline=10.0, ours=True, other_reply_to=None)
    @example(body=b'"ok"', content_type=None, headers={}, deadline=-10.0, ours=True, other_reply_to=None)
    def check(body: bytes, content_type: str | None, headers: Mapping[str, Any], deadline: float | None,
              ours: bool, other_reply_to: str | None) -> None:
        if deadline is not None:  # a well-formed deadline, often enough to see expired calls skipped
            headers = {**headers, protocol.DEADLINE_HEADER: int((time.time() + deadline) * 1000)}
        reply_to = harness.reply_to if ours else other_reply_to
        delivery = FakeDelivery(body, queue="fuzz.rpc", content_type=content_type, headers=headers,
                                correlation_id="c", reply_to=reply_to)
        harness.run(consumer(delivery))
        assert delivery.settlements == ["ack"]
        sent = headers.get(protocol.DEADLINE_HEADER)
        expired = isinstance(sent, int) and not isinstance(sent, bool) and sent / 1000 < time.time()
        replies = harness.take_replies()
        assert len(replies) == (1 if ours and not expired else 0)
        for reply in replies:
            assert "result" in reply or reply["error"]["type"]
            outcomes.add("result" if "result" in reply else "error")
        if ours and expired:
            outcomes.add("expired")

    check()
    assert outcomes == {"result", "error", "expired"}


def test_the_broadcast_consumer_acks_and_runs_only_well_formed_matching_broadcasts(harness: Harness) -> None:
    consumer = harness.worker._broadcast_consumer((harness.route(BroadcastRoute),))
    codec = JsonCodec(LIMIT)
    outcomes: set[bool] = set()

    @FUZZ
    @given(body=broadcast_bodies, content_type=content_types, headers=headers)
    @example(body=b'{"body": 1, "subject": "fuzz.hit"}', content_type=None, headers={})
    @example(body=b'{"body": 1, "subject": "fuzz.a.b"}', content_type=None, headers={})
    def check(body: bytes, content_type: str | None, headers: Mapping[str, Any]) -> None:
        delivery = FakeDelivery(body, queue="", content_type=content_type, headers=headers)
        runs = len(harness.runs)
        harness.run(consumer(delivery))
        assert delivery.settlements == ["ack"]
        try:
            message = protocol.read_broadcast(codec.decode(body, content_type))
        except OtterError:
            matches = False
        else:
            matches = message.subject is not None and message.subject.startswith("fuzz.") \
                and message.subject.count(".") == 1
        assert len(harness.runs) - runs == (1 if matches else 0)
        outcomes.add(matches)

    check()
    assert outcomes == {True, False}
