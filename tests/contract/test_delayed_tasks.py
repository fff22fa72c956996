"""Delayed tasks on every transport: held in the broker until due, then run within about a second of their time."""

from __future__ import annotations

import queue
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

import otter
from otter.delays import DelayLevels
from otter.transports.amqp.connection import NEW_QUORUM_QUEUE_SETTLE
from rawbroker import RawBroker

from .conftest import Doubler, Serve

QueueName = Callable[[str], str]
LATE = 1.5  # seconds a delayed task may run after its time: the 1 s of rounding up, and the hops
EARLY = 0.01  # seconds RabbitMQ's expiry timers may let a task go before its time (1-5 ms seen)


def test_delayed_tasks_run_at_their_time_not_in_the_order_sent(
    serve: Serve, names: dict[str, Any], queue_name: QueueName, probe: RawBroker
) -> None:
    app = otter.Otter(**names)
    work = queue_name("later")
    ran: queue.Queue[tuple[Any, float]] = queue.Queue()
    app.add_task(work)(lambda comm, body: ran.put((body, time.monotonic())))
    client = serve(app)

    sent = time.monotonic()
    client.task(work, "in 3 s", delay=3)
    client.task(work, "in 2 s", delay=2.0)
    client.task(work, "in 1 s", eta=datetime.now(timezone.utc) + timedelta(seconds=1))
    client.task(work, "now")
    client.flush()
    runs = [ran.get(timeout=3 + LATE + 2) for _ in range(4)]
    assert [body for body, _ in runs] == ["now", "in 1 s", "in 2 s", "in 3 s"]
    for body, at in runs[1:]:
        due = float(body.split()[1])
        assert due - EARLY <= at - sent < due + LATE, (body, at - sent)
    # Only the levels these delays went through were declared: 3 s takes levels 1 and 0, never level 2.
    levels = DelayLevels(names["TASK_EXCHANGE"])
    assert probe.depth(levels.level(2)) is None


def test_a_delayed_task_can_ask_for_its_result_and_keeps_its_id(doubler: Doubler, broker_url: str) -> None:
    client, work, ids = doubler.client, doubler.name, doubler.ids
    # On RabbitMQ this first delayed send creates the delay levels, so the send, and the result with it, completes
    # only once they are NEW_QUORUM_QUEUE_SETTLE old and safe from a crash (docs/protocol.md, "Delayed tasks"); the
    # task itself runs on time (the test above).
    settled = 0.0 if broker_url.startswith("memory://") else NEW_QUORUM_QUEUE_SETTLE
    started = time.monotonic()
    future = client.task(work, 4, delay=1, result=True, timeout=5)
    assert future.result() == 8
    assert max(1, settled) <= time.monotonic() - started < max(1, settled) + LATE
    assert ids.get_nowait() == future.task_id
    assert client.task(work, 1, delay=1, task_id="later-1", wait=True) == "later-1"
    assert ids.get(timeout=1 + LATE + 2) == "later-1"


def test_comm_sends_delayed_tasks_from_a_handler(
    serve: Serve, names: dict[str, Any], queue_name: QueueName
) -> None:
    app = otter.Otter(**names)
    start, later = queue_name("start"), queue_name("later")
    ran: queue.Queue[tuple[str, float]] = queue.Queue()

    @app.add_task(start)
    async def schedule(comm: Any, body: Any) -> None:
        ran.put(("scheduled", time.monotonic()))
        await comm.task(later, "x", delay=1)

    app.add_task(later)(lambda comm, body: ran.put(("ran", time.monotonic())))
    client = serve(app)
    client.task(start, None)
    (_, scheduled), (what, at) = ran.get(timeout=5), ran.get(timeout=1 + LATE + 5)
    assert what == "ran" and 1 <= at - scheduled < 1 + LATE


@pytest.mark.parametrize(("kwargs", "error"), [
    ({"eta": datetime(2030, 1, 1)}, ValueError),  # naive: which zone?
    ({"delay": 13 * 24 * 3600}, ValueError),  # beyond the delay levels
    ({"delay": "soon"}, TypeError),
])
def test_a_bad_delay_is_refused_before_anything_is_sent(
    serve: Serve, names: dict[str, Any], queue_name: QueueName, probe: RawBroker, kwargs: dict[str, Any],
    error: type[Exception],
) -> None:
    app = otter.Otter(**names)
    work = queue_name("later")
    app.add_task(work)(lambda comm, body: None)
    client = serve(app)
    with pytest.raises(error):
        client.task(work, 1, **kwargs)
    with pytest.raises(error):
        client.task(work, 1, result=True, **kwargs)
    assert probe.depth(DelayLevels(names["TASK_EXCHANGE"]).level(0)) is None
