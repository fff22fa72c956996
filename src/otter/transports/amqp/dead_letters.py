"""Copies of tasks: dead letters, delayed retries and replays, each persistent and confirmed (through the one send
path) before the original is acked, so a crash in between can duplicate a task but never lose it. Every copy keeps
the task's id (its ``message_id``); a retry also keeps the ``reply_to`` of a sender waiting for the final outcome."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from aio_pika import DeliveryMode
from aio_pika.abc import AbstractIncomingMessage

from ... import protocol
from ..base import Delivery, ReplayRoute, Snapshot, Topology
from .connection import Link, Queues
from .errors import translated
from .publishing import Fields, Sender

__all__ = ["DeadLetters"]



class DeadLetters:
    """The dead-letter queue and the retry delay queues of one transport."""

    def __init__(
        self, link: Link, sender: Sender, queues: Queues, topology: Topology, next_message_id: Callable[[], str]
    ) -> None:
        self._link, self._sender, self._queues, self._topology = link, sender, queues, topology
        self._next_message_id = next_message_id

    async def dead_letter(self, delivery: Delivery, headers: Mapping[str, Any]) -> None:
        dlq = await self._queues.dead_letter_queue()
        copied = {**protocol.forwarded_headers(delivery.headers), **headers, protocol.QUEUE_HEADER: delivery.queue}
        await self._copy("", dlq, delivery.body, self._fields(delivery, copied), "dead-letter a task")
        await delivery.ack()

    async def retry_later(self, delivery: Delivery, delay: float, headers: Mapping[str, Any]) -> None:
        """Park the copy in ``<queue>.retry.<ms>``: its queue TTL is the delay and it dead-letters into the task
        queue through the default exchange. One queue per delay, because a TTL set per message only expires at
        the head of a queue (a long wait would hold up a short one behind it). The queue is declared on every
        retry, which renews its ``x-expires`` lease, so it disappears only when no retry has used it for a while.
        """
        delay_ms = max(0, round(delay * 1000))
        target = delivery.queue
        if delay_ms:
            target = protocol.retry_queue_name(delivery.queue, delay_ms)
            await self._queues.retry_queue(target, protocol.retry_queue_arguments(delivery.queue, delay_ms))
        copied = {**protocol.forwarded_headers(delivery.headers), **headers}
        fields = self._fields(delivery, copied)
        if delivery.reply_to:  # the sender waiting for the outcome hears from the last attempt
            fields["reply_to"] = delivery.reply_to
        await self._copy("", target, delivery.body, fields, f"schedule a retry on {target!r}")
        await delivery.ack()

    async def peek(self, limit: int | None = None) -> list[Delivery]:
        """Get without acking, then close the channel: the broker puts every message back where it was."""
        async with self._link.reader(self._topology.dead_letter_queue) as queue:
            letters: list[Delivery] = []
            while limit is None or len(letters) < limit:
                with translated("read the dead-letter queue"):
                    message = await queue.get(no_ack=False, fail=False)
                if message is None:
                    break
                letters.append(_snapshot(message, queue.name))
            return letters

    async def replay(self, route: ReplayRoute, *, limit: int | None = None) -> int:
        """Republish each chosen letter with a confirm, then ack it; the others stay unacked until the reading
        channel closes, which returns them to the dead-letter queue in their order."""
        moved = 0
        async with self._link.reader(self._topology.dead_letter_queue) as queue:
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
                letter = _snapshot(message, queue.name)
                target = route(letter)
                if target is None:
                    continue
                name, headers = target
                await self._queues.task_queue(name)
                fields = self._fields(letter, dict(headers))
                await self._copy(self._topology.task_exchange, name, message.body, fields,
                                 f"replay a dead letter to {name!r}")
                with translated(f"replay a dead letter to {name!r}"):
                    await message.ack()
                moved += 1
        return moved

    async def purge(self) -> int:
        dlq = await self._queues.dead_letter_queue()
        with translated("purge the dead-letter queue"):
            queue = await self._link.confirming.get_queue(dlq, ensure=False)
            purged = await queue.purge()
        return int(purged.message_count or 0)

    def _fields(self, task: Delivery, headers: dict[str, Any]) -> Fields:
        """A copy's properties: the task's own id, content type, correlation id and priority, persistent,
        ``headers``."""
        fields: Fields = {
            "mandatory": True, "message_id": protocol.task_id_of(task.message_id, task.correlation_id)
            or self._next_message_id(), "content_type": task.content_type, "correlation_id": task.correlation_id,
            "delivery_mode": DeliveryMode.PERSISTENT.value, "headers": headers,
        }
        if task.priority:
            fields["priority"] = task.priority
        return fields

    async def _copy(self, exchange: str, routing_key: str, body: bytes, fields: Fields, action: str) -> None:
        """Publish once, persistent and mandatory, and wait for the confirm; a return raises ``Unroutable``."""
        await self._sender.send_once(
            self._link.confirmed, exchange, routing_key, body, fields, action=action,
            late=f"the broker did not confirm it within {self._sender.publish_timeout:g} s")


def _snapshot(message: AbstractIncomingMessage, queue: str) -> Snapshot:
    return Snapshot(message.body, queue=queue, content_type=message.content_type, headers=dict(message.headers),
                    correlation_id=message.correlation_id, reply_to=message.reply_to, message_id=message.message_id,
                    priority=message.priority)
