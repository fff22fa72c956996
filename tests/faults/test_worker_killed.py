"""A worker process SIGKILLed in the middle of its work.

Tasks are acked only after their handler returns, so the broker still holds every task the dead worker had
started (or merely prefetched) and hands it to the next consumer: nothing is lost. RPCs are acked before their
handler starts (at-most-once), so a call whose worker dies runs nowhere else: its caller gets an error instead.
"""

from __future__ import annotations

import signal

import pytest

from helpers_process import wait_until
from otter import DeadlineExceeded
from rawbroker import RawBroker

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


def test_an_rpc_whose_worker_is_killed_mid_call_is_not_run_again_and_its_caller_gets_an_error(rig: FaultRig) -> None:
    client = rig.client()
    replicas = [rig.spawn(CONCURRENCY=1), rig.spawn(CONCURRENCY=1)]
    for replica in replicas:
        rig.wait_serving(client, replica)
    name = f"{rig.prefix}.held"
    call = client.rpc(name, "the-call", timeout=4)
    runner_pid = wait_until(lambda: next(iter(rig.ledger.entries()), (None, None, None))[2], 10, "the call to start")
    [runner] = [replica for replica in replicas if replica.pid == runner_pid]
    runner.send(signal.SIGKILL)
    assert runner.wait(10) == -signal.SIGKILL

    # Once the broker has dropped the dead worker's consumer it has also put back whatever that worker held unacked.
    rpc_queue = f"{rig.names['RPC_QUEUE_PREFIX']}{name}"
    with RawBroker.open(rig.broker.url) as raw:
        wait_until(lambda: raw.consumers(rpc_queue) == 1, 10, "the broker to drop the dead consumer")
    rig.release()
    # The survivor runs one call at a time, in queue order: a redelivered first call would run before this one.
    assert client.rpc(name, "the-marker", timeout=10).result() == "the-marker"

    assert rig.ledger.ids("start")["the-call"] == 1, f"the call ran again after its worker died:\n{rig.outputs()}"
    with pytest.raises(DeadlineExceeded):
        call.result()
