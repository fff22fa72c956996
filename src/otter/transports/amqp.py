"""RabbitMQ through aio-pika's robust connection, on kiwipy's exchanges and routing keys.

Why aio-pika directly rather than kiwipy's ``RmqCommunicator``: kiwipy gives every RPC subscriber an exclusive
queue (every replica runs every call), acks before decoding and replies on a private queue per publisher. We keep
its wire format and fix those: one shared queue per RPC name, direct reply-to for our own calls, replies through
the default exchange (which also reaches a kiwipy caller's reply queue).

Channels: one without publisher confirms for RPC requests, replies and broadcasts (the fast path; an unroutable
RPC comes back as a basic.return), one with confirms for tasks and dead letters, and one per consumer so each has
its own prefetch. The robust connection re-opens all of them and their consumers after a broker restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aio_pika
import aiormq
from aio_pika import DeliveryMode, ExchangeType, Message
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractIncomingMessage, AbstractQueue
from kiwipy.rmq import defaults as kiwipy_defaults

from .. import protocol
from ..codec import CONTENT_TYPE
from ..config import redact_url
from ..errors import BrokerUnavailable, DeadlineExceeded, OtterError, Unroutable
from .base import Delivery, OnDelivery, Subscription, Topology, Transport

__all__ = ["AmqpTransport"]

log = logging.getLogger("otter.amqp")

DIRECT_REPLY_TO = "amq.rabbitmq.reply-to"
# kiwipy declares task queues with exactly these arguments; a different set would make the broker refuse the
# second declaration (PRECONDITION_FAILED), so Otter dead-letters by publishing, not with x-dead-letter-exchange.
TASK_QUEUE_ARGUMENTS = {"x-message-ttl": kiwipy_defaults.TASK_MESSAGE_TTL}


class AmqpDelivery(Delivery):
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
        )
        self._message = message

    async def ack(self) -> None:
        with _translated("ack"):
            await self._message.ack()

    async def requeue(self) -> None:
        with _translated("requeue"):
            await self._message.nack(requeue=True)


class AmqpSubscription(Subscription):
    def __init__(self, queue: AbstractQueue, tag: str, channel: AbstractChannel) -> None:
        self._queue, self._tag, self._channel = queue, tag, channel

    async def cancel(self) -> None:
        with contextlib.suppress(Exception):
            await self._queue.cancel(self._tag)


class AmqpTransport(Transport):
    """``amqp://`` and ``amqps://``; ``ssl_options`` are passed to aio-pika for TLS."""

    def __init__(
        self,
        url: str,
        topology: Topology,
        *,
        connect_timeout: float = 5.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._raw_url = url
        self.url = redact_url(url) or url
        self.topology = topology
        self._connect_timeout = connect_timeout
        self._ssl_context = ssl_context
        self._connection: aio_pika.abc.AbstractRobustConnection | None = None
        self._channel: AbstractChannel | None = None
        self._confirm_channel: AbstractChannel | None = None
        self._exchange: AbstractExchange | None = None
        self._task_exchange: AbstractExchange | None = None
        self._pending: dict[str, asyncio.Future[Delivery]] = {}
        self._declared_task_queues: set[str] = set()

    async def connect(self) -> None:
        try:
            self._connection = await aio_pika.connect_robust(
                self._raw_url,
                timeout=self._connect_timeout,
                ssl_context=self._ssl_context,
                client_properties={"connection_name": "otter"},
            )
        except (OSError, asyncio.TimeoutError, aiormq.exceptions.AMQPError, ConnectionError) as exc:
            raise BrokerUnavailable(f"cannot connect to RabbitMQ at {self.url}: {_describe(exc)}") from None
        with _translated("open channels"):
            # Confirms on the calling channel are what make an unroutable RPC come back as an error at once.
            self._confirm_channel = await self._connection.channel(publisher_confirms=True, on_return_raises=True)
            self._exchange = await self._confirm_channel.declare_exchange(
                self.topology.message_exchange, ExchangeType.TOPIC
            )
            self._task_exchange = await self._confirm_channel.declare_exchange(
                self.topology.task_exchange, ExchangeType.TOPIC
            )
            reply_queue = await self._confirm_channel.declare_queue(DIRECT_REPLY_TO, passive=True)
            await reply_queue.consume(self._on_reply, no_ack=True)
            self._channel = await self._connection.channel(publisher_confirms=False)

    async def close(self) -> None:
        for future in self._pending.values():
            if not future.done():
                future.set_exception(BrokerUnavailable("the connection was closed before the reply arrived"))
        self._pending.clear()
        if self._connection is not None:
            with contextlib.suppress(Exception):
                await self._connection.close()
            self._connection = None

    # -- sending ------------------------------------------------------------------------------------------------
    async def call(
        self, name: str, body: bytes, *, correlation_id: str, timeout: float, headers: Mapping[str, Any]
    ) -> Delivery:
        assert self._exchange is not None, "call connect() first"
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Delivery] = loop.create_future()
        self._pending[correlation_id] = future
        timer = loop.call_later(timeout, _expire, future, name, timeout)
        try:
            message = Message(
                body,
                content_type=CONTENT_TYPE,
                correlation_id=correlation_id,
                reply_to=DIRECT_REPLY_TO,
                expiration=timeout,
                headers=dict(headers),
            )
            # The confirm (or the return of an unroutable call) is awaited beside the reply, not before it.
            publishing = asyncio.ensure_future(
                self._exchange.publish(message, protocol.rpc_routing_key(name), mandatory=True)
            )
            publishing.add_done_callback(lambda done: _fail_on_publish_error(done, future, name))
            return await future
        finally:
            timer.cancel()
            self._pending.pop(correlation_id, None)

    async def publish_task(
        self, queue: str, body: bytes, *, correlation_id: str, headers: Mapping[str, Any] | None = None
    ) -> None:
        assert self._task_exchange is not None, "call connect() first"
        await self._declare_task_queue(queue)
        message = Message(
            body,
            content_type=CONTENT_TYPE,
            correlation_id=correlation_id,
            delivery_mode=DeliveryMode.PERSISTENT,
            headers=dict(headers or {}),
        )
        with _translated(f"send a task to {queue!r}"):
            try:
                await self._task_exchange.publish(message, queue, mandatory=True)
            except aio_pika.exceptions.DeliveryError as exc:
                raise Unroutable(f"the broker could not route the task to queue {queue!r}: {exc}") from None

    async def publish_broadcast(self, body: bytes) -> None:
        assert self._exchange is not None, "call connect() first"
        message = Message(body, content_type=CONTENT_TYPE, delivery_mode=DeliveryMode.NOT_PERSISTENT)
        with _translated("broadcast"):
            await self._exchange.publish(message, protocol.BROADCAST_ROUTING_KEY, mandatory=False)

    async def reply(self, reply_to: str, body: bytes, *, correlation_id: str | None) -> None:
        assert self._channel is not None, "call connect() first"
        message = Message(body, content_type=CONTENT_TYPE, correlation_id=correlation_id)
        with _translated("reply"):
            await self._channel.default_exchange.publish(message, reply_to, mandatory=False)

    async def dead_letter(self, delivery: Delivery, headers: Mapping[str, Any]) -> None:
        assert self._confirm_channel is not None, "call connect() first"
        dlq = self.topology.dead_letter_queue
        if dlq not in self._declared_task_queues:
            with _translated("declare the dead-letter queue"):
                await self._confirm_channel.declare_queue(dlq, durable=True)
            self._declared_task_queues.add(dlq)
        message = Message(
            delivery.body,
            content_type=delivery.content_type,
            correlation_id=delivery.correlation_id,
            delivery_mode=DeliveryMode.PERSISTENT,
            headers={**_plain_headers(delivery.headers), **headers, "x-otter-queue": delivery.queue},
        )
        with _translated("dead-letter a task"):
            await self._confirm_channel.default_exchange.publish(message, dlq, mandatory=True)
        await delivery.ack()

    # -- receiving ----------------------------------------------------------------------------------------------
    async def consume_rpc(self, name: str, on_delivery: OnDelivery, *, prefetch: int) -> Subscription:
        async with self._consumer_channel(prefetch) as channel:
            exchange = await channel.declare_exchange(self.topology.message_exchange, ExchangeType.TOPIC)
            queue = await channel.declare_queue(self.topology.rpc_queue(name), auto_delete=True)
            await queue.bind(exchange, protocol.rpc_routing_key(name))
            return await self._consume(channel, queue, on_delivery)

    async def consume_tasks(self, queue: str, on_delivery: OnDelivery, *, prefetch: int) -> Subscription:
        async with self._consumer_channel(prefetch) as channel:
            exchange = await channel.declare_exchange(self.topology.task_exchange, ExchangeType.TOPIC)
            task_queue = await channel.declare_queue(queue, durable=True, arguments=TASK_QUEUE_ARGUMENTS)
            await task_queue.bind(exchange, queue)
            return await self._consume(channel, task_queue, on_delivery)

    async def consume_broadcasts(self, on_delivery: OnDelivery, *, prefetch: int) -> Subscription:
        async with self._consumer_channel(prefetch) as channel:
            exchange = await channel.declare_exchange(self.topology.message_exchange, ExchangeType.TOPIC)
            queue = await channel.declare_queue(
                exclusive=True, arguments={"x-message-ttl": kiwipy_defaults.MESSAGE_TTL}
            )
            await queue.bind(exchange, protocol.BROADCAST_ROUTING_KEY)
            return await self._consume(channel, queue, on_delivery)

    # -- internals ----------------------------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def _consumer_channel(self, prefetch: int) -> AsyncIterator[AbstractChannel]:
        assert self._connection is not None, "call connect() first"
        with _translated("start a consumer"):
            channel = await self._connection.channel(publisher_confirms=False)
            await channel.set_qos(prefetch_count=prefetch)
            yield channel

    async def _consume(self, channel: AbstractChannel, queue: AbstractQueue, on_delivery: OnDelivery) -> Subscription:
        name = queue.name

        async def on_message(message: AbstractIncomingMessage) -> None:
            await on_delivery(AmqpDelivery(message, name))

        tag = await queue.consume(on_message)
        return AmqpSubscription(queue, tag, channel)

    async def _declare_task_queue(self, queue: str) -> None:
        if queue in self._declared_task_queues:
            return
        assert self._confirm_channel is not None and self._task_exchange is not None
        with _translated(f"declare the task queue {queue!r}"):
            declared = await self._confirm_channel.declare_queue(queue, durable=True, arguments=TASK_QUEUE_ARGUMENTS)
            await declared.bind(self._task_exchange, queue)
        self._declared_task_queues.add(queue)

    async def _on_reply(self, message: AbstractIncomingMessage) -> None:
        future = self._pending.pop(message.correlation_id or "", None)
        if future is not None and not future.done():
            future.set_result(AmqpDelivery(message, DIRECT_REPLY_TO))



def _fail_on_publish_error(publishing: asyncio.Future[Any], future: asyncio.Future[Delivery], name: str) -> None:
    if publishing.cancelled() or future.done():
        return
    exc = publishing.exception()
    if isinstance(exc, aio_pika.exceptions.DeliveryError):
        future.set_exception(Unroutable(f"nobody serves the RPC {name!r}"))
    elif exc is not None:
        future.set_exception(BrokerUnavailable(f"could not send the RPC {name!r}: {_describe(exc)}"))


def _expire(future: asyncio.Future[Delivery], name: str, timeout: float) -> None:
    if not future.done():
        future.set_exception(DeadlineExceeded(f"no reply to the RPC {name!r} within {timeout:g} s"))


def _plain_headers(headers: Mapping[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in headers.items() if not key.startswith("x-otter-")}


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) < 300 else text[:300] + "..."


@contextlib.contextmanager
def _translated(action: str) -> Any:
    """Turn aio-pika and aiormq errors into Otter's tree, saying what we were doing."""
    try:
        yield
    except OtterError:
        raise
    except aio_pika.exceptions.DeliveryError as exc:
        raise Unroutable(f"could not {action}: the broker returned the message ({_describe(exc)})") from None
    except (
        aiormq.exceptions.AMQPError,
        aio_pika.exceptions.AMQPException,
        ConnectionError,
        OSError,
        RuntimeError,
    ) as exc:
        raise BrokerUnavailable(f"could not {action}: the broker connection failed ({_describe(exc)})") from None
