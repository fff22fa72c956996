"""Read and write the broker below Otter, the same way on both transports.

Tests need what Otter's API deliberately hides or would never send: messages with any properties (a YAML content
type, a malformed task, text that is not UTF-8), the dead-letter queue, queue depths and consumer counts, and a
broker left tidy afterwards. ``RawBroker`` does all of it with the broker's own means, aio-pika on RabbitMQ and the
``MemoryBroker`` in process, and never through Otter's client or transports::

    with RawBroker.open(url, names) as raw:
        reply = raw.reply(raw.rpc("echo", b'"x"', content_type="application/json"))
        raw.task(queue, b"{not json")
        [letter] = raw.dead_letters(1)
        raw.depth(queue), raw.consumers(queue)
        raw.delete(queue)  # with the test's exchanges, default task queue and dead-letter queue

``names`` are the test's config names (``unique_names``); sending, dead letters and ``delete`` need them.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import json
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import aio_pika
import aiormq

from otter import protocol
from otter.delays import DelayLevels
from otter.transports.memory import MemoryBroker

__all__ = ["RawBroker", "RawMessage", "raw_key", "raw_text", "unique"]

T = TypeVar("T")


def unique(prefix: str) -> str:
    """A queue name no other test uses (task queues are not prefixed by config); ``delete`` it afterwards."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@dataclass(frozen=True)
class RawMessage:
    body: bytes
    headers: dict[str, Any]
    message_id: str | None = None
    reply_to: str | None = None


class RawBroker(abc.ABC):
    """Raw access to one test's exchanges and queues; ``RawBroker.open(url, names)`` picks the transport's side.

    Sending: ``rpc`` (to ``[rpc].<name>`` on the message exchange), ``task`` (the queue's name on the task exchange)
    and ``broadcast`` take the body as bytes and any message properties; the correlation id is made up unless given.
    An RPC's reply comes back on a reply queue of ours (``reply`` waits for it) unless ``reply_to`` says otherwise.
    ``hostile=True`` sends from a separate AMQP client that writes what aio-pika refuses to (see ``raw_text``).
    """

    def __init__(self, url: str, names: Mapping[str, Any] | None = None) -> None:
        self.url = url
        self.names = dict(names or {})
        self._replies: dict[str, bytes] = {}
        self._reply_arrived = threading.Condition()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @staticmethod
    def open(url: str, names: Mapping[str, Any] | None = None) -> RawBroker:
        """The raw side of ``url``'s broker: ``memory://`` in process, anything else over AMQP."""
        return MemoryRawBroker(url, names) if url.startswith("memory://") else AmqpRawBroker(url, names)

    @property
    def dead_letter_queue(self) -> str:
        return str(self.names["DEAD_LETTER_QUEUE"])

    # -- sending ------------------------------------------------------------------------------------------------
    @abc.abstractmethod
    def rpc(self, name: str, body: bytes, *, reply_to: str | None = "", hostile: bool = False,
            **properties: Any) -> str:
        """Send a raw RPC request and return its correlation id, to wait for with ``reply``. ``reply_to=None``
        asks for no reply, a string other than "" for one somewhere else."""

    @abc.abstractmethod
    def task(self, queue: str, body: bytes, *, hostile: bool = False, wants_reply: bool = False,
             **properties: Any) -> str:
        """Send a raw task to ``queue``; its correlation id. ``wants_reply``: with our ``reply_to``, as a sender
        waiting for the task's outcome sends it (wait for it with ``reply``)."""

    @abc.abstractmethod
    def broadcast(self, body: bytes, *, hostile: bool = False, **properties: Any) -> None:
        """Send a raw broadcast to every broadcast subscriber."""

    @abc.abstractmethod
    def put(self, queue: str, body: bytes, **properties: Any) -> None:
        """Put raw bytes straight on the existing ``queue`` (through the default exchange on RabbitMQ)."""

    def reply(self, correlation_id: str, timeout: float = 10.0) -> bytes:
        """The reply to a raw RPC; fails after ``timeout`` seconds."""
        with self._reply_arrived:
            if not self._reply_arrived.wait_for(lambda: correlation_id in self._replies, timeout):
                raise AssertionError(f"no reply to {correlation_id} within {timeout:g}s")
            return self._replies.pop(correlation_id)

    # -- reading ------------------------------------------------------------------------------------------------
    @abc.abstractmethod
    def dead_letters(self, count: int = 1, timeout: float = 5.0) -> list[RawMessage]:
        """Take messages off the test's dead-letter queue until there are ``count`` and return them all; fails
        if there are fewer after ``timeout`` seconds."""

    @abc.abstractmethod
    def take(self, queue: str, count: int) -> list[RawMessage]:
        """Remove the first ``count`` messages waiting in ``queue`` (fewer if there are fewer)."""

    @abc.abstractmethod
    def depth(self, queue: str) -> int | None:
        """How many messages wait in ``queue`` for a consumer (not counting those delivered and not yet acked);
        None if there is no such queue."""

    @abc.abstractmethod
    def consumers(self, queue: str) -> int | None:
        """How many consumers ``queue`` has, as the broker counts them; None if there is no such queue."""

    def declare_queue(self, queue: str, arguments: Mapping[str, Any]) -> int:
        """Declare a durable ``queue`` with ``arguments`` and return its message count: the broker refuses (and
        this raises) if it exists with other arguments. RabbitMQ only."""
        raise NotImplementedError("memory:// queues have no arguments")

    def exchange_exists(self, name: str) -> bool:
        """Whether the exchange ``name`` exists. RabbitMQ only."""
        raise NotImplementedError("memory:// has no exchanges")

    # -- tidying ------------------------------------------------------------------------------------------------
    @abc.abstractmethod
    def purge(self, queue: str) -> None:
        """Empty ``queue`` if it exists, so a test starts without another run's leftovers."""

    @abc.abstractmethod
    def delete(self, *queues: str) -> None:
        """Delete ``queues``, the test's default task queue and dead-letter queue, and its exchanges; what is
        already gone is fine."""

    def delete_issued(self, issued: list[Mapping[str, Any]]) -> None:
        """``delete`` for the names of many tests at once (the session's tidying up)."""
        kept = self.names
        try:
            for names in issued:
                self.names = dict(names)
                self.delete()
        finally:
            self.names = kept

    def delete_queue(self, queue: str) -> bool:
        """Delete ``queue`` alone, as an operator would, under its consumers; True if it existed. RabbitMQ only:
        the broker then cancels the consumers (``basic.cancel``)."""
        raise NotImplementedError("the in-process broker does not cancel consumers")

    def close(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
            self._loop.close()
            self._loop = self._thread = None

    def __enter__(self) -> RawBroker:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    # -- internals ----------------------------------------------------------------------------------------------
    def _event_loop(self) -> asyncio.AbstractEventLoop:
        """The loop that receives replies (and, over AMQP, runs every call), in a thread of its own."""
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
            self._thread = threading.Thread(target=self._loop.run_forever, name="raw-broker", daemon=True)
            self._thread.start()
        return self._loop

    def _store_reply(self, correlation_id: str | None, body: bytes) -> None:
        with self._reply_arrived:
            self._replies[correlation_id or ""] = body
            self._reply_arrived.notify_all()


class MemoryRawBroker(RawBroker):
    """``memory://``: straight into the in-process ``MemoryBroker`` of the URL's name."""

    def __init__(self, url: str, names: Mapping[str, Any] | None = None) -> None:
        super().__init__(url, names)
        self.broker = MemoryBroker.named(url.partition("://")[2] or "default")
        self.reply_to = f"raw.reply.{uuid.uuid4().hex}"

    def rpc(self, name: str, body: bytes, *, reply_to: str | None = "", hostile: bool = False,
            **properties: Any) -> str:
        self._refuse_hostile(hostile)
        if reply_to == "" and self.reply_to not in self.broker.reply_targets:
            self.broker.reply_targets[self.reply_to] = (self._event_loop(), self._on_reply)
        properties.setdefault("correlation_id", uuid.uuid4().hex)
        queue = f"{self.names['RPC_QUEUE_PREFIX']}{name}"
        self.broker.publish_raw(queue, body, reply_to=self.reply_to if reply_to == "" else reply_to, **properties)
        return str(properties["correlation_id"])

    def task(self, queue: str, body: bytes, *, hostile: bool = False, wants_reply: bool = False,
             **properties: Any) -> str:
        self._refuse_hostile(hostile)
        properties.setdefault("correlation_id", uuid.uuid4().hex)
        if wants_reply:
            self.broker.reply_targets.setdefault(self.reply_to, (self._event_loop(), self._on_reply))
            properties["reply_to"] = self.reply_to
        self.broker.declare(queue)
        self.broker.publish_raw(queue, body, **properties)
        return str(properties["correlation_id"])

    def broadcast(self, body: bytes, *, hostile: bool = False, **properties: Any) -> None:
        self._refuse_hostile(hostile)
        self.broker.publish_raw(None, body, **properties)

    def put(self, queue: str, body: bytes, **properties: Any) -> None:
        self.broker.publish_raw(queue, body, **properties)

    def dead_letters(self, count: int = 1, timeout: float = 5.0) -> list[RawMessage]:
        deadline = time.monotonic() + timeout
        found: list[RawMessage] = []
        while True:
            found += [RawMessage(m.body, dict(m.headers)) for m in self.broker.take(self.dead_letter_queue)]
            if len(found) >= count or time.monotonic() > deadline:
                break
            time.sleep(0.01)
        assert len(found) >= count, f"expected {count} dead letters within {timeout} s, got {len(found)}"
        return found

    def take(self, queue: str, count: int) -> list[RawMessage]:
        return [RawMessage(m.body, dict(m.headers), m.message_id, m.reply_to) for m in self.broker.take(queue, count)]

    def depth(self, queue: str) -> int | None:
        return len(self.broker.messages_in(queue)) if queue in self.broker.queues else None

    def consumers(self, queue: str) -> int | None:
        found = self.broker.queues.get(queue)
        return None if found is None else len(found.consumers)

    def purge(self, queue: str) -> None:
        self.broker.take(queue)

    def delete(self, *queues: str) -> None:
        """The in-process broker has no exchanges to delete; the ``broker_url`` fixture forgets all of it."""
        for queue in {*queues, self.names.get("DEFAULT_TASK_QUEUE"), self.names.get("DEAD_LETTER_QUEUE")}:
            if queue is not None:
                self.broker.queues.pop(queue, None)

    def close(self) -> None:
        self.broker.reply_targets.pop(self.reply_to, None)
        super().close()

    def _on_reply(self, message: Any) -> None:
        self._store_reply(message.correlation_id, message.body)

    @staticmethod
    def _refuse_hostile(hostile: bool) -> None:
        if hostile:
            raise NotImplementedError("memory:// hands bytes over in process: there is no frame encoding to break")


DELETING_CHANNELS = 8  # deletes in flight at once when tidying up


async def _exchange_exists(connection: aio_pika.abc.AbstractConnection, exchange: str) -> bool:
    channel = await connection.channel()
    try:
        await channel.declare_exchange(exchange, passive=True)
    except aiormq.exceptions.ChannelNotFoundEntity:
        return False
    await channel.close()
    return True


async def _delete_each(connection: aio_pika.abc.AbstractConnection, work: list[tuple[str, str]]) -> None:
    """Delete each ``(kind, name)`` in turn on a channel of its own; what is already gone is fine."""
    channel = await connection.channel()
    for kind, name in work:
        if channel.is_closed:
            channel = await connection.channel()
        with contextlib.suppress(aio_pika.exceptions.AMQPError):
            if kind == "queue":
                await channel.queue_delete(name)
            else:
                await channel.exchange_delete(name)
    if not channel.is_closed:
        await channel.close()


class AmqpRawBroker(RawBroker):
    """RabbitMQ through aio-pika: one connection, opened at first use (and again after a broker restart), whose
    publishing channel has publisher confirms and takes replies on direct reply-to."""

    reply_to = "amq.rabbitmq.reply-to"

    def __init__(self, url: str, names: Mapping[str, Any] | None = None) -> None:
        super().__init__(url, names)
        self._connection: aio_pika.abc.AbstractConnection | None = None
        self._publisher: aio_pika.abc.AbstractChannel | None = None

    # -- sending ------------------------------------------------------------------------------------------------
    def rpc(self, name: str, body: bytes, *, reply_to: str | None = "", hostile: bool = False,
            **properties: Any) -> str:
        if hostile and reply_to == "":
            raise ValueError("a hostile client cannot take replies on our direct reply-to: pass reply_to")
        properties.setdefault("correlation_id", uuid.uuid4().hex)
        properties["reply_to"] = self.reply_to if reply_to == "" else reply_to
        self._send(self.names["MESSAGE_EXCHANGE"], protocol.rpc_routing_key(name), body, hostile, properties)
        return properties["correlation_id"]  # a string, unless a hostile client sends raw_text

    def task(self, queue: str, body: bytes, *, hostile: bool = False, wants_reply: bool = False,
             **properties: Any) -> str:
        properties.setdefault("correlation_id", uuid.uuid4().hex)
        if wants_reply:
            properties["reply_to"] = self.reply_to
        self._send(self.names["TASK_EXCHANGE"], queue, body, hostile, properties)
        return properties["correlation_id"]  # a string, unless a hostile client sends raw_text

    def broadcast(self, body: bytes, *, hostile: bool = False, **properties: Any) -> None:
        self._send(self.names["MESSAGE_EXCHANGE"], protocol.BROADCAST_ROUTING_KEY, body, hostile, properties)

    def put(self, queue: str, body: bytes, **properties: Any) -> None:
        self._send("", queue, body, False, properties)

    def _send(self, exchange: str, routing_key: str, body: bytes, hostile: bool, properties: dict[str, Any]) -> None:
        if hostile:
            _publish_hostile(self.url, exchange, routing_key, body, properties)
        else:
            self._run(self._publish(exchange, routing_key, body, properties))

    async def _publish(self, exchange: str, routing_key: str, body: bytes, properties: dict[str, Any]) -> None:
        channel = await self._publishing_channel()
        target = await channel.get_exchange(exchange, ensure=False)
        await target.publish(aio_pika.Message(body, **properties), routing_key)

    # -- reading ------------------------------------------------------------------------------------------------
    def dead_letters(self, count: int = 1, timeout: float = 5.0) -> list[RawMessage]:
        async def take() -> list[RawMessage]:
            deadline = time.monotonic() + timeout
            found: list[RawMessage] = []
            async with await (await self._connected()).channel() as channel:
                queue = await channel.declare_queue(self.dead_letter_queue, durable=True)
                while len(found) < count and time.monotonic() < deadline:
                    message = await queue.get(no_ack=True, fail=False)
                    if message is None:
                        await asyncio.sleep(0.01)
                    else:
                        found.append(RawMessage(message.body, dict(message.headers)))
            return found

        found = self._run(take(), timeout + 10)
        assert len(found) >= count, f"expected {count} dead letters within {timeout} s, got {len(found)}"
        return found

    def take(self, queue: str, count: int) -> list[RawMessage]:
        async def take() -> list[RawMessage]:
            found: list[RawMessage] = []
            async with await (await self._connected()).channel() as channel:
                declared = await channel.get_queue(queue, ensure=True)
                while len(found) < count:
                    message = await declared.get(no_ack=True, fail=False)
                    if message is None:
                        break
                    found.append(RawMessage(message.body, dict(message.headers), message.message_id,
                                            message.reply_to))
            return found

        return self._run(take())

    def depth(self, queue: str) -> int | None:
        result = self._run(self._declare(queue, None))
        return None if result is None else int(result.message_count or 0)

    def consumers(self, queue: str) -> int | None:
        result = self._run(self._declare(queue, None))
        return None if result is None else int(result.consumer_count or 0)

    def declare_queue(self, queue: str, arguments: Mapping[str, Any]) -> int:
        result = self._run(self._declare(queue, arguments))
        assert result is not None
        return int(result.message_count or 0)

    def exchange_exists(self, name: str) -> bool:
        async def check() -> bool:
            async with await (await self._connected()).channel() as channel:
                try:
                    await channel.get_exchange(name, ensure=True)
                except aiormq.exceptions.ChannelNotFoundEntity:
                    return False
                return True

        return self._run(check())

    async def _declare(self, queue: str, arguments: Mapping[str, Any] | None) -> Any:
        """The broker's answer to declaring ``queue`` (passively without ``arguments``); None if it does not exist."""
        channel = await (await self._connected()).channel()
        try:
            if arguments is None:
                declared = await channel.declare_queue(queue, passive=True)
            else:
                declared = await channel.declare_queue(queue, durable=True, arguments=dict(arguments))
        except aiormq.exceptions.ChannelNotFoundEntity:
            return None  # the broker closed the channel
        await channel.close()
        return declared.declaration_result

    # -- tidying ------------------------------------------------------------------------------------------------
    def purge(self, queue: str) -> None:
        async def purge() -> None:
            channel = await (await self._connected()).channel()
            with contextlib.suppress(aiormq.exceptions.ChannelNotFoundEntity):
                await (await channel.declare_queue(queue, passive=True)).purge()
                await channel.close()

        self._run(purge())

    def delete(self, *queues: str) -> None:
        """Deleting an exchange costs the broker 1-7 ms (a Mnesia transaction), even one that does not exist, and
        the 21 of the delay levels made this the bulk of every test's teardown and 10-25 s at the end of each xdist
        worker's session: so the delay levels only when the test declared them (their delivery exchange, declared
        first, exists). Each test's names are deleted one after another on one channel: RabbitMQ 3.10 crashes the
        channel, and closes the connection, when two channels delete exchanges bound to each other at once (the
        delay levels are; ``rabbit_exchange:callback(undefined, remove_bindings, ...)``). ``delete_issued`` spreads
        many tests' names over a few channels."""
        self._run(self._delete_names([(self.names, queues)]))

    def delete_issued(self, issued: list[Mapping[str, Any]]) -> None:
        self._run(self._delete_names([(names, ()) for names in issued]), timeout=300)

    async def _delete_names(self, sets: list[tuple[Mapping[str, Any], tuple[str, ...]]]) -> None:
        connection = await self._connected()
        checking = asyncio.Semaphore(DELETING_CHANNELS)

        async def doomed(names: Mapping[str, Any], queues: tuple[str, ...]) -> list[tuple[str, str]]:
            found = [*dict.fromkeys([*queues, *(names[key] for key in ("DEFAULT_TASK_QUEUE", "DEAD_LETTER_QUEUE")
                                                if key in names)])]
            exchanges = [names[key] for key in ("MESSAGE_EXCHANGE", "TASK_EXCHANGE", "CONTROL_EXCHANGE")
                         if key in names]
            if "TASK_EXCHANGE" in names:
                levels = DelayLevels(names["TASK_EXCHANGE"])
                async with checking:
                    delayed = await _exchange_exists(connection, levels.delivery)
                if delayed:
                    delay_exchanges, delay_queues = levels.names()
                    found += delay_queues
                    exchanges += delay_exchanges
            return [*(("queue", queue) for queue in found), *(("exchange", exchange) for exchange in exchanges)]

        groups = await asyncio.gather(*(doomed(*each) for each in sets))  # one test's names: one channel
        width = min(DELETING_CHANNELS, len(groups))
        lanes = [[item for group in groups[start::width] for item in group] for start in range(width)]
        await asyncio.gather(*(_delete_each(connection, lane) for lane in lanes))

    def delete_queue(self, queue: str) -> bool:
        async def delete() -> bool:
            channel = await (await self._connected()).channel()
            try:
                await channel.queue_delete(queue)
            except aiormq.exceptions.ChannelNotFoundEntity:
                return False
            await channel.close()
            return True

        return self._run(delete())

    def close(self) -> None:
        if self._connection is not None:
            with contextlib.suppress(Exception):
                self._run(self._connection.close())
            self._connection = self._publisher = None
        super().close()

    # -- internals ----------------------------------------------------------------------------------------------
    def _run(self, coro: Coroutine[Any, Any, T], timeout: float = 15.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._event_loop()).result(timeout)

    async def _connected(self) -> aio_pika.abc.AbstractConnection:
        if self._connection is None or not self._connection.connected.is_set():  # never opened, or closed
            if self._connection is not None:
                with contextlib.suppress(Exception):
                    await self._connection.close()
            self._connection = await aio_pika.connect(self.url)
            self._publisher = None
        return self._connection

    async def _publishing_channel(self) -> aio_pika.abc.AbstractChannel:
        connection = await self._connected()
        if self._publisher is None or self._publisher.is_closed:
            self._publisher = await connection.channel(publisher_confirms=True)
            replies = await self._publisher.declare_queue(self.reply_to, passive=True)
            await replies.consume(self._on_reply, no_ack=True)
        return self._publisher

    async def _on_reply(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        self._store_reply(message.correlation_id, message.body)


# -- the hostile client -------------------------------------------------------------------------------------------
# A client that sends what aio-pika and pamqp refuse to produce, as other AMQP clients can: strings that are not
# UTF-8 where AMQP wants text, and small negative integers in headers. It runs in its own process, so patching its
# pamqp cannot change the service under test.
_HOSTILE_PUBLISHER = r'''
import asyncio, json, struct, sys
import aiormq
import pamqp.encode as enc
from pamqp import commands as spec

class RawText(bytes):
    pass

_table_integer, _table_value, _short_string = enc.table_integer, enc.encode_table_value, enc.short_string

def table_integer(value):
    return b"I" + struct.pack(">i", value) if -128 <= value < 0 else _table_integer(value)

def encode_table_value(value):
    return b"S" + struct.pack(">I", len(value)) + value if isinstance(value, RawText) else _table_value(value)

def short_string(value):
    return struct.pack(">B", len(value)) + value if isinstance(value, RawText) else _short_string(value)

def field_table(value):
    data = bytearray()
    for key, item in value.items():
        data += short_string(key) + encode_table_value(item)
    return struct.pack(">I", len(data)) + bytes(data)

enc.table_integer, enc.encode_table_value, enc.short_string = table_integer, encode_table_value, short_string
enc.METHODS["shortstr"], enc.METHODS["table"] = short_string, field_table

def revive(value):
    if isinstance(value, dict) and set(value) == {"raw"}:
        return RawText(bytes.fromhex(value["raw"]))
    if isinstance(value, dict):
        return {revive_key(k): revive(v) for k, v in value.items()}
    return [revive(v) for v in value] if isinstance(value, list) else value

def revive_key(key):
    return RawText(bytes.fromhex(key[4:])) if key.startswith("raw:") else key

async def main(args):
    connection = await aiormq.connect(args["url"])
    channel = await connection.channel()
    await channel.basic_publish(bytes.fromhex(args["body"]), exchange=args["exchange"],
                                routing_key=args["routing_key"],
                                properties=spec.Basic.Properties(**revive(args["properties"])))
    await connection.close()

asyncio.run(main(json.loads(sys.argv[1])))
'''


def raw_text(data: bytes) -> dict[str, str]:
    """A string property or header sent as exactly these bytes, UTF-8 or not (with ``hostile=True``)."""
    return {"raw": data.hex()}


def raw_key(data: bytes) -> str:
    """A header name sent as exactly these bytes (with ``hostile=True``)."""
    return "raw:" + data.hex()


def _publish_hostile(url: str, exchange: str, routing_key: str, body: bytes, properties: dict[str, Any]) -> None:
    """Publish one message with ``properties`` (see ``raw_text``/``raw_key``) from a separate process."""
    properties = {key: value for key, value in properties.items() if value is not None}
    spec = {"url": url, "exchange": exchange, "routing_key": routing_key, "body": body.hex(),
            "properties": properties}
    done = subprocess.run([sys.executable, "-c", _HOSTILE_PUBLISHER, json.dumps(spec)], capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 0, done.stderr
