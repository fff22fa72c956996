"""Peer: FastStream's RabbitBroker with its defaults (needs aio-pika 10, so it lives in its own virtualenv).

Server: a subscriber whose return value is the RPC reply. Client: ``broker.request()`` (direct reply-to) for RPC,
``broker.publish()`` for tasks and broadcasts. FastStream defaults: publisher confirms on, no prefetch limit, ack
after the handler, non-durable queue and transient messages; per-message access logging off (``logger=None``).
Run it with ``run.py --with faststream --peer-python faststream=/path/to/venv/bin/python``.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

import common
from faststream.rabbit import ExchangeType, RabbitBroker, RabbitExchange, RabbitQueue


def fanout(args: argparse.Namespace) -> RabbitExchange:
    return RabbitExchange(f"{args.ns}.bc", type=ExchangeType.FANOUT, auto_delete=True)


async def server(args: argparse.Namespace) -> None:
    broker = RabbitBroker(args.url, logger=None)
    counter = common.Counter(args)
    if args.wl == "rpc":
        @broker.subscriber(f"{args.ns}.rpc")
        async def rpc(data: str) -> dict[str, str]:
            counter.hit()
            return common.handle(data)
    elif args.wl == "task":
        @broker.subscriber(f"{args.ns}.tasks")
        async def task(data: str) -> None:
            common.handle(data)
            counter.hit()
    else:
        queue = RabbitQueue(f"{args.ns}.bc.{time.time_ns()}", auto_delete=True, exclusive=True)

        @broker.subscriber(queue, fanout(args))
        async def bcast(data: str) -> None:
            common.handle(data)
            counter.hit()
    await broker.start()
    common.mark(args.ready)
    await asyncio.Future()


async def client(args: argparse.Namespace) -> dict[str, Any]:
    await common.wait_files(args.ready_files, args.timeout, "server ready marks")
    broker = RabbitBroker(args.url, logger=None)
    await broker.start()
    try:
        if args.wl in ("rpc_seq", "rpc_conc"):
            async def call() -> Any:
                message = await broker.request(common.PAYLOAD, queue=f"{args.ns}.rpc")
                return await message.decode()

            run = common.run_rpc_seq if args.wl == "rpc_seq" else common.run_rpc_conc
            return await run(args, call)
        if args.wl == "task":
            async def send() -> None:
                await broker.publish(common.PAYLOAD, queue=f"{args.ns}.tasks")
        else:
            exchange = fanout(args)

            async def send() -> None:
                await broker.publish(common.PAYLOAD, exchange=exchange)
        return await common.run_sends(args, send)
    finally:
        await broker.stop()


if __name__ == "__main__":
    common.run_asyncio_script(server, client, "faststream")
