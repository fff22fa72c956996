"""Service discovery: every running Otter worker process, what it serves and how it is doing, from the broker.

    from otter.services import discover
    for instance in discover("amqp://guest:guest@127.0.0.1/"):
        print(instance.service, instance.host, instance.pid, instance.handled)

One status request goes to the control exchange (``CONTROL_EXCHANGE``), which every worker process with
``DISCOVERY`` on hears on a queue of its own; each answers with its status, and the replies that come within
``timeout`` are the result (docs/protocol.md, "Control messages"). No management plugin is needed, and a worker
that is gone (killed, or its connection lost) cannot answer, so it is absent from the next discovery at once.
``otter services`` prints the same. Names (``CONTROL_EXCHANGE``) come from ``**config`` and ``OTTER_*`` as for a
``Client``.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from .codec import JsonCodec
from .config import resolve
from .errors import ConfigurationError, MessageError
from .protocol import CONTROL_VERSION
from .transports import Delivery, Transport, open_transport

__all__ = ["Discovery", "Instance", "RouteStats", "adiscover", "discover"]

log = logging.getLogger("otter.services")


@dataclass(frozen=True)
class RouteStats:
    """One route of an instance: ``kind`` (rpc, task, broadcast), ``name`` (the RPC or task name, or the broadcast
    filter), ``queue`` it consumes (empty for broadcasts); messages ``handled`` and ``errors`` since the worker
    started (errors: every handled message whose outcome was not ok), handlers running now, and the median and
    99th percentile of handler durations over the instance's recent ``window`` (None: no message then)."""

    kind: str
    name: str
    queue: str
    handled: int
    errors: int
    in_flight: int
    p50_ms: float | None
    p99_ms: float | None

    def as_dict(self) -> dict[str, Any]:
        """JSON-able, field by field."""
        return asdict(self)


@dataclass(frozen=True)
class Instance:
    """One worker process of a service, as it answered a status request. ``started_at`` is epoch seconds,
    ``uptime`` seconds; ``handled``, ``errors`` and ``in_flight`` are its routes' sums; ``window`` the seconds its
    latency quantiles cover (about 60 once it ran that long); ``state`` is serving, or stopping."""

    service: str
    version: str | None
    host: str
    pid: int
    instance_id: str
    started_at: float
    uptime: float
    concurrency: int
    in_flight: int
    handled: int
    errors: int
    routes: tuple[RouteStats, ...]
    state: str = "serving"
    window: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        """JSON-able: ``routes`` as a list of dicts."""
        data = asdict(self)
        data["routes"] = [route.as_dict() for route in self.routes]
        return data

    @classmethod
    def from_status(cls, status: Mapping[str, Any]) -> Instance:
        """Read a status reply's ``status`` (``KeyError``, ``TypeError`` or ``ValueError`` if malformed)."""
        routes = tuple(RouteStats(
            kind=str(route["kind"]), name=str(route["name"]), queue=str(route.get("queue") or ""),
            handled=int(route["handled"]), errors=int(route["errors"]), in_flight=int(route["in_flight"]),
            p50_ms=_number(route.get("p50_ms")), p99_ms=_number(route.get("p99_ms")),
        ) for route in status["routes"])
        return cls(
            service=str(status["service"]), version=None if status.get("version") is None else str(status["version"]),
            host=str(status["host"]), pid=int(status["pid"]), instance_id=str(status["instance_id"]),
            started_at=float(status["started_at"]), uptime=float(status["uptime"]),
            concurrency=int(status["concurrency"]), in_flight=int(status["in_flight"]),
            handled=int(status["handled"]), errors=int(status["errors"]), routes=routes,
            state=str(status.get("state", "serving")), window=float(status.get("window", 0.0)),
        )


def _number(value: Any) -> float | None:
    return None if value is None else float(value)


class Discovery:
    """Discovery rounds on one open connection, for a caller that asks again and again (the dashboard asks every
    second): connecting once per round would cost the broker a connection, and the caller a handshake, each time.

    >>> async with Discovery("amqp://guest:guest@127.0.0.1/") as discovery:
    ...     instances = await discovery.round(timeout=1.0)

    ``url`` and ``config`` as for ``AsyncClient``. The connection recovers by itself after a broker outage, as a
    client's does; ``round`` raises ``BrokerUnavailable`` while it cannot."""

    def __init__(self, url: str | None = None, **config: Any) -> None:
        self._settings = resolve({"BROKER_URL": url, **{key.upper(): value for key, value in config.items()}})
        self._codec = JsonCodec.from_config(self._settings)
        self._transport: Transport | None = None

    async def connect(self) -> Discovery:
        """Open the connection (``round`` does it when needed); raises ``BrokerUnavailable`` when it cannot."""
        if self._transport is None:
            transport = open_transport(self._settings["BROKER_URL"], self._settings)
            await transport.connect()
            self._transport = transport
        return self

    async def close(self) -> None:
        """Close the connection; a later ``round`` opens a new one."""
        transport, self._transport = self._transport, None
        if transport is not None:
            await transport.close()

    async def __aenter__(self) -> Discovery:
        return await self.connect()

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.close()

    async def round(self, timeout: float = 1.0, *, expected: int | None = None) -> list[Instance]:
        """The instances that answered within ``timeout`` seconds (at once when ``expected`` have), sorted by
        service, host and pid."""
        if timeout <= 0:
            raise ConfigurationError(f"timeout must be more than 0 seconds, got {timeout!r}")
        await self.connect()
        assert self._transport is not None
        request = self._codec.encode({"otter_control": CONTROL_VERSION, "command": "status"}, what="control request")
        replies = await self._transport.survey(request, correlation_id=uuid.uuid4().hex, timeout=timeout,
                                               expected=expected)
        instances = {}
        for reply in replies:
            instance = _read(reply, self._codec)
            if instance is not None:
                instances[instance.instance_id] = instance
        return sorted(instances.values(), key=lambda i: (i.service, i.host, i.pid, i.instance_id))


async def adiscover(
    url: str | None = None, timeout: float = 1.0, *, expected: int | None = None, **config: Any
) -> list[Instance]:
    """One discovery round on a connection of its own: the instances that answered within ``timeout`` seconds (at
    once when ``expected`` have), sorted by service, host and pid. ``url`` and ``config`` as for ``AsyncClient``;
    raises ``BrokerUnavailable`` when the broker cannot be reached. For repeated rounds, keep a ``Discovery``."""
    discovery = Discovery(url, **config)
    try:  # not ``async with``: ``round`` checks the timeout before it connects
        return await discovery.round(timeout, expected=expected)
    finally:
        await discovery.close()


def discover(
    url: str | None = None, timeout: float = 1.0, *, expected: int | None = None, **config: Any
) -> list[Instance]:
    """``adiscover`` for synchronous code (in a loop of its own: not from a running event loop)."""
    from . import eventloop

    result: list[Instance] = eventloop.run(adiscover(url, timeout, expected=expected, **config))
    return result


def _read(reply: Delivery, codec: JsonCodec) -> Instance | None:
    """The instance a reply describes; one that cannot be read is logged and skipped (a newer or broken worker
    must not hide the others)."""
    try:
        data = codec.decode(reply.body, reply.content_type)
        if "error" in data:
            log.warning("a worker refused the status request: %s", data["error"])
            return None
        return Instance.from_status(data["status"])
    except (MessageError, KeyError, TypeError, ValueError, AttributeError) as exc:
        log.warning("skipped an unreadable status reply (%s: %s)", type(exc).__name__, exc)
        return None
