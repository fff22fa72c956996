"""Lose a node of a three-node RabbitMQ cluster under load, and count what happened to every task and call.

A worker process (the fault tests' ledger app, which writes down every task it runs) and a client both connect to
node 0 first (``BROKER_URL`` lists node 0, 1, 2), with quorum task and RPC queues. The client sends ``tasks`` tasks,
``in_flight`` at a time, each send returning once the broker confirmed it, and calls an RPC in a loop; once
``kill_after`` sends are confirmed, node 0 is SIGKILLed, and both go on through another node. ``run`` returns the
tally: sent, confirmed, processed, lost (confirmed, never processed), duplicates, RPC outcomes, recovery times.

``tests/brokers/test_rabbitmq4_nodeloss.py`` asserts on it; by hand, to print the figures::

    cd tests && ../.venv/bin/python -m brokers.nodeloss [tasks [classic|quorum]]
"""

from __future__ import annotations

import asyncio
import collections
import re
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from faults.node_watchdog import alive
from faults.processes import FaultRig, WorkerProcess
from otter import AsyncClient
from otter.errors import OtterError
from otter.testing import unique_names

from .rabbitmq4 import Rabbitmq4Cluster, ensure_root

__all__ = ["NodeLossReport", "run"]

RECONNECT_INTERVAL = 0.2
SEND_HANG = 60.0  # a send still pending this long after PUBLISH_TIMEOUT counts as hung
RPC_SLACK = 1.0  # seconds past its deadline an RPC may take to raise before it counts as late
RECONNECTED = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) .*reconnected to ", re.MULTILINE)


@dataclass
class NodeLossReport:
    sent: int = 0
    confirmed: int = 0
    send_errors: collections.Counter[str] = field(default_factory=collections.Counter)
    processed: int = 0  # distinct confirmed tasks the worker ran
    lost: int = 0  # confirmed and never run
    duplicates: int = 0  # runs beyond the first, of any task
    unconfirmed_processed: int = 0  # tasks whose send raised, yet ran (the confirm was lost, not the task)
    rpc: collections.Counter[str] = field(default_factory=collections.Counter)
    rpc_late: int = 0  # calls that took longer than their deadline + RPC_SLACK
    rpc_slowest: float = 0.0
    rpc_timeout: float = 0.0
    confirmed_before_kill: int = 0
    worker_reconnected: float | None = None  # seconds from the kill
    first_task_after: float | None = None  # the first task run after the worker reconnected
    first_rpc_after: float | None = None  # the first call sent after the kill that was answered (its reply's arrival)
    broadcast_after: float | None = None  # a broadcast sent once calls were answered again reached the worker in
    sends_seconds: float = 0.0
    drained_seconds: float = 0.0  # from the last send to the last task run

    def __str__(self) -> str:
        def seconds(value: float | None) -> str:
            return "never" if value is None else f"{value:.2f} s"

        return "\n".join([
            f"tasks: sent {self.sent}, confirmed {self.confirmed}, send errors {dict(self.send_errors) or 0}",
            f"       processed {self.processed} of the confirmed, lost {self.lost}, duplicates {self.duplicates}, "
            f"unconfirmed but processed {self.unconfirmed_processed}",
            f"       node 0 killed after {self.confirmed_before_kill} confirmed; sends took "
            f"{self.sends_seconds:.1f} s, the queue drained {self.drained_seconds:.1f} s after the last",
            f"RPCs:  {sum(self.rpc.values())} calls, {dict(self.rpc)}; late {self.rpc_late}; slowest "
            f"{self.rpc_slowest:.2f} s (timeout {self.rpc_timeout:g} s)",
            f"recovery from the kill: worker reconnected {seconds(self.worker_reconnected)}, first task run "
            f"{seconds(self.first_task_after)}, first RPC answered {seconds(self.first_rpc_after)}, broadcast "
            f"received {seconds(self.broadcast_after)}",
        ])


def run(
    cluster: Rabbitmq4Cluster, directory: Path, *, tasks: int = 20_000, in_flight: int = 200,
    kill_after: int = 5_000, rpc_timeout: float = 5.0, rpc_interval: float = 0.05, rpc_queue_type: str = "quorum",
) -> NodeLossReport:
    """The scenario above; node 0 is restarted before it returns, and the worker stopped. ``rpc_queue_type``
    classic shows what a classic RPC queue on the lost node does."""
    names = unique_names("nodeloss")
    rig = FaultRig(cluster.nodes[0], directory, names, url=cluster.url)
    config = {"TASK_QUEUE_TYPE": "quorum", "RPC_QUEUE_TYPE": rpc_queue_type, "RECONNECT_INTERVAL": RECONNECT_INTERVAL}
    worker = rig.spawn(**config)
    report = NodeLossReport(rpc_timeout=rpc_timeout)
    try:
        asyncio.run(_drive(rig, worker, config, report, tasks, in_flight, kill_after, rpc_timeout, rpc_interval))
    finally:
        rig.close()
        pid = cluster.nodes[0].pid
        if pid is None or not alive(pid):
            cluster.restart(0)
    return report


async def _drive(
    rig: FaultRig, worker: WorkerProcess, config: dict[str, object], report: NodeLossReport, tasks: int,
    in_flight: int, kill_after: int, rpc_timeout: float, rpc_interval: float,
) -> None:
    prefix = rig.prefix
    async with AsyncClient(rig.url, **rig.names, **config) as client:
        await _wait_serving(client, worker, prefix)
        killed = asyncio.Event()
        killing: list[asyncio.Task[None]] = []
        kill_at = 0.0
        confirmed: set[str] = set()
        failed: set[str] = set()
        ids = iter(range(tasks))
        publish_timeout = float(client.config["PUBLISH_TIMEOUT"])

        async def kill() -> None:
            nonlocal kill_at
            report.confirmed_before_kill = len(confirmed)
            kill_at = time.time()
            await asyncio.to_thread(rig.broker.kill)
            killed.set()

        async def sender() -> None:
            for number in ids:
                task_id = f"t{number}"
                report.sent += 1
                try:
                    await asyncio.wait_for(client.task(f"{prefix}.count", {"id": task_id}),
                                           publish_timeout + SEND_HANG)
                except OtterError as error:  # before TimeoutError: DeadlineExceeded is one too
                    report.send_errors[type(error).__name__] += 1
                    failed.add(task_id)
                except asyncio.TimeoutError:
                    report.send_errors["hung"] += 1
                    failed.add(task_id)
                except Exception as error:  # must not happen: every failure is an Otter error
                    report.send_errors[f"not an Otter error: {type(error).__name__}"] += 1
                    failed.add(task_id)
                else:
                    confirmed.add(task_id)
                    if len(confirmed) == kill_after and not killing:
                        killing.append(asyncio.get_running_loop().create_task(kill()))

        async def caller(sending: asyncio.Task[object]) -> None:
            number = 0
            while not sending.done() or report.first_rpc_after is None:
                number += 1
                started = time.time()
                try:
                    reply = await asyncio.wait_for(client.rpc(f"{prefix}.echo", number, timeout=rpc_timeout),
                                                   rpc_timeout + SEND_HANG)
                    outcome = "answered" if reply == number else "wrong reply"
                except OtterError as error:  # before TimeoutError: DeadlineExceeded is one too
                    outcome = type(error).__name__
                except asyncio.TimeoutError:
                    outcome = "hung"
                except Exception as error:  # must not happen
                    outcome = f"not an Otter error: {type(error).__name__}"
                ended = time.time()
                report.rpc[outcome] += 1
                report.rpc_slowest = max(report.rpc_slowest, ended - started)
                report.rpc_late += ended - started > rpc_timeout + RPC_SLACK
                if outcome == "answered" and killed.is_set() and started > kill_at and report.first_rpc_after is None:
                    report.first_rpc_after = ended - kill_at
                if sending.done() and killed.is_set() and time.time() - kill_at > 120:
                    break  # no answer two minutes after the kill: reported as never
                await asyncio.sleep(rpc_interval)

        started = time.monotonic()
        sending = asyncio.gather(*(sender() for _ in range(in_flight)))
        calling = asyncio.ensure_future(caller(sending))
        await sending
        report.sends_seconds = time.monotonic() - started
        last_send = time.time()
        if not killing:  # fewer tasks than kill_after: kill now, for the RPC figures at least
            killing.append(asyncio.get_running_loop().create_task(kill()))
        await calling
        await killing[0]

        await client.broadcast({"id": "after-kill"}, subject=f"{prefix}.note")
        broadcast_sent = time.time()
        report.confirmed = len(confirmed)
        # Every confirmed task must run; then wait a little longer for redelivered duplicates.
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            done = rig.ledger.ids("done")
            if confirmed <= set(done) and rig.ledger.ids("broadcast"):
                break
            await asyncio.sleep(0.5)
        await _settle(rig)

    entries = rig.ledger.timed_entries()
    runs = collections.Counter(task_id for event, task_id, _, _ in entries if event == "done")
    report.processed = len(confirmed & set(runs))
    report.lost = len(confirmed - set(runs))
    report.duplicates = sum(count - 1 for count in runs.values())
    report.unconfirmed_processed = len(failed & set(runs))
    task_times = sorted(when for event, _, _, when in entries if event == "done")
    report.drained_seconds = task_times[-1] - last_send if task_times else 0.0
    reconnected = _reconnected_at(worker.output())
    if reconnected is not None and reconnected > kill_at:
        report.worker_reconnected = reconnected - kill_at
        after = [when for when in task_times if when >= reconnected]
        report.first_task_after = after[0] - kill_at if after else None
    heard = [when for event, _, _, when in entries if event == "broadcast"]
    report.broadcast_after = heard[0] - broadcast_sent if heard else None


async def _wait_serving(client: AsyncClient, worker: WorkerProcess, prefix: str) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            if await client.rpc(f"{prefix}.ping.{worker.pid}", timeout=2) == worker.pid:
                return
        except OtterError:
            pass
        if worker.popen.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"the worker does not serve:\n{worker.output()[-4000:]}")
        await asyncio.sleep(0.1)


async def _settle(rig: FaultRig, quiet: float = 2.0) -> None:
    """Until the ledger has not grown for ``quiet`` seconds (redeliveries come back within that)."""
    size, since = -1, time.monotonic()
    while time.monotonic() - since < quiet:
        now = len(rig.ledger.timed_entries())
        if now != size:
            size, since = now, time.monotonic()
        await asyncio.sleep(0.25)


def _reconnected_at(output: str) -> float | None:
    """When the worker logged that it reconnected (its log's local time, to the millisecond)."""
    found = RECONNECTED.search(output)
    if found is None:
        return None
    return datetime.strptime(found.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()


def _main(argv: list[str]) -> int:
    tasks = int(argv[1]) if len(argv) > 1 else 20_000
    rpc_queue_type = argv[2] if len(argv) > 2 else "quorum"
    cluster = Rabbitmq4Cluster(ensure_root())
    try:
        cluster.start()
        with tempfile.TemporaryDirectory(prefix="otter-nodeloss-") as directory:
            report = run(cluster, Path(directory), tasks=tasks, kill_after=tasks // 4, rpc_queue_type=rpc_queue_type)
        print(report)
    finally:
        cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv))
