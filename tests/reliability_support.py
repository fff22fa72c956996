"""Helpers for the retry, dead-letter, deadline and bad-input tests: wait on a condition, send raw messages that
Otter itself would never send, and remove a test's queues from the shared RabbitMQ."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

import aio_pika

from otter import protocol
from otter.transports.memory import MemoryBroker


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


class RawBroker:
    """Publish bytes with any properties straight to an app's exchanges and queues, bypassing Otter's client.

    On RabbitMQ through aio-pika (RPCs to ``[rpc].<name>`` on the message exchange, tasks to the queue's name on
    the task exchange, broadcasts to ``[broadcast]``); on ``memory://`` through ``MemoryBroker.publish_raw``.
    RPC replies come back on a reply queue of our own unless ``reply_to`` says otherwise.
    """

    def __init__(self, url: str, names: Mapping[str, Any]) -> None:
        self.url = url
        self.names = dict(names)
        self.memory = url.startswith("memory://")
        self._replies: dict[str, bytes] = {}
        self._reply_arrived = threading.Condition()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="raw-broker", daemon=True)
        self._thread.start()
        self._connection: aio_pika.abc.AbstractConnection | None = None
        self._channel: aio_pika.abc.AbstractChannel | None = None
        self.reply_to = f"raw.reply.{uuid.uuid4().hex}"
        if self.memory:
            self._broker = MemoryBroker.named(url.partition("://")[2] or "default")
            self._broker.reply_targets[self.reply_to] = (self._loop, self._on_memory_reply)
        else:
            self.reply_to = "amq.rabbitmq.reply-to"
            self._run(self._connect())

    # -- sending ------------------------------------------------------------------------------------------------
    def rpc(self, name: str, body: bytes, *, reply_to: str | None = "", **properties: Any) -> str:
        """Send a raw RPC request; the correlation id to wait for with ``reply``. ``reply_to=None`` asks for no
        reply, a string other than "" for one somewhere else."""
        correlation_id = uuid.uuid4().hex
        target = self.reply_to if reply_to == "" else reply_to
        if self.memory:
            queue = f"{self.names['RPC_QUEUE_PREFIX']}{name}"
            self._broker.publish_raw(queue, body, correlation_id=correlation_id, reply_to=target, **properties)
        else:
            self._run(self._publish(self.names["MESSAGE_EXCHANGE"], protocol.rpc_routing_key(name), body,
                                    correlation_id=correlation_id, reply_to=target, **properties))
        return correlation_id

    def task(self, queue: str, body: bytes, **properties: Any) -> str:
        correlation_id = uuid.uuid4().hex
        if self.memory:
            self._broker.declare(queue)
            self._broker.publish_raw(queue, body, correlation_id=correlation_id, **properties)
        else:
            self._run(self._publish(self.names["TASK_EXCHANGE"], queue, body, correlation_id=correlation_id,
                                    **properties))
        return correlation_id

    def broadcast(self, body: bytes, **properties: Any) -> None:
        if self.memory:
            self._broker.publish_raw(None, body, **properties)
        else:
            self._run(self._publish(self.names["MESSAGE_EXCHANGE"], protocol.BROADCAST_ROUTING_KEY, body,
                                    **properties))

    def reply(self, correlation_id: str, timeout: float = 10.0) -> bytes:
        """The reply to a raw RPC; fails after ``timeout`` seconds."""
        with self._reply_arrived:
            if not self._reply_arrived.wait_for(lambda: correlation_id in self._replies, timeout):
                raise AssertionError(f"no reply to {correlation_id} within {timeout:g}s")
            return self._replies.pop(correlation_id)

    def close(self) -> None:
        if self.memory:
            self._broker.reply_targets.pop(self.reply_to, None)
        elif self._connection is not None:
            self._run(self._connection.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    def __enter__(self) -> RawBroker:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    # -- internals ----------------------------------------------------------------------------------------------
    def _run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(15)

    async def _connect(self) -> None:
        self._connection = await aio_pika.connect(self.url)
        self._channel = await self._connection.channel(publisher_confirms=True)
        reply_queue = await self._channel.declare_queue("amq.rabbitmq.reply-to", passive=True)
        await reply_queue.consume(self._on_amqp_reply, no_ack=True)

    async def _publish(self, exchange: str, routing_key: str, body: bytes, **properties: Any) -> None:
        assert self._channel is not None
        target = await self._channel.get_exchange(exchange, ensure=False)
        await target.publish(aio_pika.Message(body, **properties), routing_key)

    async def _on_amqp_reply(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        self._store_reply(message.correlation_id, message.body)

    def _on_memory_reply(self, message: Any) -> None:
        self._store_reply(message.correlation_id, message.body)

    def _store_reply(self, correlation_id: str | None, body: bytes) -> None:
        with self._reply_arrived:
            self._replies[correlation_id or ""] = body
            self._reply_arrived.notify_all()


def delete_amqp_queues(url: str, queues: Iterable[str], names: Mapping[str, Any] | None = None) -> None:
    """Remove a test's durable queues (and its exchanges) from the shared broker; missing ones are fine."""

    async def main() -> None:
        connection = await aio_pika.connect(url)
        async with connection:
            for queue in queues:
                channel = await connection.channel()
                with contextlib.suppress(aio_pika.exceptions.AMQPError):
                    await channel.queue_delete(queue)
            for key in ("MESSAGE_EXCHANGE", "TASK_EXCHANGE"):
                if names and key in names:
                    channel = await connection.channel()
                    with contextlib.suppress(aio_pika.exceptions.AMQPError):
                        await channel.exchange_delete(names[key])

    asyncio.run(main())


def amqp_queue_state(url: str, queue: str, arguments: Mapping[str, Any] | None = None) -> int | None:
    """The message count of ``queue``, or None if it does not exist; with ``arguments`` the queue is declared
    with them (the broker refuses arguments that differ from the queue's, which is what this then checks)."""

    async def main() -> int | None:
        connection = await aio_pika.connect(url)
        async with connection:
            channel = await connection.channel()
            try:
                if arguments is None:
                    declared = await channel.declare_queue(queue, passive=True)
                else:
                    declared = await channel.declare_queue(queue, durable=True, arguments=dict(arguments))
            except aio_pika.exceptions.ChannelClosed as exc:
                if "NOT_FOUND" in str(exc):
                    return None
                raise
            return int(declared.declaration_result.message_count or 0)

    return asyncio.run(main())


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
    """A string property or header sent as exactly these bytes, UTF-8 or not (for ``publish_hostile``)."""
    return {"raw": data.hex()}


def raw_key(data: bytes) -> str:
    """A header name sent as exactly these bytes (for ``publish_hostile``)."""
    return "raw:" + data.hex()


def publish_hostile(url: str, exchange: str, routing_key: str, body: bytes, properties: dict[str, Any]) -> None:
    """Publish one message with ``properties`` (see ``raw_text``/``raw_key``) from a separate process."""
    import json
    import subprocess
    import sys

    spec = {"url": url, "exchange": exchange, "routing_key": routing_key, "body": body.hex(),
            "properties": properties}
    done = subprocess.run([sys.executable, "-c", _HOSTILE_PUBLISHER, json.dumps(spec)], capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 0, done.stderr
