"""SIGTERM under load: a worker stops taking tasks, lets the running ones finish within SHUTDOWN_GRACE, returns
what it cannot finish to the queue, and exits; another worker does the rest. Nothing is lost, nothing runs twice."""

from __future__ import annotations

import signal

import pytest

from helpers_process import wait_until

from .processes import FaultRig
from .socket_leaks import LEAKED_SOCKET_FILTER

pytestmark = [pytest.mark.faults, LEAKED_SOCKET_FILTER]


def in_flight(rig: FaultRig, pid: int) -> set[str]:
    return set(rig.ledger.ids("start", pid)) - set(rig.ledger.ids("done", pid))


def test_sigterm_under_load_finishes_running_tasks_and_leaves_the_rest_queued(rig: FaultRig) -> None:
    client = rig.client()
    quick = [f"quick-{n}" for n in range(8)]
    held = [f"held-{n}" for n in range(52)]
    for task_id in quick:
        client.task(f"{rig.prefix}.slow", {"id": task_id, "seconds": 0})
    for task_id in held:
        client.task(f"{rig.prefix}.slow", {"id": task_id, "hold": True})  # runs until released
    ids = quick + held

    stopping = rig.spawn(CONCURRENCY=4, SHUTDOWN_GRACE=30)
    # Busy: the quick tasks done, and four held ones in every slot, so nothing else can start until the release.
    wait_until(lambda: set(rig.ledger.ids("done", stopping.pid)) == set(quick)
               and len(in_flight(rig, stopping.pid)) == 4, 30, "the first worker to be busy")
    running = in_flight(rig, stopping.pid)
    stopping.send(signal.SIGTERM)
    wait_until(lambda: "waiting up to 30s for" in stopping.output(), 10, "the worker to say it stopped taking tasks")
    # It counts the handlers running (4), not the prefetched tasks (16 in all) it is handing back.
    assert "waiting up to 30s for 4 running handlers" in stopping.output()
    rig.release()  # the running tasks end only now: a worker still taking tasks would start more
    assert stopping.wait(15) == 0, stopping.output()

    finished_first = set(rig.ledger.ids("done", stopping.pid))
    assert finished_first == set(quick) | running, "a task started after SIGTERM, or one running was abandoned"
    assert not in_flight(rig, stopping.pid), "a task was cut off"

    successor = rig.spawn(CONCURRENCY=8)
    wait_until(lambda: set(rig.ledger.ids("done")) == set(ids), 30, "the second worker to finish the rest")
    tally = rig.ledger.tally(ids)
    print(
        f"\nSIGTERM under load: {tally}; {len(running)} running at SIGTERM all finished, the worker had done "
        f"{len(finished_first)}, its successor did {len(rig.ledger.ids('done', successor.pid))}"
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
    stopping.send(signal.SIGTERM)
    # Held until the release, which comes only after the worker is gone: it exits because it gave up on them.
    assert stopping.wait(15) == 0, stopping.output()
    output = stopping.output()
    assert "waiting up to 1s for" in output, output
    assert output.count("did not finish within 1s; returning it to the queue") >= len(cut_off), output

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
