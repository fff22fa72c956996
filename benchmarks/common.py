"""What every benchmark process shares: the handler, the file handshake, CPU and memory readings.

Stdlib only, so a peer installed in another virtualenv (FastStream, Nameko) can import it too.

The handshake between ``run.py`` and the per-system scripts (``bench_<system>.py``):

- a server, worker or subscriber writes its ``--ready`` file once it consumes (when it can tell), its ``--warm``
  file when it has handled the warm-up messages and its ``--done`` file (with the time and its own CPU seconds)
  when it has handled ``--expect`` messages;
- a client waits for those files (polling with a deadline), reads the servers' CPU counters from ``/proc`` at the
  start of its timed phase, and prints exactly one line ``RESULT <json>``.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import itertools
import json
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

PAYLOAD = "otter"
READY_PING = "__bench_ready__"  # a broadcast body that only tells a subscriber to say it is bound
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def handle(data: Any) -> dict[str, str]:
    """The benchmark handler: ``{"result": sha256hex(data)}``."""
    if isinstance(data, str):
        data = data.encode()
    return {"result": hashlib.sha256(data).hexdigest()}


EXPECTED = handle(PAYLOAD)


def check(result: Any) -> None:
    if result != EXPECTED:
        raise RuntimeError(f"unexpected RPC result {result!r}")


# -- /proc readings -----------------------------------------------------------------------------------------------
def cpu_seconds(pid: int | str = "self") -> float:
    """User + system CPU seconds of a whole process (all its threads), from ``/proc/<pid>/stat``."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime (fields 14 and 15 of the line)


def rss_bytes(pid: int | str = "self") -> int:
    """Resident set size of a process, from ``/proc/<pid>/statm``."""
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * PAGE_SIZE


def loadavg() -> float:
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


# -- files --------------------------------------------------------------------------------------------------------
def mark(path: str | None, obj: dict[str, Any] | None = None) -> None:
    """Write a JSON file atomically (readers never see half of it)."""
    if not path:
        return
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj if obj is not None else {"t": time.time(), "pid": os.getpid()}, f)
    os.replace(tmp, path)


def read_json(path: str) -> Any:
    with open(path) as f:
        return json.load(f)


async def wait_files(paths: Iterable[str], timeout: float, what: str = "files") -> None:
    """Poll until every file exists; raise after ``timeout`` seconds."""
    paths = [p for p in paths if p]
    deadline = time.monotonic() + timeout
    while not all(os.path.exists(p) for p in paths):
        if time.monotonic() > deadline:
            missing = [p for p in paths if not os.path.exists(p)]
            raise TimeoutError(f"{what} not there after {timeout:g}s: {missing}")
        await asyncio.sleep(0.005)


def wait_files_blocking(paths: Iterable[str], timeout: float, what: str = "files") -> None:
    asyncio.run(wait_files(paths, timeout, what))


class Counter:
    """Counts handled messages (thread-safe: ``next`` on ``itertools.count`` is atomic in CPython).

    Writes the warm file at ``warm`` messages and the done file at ``expect``; with ``rss_every`` it also records
    its own resident memory every that many messages (the memory mode).
    """

    def __init__(self, args: argparse.Namespace) -> None:
        self.warm = args.warm
        self.expect = args.expect
        self.warm_path = args.warm_file
        self.done_path = args.done
        self.rss_every = args.rss_every
        self.rss_path = args.rss_file
        self.rss: list[tuple[int, int]] = []
        self._count = itertools.count(1)

    def hit(self) -> None:
        n = next(self._count)
        if n == self.warm:
            mark(self.warm_path, {"t": time.time(), "count": n, "pid": os.getpid()})
        if self.rss_every and (n == 1 or n % self.rss_every == 0):
            self.rss.append((n, rss_bytes()))
            mark(self.rss_path, {"rss": self.rss, "cpu_s": cpu_seconds(), "pid": os.getpid()})
        if n == self.expect:
            mark(self.done_path, {"t_done": time.time(), "count": n, "pid": os.getpid(),
                                  "cpu_s": cpu_seconds(), "uvloop": "uvloop" in sys.modules})


# -- client side --------------------------------------------------------------------------------------------------
class Window:
    """The timed phase of a client: wall time, its own CPU and the servers' CPU at start and end."""

    def __init__(self, server_pids: list[int]) -> None:
        self.server_pids = server_pids

    def start(self) -> None:
        mark(os.environ.get("BENCH_PHASE_FILE"))  # tells profile.py the timed phase begins
        self.servers_cpu0 = {pid: cpu_seconds(pid) for pid in self.server_pids}
        self.cpu0 = cpu_seconds()
        self.t0 = time.time()
        self.perf0 = time.perf_counter()

    def stop(self) -> dict[str, Any]:
        elapsed = time.perf_counter() - self.perf0
        t_end = time.time()
        cpu = cpu_seconds() - self.cpu0
        servers = {}
        for pid, before in self.servers_cpu0.items():
            try:
                servers[str(pid)] = cpu_seconds(pid) - before
            except OSError:
                servers[str(pid)] = None
        return {"t0": self.t0, "t_end": t_end, "elapsed_s": elapsed, "client_cpu_s": cpu,
                "server_cpu_s": servers, "server_cpu0": {str(k): v for k, v in self.servers_cpu0.items()}}


def latency_stats(lat_ns: list[int]) -> dict[str, float]:
    lat_us = sorted(x / 1000.0 for x in lat_ns)
    n = len(lat_us)
    return {
        "p50_us": lat_us[int(0.50 * (n - 1))],
        "p99_us": lat_us[round(0.99 * (n - 1))],
        "mean_us": statistics.fmean(lat_us),
    }


async def bounded(n: int, send: Callable[[], Awaitable[Any]], limit: int) -> None:
    """Run ``send()`` ``n`` times with at most ``limit`` awaiting at once (publisher confirms in flight)."""
    sem = asyncio.Semaphore(limit)

    async def one() -> None:
        async with sem:
            await send()

    await asyncio.gather(*(one() for _ in range(n)))


async def run_rpc_seq(args: argparse.Namespace, call: Callable[[], Awaitable[Any]]) -> dict[str, Any]:
    """Workload A for an async client: warm-up, then ``n`` calls one at a time, each one timed."""
    for _ in range(args.warm):
        check(await call())
    window = Window(args.server_pids)
    lat = []
    clock = time.perf_counter_ns
    window.start()
    for _ in range(args.n):
        t = clock()
        result = await call()
        lat.append(clock() - t)
    res = window.stop()
    check(result)
    return {**res, **latency_stats(lat), "n": args.n, "rate": args.n / res["elapsed_s"]}


async def run_rpc_conc(args: argparse.Namespace, call: Callable[[], Awaitable[Any]]) -> dict[str, Any]:
    """Workload B for an async client: ``conc`` coroutines calling until ``n`` calls are done."""
    for _ in range(args.warm):
        check(await call())
    remaining = args.n

    async def caller() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            check(await call())

    window = Window(args.server_pids)
    window.start()
    await asyncio.gather(*(caller() for _ in range(args.conc)))
    res = window.stop()
    return {**res, "n": args.n, "conc": args.conc, "rate": args.n / res["elapsed_s"]}


async def run_sends(args: argparse.Namespace, send: Callable[[], Awaitable[Any]]) -> dict[str, Any]:
    """Workloads C and D for an async client: warm-up sends, wait until the servers handled them, then the timed
    sends (``inflight`` unconfirmed at most). The rate is computed by run.py from the servers' done files."""
    await bounded(args.warm, send, args.inflight)
    await wait_files(args.warm_files, args.timeout, "warm-up marks")
    window = Window(args.server_pids)
    window.start()
    await bounded(args.n, send, args.inflight)
    res = window.stop()
    return {**res, "n": args.n, "inflight": args.inflight, "t_sent": res["t_end"]}


async def ping_until_ready(args: argparse.Namespace, ping: Callable[[], Awaitable[Any]]) -> None:
    """Broadcast readiness: send ready pings until every subscriber wrote its ready file (it is then bound)."""
    deadline = time.monotonic() + args.timeout
    while True:
        await ping()
        try:
            await wait_files(args.ready_files, 0.2, "ready marks")
            return
        except TimeoutError:
            if time.monotonic() > deadline:
                raise


def emit(obj: dict[str, Any]) -> None:
    print("RESULT " + json.dumps(obj), flush=True)


def run_asyncio_script(
    server: Callable[[argparse.Namespace], Awaitable[Any]],
    client: Callable[[argparse.Namespace], Awaitable[dict[str, Any]]],
    label: str,
) -> None:
    """The ``__main__`` of an asyncio system's script: run its server or its client (on uvloop when ``--uvloop``),
    and print the client's result, labelled."""
    args = parse_args()
    uvloop = install_uvloop(args.uvloop)
    if args.role == "server":
        asyncio.run(server(args))
    else:
        result = asyncio.run(client(args))
        result.update(uvloop_client=uvloop, client=label)
        emit(result)


def install_uvloop(enabled: bool) -> bool:
    """Make new event loops uvloop loops, when asked and installed."""
    if not enabled:
        return False
    try:
        import uvloop
    except ImportError:
        return False
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return True


def _pids(text: str) -> list[int]:
    return [int(p) for p in text.split(",") if p]


def _paths(text: str) -> list[str]:
    return [p for p in text.split(",") if p]


def parse_args(extra: Callable[[argparse.ArgumentParser], None] | None = None,
               argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    p.add_argument("role", choices=["server", "client"])
    p.add_argument("--wl", required=True, help="server: rpc|task|bcast ; client: rpc_seq|rpc_conc|task|bcast")
    p.add_argument("--ns", required=True, help="prefix for every queue and exchange name of this run")
    p.add_argument("--url", required=True)
    p.add_argument("-n", type=int, default=2000)
    p.add_argument("--warm", type=int, default=200)
    p.add_argument("--conc", type=int, default=64)
    p.add_argument("--inflight", type=int, default=1000, help="task/bcast: most unconfirmed publishes at once")
    p.add_argument("--timeout", type=float, default=120.0)
    p.add_argument("--uvloop", action="store_true", help="use uvloop if installed")
    p.add_argument("--variant", default="", help="system-specific switch (see each script)")
    # server side
    p.add_argument("--expect", type=int, default=0, help="server: messages to handle before the done mark")
    p.add_argument("--ready", default=None)
    p.add_argument("--warm-file", default=None)
    p.add_argument("--done", default=None)
    p.add_argument("--rss-every", type=int, default=0, help="server: record RSS every that many messages")
    p.add_argument("--rss-file", default=None, help="server: where the RSS samples go (rewritten each time)")
    # client side
    p.add_argument("--server-pids", type=_pids, default=[])
    p.add_argument("--ready-files", type=_paths, default=[])
    p.add_argument("--warm-files", type=_paths, default=[])
    if extra:
        extra(p)
    return p.parse_args(argv)
