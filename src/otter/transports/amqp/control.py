"""Control messages on RabbitMQ: a fanout exchange every worker hears on a queue of its own, and surveys of it.

A worker's control queue is exclusive, auto-delete and server-named (legal on RabbitMQ 4.x, where only exclusive
queues may be transient), consumed without acks on a channel of its own, so the broker deletes it with the
worker's connection: a process killed outright stops answering at once, with nothing to expire. A survey sends
one request through aio-pika's public API (a rare message, not worth the fast path) with ``reply_to`` naming an
exclusive queue made for that survey, and gathers what comes back until its timeout.
"""

from __future__ import annotations

import asyncio
import contextlib

import aio_pika
from aio_pika import ExchangeType
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection

from ... import protocol
from ...errors import BrokerUnavailable
from ..base import Delivery, OnDelivery, Snapshot, Subscription, Topology
from .connection import Link
from .errors import describe, translated

__all__ = ["CONTROL_PREFETCH", "consume_control", "survey"]

CONTROL_PREFETCH = 10  # requests are answered on the loop, in microseconds: a few may wait, none is lost


async def consume_control(link: Link, topology: Topology, on_request: OnDelivery) -> Subscription:
    """Bind a queue of this connection's own to the control exchange and consume it (see the module docstring).
    On a robust channel: after a reconnection the queue is declared again (a new name) and bound again."""
    async with link.consumer_channel(CONTROL_PREFETCH) as channel:
        try:
            exchange = await channel.declare_exchange(topology.control_exchange, ExchangeType.FANOUT)
            queue = await channel.declare_queue(exclusive=True, auto_delete=True)
            await queue.bind(exchange, protocol.CONTROL_ROUTING_KEY)
            return await link.subscribe(channel, queue, on_request, no_ack=True,
                                        bindings=[(topology.control_exchange, protocol.CONTROL_ROUTING_KEY)])
        except Exception as exc:  # refused (an exchange of that name and another type): not re-opened to retry
            with contextlib.suppress(Exception):
                await channel.close()
            raise BrokerUnavailable(f"could not consume the control exchange {topology.control_exchange!r}: "
                                    f"{describe(exc)}") from None


async def survey(
    connection: AbstractRobustConnection, topology: Topology, body: bytes, *, correlation_id: str, timeout: float,
    expected: int | None,
) -> list[Delivery]:
    """Publish ``body`` to the control exchange and gather the replies (see ``Transport.survey``)."""
    replies: list[Delivery] = []
    enough = asyncio.Event()

    async def on_reply(message: AbstractIncomingMessage) -> None:
        if message.correlation_id != correlation_id:
            return
        replies.append(Snapshot(message.body, queue=queue.name, content_type=message.content_type,
                                correlation_id=message.correlation_id))
        if expected is not None and len(replies) >= expected:
            enough.set()

    with translated("survey the control exchange"):
        channel = await connection.channel(publisher_confirms=False)
    try:
        with translated("survey the control exchange"):
            exchange = await channel.declare_exchange(topology.control_exchange, ExchangeType.FANOUT)
            queue = await channel.declare_queue(exclusive=True, auto_delete=True)
            await queue.consume(on_reply, no_ack=True)
            await exchange.publish(aio_pika.Message(
                body, content_type=protocol.CONTENT_TYPE, correlation_id=correlation_id, reply_to=queue.name,
                expiration=timeout, delivery_mode=aio_pika.DeliveryMode.NOT_PERSISTENT,
            ), protocol.CONTROL_ROUTING_KEY)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(enough.wait(), timeout)
    finally:
        with contextlib.suppress(Exception):
            await channel.close()
    return replies
