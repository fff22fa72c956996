"""The fast path, used when ``fence`` finds the versions it was written for: messages go around aio-pika, whose
per-message objects were the largest cost in the profiles.

Publishes are encoded by ``frames`` and queued on the aiormq channel under each robust channel (at once when
nothing waits ahead); consumers run on that aiormq channel, so a delivery becomes an ``AmqpDelivery`` directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import aiormq
from aio_pika.abc import AbstractChannel, AbstractQueue
from aiormq.abc import DeliveredMessage

from ..base import Delivery, OnDelivery, Subscription
from . import cancels, frames
from .errors import describe, translated
from .public import CANCEL_TIMEOUT
from .publishing import Fields, Outlet

__all__ = ["AmqpDelivery", "AmqpSubscription", "FastOutlet", "watch_returns"]

log = logging.getLogger("otter.amqp")


class FastOutlet(Outlet):
    """Publishes written by ``frames`` on the aiormq channel last seen under the robust one."""

    __slots__ = ("confirming", "underlay")

    def __init__(self, channel: AbstractChannel, underlay: Any) -> None:
        super().__init__(channel)
        self.underlay = underlay
        self.confirming = bool(underlay.publisher_confirms)

    def now(self, exchange: str, routing_key: str, body: bytes, fields: Fields) -> asyncio.Future[Any] | bool:
        underlay = self.underlay
        if underlay.is_closed or self.channel.is_closed:
            return False
        # Between the broker's channel.close and aiormq marking the channel closed, aiormq has already dropped it
        # from its connection: a frame sent on it then would make the broker close the whole connection.
        if underlay.connection.channels.get(underlay.number) is not underlay:
            return False
        payload = frames.encode(underlay.number, underlay.max_content_size, exchange, routing_key, body, **fields)
        if not self.confirming:
            return frames.queue_now(underlay, payload)
        confirmation = frames.publish_now(underlay, payload, fields["message_id"])
        return False if confirmation is None else confirmation

    async def publish(self, exchange: str, routing_key: str, body: bytes, fields: Fields) -> None:
        underlay = await self._open_underlay()
        payload = frames.encode(underlay.number, underlay.max_content_size, exchange, routing_key, body, **fields)
        await frames.publish(underlay, payload, fields.get("message_id", ""))

    async def queue(self, exchange: str, routing_key: str, body: bytes, fields: Fields) -> asyncio.Future[Any] | None:
        if self.restoring:  # the full path waits for the exchanges to be declared again
            raise aiormq.exceptions.ChannelInvalidStateError("the channel is being re-opened")
        underlay = await self._open_underlay()
        if underlay.connection.channels.get(underlay.number) is not underlay:  # closing: see ``now``
            raise aiormq.exceptions.ChannelInvalidStateError("the channel is closing")
        payload = frames.encode(underlay.number, underlay.max_content_size, exchange, routing_key, body, **fields)
        return await frames.enqueue(underlay, payload, fields.get("message_id", ""))

    async def _open_underlay(self) -> Any:
        underlay: Any = await self.channel.get_underlay_channel()
        if underlay.is_closed:  # frames queued on a closed aiormq channel are dropped without a word
            raise aiormq.exceptions.ChannelInvalidStateError("the channel closed before the publish")
        self.underlay = underlay
        return underlay


async def watch_returns(channel: AbstractChannel, on_return: Callable[[str | None, str], None]) -> None:
    """Call ``on_return(correlation_id, routing_key)`` for each message the broker returns on ``channel``, on
    whichever aiormq channel is under it. aio-pika (9.5) forwards returns to a robust channel's
    ``return_callbacks`` only from the channel it first opened: once it re-opens (a lost connection, another
    broker), returns went nowhere and a call to an unserved name waited for its whole deadline."""

    def returned(message: DeliveredMessage) -> None:
        on_return(message.header.properties.correlation_id, getattr(message.delivery, "routing_key", "") or "")

    async def reopened(_channel: Any) -> None:
        (await channel.get_underlay_channel()).on_return_callbacks.add(returned)

    await reopened(channel)
    channel.reopen_callbacks.add(reopened)  # type: ignore[attr-defined]


class AmqpDelivery(Delivery):
    """A message as aiormq delivered it: aio-pika's ``IncomingMessage`` would cost ~10 µs more a message to build."""

    __slots__ = ("_channel", "_tag")

    def __init__(self, message: DeliveredMessage, queue: str) -> None:
        properties = message.header.properties
        super().__init__(
            message.body,
            queue=queue,
            content_type=properties.content_type,
            headers=properties.headers,
            correlation_id=properties.correlation_id,
            reply_to=properties.reply_to,
            redelivered=bool(getattr(message.delivery, "redelivered", False)),
            message_id=properties.message_id,
            priority=properties.priority,
        )
        self._channel = message.channel
        self._tag: int = getattr(message.delivery, "delivery_tag", 0) or 0

    @property
    def orphaned(self) -> bool:
        return bool(self._channel.is_closed)

    async def ack(self) -> None:
        """Queue the ack frame without waiting for it to drain to the socket (an ack needs no answer, and a lost
        one only means a redelivery); this saves a future and a wake-up per message."""
        with translated("ack"):
            await self._channel.basic_ack(self._tag, wait=False)

    async def requeue(self) -> None:
        with translated("requeue"):
            await self._channel.basic_nack(self._tag, requeue=True)


class AmqpSubscription(Subscription):
    """A consumer on aio-pika's robust channel, started on the aiormq channel under it (so deliveries skip
    aio-pika's message wrapper and its extra task), started again each time the robust channel re-opens, and after
    the broker cancelled it (``cancels``), once ``declare_again`` has declared its queue again."""

    def __init__(
        self, channel: AbstractChannel, queue: AbstractQueue, on_delivery: OnDelivery,
        *, no_ack: bool, exclusive: bool = False, arguments: Mapping[str, Any] | None = None,
        declare_again: Callable[[], Awaitable[None]], retry_interval: float,
    ) -> None:
        self._channel, self._queue, self._no_ack, self._exclusive = channel, queue, no_ack, exclusive
        self._arguments = dict(arguments or {})
        self._declare_again = declare_again
        name = self.queue = queue.name
        handling = set[asyncio.Future[None]]()

        async def on_message(message: DeliveredMessage) -> None:
            await on_delivery(AmqpDelivery(message, name))

        async def on_message_detached(message: DeliveredMessage) -> None:
            # aiormq runs this in a task of the channel, cancelled when the channel closes: a handler that is still
            # running then (the broker closed the channel for an ack timeout, or the connection was lost) must end
            # and have its outcome carried out on the redelivery, so it runs in a task of our own.
            task = asyncio.ensure_future(on_delivery(AmqpDelivery(message, name)))
            handling.add(task)
            task.add_done_callback(handling.discard)

        self._on_message = on_message if no_ack else on_message_detached
        self._tag = f"otter.{uuid.uuid4().hex}"
        self._cancelled = False
        self._comeback = cancels.Comeback(name, self._consume_again, retry_interval, self._set_active)

    async def start(self) -> None:
        cancels.listen(self._tag, self._comeback.on_cancel)
        try:
            await self._consume()
        except BaseException:  # refused (an exclusive consumer): nothing for the broker to cancel, nothing to keep
            cancels.forget(self._tag)
            raise
        self._channel.reopen_callbacks.add(self._restart)  # type: ignore[attr-defined]

    async def cancel(self) -> None:
        """Stop the consumer. During an outage there is nothing to cancel (the broker dropped the consumer with the
        connection), and waiting for the channel to come back would hold a stopping worker until the broker does."""
        self._cancelled = True
        cancels.forget(self._tag)
        self._comeback.stop()
        self._channel.reopen_callbacks.discard(self._restart)  # type: ignore[attr-defined]
        if self._channel.is_closed:
            return
        with contextlib.suppress(Exception):
            underlay = await asyncio.wait_for(self._channel.get_underlay_channel(), CANCEL_TIMEOUT)
            await asyncio.wait_for(underlay.basic_cancel(self._tag), CANCEL_TIMEOUT)

    async def _consume(self) -> None:
        underlay = await self._channel.get_underlay_channel()
        await underlay.basic_consume(self._queue.name, self._on_message, no_ack=self._no_ack, consumer_tag=self._tag,
                                     exclusive=self._exclusive, arguments=self._arguments)

    async def _consume_again(self, cancelled_on: Any) -> None:
        """After the broker cancelled the consumer on the aiormq channel ``cancelled_on``, unless that channel has
        been replaced since (whose re-opening declared the queue and consumed again by itself)."""
        if self._cancelled or await self._channel.get_underlay_channel() is not cancelled_on:
            raise cancels.Superseded
        await self._declare_again()
        if self._cancelled or await self._channel.get_underlay_channel() is not cancelled_on:
            raise cancels.Superseded
        await self._consume()

    def _set_active(self, active: bool) -> None:
        self.active = active

    async def _restart(self, _channel: Any) -> None:
        """After aio-pika re-declared the queue on the re-opened channel: consume it again."""
        if self._cancelled:
            return
        try:
            await self._consume()
        except Exception as exc:
            self.active = False  # the worker is not ready (/readyz) until a later reconnection restores it
            log.error("could not consume %r again after reconnecting: %s", self._queue.name, describe(exc))
        else:
            self.active = True
