"""Moving to another broker of a ``;``-separated ``BROKER_URL`` when the connection to one is lost.

aio-pika's robust connection reconnects, and restores its channels, exchanges, queues, bindings and consumers, but
always to the URL it was made with. ``FailoverConnection`` keeps that machinery and changes only where the next
attempt goes: aio-pika reports every loss and every failed attempt to ``_on_connection_close`` before it waits
``reconnect_interval`` and tries ``self.url`` again, so that is where the URL moves to the next broker of the list
(round robin). No second reconnect loop, and the restore on the new broker is aio-pika's own.

``fence.failover_problems`` checks the private names this relies on; on a mismatch ``connection`` falls back to the
plain robust connection (back to the same broker) with one warning.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from aio_pika import RobustConnection
from yarl import URL

from ...config import redact_url

__all__ = ["FailoverConnection", "shown"]


class FailoverConnection(RobustConnection):
    """A robust connection over ``brokers`` (raw URLs, in order), connected first to ``url``, one of them."""

    def __init__(self, url: URL, loop: asyncio.AbstractEventLoop | None = None, *, brokers: Sequence[str] = (),
                 **kwargs: Any) -> None:
        super().__init__(url, loop=loop, **kwargs)
        self.brokers = [URL(broker) for broker in brokers] or [self.url]
        self._at = self.brokers.index(self.url) if self.url in self.brokers else 0

    @property
    def broker(self) -> str:
        """The broker this connection is on, or tries next, with its password hidden."""
        return redact_url(shown(self.url)) or shown(self.url)

    async def _on_connection_close(self, closing: asyncio.Future[Any]) -> None:
        """A loss, or a failed attempt: the next attempt goes to the next broker."""
        if len(self.brokers) > 1 and not (self._close_called or self.is_closed):
            self._at = (self._at + 1) % len(self.brokers)
            self.url = self.brokers[self._at]
        await super()._on_connection_close(closing)


def shown(url: URL | str) -> str:
    """``url`` as logs show it: without the ``name`` parameter ``connection.named`` adds for the broker's eyes."""
    url = URL(str(url))
    return str(url.without_query_params("name")) if "name" in url.query else str(url)
