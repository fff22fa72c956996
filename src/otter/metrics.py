"""Prometheus metrics of a worker: an observer of handled messages, publishes and the connection (``METRICS_PORT``).

``Metrics`` is what ``otter run --metrics-port`` attaches to the worker (``Otter.serve(observers=[...])``); the
worker and the transport tell it about each message, publish and connection change, and cost nothing more when it
is not attached.

On the hot path it only adds to plain numbers (it is an ``otter.stats.Tally``, whose routes the worker updates
directly: 1.6-1.7 µs a message with the handler's timing; prometheus-client's own metric objects take a lock per
update, and its multiprocess mode writes a memory-mapped file on every update), and turns them into Prometheus
families when scraped (``collect``).
With ``--workers N`` each worker writes those numbers to a file of its own in the supervisor's directory every
``SNAPSHOT_INTERVAL`` and when it stops, and the supervisor serves their sum on one endpoint (``PodCollector``):
counters and histograms of every worker that ever ran (a replaced worker's counts stay), gauges (in flight,
connected) of the running ones only. A worker killed outright loses at most its last second of counts.

prometheus-client is optional (``pip install 'otter-mq[metrics]'``); ``import otter`` never imports this module.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ConfigurationError
from .stats import DURATION_BUCKETS, LATENCY_BOUNDS, Histogram, Tally, fold, outcome_of

if TYPE_CHECKING:
    from .transports.base import Transport

__all__ = [
    "DURATION_BUCKETS",
    "PUBLISH_BUCKETS",
    "WORKER_METRICS_DIR_ENV",
    "Endpoint",
    "Metrics",
    "PodCollector",
    "outcome_of",
    "require_prometheus",
    "serve",
]

log = logging.getLogger("otter.metrics")

# Publishes: a reply is queued in microseconds, a confirmed task waits for the broker's confirm (a few ms).
PUBLISH_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0)
SNAPSHOT_INTERVAL = 1.0  # seconds between a supervised worker's snapshots
WORKER_METRICS_DIR_ENV = "OTTER_WORKER_METRICS_DIR"  # where a supervised worker writes them (the supervisor's)
DEAD_SUFFIX = ".dead"  # a finished worker's snapshot: its counters stay in the sum, its gauges leave it


def require_prometheus() -> Any:
    """The ``prometheus_client`` module, or a ``ConfigurationError`` saying how to install it."""
    try:
        import prometheus_client
    except ImportError:
        raise ConfigurationError(
            "METRICS_PORT (--metrics-port) needs prometheus-client, which is not installed: "
            "pip install 'otter-mq[metrics]'"
        ) from None
    return prometheus_client


class Metrics(Tally):
    """The worker's metrics; see the module docstring. ``registry`` serves them (``serve``), ``snapshot()`` is
    what a supervised worker writes for its supervisor.

    >>> metrics = Metrics()
    >>> await app.serve(config, observers=[metrics])
    """

    def __init__(self) -> None:
        client = require_prometheus()
        super().__init__()
        self._publishes: dict[str, Histogram] = {}
        self.connected = 0
        self.reconnects = 0
        self.registry = client.CollectorRegistry()
        self.registry.register(self)

    # -- the transport's hooks (the worker's are Tally's) ------------------------------------------------------
    def watch_transport(self, transport: Transport) -> None:
        """Be told of the transport's publishes and connection changes (``Transport.watcher``)."""
        transport.watcher = self

    def published(self, what: str, seconds: float) -> None:
        histogram = self._publishes.get(what)
        if histogram is None:
            histogram = self._publishes[what] = Histogram(PUBLISH_BUCKETS)
        histogram.observe(seconds)

    def connection_changed(self, up: bool, reconnected: bool) -> None:
        self.connected = 1 if up else 0
        if reconnected:
            self.reconnects += 1

    # -- reading them -----------------------------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """Every number, as JSON-able data. Safe from another thread (the scrape's): each copy is one C call."""
        routes = []
        for (kind, name), route in list(self.routes.items()):
            routes.append({
                "kind": kind, "name": name, "running": route.running, "outcomes": dict(route.outcomes),
                "errors": dict(route.errors),
                "duration": [fold(list(route.duration.counts), LATENCY_BOUNDS, DURATION_BUCKETS), route.duration.total],
            })
        publishes = {what: [list(h.counts), h.total] for what, h in list(self._publishes.items())}
        return {"routes": routes, "publishes": publishes, "connected": self.connected,
                "reconnects": self.reconnects}

    def collect(self) -> Iterator[Any]:
        """The Prometheus families (prometheus-client's collector protocol, called at each scrape)."""
        yield from families([self.snapshot()], [])

    async def write_snapshots(self, path: Path, interval: float = SNAPSHOT_INTERVAL) -> None:
        """Under the supervisor: write ``snapshot()`` to ``path`` every ``interval`` while it changes; cancel to
        stop (a last one is written then)."""
        written = None
        try:
            while True:
                written = _write_if_changed(path, self.snapshot(), written)
                await asyncio.sleep(interval)
        finally:
            _write_if_changed(path, self.snapshot(), written)


def _write_if_changed(path: Path, snapshot: dict[str, Any], written: str | None) -> str | None:
    text = json.dumps(snapshot, separators=(",", ":"))
    if text == written:
        return written
    try:
        partial = path.with_name(path.name + ".tmp")
        partial.write_text(text)
        os.replace(partial, path)  # whole or not at all: the supervisor never reads half of it
    except OSError as exc:
        log.warning("could not write this worker's metrics to %s for the supervisor: %s", path, exc)
        return written
    return text


def families(running: list[Mapping[str, Any]], finished: list[Mapping[str, Any]]) -> Iterator[Any]:
    """Prometheus families summing the snapshots of ``running`` and ``finished`` workers (gauges: running only)."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
    from prometheus_client.utils import floatToGoString

    route_labels = ["kind", "name"]
    handled = CounterMetricFamily("otter_messages_handled", "Messages a route finished with, by outcome.",
                                  labels=[*route_labels, "outcome"])
    errors = CounterMetricFamily("otter_handler_errors", "Exceptions raised by handlers, by type.",
                                 labels=[*route_labels, "error"])
    duration = HistogramMetricFamily("otter_handler_duration_seconds",
                                     "From the handler's slot to the message being settled.", labels=route_labels)
    in_flight = GaugeMetricFamily("otter_messages_in_flight", "Handlers running now.", labels=route_labels)
    retries = CounterMetricFamily("otter_task_retries", "Tasks parked for another attempt.", labels=["name"])
    dead_letters = CounterMetricFamily("otter_dead_letters", "Tasks moved to the dead-letter queue.", labels=["name"])
    publish = HistogramMetricFamily("otter_publish_seconds", "A publish until the broker confirmed it (tasks, "
                                    "broadcasts, retries, dead letters) or until it was written (replies).",
                                    labels=["what"])
    connected = GaugeMetricFamily("otter_connected", "1 while the worker is connected to the broker (with several "
                                  "workers: how many are).")
    reconnects = CounterMetricFamily("otter_reconnects", "Connections restored after a loss.")

    totals: dict[tuple[Any, ...], float] = {}
    histograms: dict[tuple[Any, ...], tuple[list[int], float]] = {}

    def add(key: tuple[Any, ...], amount: float) -> None:
        totals[key] = totals.get(key, 0) + amount

    def add_histogram(key: tuple[Any, ...], data: list[Any]) -> None:
        counts, total = histograms.get(key, ([0] * len(data[0]), 0.0))
        histograms[key] = ([a + b for a, b in zip(counts, data[0], strict=False)], total + data[1])

    for alive, snapshots in ((True, running), (False, finished)):
        for snapshot in snapshots:
            for route in snapshot.get("routes", []):
                kind, name = route["kind"], route["name"]
                for outcome, count in route["outcomes"].items():
                    add(("handled", kind, name, outcome), count)
                for error, count in route["errors"].items():
                    add(("errors", kind, name, error), count)
                add_histogram(("duration", kind, name), route["duration"])
                add(("in_flight", kind, name), route["running"] if alive else 0)
                if kind == "task":  # the outcomes, again by the names operators look for
                    add(("retries", name), route["outcomes"].get("retry", 0))
                    add(("dead_letters", name), route["outcomes"].get("dead_letter", 0))
            for what, data in snapshot.get("publishes", {}).items():
                add_histogram(("publish", what), data)
            add(("connected",), snapshot.get("connected", 0) if alive else 0)
            add(("reconnects",), snapshot.get("reconnects", 0))

    simple: dict[str, Any] = {"handled": handled, "errors": errors, "in_flight": in_flight, "retries": retries,
              "dead_letters": dead_letters, "connected": connected, "reconnects": reconnects}
    for (family, *labels), value in totals.items():
        simple[family].add_metric(labels, value)
    bounds = {"duration": DURATION_BUCKETS, "publish": PUBLISH_BUCKETS}
    for (family, *labels), (counts, total) in histograms.items():
        cumulative, buckets = 0, []
        for bound, count in zip([*map(floatToGoString, bounds[family]), "+Inf"], counts, strict=False):
            cumulative += count
            buckets.append((bound, cumulative))
        (duration if family == "duration" else publish).add_metric(labels, buckets, total)
    yield from (handled, errors, duration, in_flight, retries, dead_letters, publish, connected, reconnects)


class PodCollector:
    """The supervisor's collector: the sum of the snapshots its workers wrote in ``directory``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def collect(self) -> Iterator[Any]:
        running: list[Mapping[str, Any]] = []
        finished: list[Mapping[str, Any]] = []
        for path in sorted(self.directory.iterdir()):
            if path.name.endswith(".tmp"):
                continue
            try:
                snapshot = json.loads(path.read_text())
            except (OSError, ValueError):
                continue  # removed or replaced as it was read: the next scrape has it
            (finished if path.name.endswith(DEAD_SUFFIX) else running).append(snapshot)
        yield from families(running, finished)

    def worker_exited(self, pid: int) -> None:
        """A finished worker's counts stay in the sum; its gauges leave it."""
        path = self.directory / f"{pid}.json"
        with contextlib.suppress(OSError):
            os.replace(path, path.with_name(path.name + DEAD_SUFFIX))


@dataclass
class Endpoint:
    """A running ``/metrics`` server; ``close`` stops it."""

    server: Any
    thread: Any

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


def serve(port: int, collector: Any) -> Endpoint:
    """Serve ``/metrics`` from ``collector`` on ``port`` (all interfaces), in a thread of prometheus-client's, so a
    scrape still answers while the event loop is busy."""
    client = require_prometheus()
    registry = collector.registry if isinstance(collector, Metrics) else client.CollectorRegistry()
    if not isinstance(collector, Metrics):
        registry.register(collector)
    try:
        server, thread = client.start_http_server(port, registry=registry)
    except OSError as exc:
        raise ConfigurationError(f"cannot serve metrics on port {port} (METRICS_PORT): {exc.strerror or exc}; "
                                 f"choose a free port") from None
    return Endpoint(server, thread)
