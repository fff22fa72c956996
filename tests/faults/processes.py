"""Real worker processes for the fault tests, and the ledger their handlers write, to count what ran where."""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from helpers_process import wait_until
from otter import Client

from .rabbitmq_node import PrivateRabbitMQ

__all__ = ["FaultRig", "Ledger", "WorkerProcess", "rig_for"]

APPS = Path(__file__).parent / "apps"


class WorkerProcess:
    """``python <app>`` in its own process group, configured by environment variables, its output in a file."""

    def __init__(self, app: Path, env: dict[str, str], log_file: Path) -> None:
        self.log_file = log_file
        with log_file.open("wb") as out:
            self.popen = subprocess.Popen(
                [sys.executable, str(app)], env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.pid = self.popen.pid

    def __repr__(self) -> str:
        return f"<WorkerProcess {self.pid} {'running' if self.popen.poll() is None else self.popen.returncode}>"

    def send(self, sig: signal.Signals) -> None:
        self.popen.send_signal(sig)

    def wait(self, timeout: float) -> int:
        return self.popen.wait(timeout)

    def output(self) -> str:
        return self.log_file.read_text(errors="replace")

    def ensure_stopped(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(10)


@dataclass
class Ledger:
    """What the ledger app's handlers recorded: ``(event, task id, pid)`` per line, from every worker process."""

    directory: Path

    def entries(self) -> list[tuple[str, str, int]]:
        return [(event, task_id, pid) for event, task_id, pid, _ in self.timed_entries()]

    def timed_entries(self) -> list[tuple[str, str, int, float]]:
        """Each line with its time (``time.time()`` in the worker), in the order of the files' lines."""
        rows = []
        for path in self.directory.glob("*.ledger"):
            for line in path.read_text().splitlines():
                event, task_id, pid, when = line.split(" ")
                rows.append((event, task_id, int(pid), float(when)))
        return rows

    def ids(self, event: str, pid: int | None = None) -> collections.Counter[str]:
        return collections.Counter(
            task_id for kind, task_id, where in self.entries() if kind == event and (pid is None or where == pid)
        )

    def tally(self, sent: list[str]) -> Tally:
        """How the tasks ``sent`` ended: completions per id, the ids never completed, extra completions."""
        done = self.ids("done")
        return Tally(len(sent), done, set(sent) - set(done), sum(count - 1 for count in done.values()))


@dataclass
class Tally:
    sent: int
    done: collections.Counter[str]
    lost: set[str]
    duplicated: int

    def __str__(self) -> str:
        return f"sent={self.sent} processed={len(self.done)} lost={len(self.lost)} duplicated={self.duplicated}"


@dataclass
class FaultRig:
    """A private broker, unique names, a ledger directory, and the worker processes of one test. ``url``, if given,
    replaces the broker's (e.g. a ``;``-list of several brokers); a worker's ``BROKER_URL`` config replaces both."""

    broker: PrivateRabbitMQ
    directory: Path
    names: dict[str, Any]
    url: str | None = None
    prefix: str = field(default_factory=lambda: f"fault-{uuid.uuid4().hex[:8]}")
    workers: list[WorkerProcess] = field(default_factory=list)
    clients: list[Client] = field(default_factory=list)

    def __post_init__(self) -> None:
        (self.directory / "ledger").mkdir()
        self.ledger = Ledger(self.directory / "ledger")

    def env(self, **config: Any) -> dict[str, str]:
        env = {key: value for key, value in os.environ.items() if not key.startswith(("OTTER_", "FAULT_"))}
        env.update({f"OTTER_{key}": str(value) for key, value in {**self.names, **config}.items()})
        env.setdefault("OTTER_BROKER_URL", self.url or self.broker.url)
        env.update(
            FAULT_PREFIX=self.prefix,
            FAULT_LEDGER_DIR=str(self.ledger.directory),
            PYTHONUNBUFFERED="1",
        )
        return env

    def spawn(self, app: str = "ledger.py", **config: Any) -> WorkerProcess:
        """Start a worker process serving ``tests/faults/apps/<app>``; ``config`` becomes ``OTTER_*`` variables."""
        worker = WorkerProcess(APPS / app, self.env(**config), self.directory / f"worker-{len(self.workers)}.log")
        self.workers.append(worker)
        return worker

    def client(self, **config: Any) -> Client:
        client = Client(self.url or self.broker.url, **{**self.names, **config})
        assert client.comm, f"could not connect to the private broker: {client.error}"
        self.clients.append(client)
        return client

    def wait_serving(self, client: Client, worker: WorkerProcess, timeout: float = 20.0) -> None:
        """Wait until ``worker`` answers its own ping RPC, so its consumers are up."""

        def answered() -> bool:
            if worker.popen.poll() is not None:
                raise AssertionError(f"worker {worker.pid} exited with {worker.popen.returncode}:\n{worker.output()}")
            try:
                return client.rpc(f"{self.prefix}.ping.{worker.pid}", timeout=2).result() == worker.pid
            except Exception:  # not serving yet: unroutable, or a timeout while it starts
                return False

        wait_until(answered, timeout, f"worker {worker.pid} to serve", interval=0.1)

    def release(self) -> None:
        """Let every held ``slow`` task finish (see the ledger app)."""
        (self.ledger.directory / "release").touch()

    def outputs(self) -> str:
        return "\n".join(f"--- worker {worker.pid} ---\n{worker.output()[-4000:]}" for worker in self.workers)

    def close(self) -> None:
        for client in self.clients:
            client.close()
        for worker in self.workers:
            worker.ensure_stopped()


def rig_for(
    broker: PrivateRabbitMQ, directory: Path, names: dict[str, Any], url: str | None = None
) -> Iterator[FaultRig]:
    rig = FaultRig(broker, directory, names, url=url)
    try:
        yield rig
    finally:
        rig.close()
