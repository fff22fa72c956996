"""Consumers the broker cancels come back (issue 10): RabbitMQ sends ``basic.cancel`` when a consumed queue is
deleted (and, on 4.3+, when a quorum queue's consumer times out); the worker warns once, declares the queue again
with its own arguments and consumes it again, on both paths, unless it is stopping. Real broker: the queues are
deleted from another connection, as an operator would."""

from __future__ import annotations

import logging
import queue as queues
import subprocess
import threading
from collections.abc import Iterator
from typing import Any

import aio_pika
import pytest

import otter
from otter.testing import ServedApp
from otter.transports.amqp import AmqpTransport, fence
from otter.transports.base import Subscription
from rawbroker import RawBroker

WARNING = "the broker cancelled the consumer of queue"


@pytest.fixture(params=["fast", "public"])
def path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The public path as it is taken when aiormq's live attributes do not fit but its fixes apply."""
    if request.param == "public":
        monkeypatch.setattr(fence, "choose", lambda _channel, _underlay: fence.apply() and False)
    return str(request.param)


@pytest.fixture
def broadcast_queues(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The (server-named) broadcast queue of each worker started in the test."""
    names: list[str] = []
    consume = AmqpTransport.consume_broadcasts

    async def recorded(self: AmqpTransport, *args: Any, **kwargs: Any) -> Subscription:
        subscription = await consume(self, *args, **kwargs)
        names.append(subscription.queue)
        return subscription

    monkeypatch.setattr(AmqpTransport, "consume_broadcasts", recorded)
    return names


class Lines(logging.Handler):
    """Otter's log, with a wait for a line to appear."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []
        self._changed = threading.Condition()

    def emit(self, record: logging.LogRecord) -> None:
        with self._changed:
            self.lines.append(record.getMessage())
            self._changed.notify_all()

    def wait(self, text: str, timeout: float = 30.0) -> str:
        """The first line holding ``text``. 30 s: each step is a few broker round trips, but on a shared broker busy
        creating and deleting other tests' quorum queues one took over 10 s (a churn of 160 quorum queues every 2 s
        beside this module took its first test from 2.9 s to 7.4 s)."""
        with self._changed:
            found = self._changed.wait_for(lambda: [line for line in self.lines if text in line], timeout)
        assert found, f"no log line with {text!r} within {timeout} s; got {self.lines}"
        return found[0]

    def count(self, text: str) -> int:
        with self._changed:
            return sum(text in line for line in self.lines)


@pytest.fixture
def log() -> Iterator[Lines]:
    handler = Lines()
    logger = logging.getLogger("otter")
    logger.addHandler(handler)
    level, logger.level = logger.level, logging.INFO
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)


@pytest.mark.amqp
def test_deleted_queues_are_declared_and_consumed_again(
    amqp_url: str, names: dict[str, Any], path: str, broadcast_queues: list[str], log: Lines
) -> None:
    tag = names["MESSAGE_EXCHANGE"].removesuffix(".messages")
    task_queue, rpc_name = f"{tag}.work", "cancel.echo"
    done: queues.Queue[Any] = queues.Queue()
    heard: queues.Queue[Any] = queues.Queue()
    app = otter.Otter("cancelled")
    app.add_task(task_queue)(lambda _comm, body: done.put(body))
    app.add_rpc(rpc_name)(lambda _comm, data: data)
    app.add_broadcast(["cancel.*"])(lambda _comm, body, *_rest: heard.put(body))
    with RawBroker.open(amqp_url, names) as raw:
        try:
            with ServedApp(app, amqp_url, **names), otter.Client(amqp_url, **names) as client:
                for queue in (task_queue, names["RPC_QUEUE_PREFIX"] + rpc_name):
                    assert raw.consumers(queue) == 1
                    assert raw.delete_queue(queue)
                    log.wait(f"consuming queue {queue!r} again")
                    assert raw.consumers(queue) == 1, queue
                    assert log.count(f"{WARNING} {queue!r}") == 1
                # Exclusive to the worker's connection: only the broker's own tool reaches it from outside.
                [broadcast_queue] = broadcast_queues
                assert _consumers_by_ctl(broadcast_queue) == 1
                _rabbitmqctl("delete_queue", broadcast_queue)
                log.wait(f"consuming queue {broadcast_queue!r} again")
                assert _consumers_by_ctl(broadcast_queue) == 1
                assert log.count(f"{WARNING} {broadcast_queue!r}") == 1
                client.task(task_queue, 5)
                assert done.get(timeout=5) == 5
                assert client.rpc(rpc_name, "back").result(timeout=5) == "back"
                client.broadcast("again", subject="cancel.x")
                assert heard.get(timeout=5) == "again"
            assert log.count("could not consume") == 0
        finally:
            raw.delete(task_queue)


@pytest.mark.amqp
def test_a_stopping_worker_does_not_consume_again(
    amqp_url: str, names: dict[str, Any], path: str, log: Lines
) -> None:
    """The queue and its exchange are deleted under a running task: declaring the queue again works, binding it
    does not (no exchange), so the worker keeps trying. It is then stopped, and while it waits for the running
    task, the exchange comes back: a worker that kept trying would consume again now."""
    task_queue = f"{names['MESSAGE_EXCHANGE'].removesuffix('.messages')}.slow"
    started, release = threading.Event(), threading.Event()

    def slow(_comm: Any, _body: Any) -> None:
        started.set()
        release.wait(60)  # longer than any wait below: the stop must find it running

    app = otter.Otter("stopping")
    app.add_task(task_queue)(slow)
    with RawBroker.open(amqp_url, names) as raw:
        served = ServedApp(app, amqp_url, **names, RECONNECT_INTERVAL=0.2, SHUTDOWN_GRACE=60).start()
        stopper = threading.Thread(target=served.stop)
        try:
            with otter.Client(amqp_url, **names) as client:
                client.task(task_queue, 1)
            assert started.wait(10)
            _exchange(raw, names["TASK_EXCHANGE"], delete=True)  # first, so that the queue cannot be bound again
            assert raw.delete_queue(task_queue)
            log.wait(f"could not consume queue {task_queue!r} again")
            stopper.start()
            log.wait("running handlers")  # the worker cancelled its consumers and waits for the task
            _exchange(raw, names["TASK_EXCHANGE"])
            attempts = log.count("could not consume")
            assert not release.wait(1.0)  # five retry intervals of a worker that kept trying
            assert raw.consumers(task_queue) in (0, None)
            assert log.count("could not consume") == attempts == 1
            assert log.count("consuming queue") == 0
        finally:
            release.set()
            if stopper.is_alive() or stopper.ident is not None:
                stopper.join(30)
            else:
                served.stop()
            raw.delete(task_queue)


def _exchange(raw: RawBroker, name: str, *, delete: bool = False) -> None:
    """Declare the topic exchange ``name``, or delete it."""

    async def act() -> None:
        connection = await aio_pika.connect(raw.url)
        async with connection:
            channel = await connection.channel()
            if delete:
                await channel.exchange_delete(name)
            else:
                await channel.declare_exchange(name, aio_pika.ExchangeType.TOPIC)

    raw._run(act())  # type: ignore[attr-defined]


def _rabbitmqctl(*args: str) -> str:
    """The shared broker's own CLI (this machine's node), for what AMQP cannot do from another connection."""
    done = subprocess.run(["rabbitmqctl", *args], capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, f"rabbitmqctl {' '.join(args)}: {done.stderr.strip()}"
    return done.stdout


def _consumers_by_ctl(queue: str) -> int | None:
    for line in _rabbitmqctl("list_queues", "name", "consumers", "--no-table-headers", "--quiet").splitlines():
        name, _, consumers = line.rpartition("\t")
        if name == queue:
            return int(consumers)
    return None
