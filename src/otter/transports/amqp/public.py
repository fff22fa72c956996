"""The fallback when ``fence`` finds versions the fast path was not written for: aio-pika's public API only.

``aio_pika.Message`` and ``Exchange.publish`` to send (every publish waits its turn in a task), ``Queue.consume``
and ``IncomingMessage`` to receive (the robust queue consumes again after a reconnect by itself). Slower per
message, and it relies on nothing private of aio-pika, aiormq or pamqp.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractIncomingMessage, AbstractQueue

from ..base import Delivery, OnDelivery, Subscription
from . import cancels
from .errors import translated
from .publishing import Fields, Outlet

__all__ = ["CANCEL_TIMEOUT", "PublicDelivery", "PublicOutlet", "PublicSubscription"]

CANCEL_TIMEOUT = 2.0  # seconds a consumer's cancel may wait on a channel; past it the connection is going anyway


class PublicOutlet(Outlet):
    """``Exchange.publish`` of an ``aio_pika.Message``; on a confirming channel it returns once confirmed."""

    __slots__ = ("_exchanges",)

    def __init__(self, channel: AbstractChannel) -> None:
        super().__init__(channel)
        self._exchanges: dict[str, AbstractExchange] = {"": channel.default_exchange}

    def now(self, exchange: str, routing_key: str, body: bytes, fields: Fields) -> asyncio.Future[Any] | bool:
        return False

    async def publish(self, exchange: str, routing_key: str, body: bytes, fields: Fields) -> None:
        target = self._exchanges.get(exchange)
        if target is None:  # an exchange object without a round trip: the exchange was declared at connect
            target = self._exchanges[exchange] = await self.channel.get_exchange(exchange, ensure=False)
        expiration = fields.get("expiration")
        message = aio_pika.Message(
            body,
            content_type=fields.get("content_type"),
            headers=fields.get("headers"),
            delivery_mode=fields.get("delivery_mode"),
            priority=fields.get("priority"),
            correlation_id=fields.get("correlation_id"),
            reply_to=fields.get("reply_to"),
            expiration=None if expiration is None else int(expiration) / 1000,
            message_id=fields.get("message_id"),
        )
        await target.publish(message, routing_key, mandatory=bool(fields.get("mandatory")))


class PublicDelivery(Delivery):
    """A message as aio-pika delivered it."""

    __slots__ = ("_message",)

    def __init__(self, message: AbstractIncomingMessage, queue: str) -> None:
        super().__init__(
            message.body,
            queue=queue,
            content_type=message.content_type,
            headers=message.headers,
            correlation_id=message.correlation_id,
            reply_to=message.reply_to,
            redelivered=bool(message.redelivered),
            message_id=message.message_id,
            priority=message.priority,
        )
        self._message = message

    @property
    def orphaned(self) -> bool:
        return bool(self._message.channel.is_closed)

    async def ack(self) -> None:
        with translated("ack"):
            await self._message.ack()

    async def requeue(self) -> None:
        with translated("requeue"):
            await self._message.nack(requeue=True)


class PublicSubscription(Subscription):
    """``Queue.consume`` on the robust queue, which aio-pika consumes again after a reconnect; after the broker
    cancelled it (``cancels``, when ``aiormq_fixes`` is applied), consumed again once ``declare_again`` has
    declared its queue again."""

    def __init__(
        self, queue: AbstractQueue, on_delivery: OnDelivery, *, no_ack: bool, exclusive: bool = False,
        arguments: Mapping[str, Any] | None = None, declare_again: Callable[[], Awaitable[None]],
        retry_interval: float,
    ) -> None:
        self._queue, self._no_ack, self._exclusive = queue, no_ack, exclusive
        self._arguments = dict(arguments or {})
        self._declare_again = declare_again
        name = self.queue = queue.name
        handling = set[asyncio.Future[None]]()

        async def on_message(message: AbstractIncomingMessage) -> None:
            # In a task of our own, not the channel's (cancelled when it closes): see ``fast.AmqpSubscription``.
            task = asyncio.ensure_future(on_delivery(PublicDelivery(message, name)))
            handling.add(task)
            task.add_done_callback(handling.discard)

        self._on_message = on_message
        self._tag: str | None = None
        self._comeback = cancels.Comeback(name, self._consume_again, retry_interval, self._set_active)

    async def start(self) -> None:
        tag = f"otter.{uuid.uuid4().hex}"  # our own, so that a cancel from the broker can be told to us at once
        cancels.listen(tag, self._comeback.on_cancel)
        try:
            self._tag = await self._queue.consume(self._on_message, no_ack=self._no_ack, exclusive=self._exclusive,
                                                  arguments=self._arguments, consumer_tag=tag)
        except BaseException:  # refused (an exclusive consumer): nothing for the broker to cancel, nothing to keep
            cancels.forget(tag)
            raise

    async def cancel(self) -> None:
        """Stop the consumer. A closed channel has none left to cancel (the broker dropped it with the channel):
        during an outage, or after a stopping worker closed its connection, as it does before the status responder
        cancels its consumer. Waiting for that channel to come back held every stop on this path for
        ``CANCEL_TIMEOUT``."""
        self._comeback.stop()
        if self._tag is not None:
            tag, self._tag = self._tag, None
            cancels.forget(tag)
            if self._queue.channel.is_closed:
                return
            try:  # bounded: during an outage the channel may not come back before the worker must be gone
                await asyncio.wait_for(self._queue.cancel(tag), CANCEL_TIMEOUT)
            except Exception:  # the channel is gone: nothing left to cancel
                return

    async def _consume_again(self, cancelled_on: Any) -> None:
        """After the broker cancelled the consumer on the aiormq channel ``cancelled_on``, unless that channel has
        been replaced since (aio-pika's restore of the re-opened one consumed again by itself)."""
        channel = self._queue.channel
        if self._tag is None or await channel.get_underlay_channel() is not cancelled_on:
            raise cancels.Superseded
        await self._declare_again()
        if self._tag is None or await channel.get_underlay_channel() is not cancelled_on:
            raise cancels.Superseded
        await self._queue.consume(self._on_message, no_ack=self._no_ack, exclusive=self._exclusive,
                                  arguments=self._arguments, consumer_tag=self._tag)

    def _set_active(self, active: bool) -> None:
        self.active = active
