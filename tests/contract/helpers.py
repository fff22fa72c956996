"""Look at the broker below Otter's own client, the same way on both transports.

The contract tests need to see what Otter's API deliberately hides: the dead-letter queue, and messages that Otter's
client would never send (a YAML content type, a malformed task). ``BrokerProbe`` does that with the broker's own
means: aio-pika on RabbitMQ, the ``MemoryBroker`` in process. It never goes through the code under test.
"""

from __future__ import annotations

import abc
import asyncio
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import aio_pika
import orjson

from otter.transports.memory import MemoryBroker, _Message

__all__ = ["BrokerProbe", "RawMessage", "probe_for"]


@dataclass(frozen=True)
class RawMessage:
    body: bytes
    headers: dict[str, Any]


class BrokerProbe(abc.ABC):
    """Raw access to one test's exchanges and queues (``names`` from ``tests/conftest.py``)."""

    def __init__(self, url: str, names: dict[str, Any]) -> None:
        self.url = url
        self.names = names

    @property
    def dead_letter_queue(self) -> str:
        return str(self.names["DEAD_LETTER_QUEUE"])

    def dead_letters(self, count: int = 1, timeout: float = 5.0) -> list[RawMessage]:
        """Wait until the dead-letter queue holds ``count`` messages and return them (fails on the deadline)."""
        found = asyncio.run(self._wait_for_dead_letters(count, timeout))
        assert len(found) >= count, f"expected {count} dead letters within {timeout} s, got {len(found)}"
        return found

    def rpc(self, name: str, body: bytes, content_type: str | None, timeout: float = 5.0) -> Any:
        """Send a raw RPC request and return its decoded reply (fails if none arrives in time)."""
        return orjson.loads(asyncio.run(asyncio.wait_for(self._rpc(name, body, content_type), timeout)))

    def publish_task(self, queue: str, body: bytes, content_type: str | None) -> None:
        asyncio.run(self._publish_task(queue, body, content_type))

    @abc.abstractmethod
    def ready(self, queue: str) -> int:
        """How many messages wait in ``queue`` for a consumer (not counting those delivered and not yet acked)."""

    @abc.abstractmethod
    def cleanup(self, queues: Iterable[str]) -> None:
        """Remove what a test left on the broker."""

    @abc.abstractmethod
    async def _wait_for_dead_letters(self, count: int, timeout: float) -> list[RawMessage]: ...

    @abc.abstractmethod
    async def _rpc(self, name: str, body: bytes, content_type: str | None) -> bytes: ...

    @abc.abstractmethod
    async def _publish_task(self, queue: str, body: bytes, content_type: str | None) -> None: ...


class MemoryProbe(BrokerProbe):
    def __init__(self, url: str, names: dict[str, Any]) -> None:
        super().__init__(url, names)
        self.broker = MemoryBroker.named(url.partition("://")[2] or "default")

    def cleanup(self, queues: Iterable[str]) -> None:
        """Nothing to do: the ``broker_url`` fixture forgets the whole in-process broker."""

    def ready(self, queue: str) -> int:
        return len(self.broker.messages_in(queue))

    async def _wait_for_dead_letters(self, count: int, timeout: float) -> list[RawMessage]:
        deadline = time.monotonic() + timeout
        while True:
            messages = self.broker.messages_in(self.dead_letter_queue)
            if len(messages) >= count or time.monotonic() > deadline:
                return [RawMessage(m.body, dict(m.headers)) for m in messages]
            await asyncio.sleep(0.01)

    async def _rpc(self, name: str, body: bytes, content_type: str | None) -> bytes:
        loop = asyncio.get_running_loop()
        reply: asyncio.Future[bytes] = loop.create_future()
        reply_to = f"probe.reply.{uuid.uuid4().hex}"
        self.broker.reply_targets[reply_to] = (loop, lambda message: reply.set_result(message.body))
        try:
            queue = f"{self.names['RPC_QUEUE_PREFIX']}{name}"
            self.broker.publish(
                queue, _Message(body, content_type, {}, uuid.uuid4().hex, reply_to), require_consumer=True
            )
            return await reply
        finally:
            self.broker.reply_targets.pop(reply_to, None)

    async def _publish_task(self, queue: str, body: bytes, content_type: str | None) -> None:
        self.broker.declare(queue)
        self.broker.publish(queue, _Message(body, content_type, {}, uuid.uuid4().hex))


class AmqpProbe(BrokerProbe):
    async def _wait_for_dead_letters(self, count: int, timeout: float) -> list[RawMessage]:
        deadline = time.monotonic() + timeout
        found: list[RawMessage] = []
        async with await aio_pika.connect(self.url) as connection:
            channel = await connection.channel()
            queue = await channel.declare_queue(self.dead_letter_queue, durable=True)
            while len(found) < count and time.monotonic() < deadline:
                message = await queue.get(no_ack=True, fail=False)
                if message is None:
                    await asyncio.sleep(0.01)
                else:
                    found.append(RawMessage(message.body, dict(message.headers)))
        return found

    async def _rpc(self, name: str, body: bytes, content_type: str | None) -> bytes:
        async with await aio_pika.connect(self.url) as connection:
            channel = await connection.channel()
            exchange = await channel.declare_exchange(self.names["MESSAGE_EXCHANGE"], aio_pika.ExchangeType.TOPIC)
            replies = await channel.declare_queue(exclusive=True, auto_delete=True)
            reply: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

            async def on_reply(message: aio_pika.abc.AbstractIncomingMessage) -> None:
                if not reply.done():
                    reply.set_result(message.body)

            await replies.consume(on_reply, no_ack=True)
            message = aio_pika.Message(
                body, content_type=content_type, correlation_id=uuid.uuid4().hex, reply_to=replies.name
            )
            await exchange.publish(message, f"[rpc].{name}")
            return await reply

    async def _publish_task(self, queue: str, body: bytes, content_type: str | None) -> None:
        async with await aio_pika.connect(self.url) as connection:
            channel = await connection.channel()
            await channel.default_exchange.publish(aio_pika.Message(body, content_type=content_type), queue)

    def cleanup(self, queues: Iterable[str]) -> None:
        asyncio.run(self._cleanup(queues))

    def ready(self, queue: str) -> int:
        async def count() -> int:
            async with await aio_pika.connect(self.url) as connection:
                channel = await connection.channel()
                declared = await channel.declare_queue(queue, passive=True)
                return int(declared.declaration_result.message_count or 0)

        return asyncio.run(count())

    async def _cleanup(self, queues: Iterable[str]) -> None:
        async with await aio_pika.connect(self.url) as connection:
            channel = await connection.channel()
            for queue in {*queues, self.names["DEFAULT_TASK_QUEUE"], self.dead_letter_queue}:
                await channel.queue_delete(queue)
            for exchange in (self.names["MESSAGE_EXCHANGE"], self.names["TASK_EXCHANGE"]):
                await channel.exchange_delete(exchange)


def probe_for(url: str, names: dict[str, Any]) -> BrokerProbe:
    return MemoryProbe(url, names) if url.startswith("memory://") else AmqpProbe(url, names)
