"""What a serving worker process offers its operators, as ``METRICS_PORT``, ``HEALTH_PORT`` and ``DISCOVERY`` say.

A lone worker serves both ports itself. A worker under the ``--workers N`` supervisor (``OTTER_WORKER_NUMBER`` is
set) serves neither: it writes its metrics to a file in the supervisor's directory and serves its probes on a port
of its own on 127.0.0.1 for the supervisor to ask, which serves the public ports for all of them (see
``otter.metrics`` and ``otter.health``). Nothing here is imported unless a port is configured. With ``DISCOVERY``
(the default) every worker, supervised or not, answers control requests itself (``otter.control``), from the
metrics' counts when metrics are on, else from a ``Tally`` of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import OtterError
from .supervisor import WORKER_NUMBER_ENV

if TYPE_CHECKING:
    from .control import Identity, StatusResponder
    from .health import ProbeServer
    from .metrics import Endpoint, PodCollector
    from .stats import Tally
    from .worker import Observer, Worker

__all__ = ["Operations", "PodOperations"]

log = logging.getLogger("otter.operations")


class Operations:
    """Made before the worker (its metrics observe it), started once the worker exists, closed after it stopped."""

    def __init__(self, config: dict[str, Any], identity: Identity | None = None) -> None:
        """``identity``: who this worker is to discovery; None (or ``DISCOVERY`` off) answers no control request."""
        self.metrics_port: int | None = config.get("METRICS_PORT")
        self.health_port: int | None = config.get("HEALTH_PORT")
        self.worker_number = os.environ.get(WORKER_NUMBER_ENV)
        self.observers: tuple[Observer, ...] = ()
        self.tally: Tally | None = None
        if self.metrics_port is not None:
            from .metrics import Metrics

            self.metrics = self.tally = Metrics()
            self.observers = (self.metrics,)
        self.identity = identity if config.get("DISCOVERY", True) else None
        if self.identity is not None and self.tally is None:
            from .stats import Tally

            self.tally = Tally()
            self.observers = (self.tally,)
        self._control: StatusResponder | None = None
        self._endpoint: Endpoint | None = None
        self._snapshots: asyncio.Task[None] | None = None
        self._probes: ProbeServer | None = None
        self._port_file: Path | None = None

    async def start(self, worker: Worker) -> None:
        """Serve the ports (before the worker connects, so ``/livez`` answers during a long ``STARTUP_WAIT``)."""
        if self.metrics_port is not None:
            from .metrics import WORKER_METRICS_DIR_ENV, serve

            if self.worker_number is None:
                self._endpoint = serve(self.metrics_port, self.metrics)
                log.info("metrics at http://0.0.0.0:%d/metrics", self.metrics_port)
            elif os.environ.get(WORKER_METRICS_DIR_ENV):
                path = Path(os.environ[WORKER_METRICS_DIR_ENV]) / f"{os.getpid()}.json"
                self._snapshots = asyncio.ensure_future(self.metrics.write_snapshots(path))
        if self.health_port is None:
            return
        from .health import WORKER_HEALTH_DIR_ENV, ProbeServer, worker_probes, write_port

        directory = os.environ.get(WORKER_HEALTH_DIR_ENV)
        supervised = self.worker_number is not None
        if supervised and not directory:
            return  # a supervisor that serves no probes (the port came from a changed app.config): none here either
        host, port = ("127.0.0.1", 0) if supervised else ("0.0.0.0", self.health_port)
        self._probes = await ProbeServer(worker_probes(worker)).start(host, port)
        if supervised:
            assert directory is not None and self.worker_number is not None
            self._port_file = write_port(directory, self.worker_number, self._probes.port)
        else:
            log.info("health probes at http://0.0.0.0:%d/livez and /readyz", self._probes.port)

    async def serving(self, worker: Worker) -> None:
        """Once the worker serves: answer control requests (before the app says it is running, so that a
        discovery after that line finds it)."""
        if self.identity is None or self.tally is None:
            return
        from .control import StatusResponder, route_entries

        topology = worker.transport.topology  # type: ignore[attr-defined]
        control = StatusResponder(self.identity, route_entries(worker.table, topology.rpc_queue), self.tally,
                                  worker.codec, worker.transport, lambda: worker.state)
        try:
            await control.start()
        except OtterError as exc:  # the routes serve on: only `otter services` cannot see this worker
            log.warning("this worker will not answer `otter services` (set DISCOVERY=False to not try): %s", exc)
            await control.close()
            return
        self._control = control

    async def close(self) -> None:
        if self._control is not None:
            await self._control.close()
        if self._snapshots is not None:  # its last snapshot, with the messages the stop finished, is written now
            self._snapshots.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._snapshots
        if self._port_file is not None:
            with contextlib.suppress(OSError):
                self._port_file.unlink()
        if self._probes is not None:
            await self._probes.close()
        if self._endpoint is not None:
            self._endpoint.close()


class PodOperations:
    """The supervisor's side (``otter run --workers N`` or ``--reload``): one metrics endpoint summing every
    worker's figures, and probes that ask every worker. Owns a temporary directory, removed by ``cleanup``."""

    def __init__(self, config: dict[str, Any], workers: int) -> None:
        import tempfile

        self.metrics_port: int | None = config.get("METRICS_PORT")
        self.health_port: int | None = config.get("HEALTH_PORT")
        self.workers = workers
        self.env: dict[str, str] = {}
        self.directory: Path | None = None
        self.collector: PodCollector | None = None
        if self.metrics_port is None and self.health_port is None:
            return
        if self.metrics_port is not None:
            from .metrics import require_prometheus

            require_prometheus()  # before any worker starts: one clear error, not N
        self.directory = Path(tempfile.mkdtemp(prefix="otter-supervisor-"))
        if self.metrics_port is not None:
            from .metrics import WORKER_METRICS_DIR_ENV, PodCollector

            (self.directory / "metrics").mkdir()
            self.env[WORKER_METRICS_DIR_ENV] = str(self.directory / "metrics")
            self.collector = PodCollector(self.directory / "metrics")
        if self.health_port is not None:
            from .health import WORKER_HEALTH_DIR_ENV

            (self.directory / "health").mkdir()
            self.env[WORKER_HEALTH_DIR_ENV] = str(self.directory / "health")

    @contextlib.asynccontextmanager
    async def serving(self) -> AsyncIterator[None]:
        """Serve the public ports while the supervisor runs (a context manager for ``Supervisor(services=)``)."""
        assert self.directory is not None
        endpoint: Endpoint | None = None
        probes: ProbeServer | None = None
        try:
            if self.metrics_port is not None and self.collector is not None:
                from .metrics import serve

                endpoint = serve(self.metrics_port, self.collector)
                log.info("metrics of all %d workers at http://0.0.0.0:%d/metrics", self.workers, self.metrics_port)
            if self.health_port is not None:
                from .health import ProbeServer, pod_probes

                probes = await ProbeServer(pod_probes(self.directory / "health", self.workers)).start(
                    "0.0.0.0", self.health_port)
                log.info("health probes of all %d workers at http://0.0.0.0:%d/livez and /readyz", self.workers,
                         self.health_port)
            yield
        finally:
            if probes is not None:
                await probes.close()
            if endpoint is not None:
                endpoint.close()

    def worker_exited(self, number: int, pid: int) -> None:
        """Forget a finished worker: its live gauges leave the sum, its probe port is no longer asked."""
        if self.directory is None:
            return
        if self.collector is not None:
            self.collector.worker_exited(pid)
        with contextlib.suppress(OSError):
            (self.directory / "health" / str(number)).unlink()

    def cleanup(self) -> None:
        if self.directory is not None:
            import shutil

            shutil.rmtree(self.directory, ignore_errors=True)
