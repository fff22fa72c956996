"""``AmqpTransport``: the ``Transport`` contract on RabbitMQ, wiring the parts of this package together.

Why aio-pika directly rather than kiwipy's ``RmqCommunicator``: kiwipy gives every RPC subscriber an exclusive
queue (every replica runs every call), acks before decoding and cannot stop a blocking handler from stalling the
connection. We keep its wire format and fix those: one shared queue per RPC name, replies through the default
exchange (which reaches any caller's reply queue by its name).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import ssl
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import aiormq
from aio_pika import DeliveryMode, ExchangeType
from aio_pika.abc import AbstractChannel, AbstractQueue, AbstractRobustConnection

from ... import protocol
from ...config import redact_url
from ...errors import BrokerUnavailable, Unroutable
from ..base import (
    SCHEDULE_PREFETCH,
    Delivery,
    OnAckTimeout,
    OnDelivery,
    OnSent,
    QueueInUse,
    QueueMismatch,
    ReplayRoute,
    Subscription,
    Topology,
    Transport,
)
from . import control
from .connection import NEW_QUORUM_QUEUE_SETTLE, Link, Queues, broker_of, connect, fails_over, open_link
from .dead_letters import DeadLetters
from .errors import describe, queue_mismatch, translated
from .pipelined import Pipelined
from .publishing import Outlet, Prepare, Sender
from .rpc import Calls

__all__ = ["AmqpTransport"]

log = logging.getLogger("otter.amqp")


class AmqpTransport(Transport):
    """``amqp://`` and ``amqps://`` (``ssl_context`` from ``otter.tls``).

    Broker outages: the robust connection reconnects every ``reconnect_interval`` seconds and restores channels,
    queues, bindings and consumers. Meanwhile a task send waits and retries until ``publish_timeout`` (at-least-once:
    a send whose confirm was lost may be repeated), then raises ``BrokerUnavailable``; an RPC waits for the
    connection within its own timeout, is sent at most once, and fails with ``BrokerUnavailable`` at once if the
    connection drops while it waits for the reply (which was lost with the connection).
    """

    @property
    def pipelines(self) -> bool:  # type: ignore[override]
        """Only the fast path can queue a publish without a task; on the public path every pipelined send would
        fall back to ``publish_*`` after a detour."""
        return self.fast_path

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
        self._connection: AbstractRobustConnection | None = None
        self._link: Link | None = None
        self._queues: Queues | None = None
        self._dead_letters: DeadLetters | None = None
        self._down = False  # between a lost connection and the reconnection: its warning was given
        self._closed = False
        self._broker = self.url  # the (redacted) broker of the list the connection is on
        self._sent_to: set[str] = set()  # task queues this transport has sent to
        self._pipelined = Pipelined(self._confirmed_outlet)
        self._sender = Sender(self.url, publish_timeout)
        self._calls = Calls(protocol.reply_queue_name(topology.message_exchange, uuid.uuid4().hex))
        # Message ids for publishes: aiormq matches a confirmed publish's return by it and would otherwise draw a
        # random uuid for each one.
        self._id_prefix = uuid.uuid4().hex[:16]
        self._id_counter = itertools.count()

    @property
    def fast_path(self) -> bool:
        """Whether this connection uses the fast path (see ``fence``); False before ``connect``."""
        return self._link is not None and self._link.fast

    @property
    def connected(self) -> bool:
        return self._link is not None and not self._down and not self._closed

    async def connect(self) -> None:
        self._connection = await connect(
            self._raw_url, self.url, timeout=self._connect_timeout, ssl_context=self._ssl_context,
            reconnect_interval=self._reconnect_interval,
        )
        self._broker = broker_of(self._connection)
        with translated("open channels"):
            self._link = link = await open_link(self._connection, self.topology, self._reconnect_interval)
            # The reply queue is consumed on this channel: when it closes (the connection is lost), replies still
            # due are lost and the publishes in flight are abandoned (``_on_calling_channel_closed``).
            link.confirming.close_callbacks.add(self._on_calling_channel_closed)
            if link.fast:  # RPC requests go on the plain channel (on the public path: the confirming one, where a
                # return fails the publish's confirm instead)
                from .fast import watch_returns

                await watch_returns(link.plain, self._calls.on_return)
                # Its requests are lost if the broker closes it (a call to a deleted exchange): fail the calls then.
                link.plain.close_callbacks.add(self._on_requests_channel_closed)
            self._connection.reconnect_callbacks.add(self._on_reconnected)
            exchange = await link.confirming.declare_exchange(self.topology.message_exchange, ExchangeType.TOPIC)
            await link.confirming.declare_exchange(self.topology.task_exchange, ExchangeType.TOPIC)
            self._queues = Queues(self._connection, self.topology)
            self._dead_letters = DeadLetters(link, self._sender, self._queues, self.topology, self._next_message_id)
            # A name of our own, not the broker's: the robust channel re-declares the same queue after a restart.
            reply_queue = await link.confirming.declare_queue(self._calls.reply_to, exclusive=True)
            await reply_queue.bind(exchange, self._calls.reply_to)
            await link.subscribe(link.confirming, reply_queue, self._calls.on_reply, no_ack=True,
                                 bindings=[(self.topology.message_exchange, self._calls.reply_to)])
        if self.watcher is not None:
            self.watcher.connection_changed(True, False)

    async def close(self) -> None:
        self._closed = True
        if self.watcher is not None:
            self.watcher.connection_changed(False, False)
        self._calls.fail_all("the connection was closed before the reply arrived")
        self._calls.pending.clear()
        self._sender.closing = True  # what the pipelined sends hand back now fails at once
        self._pipelined.abandon()
        await self._sender.close()  # the connection goes: nothing left to desynchronise
        if self._connection is not None:
            with contextlib.suppress(Exception):
                await self._connection.close()
            self._connection = None

    # -- sending ------------------------------------------------------------------------------------------------
    async def call(
        self, name: str, body: bytes, *, correlation_id: str, timeout: float, headers: Mapping[str, Any]
    ) -> Delivery:
        assert self._link is not None, "call connect() first"
        return await self._calls.call(
            self._sender, self._link.requests, self.topology.message_exchange, name, body,
            correlation_id=correlation_id, timeout=timeout, headers=headers,
        )

    async def publish_task(
        self, queue: str, body: bytes, *, correlation_id: str, headers: Mapping[str, Any] | None = None,
        message_id: str | None = None, delay: int = 0, reply: bool = False, priority: int | None = None,
    ) -> int | None:
        assert self._link is not None and self._queues is not None, "call connect() first"
        # Through the default exchange, straight to the queue: the same queue the task exchange routes ``queue``
        # to (kiwipy binds each task queue by its own name, and so does ``Queues.task_queue``), at ~10% less
        # broker CPU per task than a topic exchange lookup. A delayed task enters the delay levels instead.
        queues = self._queues
        fields = self._task_fields(correlation_id, headers, priority, message_id)
        if reply:
            fields["reply_to"] = self._calls.reply_to
        if delay:
            exchange, routing_key = queues.delay_levels.route(delay, queue)

            def prepare() -> Prepare | None:
                return queues.delayed_to(queue, delay)
        else:
            exchange, routing_key = "", queue

            def prepare() -> Prepare | None:
                return None if queues.ready(queue, priority) else lambda: queues.task_queue(queue, priority)
        watcher = self.watcher
        started = time.perf_counter() if watcher is not None else 0.0
        try:
            for _ in range(3):
                await self._sender.send_until_confirmed(
                    self._link.confirmed, exchange, routing_key, body, fields, action=f"send the task to {queue!r}",
                    prepare=prepare,
                )
                if not delay or await queues.kept_by_new_levels():
                    break
                log.warning("lost the broker within %g s of creating delay levels, which it may not have kept: "
                            "sending the delayed task to %r again", NEW_QUORUM_QUEUE_SETTLE, queue)
            else:
                raise BrokerUnavailable(f"could not send the delayed task to {queue!r}: the broker was lost three "
                                        f"times within {NEW_QUORUM_QUEUE_SETTLE:g} s of creating delay levels")
        except aiormq.exceptions.PublishError as exc:
            queues.forget_queue(queue)  # deleted since it was declared: declare it on the next send
            raise Unroutable(f"the broker could not route the task to queue {queue!r}: {exc}") from None
        if watcher is not None:
            watcher.published("task", time.perf_counter() - started)
        consumers = queues.consumers.pop(queue, None)
        if queue in self._sent_to:  # the contract: a count only for the transport's first send to the queue
            return None
        self._sent_to.add(queue)
        return consumers

    def expect_reply(self, correlation_id: str) -> asyncio.Future[Delivery]:
        future: asyncio.Future[Delivery] = asyncio.get_running_loop().create_future()
        self._calls.pending[correlation_id] = future
        return future

    def forget_reply(self, correlation_id: str) -> None:
        self._calls.pending.pop(correlation_id, None)

    def start_task(
        self, queue: str, body: bytes, *, correlation_id: str, headers: Mapping[str, Any] | None, done: OnSent,
        message_id: str | None = None, delay: int = 0, priority: int | None = None,
    ) -> None:
        """Pipelined (``pipelined``): queued without a task, settled from its confirm, in order. A return is
        ``Unroutable``; any other failure sends it again the way ``publish_task`` does, until ``PUBLISH_TIMEOUT``.
        A delayed task goes the way of ``publish_task``: it keeps no order with the others anyway."""
        assert self._queues is not None, "call connect() first"
        pipelined = self._pipelined

        def fallback() -> None:
            Transport.start_task(self, queue, body, correlation_id=correlation_id, headers=headers, done=done,
                                 message_id=message_id, delay=delay, priority=priority)

        if delay:
            fallback()
            return
        if pipelined.after(queue, lambda: self.start_task(queue, body, correlation_id=correlation_id,
                                                          headers=headers, done=done, message_id=message_id,
                                                          priority=priority)):
            return
        if self._sender.closing:
            fallback()
        elif queue not in self._sent_to or not self._queues.ready(queue, priority):  # this send declares the queue
            def first(release: Callable[[], None]) -> None:
                def ended(result: Any, error: BaseException | None) -> None:
                    done(result, error)
                    release()

                Transport.start_task(self, queue, body, correlation_id=correlation_id, headers=headers, done=ended,
                                     message_id=message_id, priority=priority)

            pipelined.follow(queue, first)
        else:
            fields = self._task_fields(correlation_id, headers, priority, message_id)
            watched = self._watched("task", done)  # the other ways end in publish_task, which tells the watcher
            pipelined.send("", queue, body, fields, lambda confirm: confirm.add_done_callback(
                lambda ended: self._task_confirmed(ended, queue, watched, fallback)), fallback)

    def _task_fields(
        self, correlation_id: str, headers: Mapping[str, Any] | None, priority: int | None, message_id: str | None
    ) -> dict[str, Any]:
        """A task's publish: persistent, mandatory, its id (``message_id``, else a new one), and its ``priority``
        when it has one."""
        fields = {
            "mandatory": True, "message_id": message_id or self._next_message_id(),
            "content_type": protocol.CONTENT_TYPE, "correlation_id": correlation_id,
            "delivery_mode": DeliveryMode.PERSISTENT.value, "headers": headers,
        }
        if priority is not None:
            fields["priority"] = priority
        return fields

    def _watched(self, what: str, done: OnSent) -> OnSent:
        """``done``, telling the watcher (metrics) how long a pipelined send took once it succeeded."""
        watcher = self.watcher
        if watcher is None:
            return done
        started = time.perf_counter()

        def ended(result: Any, error: BaseException | None) -> None:
            if error is None:
                watcher.published(what, time.perf_counter() - started)
            done(result, error)

        return ended

    def _task_confirmed(self, confirm: asyncio.Future[Any], queue: str, done: OnSent, fallback: Any) -> None:
        exc = None if confirm.cancelled() else confirm.exception()
        if exc is None and not confirm.cancelled():
            done(None, None)
        elif isinstance(exc, aiormq.exceptions.PublishError):
            assert self._queues is not None
            self._queues.forget_queue(queue)  # deleted since it was declared: declare it on the next send
            done(None, Unroutable(f"the broker could not route the task to queue {queue!r}: {exc}"))
        else:
            fallback()

    def start_broadcast(self, body: bytes, *, headers: Mapping[str, Any] | None, done: OnSent) -> None:
        """Pipelined, as ``start_task``; sent once, as ``publish_broadcast`` is: a lost connection before the
        confirm is reported, not repeated."""
        if self._sender.closing:
            Transport.start_broadcast(self, body, headers=headers, done=done)
            return
        fields = {
            "mandatory": False, "message_id": self._next_message_id(), "content_type": protocol.CONTENT_TYPE,
            "delivery_mode": DeliveryMode.NOT_PERSISTENT.value, "headers": headers,
        }
        watched = self._watched("broadcast", done)  # the fallback ends in publish_broadcast, which tells the watcher
        self._pipelined.send(
            self.topology.message_exchange, protocol.BROADCAST_ROUTING_KEY, body, fields,
            lambda confirm: confirm.add_done_callback(lambda ended: watched(None, self._broadcast_failure(ended))),
            lambda: Transport.start_broadcast(self, body, headers=headers, done=done),
        )

    def _broadcast_failure(self, confirm: asyncio.Future[Any]) -> BaseException | None:
        if confirm.cancelled():
            return BrokerUnavailable("could not broadcast: the connection was closed before the broker confirmed it")
        if (exc := confirm.exception()) is None:
            return None
        return BrokerUnavailable(f"could not broadcast: the broker did not confirm it ({describe(exc)}); it was "
                                 f"sent once, as broadcasts are: send it again once the broker at {self.url} is back")

    async def publish_broadcast(self, body: bytes, *, headers: Mapping[str, Any] | None = None) -> None:
        """Sent once (at-most-once, as kiwipy's broadcasts are), after waiting for the connection if it is being
        re-established, and confirmed: ``client.broadcast()`` returns once the broker has routed it, so a
        broadcast followed at once by ``close()`` is not lost on the way (unconfirmed, it could be)."""
        assert self._link is not None, "call connect() first"
        fields = {
            "mandatory": False, "message_id": self._next_message_id(), "content_type": protocol.CONTENT_TYPE,
            "delivery_mode": DeliveryMode.NOT_PERSISTENT.value, "headers": headers,
        }
        watcher = self.watcher
        started = time.perf_counter() if watcher is not None else 0.0
        await self._sender.send_once(
            self._link.confirmed, self.topology.message_exchange, protocol.BROADCAST_ROUTING_KEY, body, fields,
            action="broadcast", late=f"no connection to the broker at {self.url}, or no confirm from it, within "
                                     f"{self.publish_timeout:g} s")
        if watcher is not None:
            watcher.published("broadcast", time.perf_counter() - started)

    async def reply(self, reply_to: str, body: bytes, *, correlation_id: str | None) -> None:
        """At-most-once, like the call it answers: not mandatory and not confirmed, so a reply whose caller has
        gone is dropped by the broker (a return would only be reported on a confirming channel, at a round trip
        per reply)."""
        assert self._link is not None, "call connect() first"
        fields = {
            "mandatory": False, "message_id": self._next_message_id(), "content_type": protocol.CONTENT_TYPE,
            "correlation_id": correlation_id,
        }
        watcher = self.watcher
        started = time.perf_counter() if watcher is not None else 0.0
        await self._sender.send_once(self._link.replies, "", reply_to, body, fields, action="reply",
                                     late=f"no connection to the broker at {self.url}")
        if watcher is not None:
            watcher.published("reply", time.perf_counter() - started)

    async def dead_letter(self, delivery: Delivery, headers: Mapping[str, Any]) -> None:
        assert self._dead_letters is not None, "call connect() first"
        watcher = self.watcher
        started = time.perf_counter() if watcher is not None else 0.0
        await self._dead_letters.dead_letter(delivery, headers)
        if watcher is not None:
            watcher.published("dead_letter", time.perf_counter() - started)

    async def retry_later(self, delivery: Delivery, delay: float, headers: Mapping[str, Any]) -> None:
        assert self._dead_letters is not None, "call connect() first"
        watcher = self.watcher
        started = time.perf_counter() if watcher is not None else 0.0
        await self._dead_letters.retry_later(delivery, delay, headers)
        if watcher is not None:
            watcher.published("retry", time.perf_counter() - started)

    # -- dead letters -------------------------------------------------------------------------------------------
    async def peek_dead_letters(self, limit: int | None = None) -> list[Delivery]:
        assert self._dead_letters is not None, "call connect() first"
        return await self._dead_letters.peek(limit)

    async def replay_dead_letters(self, route: ReplayRoute, *, limit: int | None = None) -> int:
        assert self._dead_letters is not None, "call connect() first"
        return await self._dead_letters.replay(route, limit=limit)

    async def purge_dead_letters(self) -> int:
        assert self._dead_letters is not None, "call connect() first"
        return await self._dead_letters.purge()

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
        assert self._link is not None, "call connect() first"
        async with self._link.consumer_channel(prefetch) as channel:
            try:
                exchange = await channel.declare_exchange(self.topology.message_exchange, ExchangeType.TOPIC)
                auto_delete, arguments = protocol.rpc_queue_arguments(self.topology.rpc_queue_type)
                queue = await channel.declare_queue(self.topology.rpc_queue(name), durable=True,
                                                    auto_delete=auto_delete, arguments=arguments)
                await queue.bind(exchange, protocol.rpc_routing_key(name))
                return await self._consume(channel, queue, on_delivery,
                                           (self.topology.message_exchange, protocol.rpc_routing_key(name)))
            except aiormq.exceptions.ChannelNotFoundEntity:
                with contextlib.suppress(Exception):
                    await channel.close()
                raise _QueueVanished from None

    async def consume_tasks(
        self, queue: str, on_delivery: OnDelivery, *, prefetch: int, exclusive: bool = False,
        queue_type: str | None = None, consumer_timeout: float | None = None, max_priority: int | None = None,
    ) -> Subscription:
        """Declare the queue with this worker's arguments (never passively: a worker must not run a queue of
        another type than it was configured for) and consume it. A queue that exists with other arguments is a
        ``QueueMismatch`` saying which argument differs and how to fix it, not an outage to retry."""
        assert self._link is not None and self._queues is not None, "call connect() first"
        queue_type = queue_type or self.topology.task_queue_type
        arguments = self.topology.task_queue_arguments(queue_type, max_priority)
        if "x-dead-letter-routing-key" in arguments:  # what the broker dead-letters needs somewhere to go
            await self._queues.dead_letter_queue()
        async with self._link.consumer_channel(prefetch) as channel:
            exchange = await channel.declare_exchange(self.topology.task_exchange, ExchangeType.TOPIC)
            try:
                task_queue = await channel.declare_queue(queue, durable=True, arguments=arguments)
            except aiormq.exceptions.ChannelPreconditionFailed as exc:
                with contextlib.suppress(Exception):
                    await channel.close()
                existing = await self._queues.existing_type(queue)
                raise QueueMismatch(queue_mismatch(exc, queue, queue_type, existing)) from None
            await task_queue.bind(exchange, queue)
            try:
                return await self._link.subscribe(
                    channel, task_queue, on_delivery, no_ack=False, exclusive=exclusive,
                    bindings=[(self.topology.task_exchange, queue)],
                    arguments=protocol.consumer_arguments(consumer_timeout), on_ack_timeout=self._ack_timeout_report)
            except aiormq.exceptions.ChannelAccessRefused as exc:  # the broker closed this consumer's channel
                with contextlib.suppress(Exception):
                    await channel.close()
                raise QueueInUse(f"could not consume the task queue {queue!r}: {describe(exc)}") from None

    async def consume_broadcasts(self, on_delivery: OnDelivery, *, prefetch: int) -> Subscription:
        assert self._link is not None, "call connect() first"
        async with self._link.consumer_channel(prefetch) as channel:
            exchange = await channel.declare_exchange(self.topology.message_exchange, ExchangeType.TOPIC)
            queue = await channel.declare_queue(
                exclusive=True, arguments=protocol.BROADCAST_QUEUE_ARGUMENTS
            )
            await queue.bind(exchange, protocol.BROADCAST_ROUTING_KEY)
            return await self._consume(channel, queue, on_delivery,
                                       (self.topology.message_exchange, protocol.BROADCAST_ROUTING_KEY))

    async def consume_schedule(self, queue: str, on_delivery: OnDelivery) -> tuple[Subscription, bool]:
        """A queue that exists with other arguments (declared by hand without single-active-consumer) is a
        ``QueueMismatch``: every replica would receive, and the lease would be gone."""
        assert self._link is not None, "call connect() first"
        async with self._link.consumer_channel(SCHEDULE_PREFETCH) as channel:
            try:
                declared = await channel.declare_queue(queue, durable=True, arguments=protocol.SCHEDULE_QUEUE_ARGUMENTS)
            except aiormq.exceptions.ChannelPreconditionFailed as exc:
                with contextlib.suppress(Exception):
                    await channel.close()
                raise QueueMismatch(f"the schedule queue {queue!r} exists with other arguments than "
                                    f"{protocol.SCHEDULE_QUEUE_ARGUMENTS} ({describe(exc)}); delete it, and the "
                                    f"replicas declare it again") from None
            found = declared.declaration_result
            vacant = not found.message_count and not found.consumer_count
            subscription = await self._link.subscribe(channel, declared, on_delivery, no_ack=False, bindings=[])
            return subscription, vacant

    async def publish_schedule(self, queue: str, body: bytes) -> None:
        assert self._link is not None, "call connect() first"
        fields = {
            "mandatory": True, "message_id": self._next_message_id(), "content_type": protocol.CONTENT_TYPE,
            "delivery_mode": DeliveryMode.PERSISTENT.value,
        }
        try:
            await self._sender.send_until_confirmed(self._link.confirmed, "", queue, body, fields,
                                                    action=f"send the state of the schedule {queue!r}")
        except aiormq.exceptions.PublishError as exc:
            raise Unroutable(f"the broker could not route the schedule state to {queue!r}: {exc}") from None

    async def _consume(
        self, channel: AbstractChannel, queue: AbstractQueue, on_delivery: OnDelivery, binding: tuple[str, str]
    ) -> Subscription:
        assert self._link is not None, "call connect() first"
        return await self._link.subscribe(channel, queue, on_delivery, no_ack=False, bindings=[binding],
                                          on_ack_timeout=self._ack_timeout_report)

    # -- control messages -----------------------------------------------------------------------------------------
    async def consume_control(self, on_request: OnDelivery) -> Subscription:
        assert self._link is not None, "call connect() first"
        return await control.consume_control(self._link, self.topology, on_request)

    async def survey(
        self, body: bytes, *, correlation_id: str, timeout: float, expected: int | None = None
    ) -> list[Delivery]:
        assert self._connection is not None, "call connect() first"
        return await control.survey(self._connection, self.topology, body, correlation_id=correlation_id,
                                    timeout=timeout, expected=expected)

    def _ack_timeout_report(self) -> OnAckTimeout | None:
        return self.on_ack_timeout

    # -- internals ----------------------------------------------------------------------------------------------
    def _confirmed_outlet(self) -> Outlet:
        assert self._link is not None, "call connect() first"
        return self._link.confirmed

    def _next_message_id(self) -> str:
        return f"{self._id_prefix}{next(self._id_counter):x}"

    def _on_calling_channel_closed(self, _sender: Any, exc: BaseException | None) -> None:
        self._sender.abandon_all()  # on the dead connection: abandoned, and tasks sent again on the next one
        self._pipelined.abandon()
        if self._sender.closing:
            return
        failed = self._calls.fail_all(
            "the connection to the broker was lost while waiting for the reply; the call may or may not have run"
        )
        if self._down:  # aio-pika may report one loss more than once: one warning per outage
            return
        self._down = True
        if self.watcher is not None:
            self.watcher.connection_changed(False, False)
        several = fails_over(self._connection)
        log.warning(
            "lost the connection to %s (%s); reconnecting every %g s%s, sends wait for it up to %g s%s",
            self._broker, describe(exc) if exc else "closed", self._reconnect_interval,
            " to the next broker of BROKER_URL in turn" if several else "", self.publish_timeout,
            f", {failed} RPCs waiting for replies fail" if failed else "",
        )

    def _on_requests_channel_closed(self, _sender: Any, exc: BaseException | None) -> None:
        """The broker drops what comes after the frame it closed a channel for: the calls sent on it would wait
        for their deadlines. (A lost connection closes it too; ``_on_calling_channel_closed`` reports that.)"""
        connection = self._connection
        if self._sender.closing or self._down or connection is None or not connection.connected.is_set():
            return  # the connection is lost or closed: not a refusal on this channel
        failed = self._calls.fail_all(
            f"the broker closed the channel carrying RPC requests ({describe(exc) if exc else 'closed'}); the call "
            f"may or may not have run"
        )
        if failed:
            log.warning("the broker closed the channel carrying RPC requests (%s); %d RPCs waiting for replies fail",
                        describe(exc) if exc else "closed", failed)

    def _on_reconnected(self, _sender: Any) -> None:
        self._down = False
        if self._queues is not None:
            self._queues.forget()
        if self.watcher is not None:
            self.watcher.connection_changed(True, True)
        lost, self._broker = self._broker, broker_of(self._connection) if self._connection else self._broker
        log.info("reconnected to %s%s", self._broker, f" (moved from {lost})" if lost != self._broker else "")


class _QueueVanished(BrokerUnavailable):
    """An auto-delete queue was deleted between its declaration and the consume."""
