"""RabbitMQ through aio-pika's robust connection, on kiwipy's exchanges and routing keys.

Why aio-pika directly rather than kiwipy's ``RmqCommunicator``: kiwipy gives every RPC subscriber an exclusive
queue (every replica runs every call), acks before decoding and cannot stop a blocking handler from stalling the
connection. We keep its wire format and fix those: one shared queue per RPC name, replies through the default
exchange (which reaches any caller's reply queue by its name).

Replies come back to one exclusive reply queue per connection, named and bound to the message exchange the way
kiwipy binds its own: an Otter server replies through the default exchange, a kiwipy server through the message
exchange, and both reach it. (RabbitMQ's direct reply-to would only hear the first.)

Channels: one with publisher confirms for tasks, retries, dead letters and broadcasts (which also consumes the
reply queue); one without for RPC requests (``mandatory``: an unroutable call comes back at once as a return, see
``aiormq_fixes``) and replies, the fast path; one per consumer so each has its own prefetch. The robust
connection re-opens all of them and their queues after a broker restart; ``AmqpSubscription`` starts its consumer
again.

Messages themselves go around aio-pika, whose per-message objects were the largest cost in the profiles: publishes
are encoded by ``publishing`` and queued on the aiormq channel under each robust channel (at once when nothing waits
ahead), and consumers run on that aiormq channel, so a delivery becomes an ``AmqpDelivery`` directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import ssl
import uuid
import weakref
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import aio_pika
import aiormq
from aio_pika import DeliveryMode, ExchangeType, Message
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractIncomingMessage, AbstractQueue
from aiormq.abc import DeliveredMessage
from kiwipy.rmq import defaults as kiwipy_defaults

from .. import protocol
from ..config import redact_url
from ..errors import BrokerUnavailable, ConfigurationError, DeadlineExceeded, OtterError, Unroutable
from . import aiormq_fixes, pamqp_fixes, publishing
from .amqp_errors import REFUSALS, connect_failure, describe, translated
from .base import (
    Delivery,
    OnDelivery,
    ReplayRoute,
    Snapshot,
    Subscription,
    Topology,
    Transport,
)

__all__ = ["AmqpTransport"]

# Queues a publish at once and returns the future of its confirm, or None (see ``_on_this_connection``).
PublishNow = Callable[[], "asyncio.Future[Any] | None"]

log = logging.getLogger("otter.amqp")

pamqp_fixes.apply()  # one foreign message must not close the connection (see pamqp_fixes)
aiormq_fixes.apply()  # an unroutable RPC comes back as a return on the unconfirmed channel (see aiormq_fixes)

# kiwipy declares task queues with exactly these arguments; a different set would make the broker refuse the
# second declaration (PRECONDITION_FAILED), so Otter dead-letters by publishing, not with x-dead-letter-exchange.
TASK_QUEUE_ARGUMENTS = {"x-message-ttl": kiwipy_defaults.TASK_MESSAGE_TTL}
# A retry delay queue outlives its longest wait by this much, then the broker deletes it once it is unused.
RETRY_QUEUE_SPARE_MS = 60_000


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
        )
        self._channel = message.channel
        self._tag: int = getattr(message.delivery, "delivery_tag", 0) or 0

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
    aio-pika's message wrapper and its extra task) and started again each time the robust channel re-opens."""

    def __init__(self, channel: AbstractChannel, queue: AbstractQueue, on_message: Any, *, no_ack: bool) -> None:
        self._channel, self._queue, self._on_message, self._no_ack = channel, queue, on_message, no_ack
        self._tag = f"otter.{uuid.uuid4().hex}"
        self._cancelled = False

    async def start(self) -> None:
        underlay = await self._channel.get_underlay_channel()
        await underlay.basic_consume(self._queue.name, self._on_message, no_ack=self._no_ack, consumer_tag=self._tag)
        self._channel.reopen_callbacks.add(self._restart)  # type: ignore[attr-defined]

    async def cancel(self) -> None:
        self._cancelled = True
        self._channel.reopen_callbacks.discard(self._restart)  # type: ignore[attr-defined]
        with contextlib.suppress(Exception):
            underlay = await self._channel.get_underlay_channel()
            await underlay.basic_cancel(self._tag)

    async def _restart(self, _channel: Any) -> None:
        """After aio-pika re-declared the queue on the re-opened channel: consume it again."""
        if self._cancelled:
            return
        try:
            underlay = await self._channel.get_underlay_channel()
            await underlay.basic_consume(
                self._queue.name, self._on_message, no_ack=self._no_ack, consumer_tag=self._tag
            )
        except Exception as exc:
            log.error("could not consume %r again after reconnecting: %s", self._queue.name, describe(exc))


class AmqpTransport(Transport):
    """``amqp://`` and ``amqps://`` (``ssl_context`` from ``otter.tls``).

    Broker outages: the robust connection reconnects every ``reconnect_interval`` seconds and restores channels,
    queues, bindings and consumers. Meanwhile a task send waits and retries until ``publish_timeout`` (at-least-once:
    a send whose confirm was lost may be repeated), then raises ``BrokerUnavailable``; an RPC waits for the
    connection within its own timeout, is sent at most once, and fails with ``BrokerUnavailable`` at once if the
    connection drops while it waits for the reply (which was lost with the connection).
    """

    def __init__(
        self,
        url: str,
        topology: Topology,
        *,
        connect_timeout: float = 5.0,
        ssl_context: ssl.SSLContext | None = None,
        publish_timeout: float = 15.0,
        reconnect_interval: float = 1.0,
    ) -> None:
        self._raw_url = url
        self.url = redact_url(url) or url
        self.topology = topology
        self._connect_timeout = connect_timeout
        self._ssl_context = ssl_context
        self.publish_timeout = publish_timeout
        self._reconnect_interval = reconnect_interval
        self._closing = False
        self._connection: aio_pika.abc.AbstractRobustConnection | None = None
        self._channel: AbstractChannel | None = None
        self._confirm_channel: AbstractChannel | None = None
        self._exchange: AbstractExchange | None = None
        self._task_exchange: AbstractExchange | None = None
        self._pending: dict[str, asyncio.Future[Delivery]] = {}
        # Every confirmed publish in flight, with the future its sender waits on. When the calling channel's
        # connection is lost they are all woken and cancelled at once: a publish on a dead connection may never
        # finish (aiormq can block it on the dead connection's write queue), so it is abandoned and sent again on
        # the next connection. (One registry rather than a callback per send on a "lost" future: removing a
        # callback is linear in the number registered, ~13 µs per send with 1,000 tasks in flight.)
        self._sending: dict[asyncio.Future[Any], asyncio.Future[object]] = {}  # a task, or a confirm's future
        self._calls_in_flight: set[asyncio.Task[Any]] = set()
        self._declared_task_queues: set[str] = set()
        self._reply_to = protocol.reply_queue_name(topology.message_exchange, uuid.uuid4().hex)
        # Message ids for publishes: aiormq matches a confirmed publish's return by it and would otherwise draw a
        # random uuid for each one.
        self._id_prefix = uuid.uuid4().hex[:16]
        self._id_counter = itertools.count()

    async def connect(self) -> None:
        try:
            self._connection = await aio_pika.connect_robust(
                self._raw_url,
                timeout=self._connect_timeout,
                ssl_context=self._ssl_context,
                client_properties={"connection_name": "otter"},
                **self._reconnect_options(),
            )
        except (OSError, asyncio.TimeoutError, aiormq.exceptions.AMQPError, ConnectionError, RuntimeError) as exc:
            tls = self._raw_url.lower().startswith("amqps:")
            raise BrokerUnavailable(f"cannot connect to RabbitMQ at {self.url}: {connect_failure(exc, tls)}") from None
        with translated("open channels"):
            self._confirm_channel = await self._connection.channel(publisher_confirms=True, on_return_raises=True)
            # The reply queue is consumed on this channel: when it closes (the connection is lost), replies still
            # due are lost and the publishes in flight are abandoned (``_on_calling_channel_closed``).
            self._confirm_channel.close_callbacks.add(self._on_calling_channel_closed)
            self._connection.reconnect_callbacks.add(self._on_reconnected)
            self._exchange = await self._confirm_channel.declare_exchange(
                self.topology.message_exchange, ExchangeType.TOPIC
            )
            self._task_exchange = await self._confirm_channel.declare_exchange(
                self.topology.task_exchange, ExchangeType.TOPIC
            )
            # A name of our own, not the broker's: the robust channel re-declares the same queue after a restart.
            reply_queue = await self._confirm_channel.declare_queue(self._reply_to, exclusive=True)
            await reply_queue.bind(self._exchange, self._reply_to)
            await AmqpSubscription(self._confirm_channel, reply_queue, self._on_reply, no_ack=True).start()
            self._channel = await self._connection.channel(publisher_confirms=False)
            self._channel.return_callbacks.add(self._on_return)
            # Declared here too so that this channel, when it re-opens (a call to a deleted exchange closes it),
            # declares the exchange again before the next call.
            await self._channel.declare_exchange(self.topology.message_exchange, ExchangeType.TOPIC)

    async def close(self) -> None:
        self._closing = True
        for future in self._pending.values():
            if not future.done():
                future.set_exception(BrokerUnavailable("the connection was closed before the reply arrived"))
        self._pending.clear()
        for sending, settled in list(self._sending.items()):  # the connection goes: nothing left to desynchronise
            _settle(settled, _LOST)
            _abandon(sending)
        tasks = {sending for sending in self._sending if isinstance(sending, asyncio.Task)}
        if tasks:
            await asyncio.wait(tasks, timeout=1.0)
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
        sending: asyncio.Future[Any] | None = None
        timer = loop.call_later(timeout, lambda: _expire(future, name, timeout, sending))
        deadline = loop.time() + timeout
        try:
            properties = {"correlation_id": correlation_id, "reply_to": self._reply_to, "headers": headers,
                          "message_id": correlation_id}
            routing_key = protocol.rpc_routing_key(name)
            # Queued at once when the connection is open and nothing waits ahead; else sent in a task of its own.
            # Either way the caller waits for whichever comes first: the reply, the broker's return of an
            # unroutable call (``_on_return``), a lost connection or the deadline.
            if not self._send_call_now(body, properties, routing_key, deadline):
                sending = asyncio.ensure_future(self._publish_call(body, properties, routing_key, future, deadline))
                sending.add_done_callback(lambda done: _fail_on_publish_error(done, future, name))
            return await future
        finally:
            timer.cancel()
            self._pending.pop(correlation_id, None)

    async def publish_task(
        self, queue: str, body: bytes, *, correlation_id: str, headers: Mapping[str, Any] | None = None
    ) -> None:
        assert self._confirm_channel is not None, "call connect() first"
        # Through the default exchange, straight to the queue: the same queue the task exchange routes ``queue``
        # to (kiwipy binds each task queue by its own name, and so does ``_declare_task_queue``), at ~10% less
        # broker CPU per task than a topic exchange lookup.
        channel = self._confirm_channel
        fields: dict[str, Any] = {
            "mandatory": True, "message_id": self._next_message_id(), "correlation_id": correlation_id,
            "delivery_mode": DeliveryMode.PERSISTENT.value, "headers": headers,
        }

        async def publish() -> None:
            await self._declare_task_queue(queue)
            await _publish(channel, "", queue, body, **fields)

        def publish_now() -> asyncio.Future[Any] | None:
            return _publish_now(channel, "", queue, body, **fields) if queue in self._declared_task_queues else None

        try:
            await self._publish_confirmed(publish, f"send the task to {queue!r}", publish_now)
        except aio_pika.exceptions.PublishError as exc:
            self._declared_task_queues.discard(queue)  # deleted since it was declared: declare it on the next send
            raise Unroutable(f"the broker could not route the task to queue {queue!r}: {exc}") from None

    async def publish_broadcast(self, body: bytes) -> None:
        """Sent once (at-most-once, as kiwipy's broadcasts are), after waiting for the connection if it is being
        re-established, and confirmed: ``client.broadcast()`` returns once the broker has routed it, so a
        broadcast followed at once by ``close()`` is not lost on the way (unconfirmed, it could be)."""
        assert self._exchange is not None and self._confirm_channel is not None, "call connect() first"
        message_id = self._next_message_id()
        deadline = asyncio.get_running_loop().time() + self.publish_timeout
        channel, exchange = self._confirm_channel, self.topology.message_exchange
        await self._wait_until_open(channel, self.publish_timeout, "broadcast")
        fields: dict[str, Any] = {
            "mandatory": False, "message_id": message_id, "delivery_mode": DeliveryMode.NOT_PERSISTENT.value,
        }
        with translated("broadcast"):
            try:
                await self._on_this_connection(
                    lambda: _publish(channel, exchange, protocol.BROADCAST_ROUTING_KEY, body, **fields),
                    deadline,
                    lambda: _publish_now(channel, exchange, protocol.BROADCAST_ROUTING_KEY, body, **fields),
                )
            except asyncio.TimeoutError:
                raise BrokerUnavailable(
                    f"could not broadcast: the broker did not confirm it within {self.publish_timeout:g} s"
                ) from None

    async def reply(self, reply_to: str, body: bytes, *, correlation_id: str | None) -> None:
        """At-most-once, like the call it answers: not mandatory and not confirmed, so a reply whose caller has
        gone is dropped by the broker (a return would only be reported on a confirming channel, at a round trip
        per reply)."""
        assert self._channel is not None, "call connect() first"
        fields: dict[str, Any] = {
            "mandatory": False, "message_id": self._next_message_id(), "correlation_id": correlation_id,
        }
        with translated("reply"):
            if not _send_now(self._channel, "", reply_to, body, **fields):
                await _publish(self._channel, "", reply_to, body, **fields)

    async def dead_letter(self, delivery: Delivery, headers: Mapping[str, Any]) -> None:
        assert self._confirm_channel is not None, "call connect() first"
        dlq = await self._declare_dead_letter_queue()
        message = Message(
            delivery.body,
            content_type=delivery.content_type,
            correlation_id=delivery.correlation_id,
            delivery_mode=DeliveryMode.PERSISTENT,
            headers={**protocol.forwarded_headers(delivery.headers), **headers, protocol.QUEUE_HEADER: delivery.queue},
        )
        with translated("dead-letter a task"):
            await self._confirm_channel.default_exchange.publish(message, dlq, mandatory=True)
        await delivery.ack()

    async def retry_later(self, delivery: Delivery, delay: float, headers: Mapping[str, Any]) -> None:
        """Park the copy in ``<queue>.retry.<ms>``: its queue TTL is the delay and it dead-letters into the task
        queue through the default exchange. One queue per delay, because a TTL set per message only expires at
        the head of a queue (a long wait would hold up a short one behind it). The queue is declared on every
        retry, which renews its ``x-expires`` lease, so it disappears only when no retry has used it for a while.
        """
        assert self._confirm_channel is not None, "call connect() first"
        delay_ms = max(0, round(delay * 1000))
        target = delivery.queue
        if delay_ms:
            target = protocol.retry_queue_name(delivery.queue, delay_ms)
            with translated(f"declare the retry queue {target!r}"):
                await self._confirm_channel.declare_queue(target, durable=True, arguments={
                    "x-message-ttl": delay_ms,
                    "x-dead-letter-exchange": "",
                    "x-dead-letter-routing-key": delivery.queue,
                    "x-expires": delay_ms + RETRY_QUEUE_SPARE_MS,
                })
        message = Message(
            delivery.body,
            content_type=delivery.content_type,
            correlation_id=delivery.correlation_id,
            delivery_mode=DeliveryMode.PERSISTENT,
            headers={**protocol.forwarded_headers(delivery.headers), **headers},
        )
        with translated(f"schedule a retry on {target!r}"):
            await self._confirm_channel.default_exchange.publish(message, target, mandatory=True)
        await delivery.ack()

    # -- dead letters -------------------------------------------------------------------------------------------
    async def peek_dead_letters(self, limit: int | None = None) -> list[Delivery]:
        """Get without acking, then close the channel: the broker puts every message back where it was."""
        async with self._dead_letter_reader() as queue:
            letters: list[Delivery] = []
            while limit is None or len(letters) < limit:
                with translated("read the dead-letter queue"):
                    message = await queue.get(no_ack=False, fail=False)
                if message is None:
                    break
                letters.append(_snapshot(message, queue.name))
            return letters

    async def replay_dead_letters(self, route: ReplayRoute, *, limit: int | None = None) -> int:
        """Republish each chosen letter with a confirm, then ack it; the others stay unacked until the reading
        channel closes, which returns them to the dead-letter queue in their order."""
        assert self._confirm_channel is not None and self._task_exchange is not None, "call connect() first"
        moved = 0
        async with self._dead_letter_reader() as queue:
            # Only the letters waiting now: one replayed to a task that still fails comes back to the end of this
            # queue while we read, and replaying it again in the same pass would go round for as long as it fails.
            waiting = int(queue.declaration_result.message_count or 0)
            for _ in range(waiting):
                if limit is not None and moved >= limit:
                    break
                with translated("read the dead-letter queue"):
                    message = await queue.get(no_ack=False, fail=False)
                if message is None:
                    break
                target = route(_snapshot(message, queue.name))
                if target is None:
                    continue
                name, headers = target
                await self._declare_task_queue(name)
                copy = Message(
                    message.body,
                    content_type=message.content_type,
                    correlation_id=message.correlation_id,
                    delivery_mode=DeliveryMode.PERSISTENT,
                    headers=dict(headers),
                )
                with translated(f"replay a dead letter to {name!r}"):
                    await self._task_exchange.publish(copy, name, mandatory=True)
                    await message.ack()
                moved += 1
        return moved

    async def purge_dead_letters(self) -> int:
        assert self._confirm_channel is not None, "call connect() first"
        dlq = await self._declare_dead_letter_queue()
        with translated("purge the dead-letter queue"):
            queue = await self._confirm_channel.get_queue(dlq, ensure=False)
            purged = await queue.purge()
        return int(purged.message_count or 0)

    # -- receiving ----------------------------------------------------------------------------------------------
    async def consume_rpc(self, name: str, on_delivery: OnDelivery, *, prefetch: int) -> Subscription:
        """Consume the shared, auto-delete queue of an RPC name (so an unserved name is unroutable at once).

        If another replica's last consumer leaves between our declare and our consume, the broker deletes the queue
        under us (NOT_FOUND): declare it again on a fresh channel.
        """
        for _ in range(5):
            try:
                return await self._consume_rpc_once(name, on_delivery, prefetch)
            except _QueueVanished:
                log.info("the queue of RPC %r was deleted as we subscribed; declaring it again", name)
        raise BrokerUnavailable(f"could not keep the queue of RPC {name!r}: it was deleted five times in a row")

    async def _consume_rpc_once(self, name: str, on_delivery: OnDelivery, prefetch: int) -> Subscription:
        async with self._consumer_channel(prefetch) as channel:
            try:
                exchange = await channel.declare_exchange(self.topology.message_exchange, ExchangeType.TOPIC)
                queue = await channel.declare_queue(self.topology.rpc_queue(name), auto_delete=True)
                await queue.bind(exchange, protocol.rpc_routing_key(name))
                return await self._consume(channel, queue, on_delivery)
            except aiormq.exceptions.ChannelNotFoundEntity:
                with contextlib.suppress(Exception):
                    await channel.close()
                raise _QueueVanished from None

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
        with translated("start a consumer"):
            channel = await self._connection.channel(publisher_confirms=False)
            await channel.set_qos(prefetch_count=prefetch)
            yield channel

    async def _consume(self, channel: AbstractChannel, queue: AbstractQueue, on_delivery: OnDelivery) -> Subscription:
        name = queue.name

        async def on_message(message: DeliveredMessage) -> None:
            await on_delivery(AmqpDelivery(message, name))

        subscription = AmqpSubscription(channel, queue, on_message, no_ack=False)
        await subscription.start()
        return subscription

    async def _declare_dead_letter_queue(self) -> str:
        assert self._confirm_channel is not None, "call connect() first"
        dlq = self.topology.dead_letter_queue
        if dlq not in self._declared_task_queues:
            with translated("declare the dead-letter queue"):
                await self._confirm_channel.declare_queue(dlq, durable=True)
            self._declared_task_queues.add(dlq)
        return dlq

    @contextlib.asynccontextmanager
    async def _dead_letter_reader(self) -> AsyncIterator[AbstractQueue]:
        """The dead-letter queue on a channel of its own: closing it returns every message not acked."""
        assert self._connection is not None, "call connect() first"
        with translated("open the dead-letter queue"):
            channel = await self._connection.channel(publisher_confirms=False)
        try:
            with translated("open the dead-letter queue"):
                queue = await channel.declare_queue(self.topology.dead_letter_queue, durable=True)
            yield queue
        finally:
            with contextlib.suppress(Exception):
                await channel.close()

    async def _publish_confirmed(
        self, publish: Callable[[], Coroutine[Any, Any, Any]], action: str, publish_now: PublishNow | None = None
    ) -> None:
        """Run ``publish`` (which awaits the broker's confirm) until it succeeds or ``publish_timeout`` passes; each
        try first offers ``publish_now`` the chance to queue the message at once (see ``_on_this_connection``).

        Only outages are retried: a lost connection, a channel being re-opened, a confirm that did not come. A
        refusal (unroutable: ``Unroutable``; access refused or precondition failed: ``ConfigurationError``) is raised
        at once, and so is the broker's return of a ``mandatory`` publish (aiormq's ``PublishError``, for the caller
        to translate). At-least-once: when the connection drops after the broker took a message but before its
        confirm arrived, it is sent again.
        """
        assert self._confirm_channel is not None, "call connect() first"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.publish_timeout
        attempt = 0
        while True:
            attempt += 1
            try:
                await self._attempt(publish, action, deadline, publish_now)
            except asyncio.TimeoutError:
                problem = "no connection to the broker, or no confirm from it"
            except BrokerUnavailable as exc:
                problem = str(exc)
            else:
                if attempt > 1:
                    log.info("%s: done after %d attempts", action, attempt)
                return
            if self._closing:
                raise BrokerUnavailable(f"could not {action}: the connection was closed")
            pause = min(0.05 * 2**attempt, 1.0)
            if loop.time() + pause >= deadline:
                raise BrokerUnavailable(
                    f"could not {action} within {self.publish_timeout:g} s (PUBLISH_TIMEOUT): {problem}. The "
                    f"broker did not confirm it; send it again once the broker at {self.url} is back"
                )
            if attempt == 1:
                log.warning("%s: %s; retrying for up to %g s", action, problem, self.publish_timeout)
            await asyncio.sleep(pause)

    async def _attempt(
        self, publish: Callable[[], Coroutine[Any, Any, Any]], action: str, deadline: float,
        publish_now: PublishNow | None = None,
    ) -> None:
        """One try, bounded by ``deadline``: wait for the channel, then publish on it (see ``_on_this_connection``)."""
        channel = self._confirm_channel
        assert channel is not None
        loop = asyncio.get_running_loop()
        try:
            if channel.is_closed:  # being re-opened after a lost connection: wait for it
                await asyncio.wait_for(channel.ready(), max(deadline - loop.time(), 0.001))  # type: ignore[attr-defined]
            await self._on_this_connection(publish, deadline, publish_now)
        except (OtterError, asyncio.TimeoutError, aio_pika.exceptions.PublishError):
            raise
        except REFUSALS as exc:
            raise ConfigurationError(f"the broker refused to {action}: {describe(exc)}") from None
        except (aiormq.exceptions.AMQPError, ConnectionError, OSError, RuntimeError) as exc:
            raise BrokerUnavailable(f"the connection failed ({describe(exc)})") from None

    async def _on_this_connection(
        self, publish: Callable[[], Coroutine[Any, Any, Any]], deadline: float, publish_now: PublishNow | None = None
    ) -> None:
        """Run ``publish`` on the connection open now, giving up on it when that connection is lost (then it is
        cancelled: aiormq may block it forever on the dead connection's write queue) or when ``deadline`` passes
        (then it is left to finish: cancelling aiormq half-way through a publish or a declare on a live channel
        desynchronises the channel). Raises ``BrokerUnavailable`` or ``asyncio.TimeoutError`` respectively.

        Usually ``publish_now`` queues the message at once and hands back the future of its confirm, which is then
        waited for in the same way (no task, no coroutines to resume when it comes: ~15% of a sender's CPU); it
        returns None when the publish must wait its turn or the connection is not open, and ``publish`` runs."""
        loop = asyncio.get_running_loop()
        sending = publish_now() if publish_now is not None else None
        if sending is None:
            sending = loop.create_task(publish())
        # Resolved by whichever comes first: the publish (``_sent``), the loss of the connection
        # (``_on_calling_channel_closed``) or the deadline (the timer).
        settled: asyncio.Future[object] = loop.create_future()
        self._sending[sending] = settled
        sending.add_done_callback(self._sent)
        timer = loop.call_later(max(deadline - loop.time(), 0.001), _settle, settled, _EXPIRED)
        try:
            why = await settled
        finally:
            timer.cancel()
        if why is _LOST:
            raise BrokerUnavailable("the connection was lost before the broker confirmed it")
        if why is _EXPIRED:
            raise asyncio.TimeoutError
        sending.result()

    def _send_call_now(self, body: bytes, properties: dict[str, Any], routing_key: str, deadline: float) -> bool:
        assert self._channel is not None
        expiration = str(max(int((deadline - asyncio.get_running_loop().time()) * 1000), 1))
        return _send_now(self._channel, self.topology.message_exchange, routing_key, body, mandatory=True,
                         expiration=expiration, **properties)

    async def _publish_call(
        self, body: bytes, properties: dict[str, Any], routing_key: str, reply: asyncio.Future[Delivery],
        deadline: float,
    ) -> None:
        """Send an RPC request once, after waiting for the connection if it is being re-established; not at all
        if the caller gave up meanwhile. The wait outlasts the call's deadline a little, so that ``_expire``
        is the one to tell the caller. Runs in a task of its own, which ``_on_calling_channel_closed`` cancels
        if the connection is lost under it (aiormq may otherwise block it forever on the dead connection)."""
        assert self._channel is not None
        loop = asyncio.get_running_loop()
        if self._channel.is_closed:
            ready = self._channel.ready()  # type: ignore[attr-defined]
            await asyncio.wait_for(ready, max(deadline - loop.time(), 0.0) + 0.5)
        if reply.done():
            return
        # What is left of the deadline after the wait, in whole milliseconds (at least one).
        expiration = str(max(int((deadline - loop.time()) * 1000), 1))
        this = asyncio.current_task()
        assert this is not None
        self._calls_in_flight.add(this)
        try:
            await _publish(self._channel, self.topology.message_exchange, routing_key, body, mandatory=True,
                           expiration=expiration, **properties)
        finally:
            self._calls_in_flight.discard(this)

    async def _wait_until_open(self, channel: AbstractChannel, timeout: float, action: str) -> None:
        if not channel.is_closed:  # the usual case: no ``wait_for`` (a task and a timer) per message
            return
        try:
            await asyncio.wait_for(channel.ready(), timeout)  # type: ignore[attr-defined]
        except asyncio.TimeoutError:
            raise BrokerUnavailable(
                f"could not {action}: no connection to the broker at {self.url} within {timeout:g} s"
            ) from None

    def _sent(self, sending: asyncio.Future[Any]) -> None:
        settled = self._sending.pop(sending, None)
        _retrieve_outcome(sending)
        if settled is not None:
            _settle(settled, _SENT)

    def _on_calling_channel_closed(self, _sender: Any, exc: BaseException | None) -> None:
        for sending, settled in list(self._sending.items()):  # on the dead connection: abandon, send again
            _settle(settled, _LOST)
            _abandon(sending)
        for sending_call in list(self._calls_in_flight):  # their replies are lost too; they are failed below
            sending_call.cancel()
        if self._closing:
            return
        waiting = [future for future in self._pending.values() if not future.done()]
        log.warning(
            "lost the connection to %s (%s); reconnecting every %g s, sends wait for it up to %g s%s",
            self.url, describe(exc) if exc else "closed", self._reconnect_interval, self.publish_timeout,
            f", {len(waiting)} RPCs waiting for replies fail" if waiting else "",
        )
        for future in waiting:
            future.set_exception(BrokerUnavailable(
                "the connection to the broker was lost while waiting for the reply; the call may or may not have run"
            ))

    def _next_message_id(self) -> str:
        return f"{self._id_prefix}{next(self._id_counter):x}"

    def _on_reconnected(self, _sender: Any) -> None:
        log.info("reconnected to %s", self.url)

    def _reconnect_options(self) -> dict[str, Any]:
        """aio-pika reads these from the URL only when no keyword is given, so pass the URL's along with ours."""
        query = dict(parse_qsl(urlsplit(self._raw_url).query))
        options: dict[str, Any] = {"reconnect_interval": query.get("reconnect_interval", self._reconnect_interval)}
        for key in ("fail_fast", "interleave", "happy_eyeballs_delay"):
            if key in query:
                options[key] = query[key]
        return options

    async def _declare_task_queue(self, queue: str) -> None:
        if queue in self._declared_task_queues:
            return
        assert self._confirm_channel is not None and self._task_exchange is not None
        with translated(f"declare the task queue {queue!r}"):
            declared = await self._confirm_channel.declare_queue(queue, durable=True, arguments=TASK_QUEUE_ARGUMENTS)
            await declared.bind(self._task_exchange, queue)
        self._declared_task_queues.add(queue)

    def _on_return(self, _channel: Any, message: AbstractIncomingMessage) -> None:
        """The broker returned a ``mandatory`` RPC request: no queue is bound to its name."""
        future = self._pending.get(message.correlation_id or "")
        if future is not None and not future.done():
            name = (message.routing_key or "").removeprefix(protocol.RPC_PREFIX + ".")
            future.set_exception(Unroutable(f"nobody serves the RPC {name!r}"))

    async def _on_reply(self, message: DeliveredMessage) -> None:
        future = self._pending.pop(message.header.properties.correlation_id or "", None)
        if future is not None and not future.done():
            future.set_result(AmqpDelivery(message, self._reply_to))



# The aiormq channel last seen under each of aio-pika's robust channels: while it is open, ``_publish_now`` queues
# frames on it without awaiting aio-pika's ``get_underlay_channel``.
_underlays: weakref.WeakKeyDictionary[AbstractChannel, Any] = weakref.WeakKeyDictionary()


async def _publish(
    channel: AbstractChannel, exchange: str, routing_key: str, body: bytes, *, mandatory: bool, message_id: str,
    **properties: Any,
) -> Any:
    """Publish a JSON body on the aiormq channel under aio-pika's robust one, encoded by ``publishing`` (aio-pika's
    ``Message`` and aiormq's pamqp frames cost ~20 µs a message more); on a confirming channel, returns once
    confirmed. The frames are queued for the connection's writer without waiting for them to drain."""
    underlay = await channel.get_underlay_channel()
    _underlays[channel] = underlay
    payload = _encode(underlay, exchange, routing_key, body, mandatory=mandatory, message_id=message_id, **properties)
    return await publishing.publish(underlay, payload, message_id)  # type: ignore[arg-type]


def _encode(underlay: Any, exchange: str, routing_key: str, body: bytes, **fields: Any) -> bytes:
    return publishing.encode(
        underlay.number, underlay.max_content_size, exchange, routing_key, body, content_type=protocol.CONTENT_TYPE,
        **fields,
    )


class _QueueVanished(BrokerUnavailable):
    """An auto-delete queue was deleted between its declaration and the consume."""


def _fail_on_publish_error(sending: asyncio.Future[Any], future: asyncio.Future[Delivery], name: str) -> None:
    if sending.cancelled():
        return
    exc = sending.exception()  # always retrieved, so asyncio never reports it as lost
    if exc is not None and not future.done():  # (an unroutable call comes back as a return: ``_on_return``)
        future.set_exception(BrokerUnavailable(f"could not send the RPC {name!r}: {describe(exc)}"))


def _publish_now(channel: AbstractChannel, *args: Any, message_id: str, **fields: Any) -> asyncio.Future[Any] | None:
    """``_publish`` on a confirming channel without awaiting anything: queue the frames now and return the future
    of the broker's confirm; None if the channel is not open or the publish would have to wait its turn."""
    encoded = _encode_for(channel, *args, message_id=message_id, **fields)
    return None if encoded is None else publishing.publish_now(encoded[0], encoded[1], message_id)


def _send_now(channel: AbstractChannel, *args: Any, **fields: Any) -> bool:
    """``_publish`` on a channel without confirms, without awaiting anything: True if the frames are queued."""
    encoded = _encode_for(channel, *args, **fields)
    return encoded is not None and publishing.queue_now(*encoded)


def _encode_for(channel: AbstractChannel, *args: Any, **fields: Any) -> tuple[Any, bytes] | None:
    """The open aiormq channel last seen under ``channel`` and the publish encoded for it; None if it is not open."""
    underlay = _underlays.get(channel)
    if underlay is None or underlay.is_closed or channel.is_closed:
        return None
    # Between the broker's channel.close and aiormq marking the channel closed, aiormq has already dropped it from
    # its connection: a frame sent on it then would make the broker close the whole connection.
    if underlay.connection.channels.get(underlay.number) is not underlay:
        return None
    return underlay, _encode(underlay, *args, **fields)


def _abandon(sending: asyncio.Future[Any]) -> None:
    """A publish in flight on a lost connection: cancel it if it is our task; a confirm's future is aiormq's, which
    fails it when it closes the channel."""
    if isinstance(sending, asyncio.Task):
        sending.cancel()


# How a publish in flight ended for the sender waiting on it (see ``_on_this_connection``).
_SENT, _LOST, _EXPIRED = object(), object(), object()


def _settle(settled: asyncio.Future[object], why: object) -> None:
    if not settled.done():
        settled.set_result(why)


def _retrieve_outcome(done: asyncio.Future[Any]) -> None:
    """Mark a publish's failure as seen: when nobody waits for it any more, asyncio would report it as lost."""
    if not done.cancelled():
        done.exception()


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


def _snapshot(message: AbstractIncomingMessage, queue: str) -> Snapshot:
    return Snapshot(message.body, queue=queue, content_type=message.content_type, headers=dict(message.headers),
                    correlation_id=message.correlation_id, reply_to=message.reply_to)
