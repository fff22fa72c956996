"""The robust connection, its channels, and which path (fast or public) carries messages on them.

Channels: one with publisher confirms for tasks, retries, dead letters and broadcasts (which also consumes the
reply queue); one without for RPC requests (``mandatory``: an unroutable call comes back at once as a return, see
``aiormq_fixes``) and replies, the fast path; one per consumer so each has its own prefetch. On the public path RPC
requests go on the confirming channel instead, where aio-pika reports a return without any fix. The robust
connection re-opens all of them and their queues after a broker restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import aio_pika
import aiormq
import pamqp.exceptions
from aio_pika import ExchangeType
from aio_pika.abc import AbstractChannel, AbstractQueue, AbstractRobustConnection

from ...config import redact_url
from ...delays import DelayLevels
from ...errors import BrokerRefused, BrokerUnavailable
from ...limits import priority_levels, unheeded_priority
from ...protocol import TASK_QUEUE_ARGUMENTS, TASK_QUEUE_TYPES
from ..base import AckTimeout, OnAckTimeout, OnDelivery, Subscription, Topology
from . import fence
from .errors import ack_timeout, connect_failure, describe, existing_max_priority, quiet_outage_noise, translated
from .failover import FailoverConnection, shown
from .public import PublicOutlet, PublicSubscription
from .publishing import Outlet

__all__ = ["CONNECTION_NAME", "Link", "Queues", "broker_of", "connect", "fails_over", "named", "open_link"]

log = logging.getLogger("otter.amqp")

# RabbitMQ (3.10 to 4.0.5 at least, through Ra) records a new quorum queue's member in a DETS table it writes to disk
# up to ~3 s later; a node killed before then restarts the queue as a new, empty member that never elects a leader,
# and the messages it had confirmed are gone (docs/protocol.md, "Delayed tasks"). So a delayed send into delay levels
# created less than this many seconds ago counts as done only once the broker has outlived that.
NEW_QUORUM_QUEUE_SETTLE = 5.0




async def connect(
    raw_url: str, url: str, *, timeout: float, ssl_context: ssl.SSLContext | None, reconnect_interval: float
) -> AbstractRobustConnection:
    """aio-pika's robust connection, or ``BrokerUnavailable`` saying why not (``url`` is the redacted one).

    ``raw_url`` may name several brokers separated by ``;`` (as Celery's ``broker_url`` does): they are tried in
    order and the first that answers is used; when its connection is lost, the reconnection attempts go through
    the list from the next one on (``failover``). No URL reaches aio-pika with another one attached, so no password
    can leak through a broker's error message.
    """
    quiet_outage_noise()
    candidates = [part.strip() for part in raw_url.split(";") if part.strip()]
    brokers = candidates if len(candidates) > 1 and not fence.failover_problems() else []
    failures: list[BrokerUnavailable] = []
    for candidate in candidates:
        try:
            return await _connect_one(candidate, brokers, timeout=timeout, ssl_context=ssl_context,
                                      reconnect_interval=reconnect_interval)
        except BrokerUnavailable as exc:
            failures.append(exc)
    if len(failures) == 1:
        raise failures[0]
    refused = all(isinstance(failure, BrokerRefused) for failure in failures)
    reasons = "; ".join(str(failure) for failure in failures)
    raise (BrokerRefused if refused else BrokerUnavailable)(
        f"none of the {len(failures)} brokers of {url} could be reached: {reasons}"
    )


def fails_over(connection: AbstractRobustConnection | None) -> bool:
    """Whether ``connection`` moves to another broker when it is lost."""
    return isinstance(connection, FailoverConnection) and len(connection.brokers) > 1


def broker_of(connection: AbstractRobustConnection) -> str:
    """The (redacted) URL of the broker ``connection`` is on, or tries next."""
    if isinstance(connection, FailoverConnection):
        return connection.broker
    raw = shown(getattr(connection, "url", ""))
    return redact_url(raw) or raw


async def _connect_one(
    raw_url: str, brokers: list[str], *, timeout: float, ssl_context: ssl.SSLContext | None,
    reconnect_interval: float,
) -> AbstractRobustConnection:
    """A connection to ``raw_url``; with ``brokers`` (the whole list, ``raw_url`` among them), one that moves on
    through them when it is lost."""
    url = redact_url(raw_url) or raw_url
    options = _reconnect_options(raw_url, reconnect_interval)
    if brokers:
        options.update(connection_class=FailoverConnection, brokers=[named(broker) for broker in brokers])
    try:
        return await aio_pika.connect_robust(named(raw_url), timeout=timeout, ssl_context=ssl_context, **options)
    except (OSError, asyncio.TimeoutError, aiormq.exceptions.AMQPError, pamqp.exceptions.AMQPError, ConnectionError,
            RuntimeError) as exc:  # pamqp's: the broker's connection.close during the handshake (vhost, permissions)
        parts = urlsplit(raw_url)
        tls = parts.scheme.lower() == "amqps"
        where = f"{parts.hostname or 'localhost'}:{parts.port or (5671 if tls else 5672)}"
        why, refused = connect_failure(exc, tls, where)
        error = BrokerRefused if refused else BrokerUnavailable
        raise error(f"cannot connect to RabbitMQ at {url}: {why}") from None


CONNECTION_NAME = "otter"


def named(raw_url: str) -> str:
    """``raw_url`` with the ``name`` parameter aiormq sends as the ``connection_name`` client property, so that the
    management UI and ``rabbitmqctl list_connections`` tell Otter's connections apart.

    aio-pika drops ``client_properties=`` when it is given a URL, so the URL must carry the name; one the URL
    already names (``?name=billing``) is kept.
    """
    if any(key == "name" for key, _ in parse_qsl(urlsplit(raw_url).query, keep_blank_values=True)):
        return raw_url
    base, hash_, fragment = raw_url.partition("#")
    separator = "&" if urlsplit(base).query else ("" if base.endswith("?") else "?")
    return f"{base}{separator}name={CONNECTION_NAME}{hash_}{fragment}"


def _reconnect_options(raw_url: str, reconnect_interval: float) -> dict[str, Any]:
    """aio-pika reads these from the URL only when no keyword is given, so pass the URL's along with ours."""
    query = dict(parse_qsl(urlsplit(raw_url).query))
    options: dict[str, Any] = {"reconnect_interval": query.get("reconnect_interval", reconnect_interval)}
    for key in ("fail_fast", "interleave", "happy_eyeballs_delay"):
        if key in query:
            options[key] = query[key]
    return options


@dataclass(frozen=True)
class Link:
    """One connection's channels and the outlets that publish on them."""

    connection: AbstractRobustConnection
    confirming: AbstractChannel
    plain: AbstractChannel
    fast: bool
    confirmed: Outlet  # tasks, broadcasts, retries, dead letters, replays
    requests: Outlet  # RPC requests
    replies: Outlet
    retry_interval: float = 1.0  # between attempts to consume again a queue whose consumer the broker cancelled

    async def subscribe(
        self, channel: AbstractChannel, queue: AbstractQueue, on_delivery: OnDelivery, *, no_ack: bool,
        bindings: Sequence[tuple[str, str]], exclusive: bool = False, arguments: Mapping[str, Any] | None = None,
        on_ack_timeout: Callable[[], OnAckTimeout | None] | None = None,
    ) -> Subscription:
        """Consume ``queue`` on ``channel``, on this connection's path; ``exclusive``: as its only consumer;
        ``arguments``: basic.consume's. ``on_ack_timeout`` gives the callback (if any, when it happens) to tell
        when the broker closes the channel for a delivery left unacked too long; the robust channel then re-opens
        and the subscription consumes again, as after a reconnection. ``bindings`` (exchange, routing key) are the
        queue's: when the broker cancels the consumer (``cancels``), the queue is declared again as it was first,
        bound again, and consumed again."""
        subscription: Subscription
        declare_again = _declaration(self.connection, queue, bindings)
        if self.fast:
            from .fast import AmqpSubscription

            subscription = AmqpSubscription(channel, queue, on_delivery, no_ack=no_ack, exclusive=exclusive,
                                            arguments=arguments, declare_again=declare_again,
                                            retry_interval=self.retry_interval)
        else:
            subscription = PublicSubscription(queue, on_delivery, no_ack=no_ack, exclusive=exclusive,
                                              arguments=arguments, declare_again=declare_again,
                                              retry_interval=self.retry_interval)
        await subscription.start()
        if on_ack_timeout is not None:
            name = queue.name

            def on_close(_channel: Any, exc: BaseException | None) -> None:
                timed_out, timeout = ack_timeout(exc)
                report = on_ack_timeout() if timed_out else None
                if report is not None:
                    report(AckTimeout(name, timeout, describe(exc) if exc else ""))

            channel.close_callbacks.add(on_close)
        return subscription

    @contextlib.asynccontextmanager
    async def consumer_channel(self, prefetch: int) -> AsyncIterator[AbstractChannel]:
        with translated("start a consumer"):
            channel = await self.connection.channel(publisher_confirms=False)
            await channel.set_qos(prefetch_count=prefetch)
            yield channel

    @contextlib.asynccontextmanager
    async def reader(self, queue: str) -> AsyncIterator[AbstractQueue]:
        """The durable ``queue`` on a channel of its own: closing it returns every message not acked."""
        with translated(f"open {queue!r}"):
            channel = await self.connection.channel(publisher_confirms=False)
        try:
            with translated(f"open {queue!r}"):
                declared = await channel.declare_queue(queue, durable=True)
            yield declared
        finally:
            with contextlib.suppress(Exception):
                await channel.close()


async def open_link(connection: AbstractRobustConnection, topology: Topology, retry_interval: float) -> Link:
    """Open the two publishing channels and choose the path (``fence``) on them."""
    fence.apply()  # before the channels open: they bind aiormq's frame handlers then
    confirming = await connection.channel(publisher_confirms=True, on_return_raises=True)
    plain = await connection.channel(publisher_confirms=False)
    # Declared on this channel too so that it, when it re-opens (a call to a deleted exchange closes it), declares
    # the exchange again before the next call.
    await plain.declare_exchange(topology.message_exchange, ExchangeType.TOPIC)
    confirming_underlay = await confirming.get_underlay_channel()
    if fence.choose(confirming, confirming_underlay):
        from .fast import FastOutlet

        plain_outlet: Outlet = FastOutlet(plain, await plain.get_underlay_channel())
        return Link(connection, confirming, plain, True, FastOutlet(confirming, confirming_underlay),
                    plain_outlet, plain_outlet, retry_interval)
    confirmed = PublicOutlet(confirming)
    return Link(connection, confirming, plain, False, confirmed, confirmed, PublicOutlet(plain), retry_interval)


def _declaration(
    connection: AbstractRobustConnection, queue: AbstractQueue, bindings: Sequence[tuple[str, str]]
) -> Callable[[], Awaitable[None]]:
    """Declare ``queue`` again with the arguments it was first declared with, and bind it again. On a channel of
    its own: a refusal (someone declared it meanwhile with other arguments) closes only that channel, not the
    consumer's, whose re-opening would retry the same declaration."""

    async def declare() -> None:
        async with _scratch_channel(connection) as channel:
            await channel.queue_declare(queue.name, durable=queue.durable, exclusive=queue.exclusive,
                                        auto_delete=queue.auto_delete, arguments=queue.arguments)
            for exchange, routing_key in bindings:
                await channel.queue_bind(queue.name, exchange, routing_key=routing_key)

    return declare


class Queues:
    """Task queues, the dead-letter queue, retry delay queues and the delay levels of delayed tasks, as a sender and
    ``otter dlq`` see them: declared once per connection (and again after a return, or a reconnection: ``forget``).

    They are declared on channels that nothing restores: a durable queue needs no declaring again after a
    reconnection, and on a cluster a classic queue whose node is down cannot be declared through another node
    (RabbitMQ 4.0.5 answers NOT_FOUND "due to timeout" after about 67 s). Declared on a robust channel, it would
    stall aio-pika's restore of every channel after it, so a worker that moved off the lost node would serve
    nothing until that node came back."""

    def __init__(self, connection: AbstractRobustConnection, topology: Topology) -> None:
        self._connection, self._topology = connection, topology
        self.declared: set[str] = set()
        self.consumers: dict[str, int] = {}  # of a task queue, as its declaration found them (until taken)
        self.priorities_checked: set[str] = set()  # task queues sent a priority, whether they heed it or not
        self.delay_levels = DelayLevels(topology.task_exchange)
        self._levels_ready = 0  # delay levels 0 .. this - 1 are declared and bound on this connection
        self._delivers_to: set[str] = set()  # task queues the delivery exchange is bound to
        self._declaring_delays = asyncio.Lock()  # one declaration at a time: a burst of delayed sends waits for it
        self._levels_settle_at = 0.0  # loop time from which the delay levels this side created are on disk

    def ready(self, queue: str, priority: int | None) -> bool:
        """Whether a send to ``queue`` needs no ``task_queue`` first."""
        return queue in self.declared and (priority is None or queue in self.priorities_checked)

    async def task_queue(self, queue: str, priority: int | None = None) -> None:
        """``declare``, and with a ``priority``, see once whether the queue heeds it (``check_priorities``): a check
        that fails (the connection lost meanwhile) is not made again, and never fails the send."""
        await self.declare(queue)
        if priority is not None and queue not in self.priorities_checked:
            self.priorities_checked.add(queue)
            try:
                await self.check_priorities(queue)
            except Exception as exc:
                log.debug("could not tell whether task queue %r heeds priorities: %s", queue, describe(exc))

    async def check_priorities(self, queue: str) -> None:
        """Warn (once per connection and queue) when the existing ``queue`` ignores priorities: a classic queue
        without ``x-max-priority``, or a quorum queue on RabbitMQ before 4.0. Nothing is said when its arguments
        cannot be told (see ``existing``)."""
        queue_type, max_priority = await self.existing(queue)
        if queue_type is None:
            return
        server = self._connection.transport.connection.server_properties if self._connection.transport else {}
        version = str(server.get("version", ""))
        major = int(version.partition(".")[0]) if version.partition(".")[0].isdigit() else None
        if priority_levels(queue_type, max_priority, broker_major=major) < 2:
            log.warning("%s", unheeded_priority(queue, queue_type, f"RabbitMQ {version or '(version unknown)'}"))

    async def declare(self, queue: str) -> None:
        """Make sure ``queue`` exists before sending to it. A sender cannot know the type its workers gave the queue,
        and a declaration with other arguments is refused (closing the channel), so an existing queue is looked up
        passively and used as it is; a missing one is created with this side's ``TASK_QUEUE_TYPE`` (a worker that
        declares it otherwise is then told so, see ``consume_tasks``). Each step runs on a channel of its own,
        which the broker may close without harm."""
        if queue in self.declared:
            return
        with translated(f"declare the task queue {queue!r}"):
            consumers = await self._find_or_create(queue)
        self.declared.add(queue)
        self.consumers[queue] = consumers

    async def _find_or_create(self, queue: str) -> int:
        arguments = self._topology.task_queue_arguments()
        for _ in range(3):
            try:
                async with _scratch_channel(self._connection) as channel:
                    found = await channel.queue_declare(queue, passive=True)
                    await channel.queue_bind(queue, self._topology.task_exchange, routing_key=queue)
                    return int(found.consumer_count or 0)
            except aiormq.exceptions.ChannelNotFoundEntity:
                pass
            if "x-dead-letter-routing-key" in arguments:  # what the broker dead-letters needs somewhere to go
                await self.dead_letter_queue()
            try:
                async with _scratch_channel(self._connection) as channel:
                    created = await channel.queue_declare(queue, durable=True, arguments=arguments)
                    await channel.queue_bind(queue, self._topology.task_exchange, routing_key=queue)
                    return int(created.consumer_count or 0)
            except aiormq.exceptions.ChannelPreconditionFailed:
                pass  # a worker created it meanwhile, with other arguments: the passive look finds it
        raise BrokerUnavailable(f"could not declare the task queue {queue!r}: it kept appearing and disappearing")

    async def existing_type(self, queue: str) -> str | None:
        """The type of the existing ``queue`` (see ``existing``)."""
        return (await self.existing(queue))[0]

    async def existing(self, queue: str) -> tuple[str | None, int | None]:
        """The type and ``x-max-priority`` of the existing ``queue``, if it has the arguments Otter (or kiwipy) would
        give a queue of that type with this config, with or without priorities; (None, None) otherwise. AMQP has no
        way to read a queue's arguments: each guess (without ``x-max-priority``) is a declaration the broker accepts
        only if it changes nothing, and a refusal that names ``x-max-priority`` first says its value."""
        for queue_type in TASK_QUEUE_TYPES:
            guesses = [self._topology.task_queue_arguments(queue_type, max_priority=0)]
            if queue_type == "classic":
                guesses.append(dict(TASK_QUEUE_ARGUMENTS))
            for arguments in guesses:
                try:
                    async with _scratch_channel(self._connection) as channel:
                        await channel.queue_declare(queue, durable=True, arguments=arguments)
                        return queue_type, None
                except aiormq.exceptions.ChannelPreconditionFailed as exc:
                    if (max_priority := existing_max_priority(exc)) is not None:
                        return "classic", max_priority  # only classic queues take x-max-priority
        return None, None

    def forget(self) -> None:
        """After a reconnection (perhaps to another broker): check each queue again before its next use."""
        self.declared.clear()
        self._levels_ready = 0
        self._delivers_to.clear()

    def forget_queue(self, queue: str) -> None:
        """``queue`` was deleted since it was declared (a return): declare it, and bind it for delays, again."""
        self.declared.discard(queue)
        self._delivers_to.discard(queue)

    def delayed_to(self, queue: str, seconds: int) -> Callable[[], Awaitable[None]] | None:
        """What to declare before a task for ``queue`` delayed ``seconds`` is sent (None: all of it is there): the
        task queue, the delay levels the delay goes through, and the delivery exchange's binding to the queue.
        Lazily: a service that never delays a task declares none of it, and short delays only the low levels."""
        top = self.delay_levels.top(seconds)
        if self._delays_ready(queue, top):
            return None
        return lambda: self._declare_delays(queue, top)

    def _delays_ready(self, queue: str, top: int) -> bool:
        return top < self._levels_ready and queue in self._delivers_to and queue in self.declared

    async def _declare_delays(self, queue: str, top: int) -> None:
        async with self._declaring_delays:
            if self._delays_ready(queue, top):
                return  # declared by the send this one waited for
            await self.task_queue(queue)
            await self._declare_levels(queue, top)

    async def kept_by_new_levels(self) -> bool:
        """Whether a delayed task the broker has just confirmed is safe from a crash: at once when its delay levels
        are older than ``NEW_QUORUM_QUEUE_SETTLE``; else once that has passed, if the connection it was confirmed on
        still answers then (the broker outlived the window). False: send it again."""
        loop = asyncio.get_running_loop()
        wait = self._levels_settle_at - loop.time()
        if wait <= 0:
            return True
        confirmed_on = self._connection.transport
        await asyncio.sleep(wait)
        if confirmed_on is None or self._connection.transport is not confirmed_on:
            return False
        try:  # a round trip on the same connection, bounded: a broker's machine that died may never answer
            channel = await asyncio.wait_for(confirmed_on.connection.channel(), NEW_QUORUM_QUEUE_SETTLE)
            await asyncio.wait_for(channel.close(), NEW_QUORUM_QUEUE_SETTLE)
        except (aiormq.exceptions.AMQPError, ConnectionError, OSError, RuntimeError, asyncio.TimeoutError):
            return False
        return self._connection.transport is confirmed_on

    async def _declare_levels(self, queue: str, top: int) -> None:
        levels = self.delay_levels
        with translated("declare the delay levels of delayed tasks"):
            new = [levels.level(n) for n in range(self._levels_ready, top + 1)]
            creates = bool(new) and not await self._all_exist(new)
            async with _scratch_channel(self._connection) as channel:
                if top >= self._levels_ready:
                    await channel.exchange_declare(levels.delivery, exchange_type="topic", durable=True)
                    for n in range(self._levels_ready, top + 1):  # upwards: each binds to the level below it
                        await channel.exchange_declare(levels.level(n), exchange_type="topic", durable=True)
                        await channel.queue_declare(levels.level(n), durable=True,
                                                    arguments=levels.queue_arguments(n))
                        (level_queue, park), (below, pass_on) = levels.bindings(n)
                        await channel.queue_bind(level_queue, levels.level(n), routing_key=park)
                        await channel.exchange_bind(below, levels.level(n), routing_key=pass_on)
                    self._levels_ready = top + 1
                if queue not in self._delivers_to:
                    await channel.queue_bind(queue, levels.delivery, routing_key=levels.delivery_key(queue))
                    self._delivers_to.add(queue)
        if creates:
            self._levels_settle_at = asyncio.get_running_loop().time() + NEW_QUORUM_QUEUE_SETTLE
            log.info("created delay levels of delayed tasks (up to %s); the delayed sends of the next %g s return "
                     "only once RabbitMQ has them on disk", levels.level(top), NEW_QUORUM_QUEUE_SETTLE)

    async def _all_exist(self, queues: Sequence[str]) -> bool:
        """Whether every one of ``queues`` exists already (looked up passively: a missing one closes the channel)."""
        try:
            async with _scratch_channel(self._connection) as channel:
                for queue in queues:
                    await channel.queue_declare(queue, passive=True)
        except aiormq.exceptions.ChannelNotFoundEntity:
            return False
        return True

    async def dead_letter_queue(self) -> str:
        dlq = self._topology.dead_letter_queue
        if dlq not in self.declared:
            with translated("declare the dead-letter queue"):
                async with _scratch_channel(self._connection) as channel:
                    await channel.queue_declare(dlq, durable=True)
            self.declared.add(dlq)
        return dlq

    async def retry_queue(self, queue: str, arguments: dict[str, Any]) -> None:
        """Declared on every retry, which renews its ``x-expires`` lease."""
        with translated(f"declare the retry queue {queue!r}"):
            async with _scratch_channel(self._connection) as channel:
                await channel.queue_declare(queue, durable=True, arguments=arguments)


@contextlib.asynccontextmanager
async def _scratch_channel(connection: AbstractRobustConnection) -> AsyncIterator[aiormq.abc.AbstractChannel]:
    """A plain aiormq channel that nothing re-opens or restores: for steps the broker may answer by closing it."""
    transport = connection.transport
    if transport is None:
        raise BrokerUnavailable("no connection to the broker")
    channel = await transport.connection.channel()
    try:
        yield channel
    finally:
        if not channel.is_closed:
            with contextlib.suppress(Exception):
                await channel.close()
