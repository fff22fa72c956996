"""The one send path: every publish (task, broadcast, RPC request, reply, retry, dead letter, replay) goes through
``Sender``, over an ``Outlet`` that is either the fast path's or aio-pika's public one (``fence`` chooses).

A publish is queued at once when its outlet can (no task, no wait: the hot path), else it waits for its channel in a
task of its own. Either way the sender waits for whichever comes first: the publish (and, on a confirming channel,
its confirm), the loss of the connection (``abandon_all``: a publish on a dead connection may never finish, so it is
abandoned and the caller told, or for tasks sent again) or the deadline.
"""

from __future__ import annotations

import abc
import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel

from ...errors import BrokerUnavailable, ConfigurationError, OtterError
from .errors import REFUSALS, describe, translated

__all__ = ["Fields", "Outlet", "Prepare", "Sender"]

log = logging.getLogger("otter.amqp")

# The publish's ``mandatory`` flag and its properties, by the names ``frames.encode`` takes (``expiration`` in
# milliseconds, as a string).
Fields = dict[str, Any]
# Run before the publish, in its task (e.g. declare the queue it goes to); publishes with one are never queued at once.
Prepare = Callable[[], Awaitable[None]]


class Outlet(abc.ABC):
    """One robust channel's way out, confirming or not (as the channel was opened).

    ``restoring`` is true from the channel's close until aio-pika has re-opened it and declared its exchanges again.
    In between, the new channel already reports itself open, and a publish to an exchange not yet declared again
    would make the broker close it once more."""

    __slots__ = ("channel", "restoring")

    def __init__(self, channel: AbstractChannel) -> None:
        self.channel = channel
        self.restoring = False
        channel.close_callbacks.add(self._closed)
        channel.reopen_callbacks.add(self._reopened)  # type: ignore[attr-defined]

    def _closed(self, _channel: object, _exc: object) -> None:
        self.restoring = True

    def _reopened(self, _channel: object) -> None:
        self.restoring = False

    @abc.abstractmethod
    def now(self, exchange: str, routing_key: str, body: bytes, fields: Fields) -> asyncio.Future[Any] | bool:
        """Queue the publish without awaiting anything: True when queued on a channel without confirms, the future
        of its confirm on a confirming one; False when it must wait its turn in ``publish``."""

    @abc.abstractmethod
    async def publish(self, exchange: str, routing_key: str, body: bytes, fields: Fields) -> None:
        """Publish on the open channel; on a confirming one, return once the broker confirmed it (a return of a
        ``mandatory`` publish raises aiormq's ``PublishError``, a nack its ``DeliveryError``)."""

    async def queue(self, exchange: str, routing_key: str, body: bytes, fields: Fields) -> asyncio.Future[Any] | None:
        """Queue the publish once the channel can take it, and return its confirm's future without waiting for it;
        None when this outlet cannot (then ``publish`` it)."""
        return None


class Sender:
    """Sends through outlets and keeps every publish it waits on, so that a lost connection abandons them all."""

    def __init__(self, url: str, publish_timeout: float) -> None:
        self.url = url
        self.publish_timeout = publish_timeout
        self.closing = False
        # Every publish in flight, with the future its sender waits on. (One registry rather than a callback per
        # send on a "lost" future: removing a callback is linear in the number registered, ~13 µs per send with
        # 1,000 tasks in flight.)
        self._sending: dict[asyncio.Future[Any], asyncio.Future[object]] = {}  # a task, or a confirm's future
        self._retrying = 0  # sends between their first failed attempt and their end: one warning for them all

    async def send(
        self, outlet: Outlet, exchange: str, routing_key: str, body: bytes, fields: Fields, *, timeout: float,
        prepare: Prepare | None = None,
    ) -> None:
        """Publish once; raise ``BrokerUnavailable`` if the connection is lost first, ``asyncio.TimeoutError`` after
        ``timeout`` seconds (then the publish is left to finish: cancelling aiormq half-way through a publish or a
        declare on a live channel desynchronises the channel), or what the publish raised."""
        sending = self.start(outlet, exchange, routing_key, body, fields, timeout=timeout, prepare=prepare)
        if sending is not None:
            await self.settle(sending, timeout)

    async def send_once(
        self, outlet: Outlet, exchange: str, routing_key: str, body: bytes, fields: Fields, *, action: str, late: str,
    ) -> None:
        """``send`` within ``publish_timeout``, at most once, its errors translated; ``BrokerUnavailable`` saying
        ``late`` when the publish (or its confirm) did not come in time."""
        with translated(action):
            try:
                await self.send(outlet, exchange, routing_key, body, fields, timeout=self.publish_timeout)
            except asyncio.TimeoutError:
                raise BrokerUnavailable(f"could not {action}: {late}") from None

    def start(
        self, outlet: Outlet, exchange: str, routing_key: str, body: bytes, fields: Fields, *, timeout: float,
        prepare: Prepare | None = None, expires_at: float | None = None,
    ) -> asyncio.Future[Any] | None:
        """Queue the publish now, or start a task that waits for the channel (up to ``timeout``) and publishes.
        None when nothing is left to wait for; else the confirm's future or the task, for ``settle``.
        With ``expires_at`` (loop time), the publish carries what is left of it as its expiration, and is dropped
        if nothing is left by the time its channel is open."""
        if expires_at is not None:
            fields["expiration"] = _expiration(expires_at)
        sending = False if prepare is not None else outlet.now(exchange, routing_key, body, fields)
        if sending is True:
            return None
        if sending is False:
            sending = asyncio.get_running_loop().create_task(
                _when_open(outlet, exchange, routing_key, body, fields, timeout, prepare, expires_at)
            )
        return sending

    def track(self, sending: asyncio.Future[Any]) -> asyncio.Future[object]:
        """Count ``sending`` (from ``start``) among the publishes in flight from now on, so that a lost connection
        abandons it; the future returned says how it ended."""
        settled: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        self._sending[sending] = settled
        sending.add_done_callback(self._sent)
        return settled

    async def settle(self, sending: asyncio.Future[Any], timeout: float) -> None:
        """Wait for ``sending`` (from ``start``) to finish, the connection to be lost or ``timeout`` seconds."""
        settled = self.track(sending)
        timer = asyncio.get_running_loop().call_later(max(timeout, 0.001), _settle, settled, _EXPIRED)
        try:
            why = await settled
        finally:
            timer.cancel()
        if why is _LOST:
            raise BrokerUnavailable("the connection was lost before the broker confirmed it")
        if why is _EXPIRED:
            raise asyncio.TimeoutError
        sending.result()

    async def send_until_confirmed(
        self, outlet: Outlet, exchange: str, routing_key: str, body: bytes, fields: Fields, *, action: str,
        prepare: Callable[[], Prepare | None] = lambda: None,
    ) -> None:
        """``send`` on a confirming outlet until it succeeds or ``publish_timeout`` passes.

        Only outages are retried: a lost connection, a channel being re-opened, a confirm that did not come. A
        refusal (access refused, precondition failed: ``ConfigurationError``) is raised at once, and so is the
        broker's return of a ``mandatory`` publish (aiormq's ``PublishError``, for the caller to translate).
        At-least-once: when the connection drops after the broker took a message but before its confirm arrived,
        it is sent again. ``prepare`` is asked before each try (the queue may have to be declared again).
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.publish_timeout
        attempt = 0
        pause: float | None = None
        try:
            while True:
                attempt += 1
                pause = await self._try(outlet, exchange, routing_key, body, fields, action, deadline, prepare,
                                        attempt)
                if pause is None:
                    return
                await asyncio.sleep(pause)
        finally:
            if attempt > 1 or pause is not None:  # counted in _retrying since its first failure (even if cancelled
                self._retrying -= 1  # in the pause after it)

    async def _try(
        self, outlet: Outlet, exchange: str, routing_key: str, body: bytes, fields: Fields, action: str,
        deadline: float, prepare: Callable[[], Prepare | None], attempt: int,
    ) -> float | None:
        """One attempt of ``send_until_confirmed``: None once sent, else the pause before the next, or raise. The
        first send that has to retry warns; those that fail while it does (a lost connection fails every send in
        flight at once) say nothing more, nor does any but the last to go through."""
        loop = asyncio.get_running_loop()
        try:
            await self._attempt(outlet, exchange, routing_key, body, fields, action, deadline, prepare())
        except asyncio.TimeoutError:
            problem = "no connection to the broker, or no confirm from it"
        except BrokerUnavailable as exc:
            problem = str(exc)
        else:
            if attempt > 1 and self._retrying == 1:
                log.info("%s: done after %d attempts; no send is retrying now", action, attempt)
            return None
        if self.closing:
            raise BrokerUnavailable(f"could not {action}: the connection was closed")
        pause: float = min(0.05 * 2.0**attempt, 1.0)
        if loop.time() + pause >= deadline:
            raise BrokerUnavailable(
                f"could not {action} within {self.publish_timeout:g} s (PUBLISH_TIMEOUT): {problem}. The "
                f"broker did not confirm it; send it again once the broker at {self.url} is back"
            )
        if attempt == 1:
            self._retrying += 1
            if self._retrying == 1:
                log.warning("%s: %s; retrying for up to %g s (as does any other send that fails meanwhile)",
                            action, problem, self.publish_timeout)
        return pause

    async def _attempt(
        self, outlet: Outlet, exchange: str, routing_key: str, body: bytes, fields: Fields, action: str,
        deadline: float, prepare: Prepare | None,
    ) -> None:
        timeout = max(deadline - asyncio.get_running_loop().time(), 0.001)
        try:
            await self.send(outlet, exchange, routing_key, body, fields, timeout=timeout, prepare=prepare)
        except (OtterError, asyncio.TimeoutError, aio_pika.exceptions.PublishError):
            raise
        except REFUSALS as exc:
            raise ConfigurationError(f"the broker refused to {action}: {describe(exc)}") from None
        except (aiormq.exceptions.AMQPError, ConnectionError, OSError, RuntimeError) as exc:
            raise BrokerUnavailable(f"the connection failed ({describe(exc)})") from None

    def abandon_all(self) -> None:
        """The connection is lost: every publish in flight is given up (its sender raises ``BrokerUnavailable``)."""
        for sending, settled in list(self._sending.items()):
            _settle(settled, _LOST)
            if isinstance(sending, asyncio.Task):  # a confirm's future is aiormq's, which fails it on closing
                sending.cancel()

    async def close(self) -> None:
        self.closing = True
        tasks = {sending for sending in self._sending if isinstance(sending, asyncio.Task)}
        self.abandon_all()
        if tasks:
            await asyncio.wait(tasks, timeout=1.0)

    def _sent(self, sending: asyncio.Future[Any]) -> None:
        settled = self._sending.pop(sending, None)
        if not sending.cancelled():
            sending.exception()  # seen, so asyncio never reports it as lost when nobody waits any more
        if settled is not None:
            _settle(settled, _SENT)


async def _when_open(
    outlet: Outlet, exchange: str, routing_key: str, body: bytes, fields: Fields, timeout: float,
    prepare: Prepare | None, expires_at: float | None,
) -> None:
    channel = outlet.channel
    if channel.is_closed or outlet.restoring:  # being re-opened: wait until its exchanges are declared again
        await asyncio.wait_for(channel.ready(), timeout)  # type: ignore[attr-defined]
    if prepare is not None:
        await prepare()
    if expires_at is not None:
        if asyncio.get_running_loop().time() >= expires_at:
            return  # nobody waits for it any more
        fields["expiration"] = _expiration(expires_at)
    await outlet.publish(exchange, routing_key, body, fields)


def _expiration(expires_at: float) -> str:
    """What is left until ``expires_at``, in whole milliseconds (at least one), as AMQP's expiration property."""
    return str(max(int((expires_at - asyncio.get_running_loop().time()) * 1000), 1))


# How a publish in flight ended for the sender waiting on it (see ``Sender.settle``).
_SENT, _LOST, _EXPIRED = object(), object(), object()


def _settle(settled: asyncio.Future[object], why: object) -> None:
    if not settled.done():
        settled.set_result(why)
