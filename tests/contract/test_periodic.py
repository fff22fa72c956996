"""Periodic tasks on both transports: each tick runs once however many replicas serve the app, carries its scheduled
time, and ticks missed while no replica ran follow the ``missed`` policy, from the state kept in the broker."""

from __future__ import annotations

import itertools
import logging
import queue
import time
from collections import Counter
from collections.abc import Callable
from datetime import datetime
from typing import Any

import pytest

import otter
from helpers_process import wait_until
from otter.protocol import schedule_queue_name
from otter.testing import ServedApp
from rawbroker import RawBroker

from .conftest import TEST_SHUTDOWN_GRACE, Serve

QueueName = Callable[[str], str]
PERIOD = 0.2  # seconds


@pytest.fixture
def periodic_name(queue_name: QueueName, created_queues: list[str]) -> str:
    """A periodic task name of this test; its schedule queue is deleted afterwards too."""
    name = queue_name("tick")
    created_queues.append(schedule_queue_name(name))
    return name


def _scheduled(tick: dict[str, Any]) -> float:
    return datetime.fromisoformat(tick["scheduled_at"].replace("Z", "+00:00")).timestamp()


def _collect(seen: queue.Queue[Any], count: int, timeout: float = 10.0) -> list[Any]:
    return [seen.get(timeout=timeout) for _ in range(count)]


def _ticking_app(
    names: dict[str, Any], name: str, seen: queue.Queue[Any], replica: int = 0, **options: Any
) -> otter.Otter:
    app = otter.Otter(**names)

    @app.add_periodic(name, every=PERIOD, **options)
    def tick(comm: Any, body: Any) -> None:
        seen.put((replica, body))

    return app


def test_each_tick_runs_once_across_three_replicas(
    serve: Serve, names: dict[str, Any], periodic_name: str
) -> None:
    seen: queue.Queue[Any] = queue.Queue()
    for replica in range(3):
        serve(_ticking_app(names, periodic_name, seen, replica))

    runs = _collect(seen, 8)
    ticks = [body for _, body in runs]
    assert Counter(tick["id"] for tick in ticks).most_common(1)[0][1] == 1, ticks
    times = sorted(_scheduled(tick) for tick in ticks)
    assert [round(later - earlier, 3) for earlier, later in itertools.pairwise(times)] == [PERIOD] * 7
    first = ticks[0]
    assert set(first) == {"periodic", "id", "scheduled_at", "missed"}
    assert first["periodic"] == periodic_name and first["id"] == f"{periodic_name}@{first['scheduled_at']}"
    assert first["missed"] == 0
    assert round(_scheduled(first) * 1000) % round(PERIOD * 1000) == 0, "every= ticks at multiples of its period"


@pytest.mark.parametrize("missed", ["once", "all", "skip"])
def test_ticks_missed_while_no_replica_ran_follow_the_policy(
    broker_url: str, names: dict[str, Any], periodic_name: str, missed: str
) -> None:
    seen: queue.Queue[Any] = queue.Queue()
    grace = 5 * PERIOD  # a tick found later than this counts as missed: wide enough for a loaded machine's hiccups
    config = {**names, "SHUTDOWN_GRACE": TEST_SHUTDOWN_GRACE, "PERIODIC_GRACE": grace}
    with ServedApp(_ticking_app(names, periodic_name, seen, missed=missed), broker_url, **config):
        ticks = [body for _, body in _collect(seen, 2)]
    time.sleep(16 * PERIOD)  # the outage itself: no replica runs while these ticks fall due
    restarting = time.time()
    with ServedApp(_ticking_app(names, periodic_name, seen, missed=missed), broker_url, **config):
        while max(_scheduled(tick) for tick in ticks) < restarting + 2 * PERIOD:
            ticks.append(_collect(seen, 1)[0][1])
    while not seen.empty():  # whichever replica ran them, every tick sent is counted
        ticks.append(seen.get()[1])

    assert len({tick["id"] for tick in ticks}) == len(ticks), "none ran twice"
    times = sorted(_scheduled(tick) for tick in ticks)
    gaps = [(earlier, later) for earlier, later in itertools.pairwise(times) if round(later - earlier, 3) != PERIOD]
    after_gap = {_scheduled(tick): tick for tick in ticks}[gaps[0][1]] if gaps else None
    if missed == "all":  # each missed tick ran, oldest first, and none stands for others
        assert not gaps and all(tick["missed"] == 0 for tick in ticks)
        return
    [(before, after)] = gaps  # the outage, and nothing else
    skipped = round((after - before) / PERIOD) - 1
    assert skipped >= 8
    assert after >= restarting - grace - PERIOD, "the first tick after the outage is one found on time"
    if missed == "once":  # one run, the first on time, stands for all the missed ones
        assert after_gap is not None and after_gap["missed"] == skipped
        assert sum(tick["missed"] for tick in ticks) == skipped
    else:  # skip: none of them ran, and nothing says otherwise
        assert all(tick["missed"] == 0 for tick in ticks)


def test_a_periodic_task_leaves_the_default_queue_to_the_apps_only_task(
    serve: Serve, names: dict[str, Any], queue_name: QueueName, periodic_name: str
) -> None:
    ticks: queue.Queue[Any] = queue.Queue()
    tasks: queue.Queue[Any] = queue.Queue()
    app = _ticking_app(names, periodic_name, ticks)
    app.add_task(queue_name("only"))(lambda comm, body: tasks.put(body))
    client = serve(app)

    client.task(5)  # the seed's nameless form still reaches the app's one ordinary task
    assert tasks.get(timeout=5) == 5
    assert ticks.get(timeout=5)[1]["periodic"] == periodic_name


def test_a_stopping_holder_hands_the_schedule_over_at_once(
    broker_url: str, names: dict[str, Any], periodic_name: str
) -> None:
    """The first replica to consume holds the lease; when it stops, it gives the state back and the other one goes
    on from it: no tick lost, none run twice."""
    seen: queue.Queue[Any] = queue.Queue()
    config = {**names, "SHUTDOWN_GRACE": TEST_SHUTDOWN_GRACE}
    holder = ServedApp(_ticking_app(names, periodic_name, seen, 0), broker_url, **config).start()
    try:
        with ServedApp(_ticking_app(names, periodic_name, seen, 1), broker_url, **config):
            runs = _collect(seen, 3)
            holder.stop()
            stopped = time.time()
            runs += _collect(seen, 4)
            while max(_scheduled(body) for _, body in runs) < stopped + PERIOD:
                runs += _collect(seen, 1)
    finally:
        holder.stop()
    ticks = [body for _, body in runs]
    times = sorted(_scheduled(tick) for tick in ticks)
    assert [round(later - earlier, 3) for earlier, later in itertools.pairwise(times)] == [PERIOD] * (len(times) - 1)


def test_an_unreadable_message_in_the_schedule_queue_is_dropped_and_ticks_go_on(
    serve: Serve, names: dict[str, Any], periodic_name: str, probe: RawBroker, caplog: pytest.LogCaptureFixture
) -> None:
    seen: queue.Queue[Any] = queue.Queue()
    serve(_ticking_app(names, periodic_name, seen))
    first = _collect(seen, 1)
    caplog.set_level(logging.WARNING, logger="otter.periodic")
    probe.put(schedule_queue_name(periodic_name), b"\xff not a state", content_type="application/json")
    wait_until(lambda: "unreadable message" in caplog.text, 10, "the holder to drop the message")
    ticks = [body for _, body in first + _collect(seen, 3)]
    times = [_scheduled(tick) for tick in ticks]
    assert [round(later - earlier, 3) for earlier, later in itertools.pairwise(times)] == [PERIOD] * 3
    assert probe.depth(schedule_queue_name(periodic_name)) == 0, "the held state is the only one left"
