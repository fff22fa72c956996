"""Task priorities, rate limits and time limits, the same on every transport: a high-priority task overtakes a
backlog, a sender is told once that a queue ignores priorities, a rate-limited task starts no faster than its limit
(without busy-waiting, and without holding other tasks up), and a task out of time is cancelled (``async def``) or
abandoned to its thread (plain), then dead-lettered with the reason ``time-limit``."""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

import otter
from helpers_process import wait_until
from helpers_tasks import Backlog
from otter import dlq
from otter.testing import ServedApp
from otter.transports.base import Snapshot
from rawbroker import RawBroker

from .conftest import Serve

QueueName = Callable[[str], str]


def dead_letter(probe: RawBroker) -> dlq.DeadLetter:
    [raw] = probe.dead_letters(1, timeout=10)
    return dlq.DeadLetter.from_delivery(Snapshot(raw.body, queue=probe.dead_letter_queue, headers=raw.headers))


# -- priorities ------------------------------------------------------------------------------------------------------
def test_a_high_priority_task_overtakes_a_backlog_of_a_thousand(queue_name: QueueName, serve: Serve) -> None:
    work, backlog = queue_name("prioritised"), Backlog()
    app = otter.Otter()
    app.add_task(work, max_priority=10)(backlog.handle)
    backlog.send(serve(app, CONCURRENCY=1, PREFETCH_MULTIPLIER=1), work, low=1000)
    order = backlog.wait(3)
    # Only the low task running when it came (and, at most, one the broker had already handed over) ran first.
    assert "high" in order[:3], order[:5]


def test_a_retried_task_keeps_its_priority(queue_name: QueueName, serve: Serve) -> None:
    """The high task fails once: its retry copy, back in the queue after 0.2 s, still overtakes the low tasks left
    (without its priority it would run after the last of them)."""
    work, backlog = queue_name("retried-priority"), Backlog()
    runs: list[Any] = []

    def handle(comm: Any, body: Any) -> None:
        runs.append(body)
        if body == "high" and runs.count("high") == 1:
            raise RuntimeError("the first run fails")
        backlog.handle(comm, body)
        if body != "low-0":
            time.sleep(0.005)  # 300 lows take at least 1.5 s: the retry comes back long before the last

    app = otter.Otter()
    app.add_task(work, max_priority=10, max_retries=1, backoff=0.2, jitter=False)(handle)
    backlog.send(serve(app, CONCURRENCY=1, PREFETCH_MULTIPLIER=1), work, low=300)
    wait_until(lambda: runs.count("high") == 2, 30, "the retried high task to run")
    assert "high" in runs[:3], runs[:5]  # the first run overtook the backlog
    assert "low-300" not in runs, "the retry ran after every low task: it lost its priority"


def test_a_sender_is_told_once_that_a_queue_ignores_priorities(
    broker_url: str, names: dict[str, Any], queue_name: QueueName, serve: Serve, caplog: pytest.LogCaptureFixture
) -> None:
    work = queue_name("unprioritised")
    app = otter.Otter()
    app.add_task(work)(lambda comm, body: None)  # declared without max_priority
    client = serve(app)
    with caplog.at_level(logging.WARNING):
        for n in range(3):
            client.task(work, n, priority=5, wait=True)
        client.task(work, 3, wait=True)
    warnings = [record.getMessage() for record in caplog.records if "ignores priority=" in record.getMessage()]
    assert len(warnings) == 1, warnings
    assert f"task queue {work!r} ignores priority=: it was declared without x-max-priority" in warnings[0]
    assert f"add_task({work!r}, max_priority=N)" in warnings[0]


def test_a_sender_says_nothing_when_the_queue_heeds_priorities(
    broker_url: str, names: dict[str, Any], queue_name: QueueName, serve: Serve, caplog: pytest.LogCaptureFixture
) -> None:
    work = queue_name("heeded")
    app = otter.Otter()
    app.add_task(work, max_priority=3)(lambda comm, body: None)
    client = serve(app)
    with caplog.at_level(logging.WARNING):
        client.task(work, 1, priority=2, wait=True)
    assert not [record for record in caplog.records if "ignores priority=" in record.getMessage()]


def test_async_client_and_comm_send_priorities_too(
    broker_url: str, names: dict[str, Any], queue_name: QueueName, serve: Serve, caplog: pytest.LogCaptureFixture
) -> None:
    plain, relay = queue_name("plain-queue"), queue_name("relay")
    app = otter.Otter()
    relayed: queue.Queue[Any] = queue.Queue()
    app.add_task(plain)(lambda comm, body: None)

    @app.add_task(relay)
    def forward(comm: Any, body: Any) -> None:
        comm.task(plain, body, priority=7).result()
        relayed.put(body)

    client = serve(app)

    async def send() -> None:
        async with otter.AsyncClient(broker_url, **names) as async_client:
            await async_client.task(plain, "from AsyncClient", priority=3)

    with caplog.at_level(logging.WARNING):
        asyncio.run(send())  # a connection of its own: it warns once too
        client.task(relay, "through comm", wait=True)
        assert relayed.get(timeout=10) == "through comm"
    warnings = [record for record in caplog.records if "ignores priority=" in record.getMessage()]
    assert len(warnings) == 2, [record.getMessage() for record in warnings]  # the AsyncClient's and the worker's


# -- rate limits -----------------------------------------------------------------------------------------------------
def test_a_rate_limited_task_starts_no_faster_than_its_limit_and_does_not_spin(
    broker_url: str, names: dict[str, Any], queue_name: QueueName, serve: Serve
) -> None:
    work = queue_name("paced")
    app = otter.Otter()
    starts: list[float] = []

    @app.add_task(work, rate_limit="10/s")
    async def record(comm: Any, body: Any) -> None:  # on the loop: its start is when the limit let it start
        starts.append(time.monotonic())

    client = serve(app, CONCURRENCY=8)
    cpu = time.process_time()
    for n in range(11):
        client.task(work, n)
    client.flush()
    wait_until(lambda: len(starts) == 11, timeout=15, what="all 11 tasks to start")
    took = starts[-1] - starts[0]
    # The k-th start comes at least k intervals of 0.1 s after the first (less 0.1 s: the first may itself have
    # started late on a loaded machine); a burst would break it at once. Never hours either.
    assert all(start - starts[0] >= k * 0.1 - 0.1 for k, start in enumerate(starts)), starts
    assert 0.9 <= took < 8, took
    # Waiting is sleeping: the whole process (worker, client, test) used well under the wall time in CPU.
    assert time.process_time() - cpu < took * 0.8


def test_a_task_waiting_for_its_rate_limit_holds_no_slot_from_other_tasks(
    broker_url: str, names: dict[str, Any], queue_name: QueueName, serve: Serve
) -> None:
    slow, other = queue_name("one-a-second"), queue_name("unlimited")
    app = otter.Otter()
    ran: queue.Queue[tuple[str, float]] = queue.Queue()
    app.add_task(slow, rate_limit="1/s")(lambda comm, body: ran.put((slow, time.monotonic())))
    app.add_task(other)(lambda comm, body: ran.put((other, time.monotonic())))
    client = serve(app, CONCURRENCY=1)
    for n in range(3):
        client.task(slow, n)
    client.flush()
    assert ran.get(timeout=10)[0] == slow  # the first starts at once; the next two wait about 1 s and 2 s
    sent = time.monotonic()
    client.task(other, "now", wait=True)
    name, when = ran.get(timeout=10)
    assert name == other and when - sent < 0.9  # it ran in the slot the waiting ones did not take


# -- time limits -----------------------------------------------------------------------------------------------------
def test_an_async_handler_past_its_time_limit_is_cancelled_retried_and_dead_lettered(
    broker_url: str, names: dict[str, Any], queue_name: QueueName, serve: Serve, probe: RawBroker,
    caplog: pytest.LogCaptureFixture,
) -> None:
    work = queue_name("too-slow-async")
    app = otter.Otter()
    cancelled: queue.Queue[Any] = queue.Queue()

    @app.add_task(work, time_limit=0.3, max_retries=1, backoff=0.01, jitter=False)
    async def handle(comm: Any, body: Any) -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.put(body)
            raise

    client = serve(app)
    started = time.monotonic()
    with caplog.at_level(logging.WARNING):
        client.task(work, "late")
        letter = dead_letter(probe)
    assert time.monotonic() - started < 10
    assert [cancelled.get(timeout=5), cancelled.get(timeout=5)] == ["late", "late"]  # both runs were cancelled
    assert (letter.reason, letter.queue, letter.attempts, letter.error_type) == (
        "time-limit", work, 2, "TimeLimitExceeded")
    assert "ran longer than its time limit of 0.3 s; cancelled" in (letter.error_message or "")
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "handler raised TimeLimitExceeded" in logged and "time-limit" in logged


def test_a_plain_handler_past_its_time_limit_fails_at_the_limit_and_keeps_its_slot_until_it_returns(
    broker_url: str, names: dict[str, Any], queue_name: QueueName, serve: Serve, probe: RawBroker,
    caplog: pytest.LogCaptureFixture,
) -> None:
    stuck, after = queue_name("too-slow-plain"), queue_name("after")
    app = otter.Otter()
    release = threading.Event()
    ran: queue.Queue[tuple[str, float]] = queue.Queue()

    @app.add_task(stuck, time_limit=0.3)
    def block(comm: Any, body: Any) -> None:
        release.wait(15)  # a thread cannot be stopped: it runs on past the limit
        ran.put((stuck, time.monotonic()))

    app.add_task(after)(lambda comm, body: ran.put((after, time.monotonic())))
    client = serve(app, CONCURRENCY=1)
    with caplog.at_level(logging.WARNING):
        client.task(stuck, "stuck")
        letter = dead_letter(probe)  # failed at the limit, while its thread still runs
        assert (letter.reason, letter.error_type) == ("time-limit", "TimeLimitExceeded")
        assert "runs on in its thread, which keeps a concurrency slot until it returns" in (letter.error_message or "")
        client.task(after, "next", wait=True)
        with pytest.raises(queue.Empty):
            ran.get(timeout=0.5)  # the only slot is still the stuck thread's
        released = time.monotonic()
        release.set()
        assert ran.get(timeout=10)[0] == stuck
        name, when = ran.get(timeout=10)
        assert name == after and when >= released
        wait_until(lambda: any("past its time limit" in r.getMessage() for r in caplog.records), timeout=5,
                   what="the line about the overrunning thread")
    [line] = [r.getMessage() for r in caplog.records if "past its time limit" in r.getMessage()]
    assert f"task {stuck}" in line and "returned" in line and "slot is free again" in line


def test_a_task_within_its_time_limit_succeeds(
    broker_url: str, names: dict[str, Any], queue_name: QueueName, serve: Serve
) -> None:
    plain, coroutine = queue_name("quick-plain"), queue_name("quick-async")
    app = otter.Otter()
    done: queue.Queue[Any] = queue.Queue()
    app.add_task(plain, time_limit=5)(lambda comm, body: done.put(body))

    @app.add_task(coroutine, time_limit=5)
    async def handle(comm: Any, body: Any) -> None:
        await asyncio.sleep(0.01)
        done.put(body)

    client = serve(app)
    client.task(plain, "p")
    client.task(coroutine, "a")
    assert {done.get(timeout=5), done.get(timeout=5)} == {"p", "a"}


def test_deliveries_waiting_for_their_rate_limit_go_back_at_once_when_the_worker_stops(
    broker_url: str, names: dict[str, Any], queue_name: QueueName, probe: RawBroker
) -> None:
    work = queue_name("one-a-minute")
    app = otter.Otter()
    ran: queue.Queue[Any] = queue.Queue()
    app.add_task(work, rate_limit="1/m")(lambda comm, body: ran.put(body))
    served = ServedApp(app, broker_url, **names, SHUTDOWN_GRACE=30).start()
    try:
        with otter.Client(broker_url, **names) as client:
            for n in range(3):
                client.task(work, n)
        assert ran.get(timeout=10) == 0  # the first starts at once; the second waits a minute, unacked (prefetch 1)
        # only one delivery waits in the worker: the rest stay in the broker
        wait_until(lambda: probe.depth(work) == 1, timeout=10, what="one task left in its queue")
    finally:
        stopping = time.monotonic()
        served.stop()
    assert time.monotonic() - stopping < 10  # not the 30 s grace, nor the minute
    assert probe.depth(work) == 2 and ran.empty()
