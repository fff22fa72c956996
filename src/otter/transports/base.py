"""The transport contract: move bytes between queues, nothing more.

A transport never decodes a body nor decides what a message means; ``core`` does, the same way for
every transport, which is what lets one contract test suite run against RabbitMQ and the in-memory broker.
All methods are coroutines and run on the event loop the transport was connected on.
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from .. import protocol
from ..config import DEFAULTS
from ..errors import BrokerUnavailable, ConfigurationError

__all__ = [
    "SCHEDULE_PREFETCH",
    "AckTimeout",
    "Delivery",
    "OnAckTimeout",
    "OnDelivery",
    "OnSent",
    "QueueInUse",
    "QueueMismatch",
    "ReplayRoute",
    "Snapshot",
    "Subscription",
    "Topology",
    "Transport",
    "TransportWatcher",
]


@dataclass(frozen=True, slots=True)
class Topology:
    """The names of exchanges and queues; the defaults are kiwipy's (see ``config.DEFAULTS``)."""

    message_exchange: str
    task_exchange: str
    default_task_queue: str
    rpc_queue_prefix: str
    dead_letter_queue: str
    # How task queues are declared when this side creates them (see protocol.task_queue_arguments).
    task_queue_type: str = "classic"
    task_message_ttl_ms: int | None = protocol.KiwipyDefaults.TASK_MESSAGE_TTL
    task_delivery_limit: int = 20
    rpc_queue_type: str = "classic"  # see protocol.rpc_queue_arguments
    control_exchange: str = DEFAULTS["CONTROL_EXCHANGE"]  # fanout: status requests (docs/protocol.md)
    task_max_priority: int | None = None  # TASK_MAX_PRIORITY: classic task queues' x-max-priority

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Topology:
        ttl = config.get("TASK_MESSAGE_TTL", DEFAULTS["TASK_MESSAGE_TTL"])
        return cls(
            message_exchange=config["MESSAGE_EXCHANGE"],
            task_exchange=config["TASK_EXCHANGE"],
            default_task_queue=config["DEFAULT_TASK_QUEUE"],
            rpc_queue_prefix=config["RPC_QUEUE_PREFIX"],
            dead_letter_queue=config["DEAD_LETTER_QUEUE"],
            task_queue_type=str(config.get("TASK_QUEUE_TYPE", DEFAULTS["TASK_QUEUE_TYPE"])),
            task_message_ttl_ms=round(float(ttl) * 1000) or None if ttl else None,
            task_delivery_limit=int(config.get("TASK_DELIVERY_LIMIT", DEFAULTS["TASK_DELIVERY_LIMIT"])),
            rpc_queue_type=str(config.get("RPC_QUEUE_TYPE", DEFAULTS["RPC_QUEUE_TYPE"])),
            control_exchange=str(config.get("CONTROL_EXCHANGE", DEFAULTS["CONTROL_EXCHANGE"])),
            task_max_priority=config.get("TASK_MAX_PRIORITY") or None,
        )

    def rpc_queue(self, name: str) -> str:
        return f"{self.rpc_queue_prefix}{name}"

    def task_queue_arguments(self, queue_type: str | None = None, max_priority: int | None = None) -> dict[str, Any]:
        """The arguments a task queue of ``queue_type`` (default: ``TASK_QUEUE_TYPE``) is declared with;
        ``max_priority`` None: ``TASK_MAX_PRIORITY``, 0: none."""
        return protocol.task_queue_arguments(
            queue_type or self.task_queue_type, message_ttl_ms=self.task_message_ttl_ms,
            delivery_limit=self.task_delivery_limit, dead_letter_queue=self.dead_letter_queue,
            max_priority=self.task_max_priority if max_priority is None else max_priority,
        )


class Delivery(abc.ABC):
    """One received message. Exactly one of ``ack``/``requeue``/``dead_letter`` settles it (no-ops for RPC and
    broadcasts, which are settled on receipt)."""

    __slots__ = ("body", "content_type", "correlation_id", "headers", "message_id", "priority", "queue",
                 "redelivered", "reply_to")

    def __init__(
        self,
        body: bytes,
        *,
        queue: str,
        content_type: str | None = None,
        headers: Mapping[str, Any] | None = None,
        correlation_id: str | None = None,
        reply_to: str | None = None,
        redelivered: bool = False,
        message_id: str | None = None,
        priority: int | None = None,
    ) -> None:
        self.body = body
        self.queue = queue
        self.content_type = content_type
        self.headers: Mapping[str, Any] = headers or {}
        self.correlation_id = correlation_id
        self.reply_to = reply_to
        self.redelivered = redelivered
        self.message_id = message_id
        self.priority = priority  # a task's, which its retry and dead-letter copies keep

    @property
    def orphaned(self) -> bool:
        """Its channel is gone (closed by the broker, or the connection lost): the broker has put it back on its
        queue, so it can no longer be settled here and must not start."""
        return False

    @abc.abstractmethod
    async def ack(self) -> None: ...

    @abc.abstractmethod
    async def requeue(self) -> None: ...


class Snapshot(Delivery):
    """A message read for inspection and left on its queue: settling it does nothing."""

    __slots__ = ()

    async def ack(self) -> None:
        return None

    async def requeue(self) -> None:
        return None


OnDelivery = Callable[[Delivery], Awaitable[None]]
# A schedule queue's consumer prefetch: its state message, and the few duplicates that replicas starting at once (or a
# crash between a send and an ack) may add, which the holder merges.
SCHEDULE_PREFETCH = 10
# How a send begun with ``Transport.start_task``/``start_broadcast`` ended: ``(result, None)`` or ``(None, error)``.
OnSent = Callable[[Any, "BaseException | None"], None]


@dataclass(frozen=True, slots=True)
class AckTimeout:
    """The broker closed a consumer's channel because a delivery stayed unacked past its consumer timeout
    (``timeout`` seconds, when it said); every delivery of that channel went back to ``queue``."""

    queue: str
    timeout: float | None
    reason: str


OnAckTimeout = Callable[[AckTimeout], None]
# Where a replayed dead letter goes: ``(queue, headers)``, or ``None`` to leave it in the dead-letter queue.
ReplayRoute = Callable[[Delivery], "tuple[str, Mapping[str, Any]] | None"]


class QueueInUse(ConfigurationError):
    """A consumer could not start: another consumer holds the queue for itself, or it asked to hold a queue that
    others already consume."""


class QueueMismatch(ConfigurationError):
    """A worker's task queue exists with other arguments (another type, TTL or delivery limit) than the worker
    declares; the broker refuses such a declaration, and reconnecting cannot change that."""


class Subscription(abc.ABC):
    """A running consumer; ``cancel`` stops new deliveries (those already delivered still settle). ``active`` is
    False while it could not be started again after a reconnection, or after the broker cancelled it (the worker
    is then not ready). ``queue`` is the name of the queue it consumes, where the transport knows it."""

    active = True
    queue = ""

    @abc.abstractmethod
    async def cancel(self) -> None: ...


class TransportWatcher(Protocol):
    """Told of each publish and of the connection going and coming back (``otter.metrics``); on the loop, quick."""

    def published(self, what: str, seconds: float) -> None:
        """``what`` (task, broadcast, reply, retry, dead_letter) took ``seconds`` until confirmed, or written."""

    def connection_changed(self, up: bool, reconnected: bool) -> None:
        """The connection is ``up`` now; ``reconnected``: it came back after a loss."""


class Transport(abc.ABC):
    """Moves bytes; see the module docstring. ``url`` is safe to log (no password). ``watcher`` is None unless
    metrics watch it, so an unwatched publish pays one attribute test."""

    url: str
    # Told when the broker closes a consumer's channel for an acknowledgement timeout (set by the worker).
    on_ack_timeout: OnAckTimeout | None = None
    watcher: TransportWatcher | None = None

    @property
    def connected(self) -> bool:
        """Whether the connection is up: False before ``connect``, during a reconnection and after ``close``."""
        return True
    # Whether ``start_task``/``start_broadcast`` are cheaper than awaiting ``publish_task``/``publish_broadcast``
    # (the communicator then uses them for awaited sends too).
    pipelines = False

    @abc.abstractmethod
    async def connect(self) -> None: ...

    @abc.abstractmethod
    async def close(self) -> None: ...

    # -- sending ------------------------------------------------------------------------------------------------
    @abc.abstractmethod
    async def call(
        self, name: str, body: bytes, *, correlation_id: str, timeout: float, headers: Mapping[str, Any]
    ) -> Delivery:
        """Send an RPC request and wait for its reply; raise ``Unroutable`` or ``DeadlineExceeded``."""

    @abc.abstractmethod
    async def publish_task(
        self, queue: str, body: bytes, *, correlation_id: str, headers: Mapping[str, Any] | None = None,
        message_id: str | None = None, delay: int = 0, reply: bool = False, priority: int | None = None,
    ) -> int | None:
        """Put a persistent task on the durable ``queue`` and return once the broker has it. When this send was the
        transport's first to ``queue``, return how many consumers the queue had (0: nobody runs it yet); else None.

        ``message_id`` is the task's id. ``delay`` (whole seconds, at most ``delays.MAX_DELAY``): the broker holds
        the task that long before it reaches ``queue``. ``reply``: the task asks for its outcome, sent to this
        transport's reply queue under ``correlation_id`` (see ``expect_reply``). ``priority`` (0-255) is the
        message's; the first send with one to a queue that ignores priorities logs a warning saying so
        (``otter.limits.unheeded_priority``)."""

    @abc.abstractmethod
    async def publish_broadcast(self, body: bytes, *, headers: Mapping[str, Any] | None = None) -> None: ...

    @abc.abstractmethod
    def expect_reply(self, correlation_id: str) -> asyncio.Future[Delivery]:
        """A future of the reply to a task sent with ``reply=True`` and this ``correlation_id``; on the loop, before
        the task is sent. It fails with ``BrokerUnavailable`` when the connection (and its reply queue) is lost."""

    @abc.abstractmethod
    def forget_reply(self, correlation_id: str) -> None:
        """Stop waiting for that reply (the caller gave up); one arriving later is dropped."""

    def start_task(
        self, queue: str, body: bytes, *, correlation_id: str, headers: Mapping[str, Any] | None, done: OnSent,
        message_id: str | None = None, delay: int = 0, priority: int | None = None,
    ) -> None:
        """``publish_task`` begun now, on the loop, with ``done`` told how it ended: the pipelined sends of the sync
        ``Client``, which must not cost a task per message where the transport can do better (AMQP's fast path)."""
        _begin(self.publish_task(queue, body, correlation_id=correlation_id, headers=headers, message_id=message_id,
                                 delay=delay, priority=priority), done)

    def start_broadcast(self, body: bytes, *, headers: Mapping[str, Any] | None, done: OnSent) -> None:
        """``publish_broadcast`` begun now; see ``start_task``."""
        _begin(self.publish_broadcast(body, headers=headers), done)

    @abc.abstractmethod
    async def reply(self, reply_to: str, body: bytes, *, correlation_id: str | None) -> None:
        """Send an RPC or task reply; a ``reply_to`` that no longer exists drops it silently."""

    @abc.abstractmethod
    async def dead_letter(self, delivery: Delivery, headers: Mapping[str, Any]) -> None:
        """Move a task to the dead-letter queue with ``headers`` saying why, then ack the original."""

    @abc.abstractmethod
    async def retry_later(self, delivery: Delivery, delay: float, headers: Mapping[str, Any]) -> None:
        """Put a copy of a task back on its queue after ``delay`` seconds, with ``headers`` replacing Otter's own,
        then ack the original. The copy waits in the broker, never in a worker, and is confirmed before the ack,
        so a crash in between can duplicate the task but never lose it."""

    # -- dead letters -------------------------------------------------------------------------------------------
    @abc.abstractmethod
    async def peek_dead_letters(self, limit: int | None = None) -> list[Delivery]:
        """The first ``limit`` (default: all) messages of the dead-letter queue, left where they are."""

    @abc.abstractmethod
    async def replay_dead_letters(self, route: ReplayRoute, *, limit: int | None = None) -> int:
        """Move up to ``limit`` dead letters back to the queues ``route`` picks (each confirmed before it leaves
        the dead-letter queue); the ones it returns ``None`` for stay. Returns how many moved."""

    @abc.abstractmethod
    async def purge_dead_letters(self) -> int:
        """Delete every dead letter; returns how many there were."""

    # -- receiving ----------------------------------------------------------------------------------------------
    @abc.abstractmethod
    async def consume_rpc(self, name: str, on_delivery: OnDelivery, *, prefetch: int) -> Subscription: ...

    @abc.abstractmethod
    async def consume_tasks(
        self, queue: str, on_delivery: OnDelivery, *, prefetch: int, exclusive: bool = False,
        queue_type: str | None = None, consumer_timeout: float | None = None, max_priority: int | None = None,
    ) -> Subscription:
        """Declare the durable task ``queue`` as ``queue_type`` (default ``TASK_QUEUE_TYPE``) with ``max_priority``
        (None: ``TASK_MAX_PRIORITY``; 0: none) and consume it;
        ``exclusive`` asks to be its only consumer. ``QueueInUse`` when another consumer has it exclusively, or when
        exclusivity is asked for and it has consumers already; ``QueueMismatch`` when it exists with other
        arguments. ``consumer_timeout``: seconds the broker may leave a delivery unacked (where it takes it per
        consumer)."""

    @abc.abstractmethod
    async def consume_broadcasts(self, on_delivery: OnDelivery, *, prefetch: int) -> Subscription: ...

    # -- control messages (otter services; docs/protocol.md, "Control messages") ------------------------------------
    @abc.abstractmethod
    async def consume_control(self, on_request: OnDelivery) -> Subscription:
        """Hear every request sent to the control exchange, on a queue of this connection's own (exclusive,
        server-named, settled on receipt) that goes when the connection goes: a killed process stops answering."""

    @abc.abstractmethod
    async def survey(
        self, body: bytes, *, correlation_id: str, timeout: float, expected: int | None = None
    ) -> list[Delivery]:
        """Send one control request to every listener, and return the replies that came within ``timeout``
        seconds (or as soon as ``expected`` came). The request expires with the survey."""

    # -- schedules (periodic tasks) -----------------------------------------------------------------------------
    @abc.abstractmethod
    async def consume_schedule(self, queue: str, on_delivery: OnDelivery) -> tuple[Subscription, bool]:
        """Declare the durable schedule ``queue`` with a single active consumer (``protocol.SCHEDULE_QUEUE_ARGUMENTS``)
        and consume it: of all its consumers, the broker delivers to one, the next taking over when it goes (the
        lease). Also returns whether the queue was vacant as this side declared it (no message, no consumer), when
        the schedule's state must be made anew."""

    @abc.abstractmethod
    async def publish_schedule(self, queue: str, body: bytes) -> None:
        """Put a persistent state message on the schedule ``queue``; return once the broker has it (confirmed)."""


_BEGUN: set[asyncio.Task[Any]] = set()  # the loop keeps only weak references to tasks


def _begin(coro: Any, done: OnSent) -> None:
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:  # called while the loop is being torn down (a coroutine closed by the collector)
        coro.close()
        done(None, BrokerUnavailable("the connection's event loop has stopped"))
        return
    task = loop.create_task(coro)
    _BEGUN.add(task)
    task.add_done_callback(lambda ended: _report(ended, done))


def _report(task: asyncio.Task[Any], done: OnSent) -> None:
    _BEGUN.discard(task)
    if task.cancelled():
        done(None, asyncio.CancelledError("the send was cancelled (the connection was closing)"))
    elif (exc := task.exception()) is not None:
        done(None, exc)
    else:
        done(task.result(), None)
