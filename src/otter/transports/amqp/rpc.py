"""RPC correlation: the calls waiting for replies, matched by correlation id on one reply queue per connection.

The reply queue is exclusive, named and bound to the message exchange the way kiwipy binds its own: an Otter server
replies through the default exchange, a kiwipy server through the message exchange, and both reach it. (RabbitMQ's
direct reply-to would only hear the first.) A call ends with whichever comes first: its reply, the broker's return
of an unroutable request, a lost connection, or its deadline.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import aio_pika

from ... import protocol
from ...errors import BrokerUnavailable, DeadlineExceeded, Unroutable
from ..base import Delivery
from .errors import describe
from .publishing import Outlet, Sender

__all__ = ["Calls"]


class Calls:
    """The calls of one transport waiting for their replies on ``reply_to``."""

    def __init__(self, reply_to: str) -> None:
        self.reply_to = reply_to
        self.pending: dict[str, asyncio.Future[Delivery]] = {}

    async def call(
        self, sender: Sender, outlet: Outlet, exchange: str, name: str, body: bytes, *, correlation_id: str,
        timeout: float, headers: Mapping[str, Any],
    ) -> Delivery:
        """Send the request once (queued at once when the connection is open and nothing waits ahead, else after
        waiting for the connection within the call's deadline, and not at all if the deadline passed meanwhile),
        with what is left of the deadline as its expiration; wait for the reply."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Delivery] = loop.create_future()
        self.pending[correlation_id] = future
        sending: asyncio.Future[Any] | None = None
        timer = loop.call_later(timeout, lambda: _expire(future, name, timeout, sending))
        deadline = loop.time() + timeout
        try:
            fields = {
                "mandatory": True, "content_type": protocol.CONTENT_TYPE, "headers": headers,
                "correlation_id": correlation_id, "reply_to": self.reply_to, "message_id": correlation_id,
            }
            # The wait for the connection outlasts the deadline a little, so that ``_expire`` tells the caller.
            sending = sender.start(outlet, exchange, protocol.rpc_routing_key(name), body, fields,
                                   timeout=timeout + 0.5, expires_at=deadline)
            if sending is not None:  # waits for the connection: abandoned at once if it is lost (never sent late)
                sender.track(sending)
                sending.add_done_callback(lambda done: _fail_on_publish_error(done, future, name))
            return await future
        finally:
            timer.cancel()
            self.pending.pop(correlation_id, None)

    async def on_reply(self, delivery: Delivery) -> None:
        future = self.pending.pop(delivery.correlation_id or "", None)
        if future is not None and not future.done():
            future.set_result(delivery)

    def on_return(self, correlation_id: str | None, routing_key: str) -> None:
        """The broker returned a ``mandatory`` RPC request: no queue is bound to its name."""
        future = self.pending.get(correlation_id or "")
        if future is not None and not future.done():
            future.set_exception(_unroutable(routing_key))

    def fail_all(self, reason: str) -> int:
        """Fail every call still waiting with ``BrokerUnavailable(reason)``; returns how many there were."""
        waiting = [future for future in self.pending.values() if not future.done()]
        for future in waiting:
            future.set_exception(BrokerUnavailable(reason))
        return len(waiting)


def _unroutable(routing_key: str) -> Unroutable:
    name = routing_key.removeprefix(protocol.RPC_PREFIX + ".")
    return Unroutable(f"nobody serves the RPC {name!r}")


def _fail_on_publish_error(sending: asyncio.Future[Any], future: asyncio.Future[Delivery], name: str) -> None:
    if sending.cancelled():
        return
    exc = sending.exception()  # always retrieved, so asyncio never reports it as lost
    if exc is None or future.done():
        return
    if isinstance(exc, aio_pika.exceptions.PublishError):  # the public path: a return raises on the confirm
        future.set_exception(_unroutable(protocol.rpc_routing_key(name)))
    else:
        future.set_exception(BrokerUnavailable(f"could not send the RPC {name!r}: {describe(exc)}"))


def _expire(
    future: asyncio.Future[Delivery], name: str, timeout: float, sending: asyncio.Future[Any] | None
) -> None:
    if future.done():
        return
    if sending is not None and not sending.done():
        future.set_exception(BrokerUnavailable(
            f"could not send the RPC {name!r} within its {timeout:g} s timeout: the broker connection is down"
        ))
    else:
        future.set_exception(DeadlineExceeded(f"no reply to the RPC {name!r} within {timeout:g} s"))
