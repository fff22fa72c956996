"""SIGTERM under load: a worker stops taking tasks, lets the running ones finish within SHUTDOWN_GRACE, returns
what it cannot finish to the queue, and exits; another worker does the rest. Nothing is lost, nothing runs twice."""

from __future__ import annotations

import signal
import time

import pytest

from helpers_process import wait_until

from .processes import FaultRig
from .socket_leaks import LEAKED_SOCKET_FILTER

pytestmark = [pytest.mark.faults, LEAKED_SOCKET_FILTER]


def in_flight(rig: FaultRig, pid: int) -> set[str]:
    return set(rig.ledger.ids("start", pid)) - set(rig.ledger.ids("done", pid))


def test_sigterm_under_load_finishes_running_tasks_and_leaves_the_rest_queued(rig: FaultRig) -> None:
    client = rig.client()
    ids = [f"term-{n}" for n in range(60)]
    for task_id in ids:
        client.task(f"{rig.prefix}.slow", {"id": task_id, "seconds": 0.2})

    stopping = rig.spawn(CONCURRENCY=4, SHUTDOWN_GRACE=10)
    # Busy: some tasks done and some running right now (between two batches, all four slots can be empty).
    running: set[str] = wait_until(
        lambda: len(rig.ledger.ids("done", stopping.pid)) >= 8 and in_flight(rig, stopping.pid), 30,
        "the first worker to be busy",
    )
    signalled = time.monotonic()
    stopping.send(signal.SIGTERM)
    assert stopping.wait(15) == 0, stopping.output()
    stopped_after = time.monotonic() - signalled

    finished_first = set(rig.ledger.ids("done", stopping.pid))
    assert running, "no task was running when the worker was told to stop"
    assert running <= finished_first, "a task running at SIGTERM was abandoned instead of finished"
    assert not in_flight(rig, stopping.pid), "a task started after SIGTERM or was cut off"

    successor = rig.spawn(CONCURRENCY=8)
    wait_until(lambda: set(rig.ledger.ids("done")) == set(ids), 30, "the second worker to finish the rest")
    tally = rig.ledger.tally(ids)
    print(
        f"\nSIGTERM under load: {tally}; {len(running)} running at SIGTERM all finished, the worker exited after "
        f"{stopped_after:.2f} s having done {len(finished_first)}, its successor did "
        f"{len(rig.ledger.ids('done', successor.pid))}"
    )
    assert tally.duplicated == 0
    assert set(rig.ledger.ids("done", successor.pid)) == set(ids) - finished_first


def test_tasks_still_running_when_the_grace_period_ends_go_back_to_the_queue(rig: FaultRig) -> None:
    client = rig.client()
    ids = [f"grace-{n}" for n in range(5)]
    for task_id in ids:
        client.task(f"{rig.prefix}.slow", {"id": task_id, "hold": True})  # runs until released

    stopping = rig.spawn(CONCURRENCY=2, SHUTDOWN_GRACE=1)
    wait_until(lambda: len(rig.ledger.ids("start", stopping.pid)) == 2, 20, "the first worker to start 2 tasks")
    cut_off = set(rig.ledger.ids("start", stopping.pid))
    signalled = time.monotonic()
    stopping.send(signal.SIGTERM)
    assert stopping.wait(15) == 0, stopping.output()
    stopped_after = time.monotonic() - signalled
    assert 1.0 <= stopped_after < 8.0, f"the worker should give up after its 1 s grace, took {stopped_after:.1f} s"

    successor = rig.spawn(CONCURRENCY=8)
    wait_until(
        lambda: set(rig.ledger.ids("start", successor.pid)) == set(ids),
        20,
        "the second worker to start every task, including the two cut off",
    )
    rig.release()
    wait_until(lambda: set(rig.ledger.ids("done")) == set(ids), 20, "every task to finish")
    tally = rig.ledger.tally(ids)
    print(
        f"\nSIGTERM, grace expired: {tally}; {len(cut_off)} cut off after the 1 s grace went back to the queue "
        "and ran again"
    )
    assert not rig.ledger.ids("done", stopping.pid)
    assert rig.ledger.ids("done", successor.pid) == {task_id: 1 for task_id in ids}
