"""Fixtures for the contract suite: every test here runs on ``memory://``, on the shared RabbitMQ 3.10, and on a
RabbitMQ 4.x node with the deprecated features denied (``brokers.rabbitmq4``; those carry the ``rabbitmq4`` marker and
a ``[rabbitmq4]`` id; ``OTTER_TEST_RABBITMQ4=0`` leaves them out of a quick local run).

``serve(app)`` serves an app in the background and returns a real ``Client`` wired to the test's unique names;
``probe`` reads the broker below Otter (dead letters, raw messages); ``queue_name`` makes task queue names unique to
the test, and on RabbitMQ everything the test declared is deleted afterwards.
"""

from __future__ import annotations

import contextlib
import queue
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

import otter
from brokers.rabbitmq4 import opted_in
from otter.testing import ServedApp
from otter.transports.memory import MemoryBroker
from rawbroker import RawBroker

Serve = Callable[..., otter.Client]

# Short enough that a forgotten blocked handler cannot stall the suite for the default 30 s.
TEST_SHUTDOWN_GRACE = 5.0

# RabbitMQ 4.x with the deprecated features denied is the third transport, unless OTTER_TEST_RABBITMQ4=0.
TRANSPORTS = ["memory", "amqp"]
if opted_in():
    TRANSPORTS.append(pytest.param("rabbitmq4", marks=pytest.mark.rabbitmq4))


@pytest.fixture(params=TRANSPORTS)
def broker_url(request: pytest.FixtureRequest, amqp_url: str) -> Iterator[str]:
    """The contract suite's own ``broker_url``: the in-memory broker, the shared RabbitMQ, and optionally 4.x."""
    if request.param == "memory":
        name = f"memory://test-{uuid.uuid4().hex}"
        yield name
        MemoryBroker.reset(name.partition("://")[2])
    elif request.param == "rabbitmq4":
        yield request.getfixturevalue("rabbitmq4_url")
    else:
        yield amqp_url


@pytest.fixture
def created_queues() -> list[str]:
    return []


@pytest.fixture
def probe(broker_url: str, names: dict[str, Any], created_queues: list[str]) -> Iterator[RawBroker]:
    with RawBroker.open(broker_url, names) as raw:
        yield raw
        raw.delete(*created_queues)


@pytest.fixture
def queue_name(names: dict[str, Any], created_queues: list[str]) -> Callable[[str], str]:
    """``queue_name("work")``: a task queue name no other test uses (task queues are not prefixed by config)."""
    tag = names["MESSAGE_EXCHANGE"].removesuffix(".messages")

    def make(suffix: str) -> str:
        name = f"{tag}.{suffix}"
        created_queues.append(name)
        return name

    return make


def served(app: otter.Otter, broker_url: str, names: dict[str, Any], **config: Any) -> ServedApp:
    """``with served(app, broker_url, names) as server``: the app on the test's names, not started yet, so the test
    reaches its ``handled`` log (``serve`` gives only a client)."""
    return ServedApp(app, broker_url, **{**names, "SHUTDOWN_GRACE": TEST_SHUTDOWN_GRACE, **config})


@pytest.fixture
def client(broker_url: str, names: dict[str, Any]) -> Iterator[otter.Client]:
    """A client on the test's names, for tests that serve their apps themselves (``served``)."""
    with otter.Client(broker_url, **names) as sender:
        assert sender.comm, sender.error
        yield sender


@pytest.fixture
def serve(broker_url: str, names: dict[str, Any], probe: RawBroker) -> Iterator[Serve]:
    """``client = serve(app, CONCURRENCY=1)``: serve ``app`` with extra config until the test ends."""
    stack = contextlib.ExitStack()

    def start(app: otter.Otter, **config: Any) -> otter.Client:
        stack.enter_context(ServedApp(app, broker_url, **{**names, "SHUTDOWN_GRACE": TEST_SHUTDOWN_GRACE, **config}))
        client = stack.enter_context(otter.Client(broker_url, **names))
        assert client.comm, client.error
        return client

    with stack:
        yield start


def task_context() -> otter.MessageContext:
    """``otter.current_context()`` inside a task handler, where it is never None."""
    context = otter.current_context()
    assert context is not None, "called outside a handler"
    return context


@dataclass(frozen=True)
class Doubler:
    """A served task ``name`` that doubles its body; ``ids`` gets each run's task id; ``client`` sends to it."""

    client: otter.Client
    name: str
    ids: queue.Queue[Any]


@pytest.fixture
def doubler(serve: Serve, names: dict[str, Any], queue_name: Callable[[str], str]) -> Doubler:
    app = otter.Otter(**names)
    name = queue_name("double")
    ids: queue.Queue[Any] = queue.Queue()

    @app.add_task(name)
    def double(comm: Any, n: int) -> int:
        ids.put(task_context().task_id)
        return 2 * n

    return Doubler(serve(app), name, ids)


def add_recorder(
    app: otter.Otter, name: str, *, fails: Callable[[otter.MessageContext], bool] = lambda context: False,
    **options: Any,
) -> queue.Queue[tuple[Any, Any, int]]:
    """Serve the task ``name`` (with ``options``), recording ``(body, task id, attempt)`` of each run in the queue
    returned; the runs ``fails(context)`` picks raise ``LookupError``."""
    runs: queue.Queue[tuple[Any, Any, int]] = queue.Queue()

    @app.add_task(name, **options)
    def record(comm: Any, body: Any) -> None:
        context = task_context()
        runs.put((body, context.task_id, context.attempt))
        if fails(context):
            raise LookupError(f"cannot do {body}")

    return runs
