#!/usr/bin/env python3
"""How Otter's cost grows: with the payload, with the number of RPC names an app serves, and with worker processes.

    .venv/bin/python benchmarks/scaling.py                  # all three (~2 min on a quiet 2-core machine)
    .venv/bin/python benchmarks/scaling.py --only payload   # or names, workers
    .venv/bin/python benchmarks/scaling.py --smoke          # tiny counts, a few seconds

The client is the seed's sync ``Client`` in plain loops (``client.rpc(name, data).result()``; ``client.task(name,
body)`` then ``client.flush()``); the servers are ``Otter`` apps with plain ``def`` handlers, each in its own
process (``python scaling.py serve ...``), on the broker's ``otter-bench`` vhost as ``run.py`` uses it.

- payload: 100 B, 10 KB and 1 MB strings; RPCs one at a time (rate, p50, p99 of each call) and tasks (rate from the
  first send until the worker handled the last).
- names: one app serving 1, 100 and 1,000 RPC names: start-up time (process start until every name answers), the
  server's RSS once serving, and RPCs one at a time spread over every name (rate, server CPU per call).
- workers: 1 and 2 worker processes on one task queue: tasks handled per second.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import common  # noqa: E402
import run as bench  # noqa: E402

from otter import Client, Otter, Unroutable  # noqa: E402


def names_for(ns: str) -> dict[str, str]:
    return {"MESSAGE_EXCHANGE": f"{ns}.messages", "TASK_EXCHANGE": f"{ns}.tasks",
            "DEFAULT_TASK_QUEUE": f"{ns}.tasks.default", "RPC_QUEUE_PREFIX": f"{ns}.rpc.",
            "DEAD_LETTER_QUEUE": f"{ns}.dead-letter"}


def digest(data: Any) -> str:
    return hashlib.sha256(data.encode() if isinstance(data, str) else repr(data).encode()).hexdigest()


# -- server ---------------------------------------------------------------------------------------------------------
def serve(args: argparse.Namespace) -> None:
    """An app with ``--rpc-names`` RPC names and one task; each handled task appends a byte to ``--count-file``."""
    app = Otter("scaling", **names_for(args.ns))
    for i in range(args.rpc_names):
        app.add_rpc(f"scale.rpc.{i}")(lambda comm, data: digest(data))
    counter = os.open(args.count_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT)

    @app.add_task(f"{args.ns}.task")
    def task(comm: Any, body: Any) -> None:
        digest(body)
        os.write(counter, b".")

    app.run(args.url)


class Servers:
    """Server processes of one measurement; stopped (and their queues deleted) on exit."""

    def __init__(self, url: str, count: int, rpc_names: int) -> None:
        self.url, self.ns = url, f"osc{uuid.uuid4().hex[:8]}"
        self.tmp = tempfile.mkdtemp(prefix="otter-scaling-")
        self.count_file = os.path.join(self.tmp, "count")
        open(self.count_file, "wb").close()
        self.started = time.perf_counter()
        self.procs = []
        for i in range(count):
            with open(os.path.join(self.tmp, f"server{i}.log"), "wb") as log:
                self.procs.append(subprocess.Popen(
                    [sys.executable, __file__, "serve", "--ns", self.ns, "--url", url, "--rpc-names", str(rpc_names),
                     "--count-file", self.count_file], cwd=HERE, start_new_session=True, stdout=log,
                    stderr=subprocess.STDOUT,
                ))

    def handled(self) -> int:
        return os.path.getsize(self.count_file)

    def __enter__(self) -> Servers:
        return self

    def __exit__(self, *exc: Any) -> None:
        bench._stop(self.procs)  # type: ignore[arg-type]
        bench.cleanup(self.url, self.ns)


def consumers(url: str, queue: str) -> int:
    async def count() -> int:
        import aio_pika

        connection = await aio_pika.connect(url)
        async with connection:
            channel = await connection.channel()
            declared = await channel.declare_queue(queue, passive=True)
            return int(declared.declaration_result.consumer_count or 0)

    return asyncio.run(count())


def wait_served(client: Client, name: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            client.rpc(name, "x", timeout=5).result()
            return
        except Unroutable:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def wait_handled(servers: Servers, count: int, timeout: float = 300.0) -> float:
    deadline = time.monotonic() + timeout
    while servers.handled() < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {servers.handled()} of {count} tasks handled")
        time.sleep(0.002)
    return time.perf_counter()


def rpc_loop(client: Client, names: list[str], data: Any, n: int, pids: list[int]) -> dict[str, Any]:
    for i in range(min(n, 50)):
        client.rpc(names[i % len(names)], data).result()
    lat: list[int] = []
    clock = time.perf_counter_ns
    timer = common.Window(pids)
    timer.start()
    for i in range(n):
        t = clock()
        client.rpc(names[i % len(names)], data).result()
        lat.append(clock() - t)
    res = timer.stop()
    server_cpu = sum(v for v in res["server_cpu_s"].values() if v is not None)
    return {"rate": n / res["elapsed_s"], **common.latency_stats(lat),
            "client_cpu_us": res["client_cpu_s"] / n * 1e6, "server_cpu_us": server_cpu / n * 1e6}


def task_loop(client: Client, servers: Servers, data: Any, n: int) -> dict[str, Any]:
    queue = f"{servers.ns}.task"
    warm = min(n // 10, 200)
    for _ in range(warm):
        client.task(queue, data)
    client.flush()
    wait_handled(servers, warm)
    cpu0 = {p.pid: common.cpu_seconds(p.pid) for p in servers.procs}
    t0 = time.perf_counter()
    for _ in range(n):
        client.task(queue, data)
    client.flush()
    sent = time.perf_counter()
    end = wait_handled(servers, warm + n)
    server_cpu = sum(common.cpu_seconds(pid) - before for pid, before in cpu0.items())
    return {"rate": n / (end - t0), "send_s": sent - t0, "server_cpu_us": server_cpu / n * 1e6}


# -- measurements ---------------------------------------------------------------------------------------------------
def payloads(url: str, smoke: bool) -> list[dict[str, Any]]:
    rows = []
    for size, rpcs, tasks in ((100, 2000, 10000), (10_000, 2000, 10000), (1_000_000, 100, 300)):
        if smoke:
            rpcs, tasks = min(rpcs, 20), min(tasks, 50)
        data = "x" * size
        with Servers(url, 1, 1) as servers, Client(url, **names_for(servers.ns)) as client:
            wait_served(client, "scale.rpc.0")
            rpc = rpc_loop(client, ["scale.rpc.0"], data, rpcs, [p.pid for p in servers.procs])
            task = task_loop(client, servers, data, tasks)
        rows.append({"payload_bytes": size, "rpc": rpc, "task": task, "rpcs": rpcs, "tasks": tasks})
        print(f"[payload] {size:>9,} B: RPC {rpc['rate']:,.0f}/s p50 {rpc['p50_us']:,.0f} µs p99 "
              f"{rpc['p99_us']:,.0f} µs (server {rpc['server_cpu_us']:,.0f} µs/call); tasks {task['rate']:,.0f}/s "
              f"(server {task['server_cpu_us']:,.0f} µs/task)", flush=True)
    return rows


def rpc_names(url: str, smoke: bool) -> list[dict[str, Any]]:
    rows = []
    for count in (1, 100, 1000):
        n = 50 if smoke else 2000
        with Servers(url, 1, count) as servers, Client(url, **names_for(servers.ns)) as client:
            names = [f"scale.rpc.{i}" for i in range(count)]
            wait_served(client, names[-1])
            for name in names:  # every one answers (they are consumed in turn at start-up)
                wait_served(client, name)
            startup = time.perf_counter() - servers.started
            rss = common.rss_bytes(servers.procs[0].pid)
            rpc = rpc_loop(client, names, "otter", n, [servers.procs[0].pid])
        rows.append({"rpc_names": count, "startup_s": startup, "rss_mib": rss / 2**20, "rpc": rpc, "rpcs": n})
        print(f"[names] {count:>5} RPC names: serving after {startup:.2f} s, RSS {rss / 2**20:.1f} MiB; RPC "
              f"{rpc['rate']:,.0f}/s p50 {rpc['p50_us']:,.0f} µs, server {rpc['server_cpu_us']:,.0f} µs/call",
              flush=True)
    return rows


def workers(url: str, smoke: bool) -> list[dict[str, Any]]:
    rows = []
    for count in (1, 2):
        n = 100 if smoke else 20000
        with Servers(url, count, 1) as servers, Client(url, **names_for(servers.ns)) as client:
            wait_served(client, "scale.rpc.0")
            client.task(f"{servers.ns}.task", "declare", wait=True)
            wait_handled(servers, 1)
            deadline = time.monotonic() + 60
            while consumers(url, f"{servers.ns}.task") < count:  # every worker consumes before the clock starts
                if time.monotonic() > deadline:
                    raise TimeoutError("the workers did not all consume the task queue")
                time.sleep(0.05)
            task = task_loop(client, servers, "otter", n)
        rows.append({"workers": count, "task": task, "tasks": n})
        print(f"[workers] {count}: tasks {task['rate']:,.0f}/s (server {task['server_cpu_us']:,.0f} µs/task, all "
              f"workers)", flush=True)
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("role", nargs="?", default="measure", choices=["measure", "serve"])
    p.add_argument("--url", default=bench.DEFAULT_URL)
    p.add_argument("--only", default="payload,names,workers")
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--out", default=None)
    p.add_argument("--ns", default="")
    p.add_argument("--rpc-names", type=int, default=1)
    p.add_argument("--count-file", default="")
    args = p.parse_args()
    if args.role == "serve":
        serve(args)
        return 0
    bench.ensure_vhost(args.url)
    load0 = common.loadavg()
    out: dict[str, Any] = {"started": time.strftime("%Y-%m-%dT%H:%M:%S"), "loadavg_start": load0,
                           "git": bench.git_state()}
    steps = {"payload": payloads, "names": rpc_names, "workers": workers}
    for key in args.only.split(","):
        out[key] = steps[key](args.url, args.smoke)
    out["loadavg_end"] = common.loadavg()
    print(f"load average {load0:.2f} at start, {out['loadavg_end']:.2f} at end")
    path = args.out or os.path.join(bench.RESULTS, f"{time.strftime('%Y%m%d-%H%M%S')}-scaling.json")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(out, f, indent=1)
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
