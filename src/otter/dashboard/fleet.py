"""The running services, as the dashboard sees them: the one module that reads Otter's discovery.

``otter.services`` asks every running worker for its state with Otter's control messages; the rest of the dashboard
takes its ``Instance`` (a replica) and ``RouteStats`` from here, so a change in discovery touches one place.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..services import Discovery, Instance, RouteStats

__all__ = ["Fleet", "Instance", "RouteStats"]


class Fleet:
    """Discovery rounds on the control exchange ``config`` names, over one connection kept open between rounds
    (opened on the first round, and again after a round that could not reach the broker)."""

    def __init__(self, url: str, config: Mapping[str, Any]) -> None:
        self._url = url
        self._settings = {key: value for key, value in config.items() if key != "BROKER_URL"}
        self._discovery: Discovery | None = None

    async def replicas(self, timeout: float) -> list[Instance]:
        """Every replica that answered within ``timeout`` seconds."""
        if self._discovery is None:
            self._discovery = Discovery(self._url, **self._settings)
        try:
            return await self._discovery.round(timeout)
        except BaseException:
            await self.close()  # a fresh connection next round, rather than one in an unknown state
            raise

    async def close(self) -> None:
        discovery, self._discovery = self._discovery, None
        if discovery is not None:
            await discovery.close()
