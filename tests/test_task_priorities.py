"""Task priorities on RabbitMQ 3.10 (the shared broker) and 4.0 (a private node), where the brokers differ.

Measured on both: a quorum queue refuses ``x-max-priority`` (PRECONDITION_FAILED "invalid arg"); on 4.0 it delivers
priority 5 and up first, on 3.10 it ignores priorities. A classic queue orders by priority only with
``x-max-priority``, and its arguments cannot change once declared, so a worker that asks for priorities on a queue
declared without them is told which argument differs and how to fix it.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

import otter
from otter import protocol
from otter.testing import ServedApp
from otter.transports.base import QueueMismatch
from rawbroker import RawBroker

KIWIPY = dict(protocol.TASK_QUEUE_ARGUMENTS)


@pytest.fixture
def url(any_rabbitmq_url: str) -> str:
    return any_rabbitmq_url


@pytest.fixture
def raw(url: str, names: dict[str, Any]) -> Iterator[RawBroker]:
    with RawBroker.open(url, names) as broker:
        yield broker
        broker.delete()


@pytest.fixture
def queue(raw: RawBroker) -> Iterator[str]:
    name = f"{raw.names['MESSAGE_EXCHANGE'].removesuffix('.messages')}.prio-{uuid.uuid4().hex[:6]}"
    yield name
    raw.delete(name)


def test_a_quorum_queue_heeds_priorities_on_rabbitmq_4_and_a_sender_on_3_is_told_it_does_not(
    url: str, amqp_url: str, queue: str, names: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    rabbitmq4 = url != amqp_url
    app = otter.Otter()
    order: list[Any] = []
    first_running, go_on = threading.Event(), threading.Event()

    @app.add_task(queue, queue_type="quorum")
    def handle(comm: Any, body: Any) -> None:
        order.append(body)
        if len(order) == 1:
            first_running.set()
            go_on.wait(10)

    with ServedApp(app, url, CONCURRENCY=1, PREFETCH_MULTIPLIER=1, **names), \
            otter.Client(url, **names) as client, caplog.at_level(logging.WARNING):
        assert client.comm, client.error
        client.task(queue, "low-0")
        assert first_running.wait(10)
        for n in range(1, 201):
            client.task(queue, f"low-{n}")
        client.task(queue, "high", priority=9)
        client.flush()
        go_on.set()
        deadline = time.monotonic() + 20
        while len(order) < 202 and time.monotonic() < deadline:
            time.sleep(0.02)
    assert len(order) == 202
    warnings = [r.getMessage() for r in caplog.records if "ignores priority=" in r.getMessage()]
    if rabbitmq4:
        assert order.index("high") <= 2, order[:5]
        assert warnings == []
    else:
        assert order.index("high") == 201  # in the order they came: 3.10's quorum queues have no priorities
        [warning] = warnings
        assert "it is a quorum queue, and quorum queues have priorities only from RabbitMQ 4.0 on" in warning


def test_a_worker_asking_for_priorities_on_a_queue_declared_without_them_names_the_argument(
    url: str, raw: RawBroker, queue: str, names: dict[str, Any]
) -> None:
    raw.declare_queue(queue, KIWIPY)  # as kiwipy (or an Otter worker without max_priority) declared it
    app = otter.Otter()
    app.add_task(queue, max_priority=10)(lambda comm, body: None)
    with pytest.raises(QueueMismatch) as failure:
        ServedApp(app, url, **names).start()
    message = str(failure.value)
    assert f"the task queue {queue!r} exists with x-max-priority=none, but this worker declares it with " \
           f"x-max-priority=10" in message, message
    assert "TASK_MAX_PRIORITY (or add_task(max_priority=...))" in message
    assert f"rabbitmqctl delete_queue {queue}" in message
    assert raw.declare_queue(queue, KIWIPY) == 0  # left as it was


def test_a_sender_with_task_max_priority_creates_the_queue_its_worker_declares(
    url: str, raw: RawBroker, queue: str, names: dict[str, Any]
) -> None:
    with otter.Client(url, TASK_MAX_PRIORITY=10, **names) as client:
        assert client.comm, client.error
        client.task(queue, 1, priority=3)
    assert raw.declare_queue(queue, {**KIWIPY, "x-max-priority": 10}) == 1  # refused if it differed
    app = otter.Otter()
    seen: list[Any] = []
    app.add_task(queue, max_priority=10)(lambda comm, body: seen.append(body))
    with ServedApp(app, url, **names) as served:
        served.handled.wait(queue)
    assert seen == [1]


def test_a_sender_finds_the_priorities_of_a_queue_someone_else_declared(
    url: str, raw: RawBroker, queue: str, names: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    raw.declare_queue(queue, {**KIWIPY, "x-max-priority": 5})  # a kiwipy program's queue, with priorities
    with otter.Client(url, **names) as client, caplog.at_level(logging.WARNING):  # no TASK_MAX_PRIORITY of its own
        assert client.comm, client.error
        client.task(queue, 1, priority=4, wait=True)
    assert not [r for r in caplog.records if "ignores priority=" in r.getMessage()]
    assert raw.depth(queue) == 1
