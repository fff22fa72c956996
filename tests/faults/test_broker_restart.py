"""The broker restarted under load: nothing lost, nobody stuck, everyone reconnects by themselves.

Two worker processes consume a task queue; eight client threads publish 10,000 tasks (each ``client.task`` returns
only once the broker confirmed its task) while another thread keeps making RPCs. The broker application is stopped
and started again (``rabbitmqctl stop_app``/``start_app``): every connection drops, the durable queue and its
persistent messages survive. The tasks go out in three phases, so the restart is surely in the middle of them: the
first third before it, the second third while the broker is down (those sends wait for it), the last third after.

- every task published is processed at least once (at-least-once: a task a worker finished while its connection
  was gone cannot be acked and runs again, so duplicates are counted and reported; lost ones fail the test);
- no ``client.task`` failed: the outage is shorter than PUBLISH_TIMEOUT;
- every RPC made meanwhile returned a result or a typed error (``BrokerUnavailable``, ``DeadlineExceeded``, or
  ``Unroutable`` while the workers have not re-declared their RPC queues yet) within its timeout: none hung;
- the same worker processes serve again (each answers its own ping RPC), without anyone restarting them.
"""

from __future__ import annotations

import collections
import contextlib
import threading
import time

import pytest

from helpers_process import wait_until
from otter import BrokerUnavailable, DeadlineExceeded, Unroutable

from .processes import FaultRig
from .socket_leaks import LEAKED_SOCKET_FILTER

pytestmark = [pytest.mark.faults, LEAKED_SOCKET_FILTER]

TASKS = 10_000  # the whole test takes 15-30 s on two cores, most of it publishing and processing these
PUBLISHERS = 8
RPC_TIMEOUT = 3.0
TYPED_RPC_OUTCOMES = {"ok", "BrokerUnavailable", "DeadlineExceeded", "Unroutable"}


def test_broker_restart_under_load_loses_no_task_and_hangs_no_caller(rig: FaultRig) -> None:
    workers = [rig.spawn(CONCURRENCY=32) for _ in range(2)]
    client = rig.client(PUBLISH_TIMEOUT=30.0)
    for worker in workers:
        rig.wait_serving(client, worker)

    task_name = f"{rig.prefix}.count"
    sent: list[str] = []
    send_errors: list[BaseException] = []
    broker_down, broker_back, publishing_done = threading.Event(), threading.Event(), threading.Event()
    phases = [(range(0, TASKS // 3), None), (range(TASKS // 3, 2 * TASKS // 3), broker_down),
              (range(2 * TASKS // 3, TASKS), broker_back)]  # fmt: skip

    def publish(first: int) -> None:
        for numbers, gate in phases:
            if gate is not None:
                gate.wait(120)
            for number in numbers[first::PUBLISHERS]:
                task_id = f"task-{number}"
                try:
                    client.task(task_name, {"id": task_id})
                except Exception as exc:
                    send_errors.append(exc)
                else:
                    sent.append(task_id)

    calls: list[tuple[str, float]] = []

    def call_rpcs() -> None:
        number = 0
        while not publishing_done.is_set():
            number += 1
            started = time.monotonic()
            try:
                reply = client.rpc(f"{rig.prefix}.echo", number, timeout=RPC_TIMEOUT).result()
                outcome = "ok" if reply == number else f"wrong reply {reply!r}"
            except (BrokerUnavailable, DeadlineExceeded, Unroutable) as exc:
                outcome = type(exc).__name__
            except Exception as exc:
                outcome = f"untyped {type(exc).__module__}.{type(exc).__name__}: {exc}"
            calls.append((outcome, time.monotonic() - started))

    publishers = [threading.Thread(target=publish, args=(first,), daemon=True) for first in range(PUBLISHERS)]
    caller = threading.Thread(target=call_rpcs, daemon=True)
    began = time.monotonic()
    for thread in [*publishers, caller]:
        thread.start()

    wait_until(lambda: len(sent) + len(send_errors) >= TASKS // 3, 120, "the first third to be published")
    rig.broker.stop_app()
    broker_down.set()  # the second third is sent while nothing listens: those sends wait for the broker
    outage_began = time.monotonic()
    rig.broker.start_app()
    outage = time.monotonic() - outage_began
    broker_back.set()

    for thread in publishers:
        thread.join(120)
    publishing_done.set()
    caller.join(RPC_TIMEOUT + 10)
    assert not caller.is_alive(), "an RPC caller hung"
    published = time.monotonic() - began

    with contextlib.suppress(AssertionError):  # on a timeout, the figures below say what is missing
        wait_until(lambda: set(rig.ledger.ids("done")) >= set(sent), 60, "every task to be processed", 0.2)
    tally = rig.ledger.tally(sent)
    outcomes = collections.Counter(outcome for outcome, _ in calls)
    slowest = max((elapsed for _, elapsed in calls), default=0.0)
    print(
        f"\nbroker restarted under load: {tally} send errors={len(send_errors)}; broker down for {outage:.1f} s while "
        f"{TASKS // 3 + 1} sends waited for it; publishing took {published:.1f} s; "
        f"RPCs meanwhile: {dict(outcomes)}, slowest {slowest:.2f} s (timeout {RPC_TIMEOUT:g} s)"
    )

    assert not send_errors, f"client.task raised although the outage was short: {send_errors[:3]}"
    assert len(sent) == TASKS
    assert not tally.lost, f"{len(tally.lost)} tasks lost, e.g. {sorted(tally.lost)[:5]}\n{rig.outputs()}"
    assert set(outcomes) <= TYPED_RPC_OUTCOMES, outcomes
    assert slowest < RPC_TIMEOUT + 2.0, "an RPC took longer than its timeout"
    # The same processes serve again: the robust connection restored their consumers, nobody restarted them.
    for worker in workers:
        assert worker.popen.poll() is None, f"worker {worker.pid} died:\n{worker.output()[-3000:]}"
        rig.wait_serving(client, worker, timeout=30)
    assert client.rpc(f"{rig.prefix}.echo", "after", timeout=10).result() == "after"
