"""Consumers the broker cancels come back.

RabbitMQ cancels a consumer by itself (``basic.cancel`` from the broker) when its queue is deleted, when a delivery
on a quorum queue outlives ``consumer_timeout`` on RabbitMQ 4.3+ (which cancels the consumer there instead of
closing the channel), and in some cluster events. aiormq (6.9) only drops such a consumer from its table, so a
worker would stop taking that queue's messages for good while looking healthy. ``aiormq_fixes`` calls ``notify``
with the consumer's tag; the ``Comeback`` listening to it declares the queue again and consumes it again on the
same channel. This module imports nothing private, so both paths (``fast`` and ``public``) can use it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from .errors import describe

__all__ = ["Comeback", "Superseded", "forget", "listen", "notify"]

log = logging.getLogger("otter.amqp")

_listeners: dict[str, Callable[[Any], None]] = {}


def listen(tag: str, callback: Callable[[Any], None]) -> None:
    """Call ``callback(aiormq_channel)`` when the broker cancels the consumer ``tag``."""
    _listeners[tag] = callback


def forget(tag: str) -> None:
    """Before cancelling ``tag`` ourselves: a cancel from the broker crossing ours is then nobody's business."""
    _listeners.pop(tag, None)


def notify(tag: str, channel: Any) -> bool:
    """The broker cancelled the consumer ``tag`` on the aiormq ``channel``; True if an Otter consumer listened."""
    callback = _listeners.get(tag)
    if callback is None:
        return False
    callback(channel)
    return True


class Superseded(Exception):
    """The channel re-opened (or is re-opening) since the cancel: the robust channel's restore consumes again."""


class Comeback:
    """Declare a cancelled consumer's queue again and consume it again: once at once, then every ``interval``
    seconds while that fails (its reason logged once), until it works, the channel re-opens (which restores the
    consumer by itself) or ``stop``. ``restore(channel)`` does the work for the aiormq channel the cancel came on
    and raises ``Superseded`` when that channel is no longer the one in use."""

    def __init__(self, queue: str, restore: Callable[[Any], Awaitable[None]], interval: float,
                 on_active: Callable[[bool], None]) -> None:
        self._queue, self._restore, self._interval, self._on_active = queue, restore, interval, on_active
        self._task: asyncio.Task[None] | None = None
        self._stopped = False

    def on_cancel(self, channel: Any) -> None:
        if self._stopped or (self._task is not None and not self._task.done()):
            return
        log.warning(
            "the broker cancelled the consumer of queue %r: the queue was deleted, or (RabbitMQ 4.3+ quorum queues) "
            "a delivery outlived the consumer timeout - raise consumer_timeout on the broker or CONSUMER_TIMEOUT; "
            "declaring the queue again and consuming it again", self._queue,
        )
        self._on_active(False)
        self._task = asyncio.ensure_future(self._run(channel))

    def stop(self) -> None:
        """The worker is stopping: consume nothing again."""
        self._stopped = True
        if self._task is not None:
            self._task.cancel()

    async def _run(self, channel: Any) -> None:
        reported = False
        while not self._stopped:
            try:
                await self._restore(channel)
            except Superseded:
                return
            except Exception as exc:
                if not reported:
                    reported = True
                    log.error("could not consume queue %r again after the broker cancelled its consumer: %s; "
                              "trying again every %g s", self._queue, describe(exc), self._interval)
            else:
                self._on_active(True)
                log.info("consuming queue %r again", self._queue)
                return
            await asyncio.sleep(self._interval)
