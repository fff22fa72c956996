"""The live part of the dashboard: one discovery round per refresh, shared by every open page.

Pages ask ``current()``; the first ask after ``interval`` seconds runs a discovery round, and the others (every
page open at that moment) get its result, so ten open tabs cost the services one round a second, and none
costs nothing. The rounds share one broker connection, kept open while the dashboard runs.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import OtterError
from ..logs import redact
from .fleet import Fleet
from .rates import RateTracker, ServiceRow

__all__ = ["Monitor", "Overview"]


@dataclass(frozen=True)
class Overview:
    """The services as one discovery round saw them, or the reason it could not (passwords masked)."""

    services: tuple[ServiceRow, ...]
    taken_at: float  # time.time() of the round
    error: str | None = None


class Monitor:
    def __init__(self, url: str, config: Mapping[str, Any], *, interval: float, timeout: float) -> None:
        self.url, self.config = url, config
        self._fleet = Fleet(url, config)
        self.interval, self.timeout = interval, timeout
        self._tracker = RateTracker()
        self._lock = asyncio.Lock()
        self._latest: Overview | None = None
        self._taken = 0.0  # time.monotonic() of the latest round

    async def current(self) -> Overview:
        """The latest round's overview, running a new round when the latest is older than ``interval``."""
        async with self._lock:
            if self._latest is None or time.monotonic() - self._taken >= self.interval * 0.9:
                self._latest = await self._round()
            return self._latest

    async def _round(self) -> Overview:
        try:
            replicas = await self._fleet.replicas(self.timeout)
        except (OtterError, OSError) as exc:
            self._taken = time.monotonic()
            return Overview((), time.time(), redact(f"{type(exc).__name__}: {exc}"))
        self._taken = time.monotonic()
        return Overview(self._tracker.update(replicas, self._taken), time.time())

    async def close(self) -> None:
        """Close the discovery connection (the dashboard is stopping)."""
        await self._fleet.close()
