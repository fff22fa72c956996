"""The running services, as the dashboard sees them: the one module that reads Otter's discovery.

``otter.services`` (``adiscover``) asks every running worker for its state with Otter's control messages. This
module turns its ``Instance`` and ``RouteStats`` into the dashboard's own ``Replica`` and ``RouteCount``, so the
rest of the dashboard, and its tests, depend on these few fields only, and a change in discovery touches one place.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..services import Instance, RouteStats, adiscover

__all__ = ["Replica", "RouteCount", "discover_replicas"]


@dataclass(frozen=True)
class RouteCount:
    """One route of one replica: its counts since the replica started, and its recent latency."""

    kind: str
    name: str
    queue: str | None
    handled: int
    errors: int
    in_flight: int
    p50_ms: float | None
    p99_ms: float | None

    @classmethod
    def from_stats(cls, stats: RouteStats) -> RouteCount:
        return cls(kind=stats.kind, name=stats.name, queue=stats.queue or None, handled=stats.handled,
                   errors=stats.errors, in_flight=stats.in_flight, p50_ms=stats.p50_ms, p99_ms=stats.p99_ms)


@dataclass(frozen=True)
class Replica:
    """One running worker process of a service; ``state`` is serving, or stopping."""

    service: str
    version: str | None
    host: str
    pid: int
    instance_id: str
    uptime: float
    concurrency: int
    in_flight: int
    handled: int
    errors: int
    routes: tuple[RouteCount, ...]
    state: str = "serving"

    @classmethod
    def from_instance(cls, instance: Instance) -> Replica:
        return cls(service=instance.service, version=instance.version, host=instance.host, pid=instance.pid,
                   instance_id=instance.instance_id, uptime=instance.uptime, concurrency=instance.concurrency,
                   in_flight=instance.in_flight, handled=instance.handled, errors=instance.errors,
                   routes=tuple(RouteCount.from_stats(stats) for stats in instance.routes), state=instance.state)


async def discover_replicas(url: str, config: Mapping[str, Any], timeout: float) -> list[Replica]:
    """Every replica that answered within ``timeout`` seconds, on the control exchange ``config`` names."""
    settings = {key: value for key, value in config.items() if key != "BROKER_URL"}
    return [Replica.from_instance(instance) for instance in await adiscover(url, timeout, **settings)]
