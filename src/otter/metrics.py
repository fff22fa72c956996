"""Prometheus metrics of a worker: an observer of handled messages, publishes and the connection (``METRICS_PORT``).

``Metrics`` is what ``otter run --metrics-port`` attaches to the worker (``Otter.serve(observers=[...])``); the
worker and the transport tell it about each message, publish and connection change, and cost nothing more when it
is not attached. With ``--workers N`` each worker writes its values to files in the supervisor's directory
(prometheus-client's multiprocess mode, ``PROMETHEUS_MULTIPROC_DIR``) and the supervisor serves the sum of them all
on one endpoint (``serve_multiprocess``), so no worker's figures go missing.

prometheus-client is optional (``pip install 'otter-mq[metrics]'``); ``import otter`` never imports this module.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import ConfigurationError

if TYPE_CHECKING:
    from .transports.base import Transport
    from .worker import Handled

__all__ = [
    "MULTIPROC_DIR_ENV",
    "Endpoint",
    "Metrics",
    "mark_process_dead",
    "outcome_of",
    "require_prometheus",
    "serve_multiprocess",
]

MULTIPROC_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"  # prometheus-client's own variable, read when it is imported

# Handler durations from 1 ms to a minute: RPCs are milliseconds, tasks may take long.
DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# Publishes: a reply is queued in microseconds, a confirmed task waits for the broker's confirm (a few ms).
PUBLISH_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0)


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


def outcome_of(event: Handled) -> str:
    """A bounded label for what became of a message (``Handled.outcome`` is free text, unfit as a label):
    ok, error (an RPC or broadcast whose handler raised), retry, dead_letter, requeued, expired or rejected
    (bad input, or a reply that could not be encoded)."""
    if event.action == "retry":
        return "retry"
    if event.action == "dead-letter":
        return "dead_letter"
    if event.action == "requeue":
        return "requeued"
    if event.error is not None:
        return "error"
    if event.outcome in ("ok", "expired"):
        return event.outcome
    return "rejected"


class Metrics:
    """The worker's metrics, registered in their own registry (``registry``); see the module docstring.

    >>> metrics = Metrics()
    >>> await app.serve(config, observers=[metrics])
    """

    def __init__(self) -> None:
        client = require_prometheus()
        multiprocess = bool(os.environ.get(MULTIPROC_DIR_ENV))
        self.registry = client.CollectorRegistry()
        counter, gauge, histogram = client.Counter, client.Gauge, client.Histogram
        route = ("kind", "name")
        self.handled = counter("otter_messages_handled", "Messages a route finished with, by outcome.",
                               [*route, "outcome"], registry=self.registry)
        self.errors = counter("otter_handler_errors", "Exceptions raised by handlers, by type.",
                              [*route, "error"], registry=self.registry)
        self.duration = histogram("otter_handler_duration_seconds", "From receipt to the message being settled.",
                                  route, buckets=DURATION_BUCKETS, registry=self.registry)
        self.in_flight_gauge = gauge("otter_messages_in_flight", "Handlers running now.", route,
                               multiprocess_mode="livesum", registry=self.registry)
        self.retries = counter("otter_task_retries", "Tasks parked for another attempt.", ["name"],
                               registry=self.registry)
        self.dead_letters = counter("otter_dead_letters", "Tasks moved to the dead-letter queue.", ["name"],
                                    registry=self.registry)
        self.publish = histogram("otter_publish_seconds", "A publish until the broker confirmed it (tasks, "
                                 "broadcasts, retries, dead letters) or until it was written (replies).",
                                 ["what"], buckets=PUBLISH_BUCKETS, registry=self.registry)
        self.connected = gauge("otter_connected", "1 while the worker is connected to the broker (with several "
                               "workers: how many are).", multiprocess_mode="livesum", registry=self.registry)
        self.reconnects = counter("otter_reconnects", "Connections restored after a loss.", registry=self.registry)
        self.multiprocess = multiprocess
        # Each label set's child is looked up once (``labels()`` costs microseconds): per route, per publish kind.
        self._routes: dict[tuple[str, str], _Route] = {}
        self._publishes: dict[str, Any] = {}

    # -- the worker's hooks ---------------------------------------------------------------------------------------
    def __call__(self, event: Handled) -> None:
        """An ``Observer`` of handled messages."""
        route = self._routes.get((event.kind, event.name)) or self._route(event.kind, event.name)
        outcome = outcome_of(event)
        handled = route.handled.get(outcome)
        if handled is None:
            handled = route.handled[outcome] = self.handled.labels(event.kind, event.name, outcome)
        handled.inc()
        route.duration.observe(event.seconds)
        if event.error is not None:
            self.errors.labels(event.kind, event.name, type(event.error).__name__).inc()
        if outcome == "retry":
            self.retries.labels(event.name).inc()
        elif outcome == "dead_letter":
            self.dead_letters.labels(event.name).inc()

    def in_flight(self, kind: str, name: str) -> Callable[[int], None]:
        """What the worker calls with +1 when a handler of the route starts and -1 when it ends."""
        route = self._routes.get((kind, name)) or self._route(kind, name)
        return route.in_flight.inc  # type: ignore[no-any-return]

    def watch_transport(self, transport: Transport) -> None:
        """Be told of the transport's publishes and connection changes (``Transport.watcher``)."""
        transport.watcher = self

    def published(self, what: str, seconds: float) -> None:
        child = self._publishes.get(what)
        if child is None:
            child = self._publishes[what] = self.publish.labels(what)
        child.observe(seconds)

    def connection_changed(self, up: bool, reconnected: bool) -> None:
        self.connected.set(1 if up else 0)
        if reconnected:
            self.reconnects.inc()

    def _route(self, kind: str, name: str) -> _Route:
        route = self._routes[(kind, name)] = _Route(self.in_flight_gauge.labels(kind, name),
                                                    self.duration.labels(kind, name), {})
        return route

    # -- the endpoint ---------------------------------------------------------------------------------------------
    def serve(self, port: int) -> Endpoint:
        """Serve ``/metrics`` on ``port`` (all interfaces), in a thread of prometheus-client's, so a scrape still
        answers while the event loop is busy."""
        if self.multiprocess:  # the user runs us under their own multiprocess setup: report what it collects
            return serve_multiprocess(port, os.environ[MULTIPROC_DIR_ENV])
        return _serve(port, self.registry)


@dataclass(slots=True)
class _Route:
    """One route's children of the per-message metrics."""

    in_flight: Any
    duration: Any
    handled: dict[str, Any]  # by outcome


@dataclass
class Endpoint:
    """A running ``/metrics`` server; ``close`` stops it."""

    server: Any
    thread: Any

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


def serve_multiprocess(port: int, directory: str) -> Endpoint:
    """Serve the sum of every worker's metrics written under ``directory`` (the supervisor's endpoint)."""
    client = require_prometheus()
    from prometheus_client import multiprocess

    registry = client.CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
    return _serve(port, registry)


def mark_process_dead(pid: int, directory: str) -> None:
    """Drop a finished worker's live gauges (in-flight, connected); its counters stay in the sum."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]


def _serve(port: int, registry: Any) -> Endpoint:
    client = require_prometheus()
    try:
        server, thread = client.start_http_server(port, registry=registry)
    except OSError as exc:
        raise ConfigurationError(f"cannot serve metrics on port {port} (METRICS_PORT): {exc.strerror or exc}; "
                                 f"choose a free port") from None
    return Endpoint(server, thread)
