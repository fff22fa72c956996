"""The baseline: a hand-written aio-pika program, the same design as ``shared/bench-peers/b_aiopika.py``.

It runs on the aio-pika in the project's virtualenv (9.5.x, pinned by kiwipy), not aio-pika 10.

- RPC: the server consumes a named queue (prefetch 100) and replies on the default exchange; the client uses direct
  reply-to (``amq.rabbitmq.reply-to``), correlation ids and futures; one connection, one channel; no publisher
  confirms (as in the peer baseline). JSON via the stdlib.
- Tasks: a durable queue, persistent messages and publisher confirms (``--inflight`` unconfirmed at most); the
  worker acks after the handler ran.
- Broadcast: a fanout exchange, one exclusive queue per subscriber, acked; no publisher confirms.
- ``--uvloop``: uvloop on both sides when installed.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
from typing import Any

import aio_pika
import common
from aio_pika import DeliveryMode, ExchangeType, Message

dumps, loads = json.dumps, json.loads


def rpc_queue(ns: str) -> str:
    return f"{ns}.rpc"


def task_queue(ns: str) -> str:
    return f"{ns}.tasks"


def fanout(ns: str) -> str:
    return f"{ns}.bc"


# -- servers ------------------------------------------------------------------------------------------------------
async def rpc_server(args: argparse.Namespace) -> None:
    conn = await aio_pika.connect(args.url)
    ch = await conn.channel(publisher_confirms=False)
    await ch.set_qos(prefetch_count=100)
    queue = await ch.declare_queue(rpc_queue(args.ns), auto_delete=True)
    exchange = ch.default_exchange
    counter = common.Counter(args)

    async def on_message(msg: Any) -> None:
        counter.hit()
        body = dumps(common.handle(loads(msg.body))).encode()
        await exchange.publish(Message(body, correlation_id=msg.correlation_id), routing_key=msg.reply_to)
        await msg.ack()

    await queue.consume(on_message)
    common.mark(args.ready)
    await asyncio.Future()


async def task_worker(args: argparse.Namespace) -> None:
    conn = await aio_pika.connect(args.url)
    ch = await conn.channel(publisher_confirms=False)
    await ch.set_qos(prefetch_count=100)
    queue = await ch.declare_queue(task_queue(args.ns), durable=True)
    counter = common.Counter(args)

    async def on_message(msg: Any) -> None:
        common.handle(loads(msg.body))
        await msg.ack()  # after the handler ran
        counter.hit()

    await queue.consume(on_message)
    common.mark(args.ready)
    await asyncio.Future()


async def bcast_subscriber(args: argparse.Namespace) -> None:
    conn = await aio_pika.connect(args.url)
    ch = await conn.channel(publisher_confirms=False)
    await ch.set_qos(prefetch_count=100)
    exchange = await ch.declare_exchange(fanout(args.ns), ExchangeType.FANOUT, auto_delete=True)
    queue = await ch.declare_queue(exclusive=True)
    await queue.bind(exchange)
    counter = common.Counter(args)

    async def on_message(msg: Any) -> None:
        common.handle(loads(msg.body))
        await msg.ack()
        counter.hit()

    await queue.consume(on_message)
    common.mark(args.ready)
    await asyncio.Future()


# -- clients ------------------------------------------------------------------------------------------------------
class RpcClient:
    """Direct reply-to, a dict of futures by correlation id."""

    async def start(self, args: argparse.Namespace) -> None:
        self.conn = await aio_pika.connect(args.url)
        self.ch = await self.conn.channel(publisher_confirms=False)
        self.exchange = self.ch.default_exchange
        self.loop = asyncio.get_running_loop()
        self.pending: dict[str, asyncio.Future[Any]] = {}
        self.ids = itertools.count()
        self.routing_key = rpc_queue(args.ns)
        reply_queue = await self.ch.declare_queue("amq.rabbitmq.reply-to", passive=True)
        await reply_queue.consume(self.on_reply, no_ack=True)

    async def on_reply(self, msg: Any) -> None:
        future = self.pending.pop(msg.correlation_id, None)
        if future is not None and not future.done():
            future.set_result(loads(msg.body))

    async def call(self, data: Any) -> Any:
        cid = str(next(self.ids))
        future = self.loop.create_future()
        self.pending[cid] = future
        await self.exchange.publish(
            Message(dumps(data).encode(), correlation_id=cid, reply_to="amq.rabbitmq.reply-to"),
            routing_key=self.routing_key,
        )
        return await future


async def client(args: argparse.Namespace) -> dict[str, Any]:
    await common.wait_files(args.ready_files, args.timeout, "server ready marks")
    if args.wl in ("rpc_seq", "rpc_conc"):
        rpc = RpcClient()
        await rpc.start(args)

        async def call() -> Any:
            return await rpc.call(common.PAYLOAD)

        run = common.run_rpc_seq if args.wl == "rpc_seq" else common.run_rpc_conc
        result = await run(args, call)
        await rpc.conn.close()
        return result
    body = dumps(common.PAYLOAD).encode()
    if args.wl == "task":
        conn = await aio_pika.connect(args.url)
        ch = await conn.channel(publisher_confirms=True)
        exchange, key = ch.default_exchange, task_queue(args.ns)

        async def send() -> None:
            await exchange.publish(Message(body, delivery_mode=DeliveryMode.PERSISTENT), routing_key=key)
    else:
        conn = await aio_pika.connect(args.url)
        ch = await conn.channel(publisher_confirms=False)
        exchange = await ch.declare_exchange(fanout(args.ns), ExchangeType.FANOUT, auto_delete=True)
        key = ""

        async def send() -> None:
            await exchange.publish(Message(body), routing_key=key)
    result = await common.run_sends(args, send)
    if args.wl != "task":
        # Unconfirmed publishes may still sit in the client's buffers: a synchronous round trip on the same
        # channel (AMQP keeps a channel's order) makes sure the broker has them before the connection closes.
        await ch.declare_exchange(fanout(args.ns), ExchangeType.FANOUT, passive=True)
    await conn.close()
    return result


async def server(args: argparse.Namespace) -> None:
    await {"rpc": rpc_server, "task": task_worker, "bcast": bcast_subscriber}[args.wl](args)


if __name__ == "__main__":
    common.run_asyncio_script(server, client, "aio-pika " + aio_pika.__version__)
