"""``memory://``: an in-process broker with RabbitMQ's semantics, for tests, notebooks and the demo.

Same queues, same competing consumers and prefetch, same durable task queues, dead-letter queue, broadcast fan-out
and unroutable errors as the AMQP transport; bodies are the same bytes through the same codec. A broker is shared by
everything in the process that uses the same URL (``memory://`` or ``memory://name``), from any thread or loop:
deliveries run on the loop of the consumer that receives them.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .. import protocol
from ..errors import BrokerUnavailable, DeadlineExceeded, Unroutable
from ..limits import QUORUM_HIGH_PRIORITY, priority_levels, unheeded_priority
from .base import (
    SCHEDULE_PREFETCH,
    Delivery,
    OnDelivery,
    QueueInUse,
    QueueMismatch,
    ReplayRoute,
    Snapshot,
    Subscription,
    Topology,
    Transport,
)

__all__ = ["MemoryBroker", "MemoryTransport"]

log = logging.getLogger("otter.memory")


@dataclass
class _Message:
    body: bytes
    content_type: str | None
    headers: dict[str, Any]
    correlation_id: str | None
    reply_to: str | None = None
    expires_at: float | None = None  # an RPC request's deadline: dropped after it
    redelivered: bool = False
    dies_at: float | None = None  # a task's queue TTL: dead-lettered after it
    returned: int = 0  # times given back to its queue unacked (a quorum queue's delivery count)
    priority: int = 0
    message_id: str | None = None


@dataclass(eq=False)
class _Consumer:
    loop: asyncio.AbstractEventLoop
    on_delivery: OnDelivery
    prefetch: int
    unacked: int = 0
    active: bool = True
    exchange: str = ""  # a broadcast consumer hears only broadcasts sent to its message exchange


@dataclass
class _Queue:
    name: str
    auto_delete: bool = False
    messages: deque[_Message] = field(default_factory=deque)
    consumers: list[_Consumer] = field(default_factory=list)
    exclusive: bool = False  # its one consumer holds it for itself
    single_active: bool = False  # x-single-active-consumer: only its first consumer receives
    turn: itertools.count[int] = field(default_factory=itertools.count)
    # A task queue's RabbitMQ arguments (protocol.task_queue_arguments), as its first declaration gave them: what
    # the broker dead-letters (expired, past the delivery limit) and where to. None: declared without any.
    arguments: dict[str, Any] | None = None
    expiry_due: bool = False  # a check of its head's TTL is scheduled: one at a time, not one per message

    def argument(self, key: str) -> Any:
        return (self.arguments or {}).get(key)

    @property
    def priority_levels(self) -> int:
        """As RabbitMQ 4 orders it (``otter.limits.priority_levels``): 0 when the queue ignores priorities."""
        queue_type = str(self.argument("x-queue-type") or "classic")
        return priority_levels(queue_type, self.argument(protocol.MAX_PRIORITY_ARGUMENT), broker_major=None)

    def enqueue(self, message: _Message) -> None:
        """At the tail, or with priorities, behind every message of its level or higher (FIFO within a level; a
        quorum queue's two levels are kept strictly here, where RabbitMQ 4 serves them 2:1)."""
        levels = self.priority_levels if message.priority else 0
        if levels < 2:
            self.messages.append(message)
            return
        rank = self._rank(message, levels)
        position = len(self.messages)
        while position and self._rank(self.messages[position - 1], levels) < rank:
            position -= 1
        self.messages.insert(position, message)

    def _rank(self, message: _Message, levels: int) -> int:
        if self.argument("x-queue-type") == "quorum":
            return int(message.priority >= QUORUM_HIGH_PRIORITY)
        return min(message.priority, levels - 1)


class MemoryBroker:
    """The shared state behind ``memory://`` URLs; thread-safe."""

    _brokers: dict[str, MemoryBroker] = {}
    _registry_lock = threading.Lock()

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self.queues: dict[str, _Queue] = {}
        self.broadcast_consumers: list[_Consumer] = []
        self.control_consumers: list[_Consumer] = []  # each worker's control queue (docs/protocol.md)
        self.reply_targets: dict[str, tuple[asyncio.AbstractEventLoop, Any]] = {}
        # Messages waiting out a retry delay, and queue TTLs to enforce: (due, order, queue, message or None for a
        # TTL check of the queue), served by one thread while non-empty.
        self._delayed: list[tuple[float, int, str, _Message | None]] = []
        self._delay_order = itertools.count()
        self._delay_due = threading.Condition(self._lock)
        self._delay_thread: threading.Thread | None = None

    @classmethod
    def named(cls, name: str) -> MemoryBroker:
        with cls._registry_lock:
            return cls._brokers.setdefault(name, cls())

    @classmethod
    def reset(cls, name: str | None = None) -> None:
        """Forget one broker (or all): for test isolation."""
        with cls._registry_lock:
            if name is None:
                cls._brokers.clear()
            else:
                cls._brokers.pop(name, None)

    # -- queues -------------------------------------------------------------------------------------------------
    def declare(self, name: str, *, auto_delete: bool = False, arguments: Mapping[str, Any] | None = None) -> _Queue:
        """The queue ``name``, created if missing; ``arguments`` only count when they create it, as on RabbitMQ."""
        with self._lock:
            queue = self.queues.get(name)
            if queue is None:
                queue = self.queues[name] = _Queue(name, auto_delete)
                queue.arguments = None if arguments is None else dict(arguments)
            return queue

    def messages_in(self, name: str) -> list[_Message]:
        with self._lock:
            queue = self.queues.get(name)
            return list(queue.messages) if queue else []

    def publish(self, name: str, message: _Message, *, require_consumer: bool = False) -> None:
        with self._lock:
            queue = self.queues.get(name)
            if queue is None or (require_consumer and not queue.consumers):
                raise Unroutable(f"no queue {name!r} to route to")
            ttl = queue.argument("x-message-ttl")
            if ttl is not None and message.expires_at is None:
                message.dies_at = time.monotonic() + ttl / 1000
            queue.enqueue(message)
            self._schedule_expiry(queue)
            self._pump(queue)

    def publish_raw(
        self,
        queue: str | None,
        body: bytes,
        *,
        content_type: str | None = None,
        headers: Mapping[str, Any] | None = None,
        correlation_id: str | None = None,
        reply_to: str | None = None,
    ) -> None:
        """Put bytes with any properties on ``queue`` (``None``: to every broadcast consumer), as a raw AMQP client
        could: for tests and tools that must send what Otter itself never would."""
        message = _Message(body, content_type, dict(headers or {}), correlation_id, reply_to)
        if queue is None:
            self.broadcast(message)
        else:
            self.publish(queue, message)

    def publish_later(self, name: str, message: _Message, delay: float) -> None:
        """Publish to ``name`` after ``delay`` seconds, as RabbitMQ's delay queues do: from the broker, whatever
        happens to the event loop or the worker that asked."""
        with self._lock:
            self._schedule(time.monotonic() + delay, name, message)

    def _schedule(self, due: float, name: str, message: _Message | None) -> None:
        with self._lock:
            heapq.heappush(self._delayed, (due, next(self._delay_order), name, message))
            if self._delay_thread is None:
                self._delay_thread = threading.Thread(target=self._publish_when_due, name="otter-memory-delays",
                                                      daemon=True)
                self._delay_thread.start()
            self._delay_due.notify()

    def _publish_when_due(self) -> None:
        with self._lock:
            while self._delayed:
                now = time.monotonic()
                while self._delayed and self._delayed[0][0] <= now:
                    _, _, name, message = heapq.heappop(self._delayed)
                    if message is None:
                        self._expire(name)
                        continue
                    self.declare(name)
                    try:
                        self.publish(name, message)
                    except Exception:  # a consumer's loop died under it; the message stays queued
                        log.exception("delivering a delayed message to %r failed", name)
                if self._delayed:
                    self._delay_due.wait(self._delayed[0][0] - now)
            self._delay_thread = None

    def delayed(self, name: str) -> int:
        """How many messages are waiting out a retry delay before going to ``name``."""
        with self._lock:
            return sum(1 for item in self._delayed if item[2] == name and item[3] is not None)

    def _expire(self, name: str) -> None:
        """Dead-letter the messages at the head of ``name`` whose queue TTL has passed, as RabbitMQ does."""
        queue = self.queues.get(name)
        if queue is None:
            return
        queue.expiry_due = False
        now = time.monotonic()
        while queue.messages and (queue.messages[0].dies_at or now + 1) <= now:
            self._dead_letter(queue, queue.messages.popleft(), "expired")
        self._schedule_expiry(queue)

    def _schedule_expiry(self, queue: _Queue) -> None:
        """Check ``queue`` when its head's TTL runs out. The queue's TTL is one for all, so the head dies first;
        a message consumed before then leaves the check to find a younger head and schedule again."""
        if queue.expiry_due or not queue.messages or queue.messages[0].dies_at is None:
            return
        queue.expiry_due = True
        self._schedule(queue.messages[0].dies_at, queue.name, None)

    def _dead_letter(self, queue: _Queue, message: _Message, reason: str) -> None:
        """What RabbitMQ does with a message its queue drops: to the queue's dead-letter routing key, with an
        ``x-death`` record; dropped if the queue has none (a classic queue with kiwipy's arguments)."""
        target = queue.argument("x-dead-letter-routing-key")
        if target is None:
            return
        death = {"queue": queue.name, "reason": reason, "count": 1, "exchange": "", "routing-keys": [queue.name],
                 "time": int(time.time())}
        headers = {**message.headers, "x-death": [death], "x-first-death-queue": queue.name,
                   "x-first-death-reason": reason, "x-first-death-exchange": ""}
        self.declare(target)
        self.publish(target, _Message(message.body, message.content_type, headers, message.correlation_id,
                                      message.reply_to, message_id=message.message_id))

    def take(self, name: str, limit: int | None = None) -> list[_Message]:
        """Remove and return up to ``limit`` messages from the head of ``name``."""
        with self._lock:
            queue = self.queues.get(name)
            if queue is None:
                return []
            count = len(queue.messages) if limit is None else min(limit, len(queue.messages))
            return [queue.messages.popleft() for _ in range(count)]

    def add_consumer(
        self, name: str, consumer: _Consumer, *, auto_delete: bool = False, exclusive: bool = False
    ) -> _Queue:
        with self._lock:
            queue = self.declare(name, auto_delete=auto_delete)
            if queue.consumers and (exclusive or queue.exclusive):
                raise QueueInUse(f"queue {name!r} is in exclusive use" if queue.exclusive else
                                 f"queue {name!r} already has consumers; cannot consume it exclusively")
            queue.exclusive = exclusive
            queue.consumers.append(consumer)
            self._pump(queue)
            return queue

    def remove_consumer(self, queue: _Queue, consumer: _Consumer) -> None:
        with self._lock:
            consumer.active = False
            if consumer in queue.consumers:
                queue.consumers.remove(consumer)
                queue.exclusive = queue.exclusive and bool(queue.consumers)
            if queue.auto_delete and not queue.consumers:
                self.queues.pop(queue.name, None)
            elif queue.single_active:  # the next consumer takes over what is waiting
                self._pump(queue)

    def settle(self, queue: _Queue, consumer: _Consumer, message: _Message, *, requeue: bool) -> None:
        with self._lock:
            consumer.unacked -= 1
            if requeue and (queue.name in self.queues):
                message.redelivered = True
                message.returned += 1
                limit = queue.argument("x-delivery-limit")
                if limit is not None and message.returned > limit:
                    self._dead_letter(queue, message, "delivery_limit")
                else:
                    queue.messages.appendleft(message)
            self._pump(queue)

    def _pump(self, queue: _Queue) -> None:
        candidates = queue.consumers[:1] if queue.single_active else queue.consumers  # the lock holds them still
        while queue.messages and candidates:
            ready = [c for c in candidates if c.active and c.unacked < c.prefetch]
            if not ready:
                return
            message = queue.messages.popleft()
            if message.expires_at is not None and message.expires_at < time.monotonic():
                continue
            if message.dies_at is not None and message.dies_at <= time.monotonic():
                self._dead_letter(queue, message, "expired")
                continue
            consumer = ready[next(queue.turn) % len(ready)]
            consumer.unacked += 1
            self._send(consumer, MemoryDelivery(self, queue, consumer, message))

    # -- broadcasts and replies ---------------------------------------------------------------------------------
    def broadcast(self, message: _Message, exchange: str | None = None) -> None:
        """Deliver to the broadcast consumers of ``exchange`` (``None``: all of them, for raw test messages)."""
        with self._lock:
            consumers = [consumer for consumer in self.broadcast_consumers
                         if exchange is None or consumer.exchange == exchange]
        for consumer in consumers:
            self._send(consumer, MemoryDelivery(self, None, consumer, message))

    def control(self, message: _Message, exchange: str) -> None:
        """Deliver a control request to every control consumer of ``exchange`` (a fanout exchange)."""
        with self._lock:
            consumers = [consumer for consumer in self.control_consumers if consumer.exchange == exchange]
        for consumer in consumers:
            self._send(consumer, MemoryDelivery(self, None, consumer, message))

    @staticmethod
    def _send(consumer: _Consumer, delivery: Delivery) -> None:
        asyncio.run_coroutine_threadsafe(_deliver(consumer.on_delivery, delivery), consumer.loop)

    def reply(self, reply_to: str, message: _Message) -> None:
        with self._lock:
            target = self.reply_targets.get(reply_to)
        if target is None:  # a reply to nobody is dropped, as RabbitMQ drops it
            log.warning("reply %s to %r dropped: no such reply queue (the caller is gone)",
                        message.correlation_id, reply_to)
            return
        loop, callback = target
        with contextlib.suppress(RuntimeError):  # the caller's loop closed: it is gone too
            loop.call_soon_threadsafe(callback, message)


async def _deliver(on_delivery: OnDelivery, delivery: Delivery) -> None:
    await on_delivery(delivery)


class MemoryDelivery(Delivery):
    __slots__ = ("_broker", "_consumer", "_message", "_queue", "_settled")

    def __init__(
        self, broker: MemoryBroker, queue: _Queue | None, consumer: _Consumer | None, message: _Message
    ) -> None:
        super().__init__(
            message.body,
            queue=queue.name if queue else "",
            content_type=message.content_type,
            headers=message.headers,
            correlation_id=message.correlation_id,
            reply_to=message.reply_to,
            redelivered=message.redelivered,
            message_id=message.message_id,
            priority=message.priority,
        )
        self._broker, self._queue, self._consumer, self._message = broker, queue, consumer, message
        self._settled = False

    async def ack(self) -> None:
        self._settle(requeue=False)

    async def requeue(self) -> None:
        self._settle(requeue=True)

    def _settle(self, *, requeue: bool) -> None:
        if self._settled or self._queue is None or self._consumer is None:  # replies and broadcasts: nothing to settle
            return
        self._settled = True
        self._broker.settle(self._queue, self._consumer, self._message, requeue=requeue)


class MemorySubscription(Subscription):
    """A queue's consumer, or (``queue`` None) one of a fan-out's ``listeners`` (broadcast or control)."""

    def __init__(
        self, broker: MemoryBroker, queue: _Queue | None, consumer: _Consumer,
        listeners: list[_Consumer] | None = None,
    ) -> None:
        self._broker, self._queue, self._consumer = broker, queue, consumer
        self._listeners = broker.broadcast_consumers if listeners is None else listeners

    async def cancel(self) -> None:
        if self._queue is None:
            with self._broker._lock:
                if self._consumer in self._listeners:
                    self._listeners.remove(self._consumer)
        else:
            self._broker.remove_consumer(self._queue, self._consumer)


class MemoryTransport(Transport):
    def __init__(self, url: str, topology: Topology) -> None:
        self.url = url
        self.topology = topology
        self.broker = MemoryBroker.named(url.partition("://")[2] or "default")
        self._reply_to = protocol.reply_queue_name("memory", uuid.uuid4().hex)
        self._pending: dict[str, asyncio.Future[Delivery]] = {}
        self._subscriptions: list[Subscription] = []
        self._sent_to: set[str] = set()  # task queues this transport has sent to
        self._priority_checked: set[str] = set()  # task queues sent a priority, whether they heed it or not
        self._connected = False

    @property
    def connected(self) -> bool:
        return self._connected

    async def connect(self) -> None:
        self.broker.reply_targets[self._reply_to] = (asyncio.get_running_loop(), self._on_reply)
        self._connected = True
        if self.watcher is not None:
            self.watcher.connection_changed(True, False)

    async def close(self) -> None:
        self._connected = False
        self.broker.reply_targets.pop(self._reply_to, None)
        for subscription in self._subscriptions:
            await subscription.cancel()
        for future in self._pending.values():
            if not future.done():
                future.set_exception(BrokerUnavailable("the connection was closed before the reply arrived"))

    def _check(self) -> None:
        if not self._connected:
            raise BrokerUnavailable("the memory transport is not connected")

    # -- sending ------------------------------------------------------------------------------------------------
    async def call(
        self, name: str, body: bytes, *, correlation_id: str, timeout: float, headers: Mapping[str, Any]
    ) -> Delivery:
        self._check()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Delivery] = loop.create_future()
        self._pending[correlation_id] = future
        message = _Message(body, protocol.CONTENT_TYPE, dict(headers), correlation_id, self._reply_to,
                           expires_at=time.monotonic() + timeout)
        try:
            try:
                self.broker.publish(self.topology.rpc_queue(name), message, require_consumer=True)
            except Unroutable:
                raise Unroutable(f"nobody serves the RPC {name!r}") from None
            try:
                return await asyncio.wait_for(future, timeout)
            except asyncio.TimeoutError:
                raise DeadlineExceeded(f"no reply to the RPC {name!r} within {timeout:g} s") from None
        finally:
            self._pending.pop(correlation_id, None)

    async def publish_task(
        self, queue: str, body: bytes, *, correlation_id: str, headers: Mapping[str, Any] | None = None,
        message_id: str | None = None, delay: int = 0, reply: bool = False, priority: int | None = None,
    ) -> int | None:
        """A delayed task waits in the broker (``publish_later``), whatever happens to the sender, as on RabbitMQ."""
        self._check()
        first = queue not in self._sent_to
        self._sent_to.add(queue)
        declared = self.broker.declare(queue, arguments=self.topology.task_queue_arguments())
        if priority is not None and queue not in self._priority_checked:
            self._priority_checked.add(queue)
            if declared.priority_levels < 2:
                log.warning("%s", unheeded_priority(queue, declared.argument("x-queue-type"), self.url))
        message = _Message(body, protocol.CONTENT_TYPE, dict(headers or {}), correlation_id,
                           self._reply_to if reply else None, message_id=message_id, priority=priority or 0)
        if delay:
            self.broker.publish_later(queue, message, delay)
        else:
            self.broker.publish(queue, message)
        return len(declared.consumers) if first else None

    def expect_reply(self, correlation_id: str) -> asyncio.Future[Delivery]:
        future: asyncio.Future[Delivery] = asyncio.get_running_loop().create_future()
        self._pending[correlation_id] = future
        return future

    def forget_reply(self, correlation_id: str) -> None:
        self._pending.pop(correlation_id, None)

    async def publish_broadcast(self, body: bytes, *, headers: Mapping[str, Any] | None = None) -> None:
        self._check()
        message = _Message(body, protocol.CONTENT_TYPE, dict(headers or {}), None)
        self.broker.broadcast(message, self.topology.message_exchange)

    async def reply(self, reply_to: str, body: bytes, *, correlation_id: str | None) -> None:
        self.broker.reply(reply_to, _Message(body, protocol.CONTENT_TYPE, {}, correlation_id))

    async def dead_letter(self, delivery: Delivery, headers: Mapping[str, Any]) -> None:
        dlq = self.topology.dead_letter_queue
        self.broker.declare(dlq)
        self.broker.publish(dlq, _Message(
            delivery.body, delivery.content_type,
            {**protocol.forwarded_headers(delivery.headers), **headers, protocol.QUEUE_HEADER: delivery.queue},
            delivery.correlation_id, message_id=protocol.task_id_of(delivery.message_id, delivery.correlation_id),
            priority=delivery.priority or 0,
        ))
        await delivery.ack()

    async def retry_later(self, delivery: Delivery, delay: float, headers: Mapping[str, Any]) -> None:
        self._check()
        headers = {**protocol.forwarded_headers(delivery.headers), **headers}
        copy = _Message(delivery.body, delivery.content_type, headers, delivery.correlation_id, delivery.reply_to,
                        message_id=protocol.task_id_of(delivery.message_id, delivery.correlation_id),
                        priority=delivery.priority or 0)
        self.broker.publish_later(delivery.queue, copy, max(0.0, delay))
        await delivery.ack()

    # -- dead letters -------------------------------------------------------------------------------------------
    async def peek_dead_letters(self, limit: int | None = None) -> list[Delivery]:
        messages = self.broker.messages_in(self.topology.dead_letter_queue)
        return [_snapshot(message, self.topology.dead_letter_queue) for message in messages[:limit]]

    async def replay_dead_letters(self, route: ReplayRoute, *, limit: int | None = None) -> int:
        dlq = self.topology.dead_letter_queue
        moved = 0
        with self.broker._lock:
            queue = self.broker.queues.get(dlq)
            if queue is None:
                return 0
            kept: list[_Message] = []
            while queue.messages and (limit is None or moved < limit):
                message = queue.messages.popleft()
                target = route(_snapshot(message, dlq))
                if target is None:
                    kept.append(message)
                    continue
                name, headers = target
                self.broker.declare(name)
                self.broker.publish(name, _Message(message.body, message.content_type, dict(headers),
                                                   message.correlation_id, message_id=message.message_id,
                                                   priority=message.priority))
                moved += 1
            queue.messages.extendleft(reversed(kept))
        return moved

    async def purge_dead_letters(self) -> int:
        return len(self.broker.take(self.topology.dead_letter_queue))

    def _on_reply(self, message: _Message) -> None:
        future = self._pending.pop(message.correlation_id or "", None)
        if future is not None and not future.done():
            future.set_result(MemoryDelivery(self.broker, None, None, message))

    # -- receiving ----------------------------------------------------------------------------------------------
    async def consume_rpc(self, name: str, on_delivery: OnDelivery, *, prefetch: int) -> Subscription:
        return self._consume(self.topology.rpc_queue(name), on_delivery, prefetch, auto_delete=True)

    async def consume_tasks(
        self, queue: str, on_delivery: OnDelivery, *, prefetch: int, exclusive: bool = False,
        queue_type: str | None = None, consumer_timeout: float | None = None, max_priority: int | None = None,
    ) -> Subscription:
        """``consumer_timeout`` is the broker's business: this broker has no acknowledgement timeout."""
        queue_type = queue_type or self.topology.task_queue_type
        arguments = self.topology.task_queue_arguments(queue_type, max_priority)
        existing = self.broker.declare(queue, arguments=arguments).arguments
        if existing is not None and existing != arguments:
            theirs = str(existing.get("x-queue-type", "classic"))
            raise QueueMismatch(
                f"the task queue {queue!r} exists as a {theirs} queue with {existing}, but this worker declares it as "
                f"a {queue_type} queue with {arguments}; set TASK_QUEUE_TYPE, TASK_MESSAGE_TTL, "
                f"TASK_DELIVERY_LIMIT and TASK_MAX_PRIORITY (or add_task(max_priority=...)) to match the queue"
            )
        return self._consume(queue, on_delivery, prefetch, auto_delete=False, exclusive=exclusive)

    async def consume_broadcasts(self, on_delivery: OnDelivery, *, prefetch: int) -> Subscription:
        return self._listen(self.broker.broadcast_consumers, self.topology.message_exchange, on_delivery, prefetch)

    # -- control messages -----------------------------------------------------------------------------------------
    async def consume_control(self, on_request: OnDelivery) -> Subscription:
        """Cancelled by ``close``, as RabbitMQ deletes an exclusive queue with its connection."""
        return self._listen(self.broker.control_consumers, self.topology.control_exchange, on_request, 10)

    async def survey(
        self, body: bytes, *, correlation_id: str, timeout: float, expected: int | None = None
    ) -> list[Delivery]:
        self._check()
        loop = asyncio.get_running_loop()
        replies: list[Delivery] = []
        enough = asyncio.Event()
        reply_to = protocol.reply_queue_name("memory.survey", uuid.uuid4().hex)

        def on_reply(message: _Message) -> None:
            if message.correlation_id != correlation_id:
                return
            replies.append(MemoryDelivery(self.broker, None, None, message))
            if expected is not None and len(replies) >= expected:
                enough.set()

        with self.broker._lock:
            self.broker.reply_targets[reply_to] = (loop, on_reply)
        try:
            request = _Message(body, protocol.CONTENT_TYPE, {}, correlation_id, reply_to,
                               expires_at=time.monotonic() + timeout)
            self.broker.control(request, self.topology.control_exchange)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(enough.wait(), timeout)
        finally:
            with self.broker._lock:
                self.broker.reply_targets.pop(reply_to, None)
        return list(replies)

    def _listen(
        self, listeners: list[_Consumer], exchange: str, on_delivery: OnDelivery, prefetch: int
    ) -> Subscription:
        """A consumer of every message fanned out to ``exchange`` (broadcasts, control requests)."""
        self._check()
        consumer = _Consumer(asyncio.get_running_loop(), on_delivery, prefetch, exchange=exchange)
        with self.broker._lock:
            listeners.append(consumer)
        subscription = MemorySubscription(self.broker, None, consumer, listeners)
        self._subscriptions.append(subscription)
        return subscription

    async def consume_schedule(self, queue: str, on_delivery: OnDelivery) -> tuple[Subscription, bool]:
        self._check()
        declared = self.broker.declare(queue, arguments=protocol.SCHEDULE_QUEUE_ARGUMENTS)
        declared.single_active = True
        vacant = not declared.messages and not declared.consumers
        return self._consume(queue, on_delivery, SCHEDULE_PREFETCH, auto_delete=False), vacant

    async def publish_schedule(self, queue: str, body: bytes) -> None:
        self._check()
        self.broker.declare(queue, arguments=protocol.SCHEDULE_QUEUE_ARGUMENTS).single_active = True
        self.broker.publish(queue, _Message(body, protocol.CONTENT_TYPE, {}, None))

    def _consume(
        self, name: str, on_delivery: OnDelivery, prefetch: int, *, auto_delete: bool, exclusive: bool = False
    ) -> Subscription:
        self._check()
        consumer = _Consumer(asyncio.get_running_loop(), on_delivery, prefetch)
        queue = self.broker.add_consumer(name, consumer, auto_delete=auto_delete, exclusive=exclusive)
        subscription = MemorySubscription(self.broker, queue, consumer)
        self._subscriptions.append(subscription)
        return subscription


def _snapshot(message: _Message, queue: str) -> Snapshot:
    return Snapshot(message.body, queue=queue, content_type=message.content_type, headers=dict(message.headers),
                    correlation_id=message.correlation_id, reply_to=message.reply_to, message_id=message.message_id,
                    priority=message.priority or None)

