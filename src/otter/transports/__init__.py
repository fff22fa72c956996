"""Transports move bytes; ``open_transport`` picks one from the URL scheme."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..config import DEFAULTS, redact_url
from ..errors import ConfigurationError
from .base import Delivery, Subscription, Topology, Transport

__all__ = ["Delivery", "Subscription", "Topology", "Transport", "open_transport"]

MEMORY_URL = "memory://"


def open_transport(url: str, config: Mapping[str, Any]) -> Transport:
    """A transport for ``url`` (not yet connected); ``config`` supplies names and timeouts."""
    topology = Topology.from_config(config)
    scheme = url.partition("://")[0].lower()
    if scheme in ("amqp", "amqps"):
        from ..tls import client_ssl_context
        from .amqp import AmqpTransport

        def setting(key: str) -> float:
            return float(config.get(key, DEFAULTS[key]))

        return AmqpTransport(
            url,
            topology,
            connect_timeout=setting("CONNECT_TIMEOUT"),
            ssl_context=client_ssl_context(url, config),
            publish_timeout=setting("PUBLISH_TIMEOUT"),
            reconnect_interval=setting("RECONNECT_INTERVAL"),
        )
    if scheme == "memory":
        from .memory import MemoryTransport

        return MemoryTransport(url, topology)
    raise ConfigurationError(
        f"unsupported broker URL {redact_url(url)!r}: use amqp://user:password@host:5672/vhost, amqps://... "
        f"or {MEMORY_URL} for the in-process broker"
    )
