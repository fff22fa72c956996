"""Peer: kiwipy 0.9 async API (``kiwipy.rmq.async_connect``) with a JSON codec, on kiwipy's own semantics.

kiwipy as it is: a topic exchange, RPC routed by ``[rpc].<id>`` to an exclusive queue per subscriber, a private
reply queue per publisher, publisher confirms and ``mandatory`` on every publish (``rpc_send`` returns its future
only after the confirm), tasks persistent on a durable queue and acked after the subscriber returned, broadcasts
transient and acked, prefetch unlimited. The encoder must return bytes (``aio_pika.Message`` calls ``bytes(body)``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

import common
import kiwipy.rmq

RPC_ID = "bench"


def encode(obj: Any) -> bytes:
    return json.dumps(obj).encode()


def connect_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "connection_params": args.url,
        "message_exchange": f"{args.ns}.messages",
        "task_exchange": f"{args.ns}.tasks",
        "task_queue": f"{args.ns}.tasks",
        "encoder": encode,
        "decoder": json.loads,
    }


async def server(args: argparse.Namespace) -> None:
    comm = await kiwipy.rmq.async_connect(**connect_kwargs(args))
    counter = common.Counter(args)

    def rpc_handler(_comm: Any, msg: Any) -> Any:
        counter.hit()
        return common.handle(msg)

    def task_handler(_comm: Any, task: Any) -> Any:
        result = common.handle(task)
        counter.hit()  # kiwipy acks once the subscriber returned
        return result

    def bcast_handler(_comm: Any, body: Any, sender: Any, subject: Any, correlation_id: Any) -> None:
        common.handle(body)
        counter.hit()

    if args.wl == "rpc":
        await comm.add_rpc_subscriber(rpc_handler, RPC_ID)
    elif args.wl == "task":
        await comm.add_task_subscriber(task_handler)
    else:
        await comm.add_broadcast_subscriber(bcast_handler)
    common.mark(args.ready)
    await asyncio.Future()


async def client(args: argparse.Namespace) -> dict[str, Any]:
    await common.wait_files(args.ready_files, args.timeout, "server ready marks")
    comm = await kiwipy.rmq.async_connect(**connect_kwargs(args))
    try:
        if args.wl in ("rpc_seq", "rpc_conc"):
            async def call() -> Any:
                future = await comm.rpc_send(RPC_ID, common.PAYLOAD)
                return await future

            run = common.run_rpc_seq if args.wl == "rpc_seq" else common.run_rpc_conc
            return await run(args, call)
        if args.wl == "task":
            async def send() -> None:
                await comm.task_send(common.PAYLOAD, no_reply=True)
        else:
            async def send() -> None:
                await comm.broadcast_send(common.PAYLOAD)
        return await common.run_sends(args, send)
    finally:
        await comm.disconnect()


if __name__ == "__main__":
    common.run_asyncio_script(server, client, "kiwipy " + kiwipy.__version__)
