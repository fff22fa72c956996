"""A worker process SIGKILLed in the middle of its tasks: nothing is lost, another worker runs them again.

Tasks are acked only after their handler returns, so the broker still holds every task the dead worker had
started (or merely prefetched) and hands it to the next consumer.
"""

from __future__ import annotations

import signal

import pytest

from helpers_process import wait_until

from .processes import FaultRig
from .socket_leaks import LEAKED_SOCKET_FILTER

pytestmark = [pytest.mark.faults, LEAKED_SOCKET_FILTER]


def test_tasks_of_a_killed_worker_run_again_on_another_worker(rig: FaultRig) -> None:
    client = rig.client()
    ids = [f"killed-{n}" for n in range(4)]
    for task_id in ids:
        client.task(f"{rig.prefix}.slow", {"id": task_id, "hold": True})  # held until released: mid-task for sure

    doomed = rig.spawn(CONCURRENCY=4)
    wait_until(
        lambda: set(rig.ledger.ids("start", doomed.pid)) == set(ids),
        20,
        "the first worker to be in the middle of all 4 tasks",
    )
    doomed.send(signal.SIGKILL)
    assert doomed.wait(10) == -signal.SIGKILL

    rescuer = rig.spawn(CONCURRENCY=4)
    wait_until(
        lambda: set(rig.ledger.ids("start", rescuer.pid)) == set(ids),
        20,
        "the second worker to start the killed worker's tasks",
    )
    rig.release()
    wait_until(lambda: set(rig.ledger.ids("done")) == set(ids), 20, "every task to finish")

    tally = rig.ledger.tally(ids)
    print(f"\nworker SIGKILLed mid-task: {tally} (each ran twice: killed once mid-task, then completed once)")
    assert not rig.ledger.ids("done", doomed.pid), "the killed worker cannot have finished anything"
    assert rig.ledger.ids("done", rescuer.pid) == {task_id: 1 for task_id in ids}
    assert tally.duplicated == 0
