"""A plain handler that blocks never delays an RPC served by the same app (it runs in a pool, not on the loop)."""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable
from typing import Any

import pytest

import otter
from helpers_process import wait_until
from otter.testing import ServedApp
from rawbroker import RawBroker

from .conftest import Serve

BLOCK_AT_MOST = 5.0


@pytest.mark.parametrize("blocked_kind", ["task", "broadcast", "rpc"])
def test_blocked_plain_handler_does_not_delay_rpcs(
    serve: Serve, names: dict[str, Any], queue_name: Callable[[str], str], blocked_kind: str
) -> None:
    app = otter.Otter(**names)
    started: queue.Queue[str] = queue.Queue()
    release, finished = threading.Event(), threading.Event()

    def block(*_: Any) -> str:
        started.put(blocked_kind)
        release.wait(BLOCK_AT_MOST)
        finished.set()
        return "unblocked"

    work = queue_name("work")
    app.add_task(work)(block)
    app.add_broadcast("block.*")(block)
    app.add_rpc("svc.block")(block)
    app.add_rpc("svc.ping")(lambda comm, data: "pong")
    # One thread per kind for tasks and broadcasts; an RPC needs a second thread beside the blocked one.
    client = serve(app, CONCURRENCY=2 if blocked_kind == "rpc" else 1)

    pending = None
    try:
        if blocked_kind == "task":
            client.task(work, None)
        elif blocked_kind == "broadcast":
            client.broadcast(None, subject="block.now")
        else:
            pending = client.rpc("svc.block", None)
        assert started.get(timeout=5) == blocked_kind

        assert client.rpc("svc.ping").result(timeout=BLOCK_AT_MOST / 2) == "pong"
        assert not finished.is_set()  # the answer came while the other handler was still blocked
    finally:
        release.set()
    assert finished.wait(5)
    if pending is not None:
        assert pending.result(timeout=5) == "unblocked"


def test_async_handlers_run_concurrently(serve: Serve, names: dict[str, Any]) -> None:
    """Two calls to one ``async def`` handler overlap: the second can release the first."""
    app = otter.Otter(**names)
    gate: dict[str, asyncio.Event] = {}

    @app.add_rpc("svc.meet")
    async def meet(comm: Any, role: str) -> str:
        event = gate.setdefault("met", asyncio.Event())
        if role == "first":
            await asyncio.wait_for(event.wait(), 5)
            return "released"
        event.set()
        return "released the first"

    client = serve(app, CONCURRENCY=2)
    first = client.rpc("svc.meet", "first")
    assert client.rpc("svc.meet", "second").result(timeout=5) == "released the first"
    assert first.result(timeout=5) == "released"


def test_a_worker_holds_concurrency_times_prefetch_multiplier_messages_and_no_more(
    serve: Serve, names: dict[str, Any], queue_name: Callable[[str], str]
) -> None:
    """One slot and a multiplier of 2: a blocked worker holds the task it runs and one more; the rest of the queue
    goes to a second worker, and the held one runs once the first is free again."""
    work = queue_name("work")
    handled: queue.Queue[tuple[str, int]] = queue.Queue()
    release = threading.Event()
    busy, idle = otter.Otter(**names), otter.Otter(**names)

    @busy.add_task(work)
    def slow(comm: Any, n: int) -> None:
        if n == 1:
            release.wait(BLOCK_AT_MOST)
        handled.put(("busy", n))

    @idle.add_task(work)
    def quick(comm: Any, n: int) -> None:
        handled.put(("idle", n))

    client = serve(busy, CONCURRENCY=1, PREFETCH_MULTIPLIER=2)
    for n in range(1, 5):
        client.task(work, n)
    client.flush()  # all four in the queue (the busy worker took two) before the second worker starts
    serve(idle, CONCURRENCY=1, PREFETCH_MULTIPLIER=1)
    try:
        assert sorted(handled.get(timeout=5) for _ in range(2)) == [("idle", 3), ("idle", 4)]
        assert handled.empty(), "task 2 waits in the busy worker, not in the queue"
    finally:
        release.set()
    assert sorted(handled.get(timeout=5) for _ in range(2)) == [("busy", 1), ("busy", 2)]


def test_an_async_handler_runs_on_the_worker_loop_and_a_plain_one_in_its_pool(
    serve: Serve, names: dict[str, Any]
) -> None:
    """No thread hop for ``async def`` handlers (they run on the event loop's thread, where the consumers run);
    plain handlers run in the pool of their RPC name, off the loop."""
    app = otter.Otter("where", **names)

    @app.add_rpc("where.async")
    async def on_loop(comm: Any, data: Any) -> list[Any]:
        asyncio.get_running_loop()  # raises outside a running loop
        return [threading.current_thread().name, threading.get_ident()]

    @app.add_rpc("where.plain")
    def in_pool(comm: Any, data: Any) -> list[Any]:
        return [threading.current_thread().name, threading.get_ident()]

    client = serve(app)
    loop_thread, loop_ident = client.rpc("where.async").result(timeout=5)
    pool_thread, pool_ident = client.rpc("where.plain").result(timeout=5)
    assert loop_thread == "otter-app-where"  # the thread ServedApp runs the worker's loop in
    assert pool_thread.startswith("otter-rpc:where.plain") and pool_ident != loop_ident



def test_a_stopping_worker_returns_its_prefetched_tasks_at_once_and_runs_none_of_them(
    serve: Serve, broker_url: str, names: dict[str, Any], queue_name: Callable[[str], str], probe: RawBroker
) -> None:
    """One slot, a multiplier of 4 and a long grace period: while its running task finishes, the three tasks
    waiting in a stopping worker go back to the queue at once (another worker runs them long before the grace
    period ends), and the stopping worker starts none of them."""
    work = queue_name("work")
    handled: queue.Queue[tuple[str, int]] = queue.Queue()
    started, release = threading.Event(), threading.Event()
    stopping_app, successor = otter.Otter(**names), otter.Otter(**names)

    @stopping_app.add_task(work)
    def slow(comm: Any, n: int) -> None:
        if n == 1:
            started.set()
            release.wait(BLOCK_AT_MOST * 4)
        handled.put(("stopping", n))

    @successor.add_task(work)
    def quick(comm: Any, n: int) -> None:
        handled.put(("successor", n))

    grace = 60.0
    stopping = ServedApp(stopping_app, broker_url, **names, CONCURRENCY=1, PREFETCH_MULTIPLIER=4,
                         SHUTDOWN_GRACE=grace).start()
    stopper = threading.Thread(target=stopping.stop)
    try:
        with otter.Client(broker_url, **names) as client:
            for n in range(1, 5):
                client.task(work, n)
        assert started.wait(10), "the first task never started"
        wait_until(lambda: probe.depth(work) == 0, 10, "the stopping worker to hold all four tasks")
        stopper.start()
        serve(successor, CONCURRENCY=1)
        # Task 1 still holds the only slot of the stopping worker, which must not wait for it to return the rest.
        assert sorted(handled.get(timeout=BLOCK_AT_MOST) for _ in range(3)) == [
            ("successor", 2), ("successor", 3), ("successor", 4)
        ]
    finally:
        release.set()
        if stopper.ident is not None:
            stopper.join(grace)
        stopping.stop()
    assert handled.get(timeout=5) == ("stopping", 1), "the running task finishes within the grace period"
    assert handled.empty()
