"""The running services, as the dashboard sees them: the one module that reads Otter's discovery.

``otter.services`` (``adiscover``) asks every running worker for its state with Otter's control messages; the rest
of the dashboard takes its ``Instance`` (a replica) and ``RouteStats`` from here, so a change in discovery touches
one place.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..services import Instance, RouteStats, adiscover

__all__ = ["Instance", "RouteStats", "discover_replicas"]


async def discover_replicas(url: str, config: Mapping[str, Any], timeout: float) -> list[Instance]:
    """Every replica that answered within ``timeout`` seconds, on the control exchange ``config`` names."""
    settings = {key: value for key, value in config.items() if key != "BROKER_URL"}
    return await adiscover(url, timeout, **settings)
