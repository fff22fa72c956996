"""Live figures from successive discovery snapshots, with no I/O: discovery reports counts since each replica
started, and a rate is the difference between two snapshots over the time between them.

>>> tracker = RateTracker()
>>> services = tracker.update(replicas, now=time.monotonic())   # the first call has counts but no rates yet
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .fleet import Instance, RouteStats

__all__ = ["RateTracker", "RouteRow", "ServiceRow"]


@dataclass(frozen=True)
class RouteRow:
    """One route of a service, summed over its replicas. Rates are per second since the previous snapshot (``None``
    until there is one); latencies are the slowest replica's, in milliseconds."""

    kind: str
    name: str
    queue: str  # empty for a broadcast filter
    replicas: int
    handled: int
    errors: int
    in_flight: int
    rate: float | None
    error_rate: float | None
    p50_ms: float | None
    p99_ms: float | None


@dataclass(frozen=True)
class ServiceRow:
    """A service: its replicas (oldest first) and its routes."""

    name: str
    versions: tuple[str, ...]
    replicas: tuple[Instance, ...]
    routes: tuple[RouteRow, ...]

    @property
    def handled(self) -> int:
        return sum(replica.handled for replica in self.replicas)

    @property
    def errors(self) -> int:
        return sum(replica.errors for replica in self.replicas)

    @property
    def in_flight(self) -> int:
        return sum(replica.in_flight for replica in self.replicas)


_Key = tuple[str, str, str]  # instance id, route kind, route name


class RateTracker:
    """Remembers each replica's latest route counts. A replica missing from a snapshot (its answer came too late)
    keeps them for ``memory`` seconds, so its next answer still gives a rate, over the longer time; after that it is
    forgotten."""

    def __init__(self, memory: float = 10.0) -> None:
        self.memory = memory
        self._previous: dict[_Key, tuple[float, int, int]] = {}

    def update(self, replicas: Sequence[Instance], now: float) -> tuple[ServiceRow, ...]:
        """The services in ``replicas``, sorted by name, with rates against each replica's previous counts."""
        rates: dict[_Key, tuple[float, float]] = {}
        current = {key: seen for key, seen in self._previous.items() if now - seen[0] < self.memory}
        for replica in replicas:
            for route in replica.routes:
                key = (replica.instance_id, route.kind, route.name)
                before = current.get(key)
                current[key] = (now, route.handled, route.errors)
                if before is not None and now > before[0]:
                    elapsed = now - before[0]
                    # A count never goes down within one replica; max() keeps a confused report from going negative.
                    handled, errors = max(0, route.handled - before[1]), max(0, route.errors - before[2])
                    rates[key] = (handled / elapsed, errors / elapsed)
        self._previous = current
        by_service: dict[str, list[Instance]] = {}
        for replica in replicas:
            by_service.setdefault(replica.service, []).append(replica)
        return tuple(_service(name, by_service[name], rates) for name in sorted(by_service))


def _service(name: str, replicas: list[Instance], rates: dict[_Key, tuple[float, float]]) -> ServiceRow:
    replicas.sort(key=lambda replica: (-replica.uptime, replica.host, replica.pid))
    routes: dict[tuple[str, str], list[tuple[Instance, RouteStats]]] = {}
    for replica in replicas:
        for route in replica.routes:
            routes.setdefault((route.kind, route.name), []).append((replica, route))
    versions = tuple(sorted({replica.version for replica in replicas if replica.version}))
    rows = tuple(_route(pairs, rates) for _, pairs in sorted(routes.items()))
    return ServiceRow(name=name, versions=versions, replicas=tuple(replicas), routes=rows)


def _route(pairs: list[tuple[Instance, RouteStats]], rates: dict[_Key, tuple[float, float]]) -> RouteRow:
    measured = [rates[key] for key in ((replica.instance_id, route.kind, route.name) for replica, route in pairs)
                if key in rates]
    counts = [route for _, route in pairs]
    first = counts[0]
    return RouteRow(
        kind=first.kind,
        name=first.name,
        queue=first.queue,
        replicas=len(counts),
        handled=sum(route.handled for route in counts),
        errors=sum(route.errors for route in counts),
        in_flight=sum(route.in_flight for route in counts),
        rate=sum(rate for rate, _ in measured) if measured else None,
        error_rate=sum(error_rate for _, error_rate in measured) if measured else None,
        p50_ms=_slowest(route.p50_ms for route in counts),
        p99_ms=_slowest(route.p99_ms for route in counts),
    )


def _slowest(values: Iterable[float | None]) -> float | None:
    known = [value for value in values if value is not None]
    return max(known) if known else None
