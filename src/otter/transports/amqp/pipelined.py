"""Pipelined publishes (``Transport.start_task``/``start_broadcast``, the sync ``Client``'s sends): queued on the
confirming channel without a task or a coroutine each, settled from the broker's confirm, and kept in order.

Three ways a send goes, in the order they were started:
- at once (``Outlet.now``) when nothing waits ahead of it and aiormq's write queue has room;
- else behind the sends already waiting, fed in order by one coroutine (``_feed``) as the write queue drains
  (aiormq's holds 10 frames: a burst fills it at once, and a task per waiting send cost more than the send);
- a task's first send to a queue declares it (the full path); the sends to that queue started meanwhile follow it.
A send that cannot be queued (the channel is being re-opened) or whose confirm failed for any reason but a return
goes the full path, ``fallback``: tasks retried until ``PUBLISH_TIMEOUT``, broadcasts sent once.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable
from typing import Any

from .publishing import Fields, Outlet

__all__ = ["Pipelined"]

# What to do with a send's confirm, and how to send it the full way instead.
Settle = Callable[[asyncio.Future[Any]], None]
Fallback = Callable[[], None]


class Pipelined:
    """The in-order queue of one confirming outlet's pipelined sends; see the module docstring."""

    def __init__(self, outlet: Callable[[], Outlet]) -> None:
        self._outlet = outlet
        self._waiting: collections.deque[tuple[str, str, bytes, Fields, Settle, Fallback]] = collections.deque()
        self._feeder: asyncio.Task[None] | None = None
        # Sends to a queue whose first send, which declares it, is under way: they follow it.
        self.behind: dict[str, collections.deque[Callable[[], None]]] = {}

    def send(self, exchange: str, routing_key: str, body: bytes, fields: Fields, settle: Settle,
             fallback: Fallback) -> None:
        if self._feeder is None:
            outlet = self._outlet()
            if outlet.channel.is_closed:  # being re-opened: the full path waits for it, up to PUBLISH_TIMEOUT
                fallback()
                return
            confirm = outlet.now(exchange, routing_key, body, fields)
            if not isinstance(confirm, bool):
                settle(confirm)
                return
        self._waiting.append((exchange, routing_key, body, fields, settle, fallback))
        if self._feeder is None:
            self._feeder = asyncio.get_running_loop().create_task(self._feed())

    def follow(self, queue: str, first: Callable[[Callable[[], None]], None]) -> None:
        """Run ``first(release)`` now: it sends the queue's first message and calls ``release`` when that ended,
        which starts the sends queued behind it with ``after``, in order."""
        self.behind[queue] = collections.deque()

        def release() -> None:
            for later in self.behind.pop(queue, ()):
                later()

        first(release)

    def after(self, queue: str, start: Callable[[], None]) -> bool:
        """Queue ``start`` behind the first send to ``queue`` if one is under way (True), else leave it (False)."""
        behind = self.behind.get(queue)
        if behind is None:
            return False
        behind.append(start)
        return True

    def abandon(self) -> None:
        """The connection is lost (or closing): a feeder waiting for room in a write queue nobody drains any more
        would wait for ever, so the sends waiting go the full path, which waits for the next connection."""
        if self._feeder is not None:
            self._feeder.cancel()

    async def _feed(self) -> None:
        """Queue the waiting sends in order, each as soon as the write queue has room (one coroutine for all)."""
        try:
            while self._waiting:
                exchange, routing_key, body, fields, settle, fallback = self._waiting.popleft()
                outlet = self._outlet()
                if outlet.channel.is_closed:
                    fallback()
                    continue
                try:
                    confirm = await outlet.queue(exchange, routing_key, body, fields)
                except asyncio.CancelledError:  # ``abandon``: this one too goes the full path
                    fallback()
                    raise
                except Exception:  # the channel closed or is being re-opened: the full path waits for it
                    confirm = None
                if confirm is None:
                    fallback()
                else:
                    settle(confirm)
        finally:
            self._feeder = None
            for *_, fallback in self._drain():  # cancelled (the connection closes): not dropped
                fallback()

    def _drain(self) -> list[tuple[str, str, bytes, Fields, Settle, Fallback]]:
        waiting, self._waiting = list(self._waiting), collections.deque()
        return waiting

