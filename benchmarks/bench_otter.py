"""Otter through its public API: a real ``Otter`` app served with ``app.run(url)``, and ``Client``/``AsyncClient``.

Server roles (``--wl``): ``rpc`` (``@app.add_rpc``), ``task`` (``@app.add_task``), ``bcast`` (``@app.add_broadcast``).
Handlers are plain ``def`` unless ``--variant async-handlers`` (then ``async def``). Config is Otter's defaults;
``OTTER_*`` environment variables (``run.py --otter-config KEY=VALUE``) override them, as for any Otter app.

Clients, i.e. what a user would write:

- ``rpc_seq``: ``await AsyncClient.rpc(name, data)`` one at a time (``--variant sync-client``: the seed's
  ``Client(url).rpc(name, data).result()`` in a loop);
- ``rpc_conc``: ``AsyncClient`` with 64 coroutines each awaiting ``client.rpc`` (``--variant sync-client``: a window
  of 64 ``CallFuture`` from ``Client.rpc``);
- ``task``: ``AsyncClient.task(name, body)``, which returns once the broker confirmed the persistent message, with
  up to ``--inflight`` awaiting at once (``--variant sync-client``: a window of ``comm.task_send`` futures);
- ``bcast``: ``AsyncClient.broadcast(body, subject=...)``, bounded the same way.

``--variant seed-loop``: the seed's calls on the sync ``Client`` in plain loops, nothing else: ``for ...:
client.task(name, body)`` then ``client.flush()`` (every task confirmed before the clock stops), ``for ...:
client.broadcast(body, subject=...)`` then ``client.flush()``, and ``client.rpc(name, data).result()``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import socket
import time
from typing import Any

import common

from otter import AsyncClient, Client, Otter, Unroutable

RPC_NAME = "bench.hash"
SUBJECT = "bench.hash"
READY_SUBJECT = "bench.ready"
FILTERS = ["bench.*"]


def names(ns: str) -> dict[str, str]:
    """Config keys putting every exchange and queue of this run under its own prefix."""
    return {
        "MESSAGE_EXCHANGE": f"{ns}.messages",
        "TASK_EXCHANGE": f"{ns}.tasks",
        "DEFAULT_TASK_QUEUE": f"{ns}.tasks.default",
        "RPC_QUEUE_PREFIX": f"{ns}.rpc.",
        "DEAD_LETTER_QUEUE": f"{ns}.dead-letter",
    }


def task_name(ns: str) -> str:
    return f"{ns}.task"


def flags(args: argparse.Namespace) -> set[str]:
    return set(filter(None, args.variant.split(",")))


# -- the app --------------------------------------------------------------------------------------------------------
def make_app(args: argparse.Namespace) -> Otter:
    app = Otter(f"bench-{args.wl}", **names(args.ns))
    counter = common.Counter(args)
    use_async = "async-handlers" in flags(args)
    handle, hit, ready_path = common.handle, counter.hit, args.ready

    if args.wl == "rpc":
        if use_async:
            @app.add_rpc(RPC_NAME)
            async def bench_hash_async(comm: Any, data: Any) -> Any:
                hit()
                return handle(data)
        else:
            @app.add_rpc(RPC_NAME)
            def bench_hash(comm: Any, data: Any) -> Any:
                hit()
                return handle(data)
    elif args.wl == "task":
        if use_async:
            @app.add_task(task_name(args.ns))
            async def bench_task_async(comm: Any, body: Any) -> None:
                handle(body)
                hit()
        else:
            @app.add_task(task_name(args.ns))
            def bench_task(comm: Any, body: Any) -> None:
                handle(body)
                hit()
    else:
        def on_broadcast(comm: Any, body: Any, sender: Any, subject: Any, correlation_id: Any) -> None:
            if body == common.READY_PING:
                common.mark(ready_path)
                return
            handle(body)
            hit()

        async def on_broadcast_async(comm: Any, body: Any, sender: Any, subject: Any, correlation_id: Any) -> None:
            on_broadcast(comm, body, sender, subject, correlation_id)

        app.add_broadcast(FILTERS)(on_broadcast_async if use_async else on_broadcast)
    return app


def server(args: argparse.Namespace) -> None:
    options = {}
    if "metrics" in flags(args):  # as `otter run --metrics-port`: the Metrics observer and its endpoint
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            options["metrics_port"] = probe.getsockname()[1]
    if "no-discovery" in flags(args):  # no control queue, and no per-route counting (metrics are off)
        options["discovery"] = False
    make_app(args).run(args.url, **options)


# -- clients --------------------------------------------------------------------------------------------------------
def sync_client(args: argparse.Namespace) -> dict[str, Any]:
    client = Client(args.url, **names(args.ns))
    if not client.comm:
        raise SystemExit(f"cannot connect: {client.error}")
    info = {"client": "Client (sync)", "client_loop": type(client.comm.loop).__module__}
    try:
        wait_rpc_served(lambda: client.rpc(RPC_NAME, common.PAYLOAD).result(), args.timeout)
        if args.wl == "rpc_seq":
            return {**info, **sync_rpc_seq(args, client)}
        if args.wl == "rpc_conc":
            return {**info, **sync_window(args, lambda: client.rpc(RPC_NAME, common.PAYLOAD), check=True)}
        raise SystemExit(f"--variant sync-client does not drive {args.wl}")
    finally:
        client.close()


def sync_task_client(args: argparse.Namespace) -> dict[str, Any]:
    client = Client(args.url, **names(args.ns))
    if not client.comm:
        raise SystemExit(f"cannot connect: {client.error}")
    comm, name = client.comm, task_name(args.ns)
    try:
        window = collections.deque()
        for _ in range(args.warm):
            window.append(comm.task_send(common.PAYLOAD, name=name))
        for future in window:
            future.result()
        common.wait_files_blocking(args.warm_files, args.timeout, "warm-up marks")
        res = sync_window(args, lambda: comm.task_send(common.PAYLOAD, name=name), check=False,
                          conc=args.inflight)
        return {**res, "t_sent": res["t_end"], "client": "Client.comm.task_send futures",
                "client_loop": type(comm.loop).__module__}
    finally:
        client.close()


def seed_loop_client(args: argparse.Namespace) -> dict[str, Any]:
    """The seed's calls in plain loops (see the module docstring); the clock stops when ``flush`` returns."""
    client = Client(args.url, **names(args.ns))
    if not client.comm:
        raise SystemExit(f"cannot connect: {client.error}")
    info = {"client": "Client (sync), plain loop", "client_loop": type(client.comm.loop).__module__}
    flush = getattr(client, "flush", lambda: None)  # the code before issue 13 confirmed each call in the call
    try:
        if args.wl == "task":
            name = task_name(args.ns)

            def send() -> None:
                client.task(name, common.PAYLOAD)
        elif args.wl == "bcast":
            deadline = time.monotonic() + args.timeout
            while True:
                client.broadcast(common.READY_PING, subject=READY_SUBJECT)
                flush()
                try:
                    common.wait_files_blocking(args.ready_files, 0.2, "ready marks")
                    break
                except TimeoutError:
                    if time.monotonic() > deadline:
                        raise

            def send() -> None:
                client.broadcast(common.PAYLOAD, subject=SUBJECT)
        else:
            raise SystemExit(f"--variant seed-loop drives rpc_seq, task and bcast, not {args.wl}")
        for _ in range(args.warm):
            send()
        flush()
        common.wait_files_blocking(args.warm_files, args.timeout, "warm-up marks")
        timer = common.Window(args.server_pids)
        timer.start()
        for _ in range(args.n):
            send()
        flush()
        res = timer.stop()
        return {**info, **res, "n": args.n, "t_sent": res["t_end"]}
    finally:
        client.close()


def wait_rpc_served(call: Any, timeout: float) -> None:
    """Call until the server's queue is bound (before that the broker returns the call: ``Unroutable``)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            common.check(call())
            return
        except Unroutable:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def sync_rpc_seq(args: argparse.Namespace, client: Client) -> dict[str, Any]:
    for _ in range(args.warm):
        common.check(client.rpc(RPC_NAME, common.PAYLOAD).result())
    window = common.Window(args.server_pids)
    lat = []
    clock = time.perf_counter_ns
    window.start()
    for _ in range(args.n):
        t = clock()
        result = client.rpc(RPC_NAME, common.PAYLOAD).result()
        lat.append(clock() - t)
    res = window.stop()
    common.check(result)
    return {**res, **common.latency_stats(lat), "n": args.n, "rate": args.n / res["elapsed_s"]}


def sync_window(args: argparse.Namespace, submit: Any, *, check: bool, conc: int | None = None) -> dict[str, Any]:
    """Keep ``conc`` futures in flight from one thread, the way a plain-Python caller would."""
    conc = conc or args.conc
    window: collections.deque[Any] = collections.deque()
    timer = common.Window(args.server_pids)
    timer.start()
    for _ in range(args.n):
        if len(window) >= conc:
            result = window.popleft().result()
            if check:
                common.check(result)
        window.append(submit())
    while window:
        result = window.popleft().result()
        if check:
            common.check(result)
    res = timer.stop()
    return {**res, "n": args.n, "conc": conc, "rate": args.n / res["elapsed_s"]}


async def async_client(args: argparse.Namespace) -> dict[str, Any]:
    async with AsyncClient(args.url, **names(args.ns)) as client:
        info = {"client": "AsyncClient", "client_loop": type(asyncio.get_running_loop()).__module__}

        async def call() -> Any:
            return await client.rpc(RPC_NAME, common.PAYLOAD)

        if args.wl in ("rpc_seq", "rpc_conc"):
            deadline = time.monotonic() + args.timeout
            while True:
                try:
                    common.check(await call())
                    break
                except Unroutable:
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.02)
            run = common.run_rpc_seq if args.wl == "rpc_seq" else common.run_rpc_conc
            return {**info, **await run(args, call)}
        if args.wl == "task":
            name = task_name(args.ns)

            async def send_task() -> None:
                await client.task(name, common.PAYLOAD)

            return {**info, **await common.run_sends(args, send_task)}

        async def ping() -> None:
            await client.broadcast(common.READY_PING, subject=READY_SUBJECT)

        async def send_broadcast() -> None:
            await client.broadcast(common.PAYLOAD, subject=SUBJECT)

        await common.ping_until_ready(args, ping)
        return {**info, **await common.run_sends(args, send_broadcast)}


def client(args: argparse.Namespace) -> None:
    variant = flags(args)
    if "seed-loop" in variant:
        result = sync_client(args) if args.wl == "rpc_seq" else seed_loop_client(args)  # the seed's client
    elif args.wl in ("rpc_seq", "rpc_conc") and "sync-client" in variant:
        result = sync_client(args)
    elif args.wl == "task" and "sync-client" in variant:
        result = sync_task_client(args)
    else:
        uvloop = common.install_uvloop(args.uvloop)
        result = asyncio.run(async_client(args))
        result["uvloop_client"] = uvloop
    common.emit(result)


if __name__ == "__main__":
    ARGS = common.parse_args()
    server(ARGS) if ARGS.role == "server" else client(ARGS)
