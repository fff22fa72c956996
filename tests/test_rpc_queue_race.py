"""An RPC queue is auto-delete: if another replica's last consumer leaves between our declare and our consume, the
broker deletes it under us. The worker declares it again instead of failing to start. Real broker; the deletion is
made to happen at exactly that moment by deleting the queue from a second connection."""

from __future__ import annotations

import asyncio
from typing import Any

import aio_pika
import pytest

from otter.config import DEFAULTS
from otter.transports.amqp import AmqpTransport
from otter.transports.base import Delivery, Topology


class QueueDeletedOnFirstConsume(AmqpTransport):
    """Deletes the queue from another connection just before the first consume, as a leaving replica would."""

    deleted = 0

    async def _consume(self, channel: Any, queue: Any, on_delivery: Any, *rest: Any) -> Any:
        if not self.deleted:
            self.deleted += 1
            other = await aio_pika.connect(self._raw_url)
            async with other:
                await (await other.channel()).queue_delete(queue.name)
        return await super()._consume(channel, queue, on_delivery, *rest)


@pytest.mark.amqp
def test_an_rpc_queue_deleted_between_declare_and_consume_is_declared_again(
    amqp_url: str, names: dict[str, Any]
) -> None:
    topology = Topology.from_config({**DEFAULTS, **names})

    async def main() -> Any:
        server = QueueDeletedOnFirstConsume(amqp_url, topology)
        caller = AmqpTransport(amqp_url, topology)
        await server.connect()
        await caller.connect()
        try:
            async def echo(delivery: Delivery) -> None:
                await delivery.ack()
                assert delivery.reply_to
                await server.reply(delivery.reply_to, b'{"result": "served"}', correlation_id=delivery.correlation_id)

            await server.consume_rpc("race.echo", echo, prefetch=1)
            reply = await caller.call("race.echo", b"null", correlation_id="c-1", timeout=5, headers={})
            return server.deleted, reply.body
        finally:
            await caller.close()
            await server.close()

    deleted, body = asyncio.run(main())
    assert deleted == 1
    assert body == b'{"result": "served"}'
