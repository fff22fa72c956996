"""The running services, as the dashboard sees them: the one module that reads Otter's discovery.

``otter.services`` (``adiscover``) asks every running worker for its state with Otter's control messages. This
module turns its ``Instance`` and ``RouteStats`` into the dashboard's own ``Replica`` and ``RouteCount``, so the
rest of the dashboard, and its tests, depend on these few fields only, and a change in discovery touches one place.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigurationError

__all__ = ["NAME_KEYS", "Replica", "RouteCount", "discover_replicas"]

# The config keys that name what discovery talks over: a dashboard and its services must agree on them.
NAME_KEYS = ("MESSAGE_EXCHANGE", "TASK_EXCHANGE", "DEFAULT_TASK_QUEUE", "RPC_QUEUE_PREFIX", "DEAD_LETTER_QUEUE")


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
    def from_stats(cls, stats: Any) -> RouteCount:
        return cls(kind=str(stats.kind), name=str(stats.name), queue=stats.queue, handled=int(stats.handled),
                   errors=int(stats.errors), in_flight=int(stats.in_flight), p50_ms=stats.p50_ms,
                   p99_ms=stats.p99_ms)


@dataclass(frozen=True)
class Replica:
    """One running worker process of a service."""

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

    @classmethod
    def from_instance(cls, instance: Any) -> Replica:
        return cls(service=str(instance.service), version=instance.version, host=str(instance.host),
                   pid=int(instance.pid), instance_id=str(instance.instance_id), uptime=float(instance.uptime),
                   concurrency=int(instance.concurrency), in_flight=int(instance.in_flight),
                   handled=int(instance.handled), errors=int(instance.errors),
                   routes=tuple(RouteCount.from_stats(stats) for stats in instance.routes))


async def discover_replicas(url: str, config: Mapping[str, Any], timeout: float) -> list[Replica]:
    """Every replica that answered within ``timeout`` seconds, on the exchanges ``config`` names."""
    try:
        services = importlib.import_module("otter.services")
    except ImportError:
        raise ConfigurationError(
            "this Otter has no service discovery (otter.services): the dashboard cannot list services"
        ) from None
    names = {key: config[key] for key in NAME_KEYS if key in config}
    instances = await services.adiscover(url, timeout=timeout, **names)
    return [Replica.from_instance(instance) for instance in instances]
