#!/usr/bin/env python3
"""Benchmark Otter against a hand-written aio-pika program (and optional peers) in one run.

    .venv/bin/python benchmarks/run.py --rounds 3            # the table in the README
    .venv/bin/python benchmarks/run.py --smoke               # tiny counts, a few seconds (CI)
    .venv/bin/python benchmarks/run.py --memory              # a worker's RSS over 100,000 messages
    .venv/bin/python benchmarks/run.py --with kiwipy         # add peers that are installed

For every round, for every workload, every system runs in turn (the order rotates each round): the server, worker
or subscriber processes start, the client process runs its timed phase and prints a result, the servers are
stopped. Medians over rounds are printed with ratios to the baseline (the median of the per-round ratios), and every
run is written to ``benchmarks/results/<timestamp>.json``. See ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import importlib.util
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from typing import Any
from urllib.parse import unquote, urlsplit

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import common  # noqa: E402

DEFAULT_URL = os.environ.get("OTTER_BENCH_URL", "amqp://guest:guest@127.0.0.1:5672/otter-bench")
RESULTS = os.path.join(HERE, "results")
BASELINE = "aiopika"
WORKLOAD_ORDER = ("rpc_seq", "rpc_conc", "task", "bcast")


@dataclasses.dataclass(frozen=True)
class Workload:
    key: str
    title: str
    role: str  # server role
    servers: int  # server processes
    n: int
    warm: int
    conc: int = 64
    unit: str = "calls/s"

    @property
    def deliveries(self) -> int:
        """Messages handled in the timed phase, over all server processes."""
        return self.n * self.servers


FULL = {
    "rpc_seq": Workload("rpc_seq", "A. RPC one at a time", "rpc", 1, 2000, 200),
    "rpc_conc": Workload("rpc_conc", "B. RPC, 64 in flight", "rpc", 1, 10000, 200),
    "task": Workload("task", "C. 10,000 tasks (durable, persistent, confirmed)", "task", 1, 10000, 200,
                     unit="tasks/s"),
    "bcast": Workload("bcast", "D. broadcast to 3 subscribers", "bcast", 3, 5000, 100, unit="deliveries/s"),
}
SMOKE = {
    "rpc_seq": dataclasses.replace(FULL["rpc_seq"], n=50, warm=10),
    "rpc_conc": dataclasses.replace(FULL["rpc_conc"], n=200, warm=10),
    "task": dataclasses.replace(FULL["task"], title="C. tasks (durable, persistent, confirmed)", n=100, warm=10),
    "bcast": dataclasses.replace(FULL["bcast"], n=50, warm=10),
}


@dataclasses.dataclass(frozen=True)
class System:
    name: str
    label: str
    script: str
    workloads: tuple[str, ...] = WORKLOAD_ORDER
    variant: str = ""
    module: str | None = None  # must be importable by `python` for the system to run
    python: str = sys.executable
    uvloop: bool = True  # pass --uvloop (used if installed)
    what: str = ""


SYSTEMS = {
    BASELINE: System(BASELINE, "aio-pika (hand-written)", "bench_aiopika.py", module="aio_pika",
                     what="direct reply-to, prefetch 100, stdlib json; tasks durable+persistent+confirmed"),
    "otter": System("otter", "Otter", "bench_otter.py", module="otter",
                    what="plain def handlers; AsyncClient: A: await client.rpc one at a time; B: 64 coroutines "
                         "awaiting client.rpc; C/D: await client.task / .broadcast, at most 1,000 awaiting"),
    "otter_seed": System("otter_seed", "Otter, the seed's loops", "bench_otter.py", ("rpc_seq", "task", "bcast"),
                         variant="seed-loop", module="otter",
                         what="plain def handlers; plain loops on the sync Client: client.rpc(name, data).result(), "
                              "client.task(name, body) then flush(), "
                              "client.broadcast(body, subject=...) then flush()"),
    "otter_async": System("otter_async", "Otter, async def handlers", "bench_otter.py", variant="async-handlers",
                          module="otter", what="async def handlers; the clients of the 'Otter' row"),
    "otter_metrics": System("otter_metrics", "Otter, metrics on", "bench_otter.py", variant="metrics",
                            module="prometheus_client",
                            what="as 'otter', with METRICS_PORT set (otter run --metrics-port)"),
    "otter_nodiscovery": System("otter_nodiscovery", "Otter, discovery off", "bench_otter.py",
                                variant="no-discovery", module="otter",
                                what="as 'otter', with DISCOVERY=False: no control queue, no per-route counting"),
    "otter_sync": System("otter_sync", "Otter, sync Client", "bench_otter.py", ("rpc_seq", "rpc_conc", "task"),
                         variant="sync-client", module="otter",
                         what="plain def handlers; the sync Client: A: client.rpc(...).result() in a loop; B/C: a "
                              "window of CallFuture from Client.rpc / comm.task_send"),
}
PEERS = {
    "kiwipy": System("kiwipy", "kiwipy 0.9 async, JSON", "bench_kiwipy.py", module="kiwipy",
                     what="RmqCommunicator (async_connect), JSON codec; kiwipy's own semantics"),
    "faststream": System("faststream", "FastStream", "bench_faststream.py", module="faststream",
                         what="RabbitBroker request/publish, defaults"),
    "nameko": System("nameko", "Nameko", "bench_nameko.py", module="nameko", uvloop=False,
                     what="@rpc / @event_handler, ClusterRpcProxy, eventlet"),
}
# Systems whose rate is also reported against plain Otter's of the same round: what the difference costs.
PAIRED_WITH_OTTER = {"otter_metrics": "Metrics on / off", "otter_nodiscovery": "Discovery off / on"}
DEFAULT_SYSTEMS = (BASELINE, "otter", "otter_seed", "otter_async")
SMOKE_SYSTEMS = (BASELINE, "otter", "otter_seed")


# -- processes ------------------------------------------------------------------------------------------------------
def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    for proc in procs:
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _tail(paths: list[str], size: int = 1500) -> str:
    out = []
    for path in paths:
        with contextlib.suppress(OSError), open(path, errors="replace") as f:
            out.append(f.read()[-size:])
    return " | ".join(out)


@dataclasses.dataclass
class Run:
    """One system on one workload in one round: its processes, files and record."""

    system: System
    wl: Workload
    rnd: int
    ns: str
    tmp: str
    url: str
    timeout: float
    env: dict[str, str]
    extra_server_args: list[str] = dataclasses.field(default_factory=list)
    extra_client_args: list[str] = dataclasses.field(default_factory=list)

    def file(self, kind: str, i: int | str = "") -> str:
        return os.path.join(self.tmp, f"{self.ns}.{kind}{i}")

    def base(self) -> list[str]:
        return [self.system.python, os.path.join(HERE, self.system.script)]

    def common_args(self) -> list[str]:
        args = ["--ns", self.ns, "--url", self.url, "--warm", str(self.wl.warm), "--timeout", str(self.timeout)]
        if self.system.variant:
            args += ["--variant", self.system.variant]
        if self.system.uvloop:
            args.append("--uvloop")
        return args

    def execute(self, on_client_started: Any = None) -> dict[str, Any]:
        """Run it; ``on_client_started(client, servers)`` is called with the processes (profile.py attaches)."""
        wl = self.wl
        rec: dict[str, Any] = {"system": self.system.name, "wl": wl.key, "round": self.rnd, "ns": self.ns,
                               "ok": False, "loadavg_before": common.loadavg(), "when": time.strftime("%H:%M:%S")}
        servers: list[subprocess.Popen[bytes]] = []
        client: subprocess.Popen[str] | None = None
        logs: list[str] = []
        ready = [self.file("ready", i) for i in range(wl.servers)]
        warm = [self.file("warm", i) for i in range(wl.servers)]
        done = [self.file("done", i) for i in range(wl.servers)]
        expect = wl.warm + wl.n if wl.role != "rpc" else 0
        started = time.monotonic()
        try:
            for i in range(wl.servers):
                log = self.file("server", f"{i}.log")
                logs.append(log)
                cmd = [*self.base(), "server", "--wl", wl.role, "--ready", ready[i], "--warm-file", warm[i],
                       "--done", done[i], "--expect", str(expect), *self.common_args(), *self.extra_server_args]
                with open(log, "wb") as out:
                    servers.append(subprocess.Popen(cmd, cwd=HERE, stdout=out, stderr=subprocess.STDOUT,
                                                    start_new_session=True, env=self.env))
            cmd = [*self.base(), "client", "--wl", wl.key, "-n", str(wl.n), "--conc", str(wl.conc),
                   "--server-pids", ",".join(str(p.pid) for p in servers), "--ready-files", ",".join(ready),
                   "--warm-files", ",".join(warm), *self.common_args(), *self.extra_client_args]
            client = subprocess.Popen(cmd, cwd=HERE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                      env=self.env)
            if on_client_started is not None:
                on_client_started(client, servers)
            try:
                stdout, stderr = client.communicate(timeout=self.timeout)
            except subprocess.TimeoutExpired:
                client.kill()
                client.communicate()
                rec["error"] = f"client timed out after {self.timeout:g}s; servers: {_tail(logs)}"
                return rec
            lines = [line for line in stdout.splitlines() if line.startswith("RESULT ")]
            if client.returncode != 0 or not lines:
                rec["error"] = (f"client exit {client.returncode}: {(stdout + stderr)[-2500:]}"
                                f"\nservers: {_tail(logs)}")
                return rec
            res = json.loads(lines[-1][len("RESULT "):])
            rec["client"] = res
            rec.update(self._measure(res, servers, done, logs))
            rec["ok"] = "error" not in rec
            return rec
        finally:
            if client is not None and client.poll() is None:  # interrupted (Ctrl-C)
                client.kill()
                client.wait()
            _stop(servers)
            rec["wall_s"] = round(time.monotonic() - started, 2)
            rec["loadavg_after"] = common.loadavg()

    def _measure(self, res: dict[str, Any], servers: list[subprocess.Popen[bytes]], done: list[str],
                 logs: list[str]) -> dict[str, Any]:
        wl = self.wl
        out: dict[str, Any] = {"client_cpu_s": res["client_cpu_s"],
                               "client_cpu_us_per_msg": res["client_cpu_s"] / wl.n * 1e6}
        if wl.role == "rpc":
            server_cpu = sum(v for v in res["server_cpu_s"].values() if v is not None)
            out.update(rate=res["rate"], elapsed_s=res["elapsed_s"])
            out.update({k: res[k] for k in ("p50_us", "p99_us", "mean_us") if k in res})
        else:
            try:
                asyncio.run(common.wait_files(done, self.timeout, "done marks"))
            except TimeoutError as exc:
                return {"error": f"{exc}; servers: {_tail(logs)}"}
            marks = [common.read_json(path) for path in done]
            t_last = max(m["t_done"] for m in marks)
            elapsed = t_last - res["t0"]
            server_cpu = sum(m["cpu_s"] - res["server_cpu0"][str(m["pid"])] for m in marks
                             if str(m["pid"]) in res["server_cpu0"])
            out.update(rate=wl.deliveries / elapsed, elapsed_s=elapsed, publish_s=res["t_sent"] - res["t0"],
                       server_uvloop=[m.get("uvloop") for m in marks])
        out.update(server_cpu_s=server_cpu, server_cpu_us_per_msg=server_cpu / wl.deliveries * 1e6)
        return out


# -- broker -------------------------------------------------------------------------------------------------------
def vhost_of(url: str) -> str:
    path = urlsplit(url).path
    return unquote(path[1:]) if len(path) > 1 else "/"


async def _server_version(url: str) -> str:
    import aio_pika

    conn = await aio_pika.connect(url, timeout=5)
    try:
        props = conn.transport.connection.server_properties  # type: ignore[union-attr]
        version = props.get("version", b"?")
        return version.decode() if isinstance(version, bytes) else str(version)
    finally:
        await conn.close()


def ensure_vhost(url: str) -> str:
    """Connect, creating the benchmark vhost with ``rabbitmqctl`` when it is missing; return the broker version."""
    try:
        return asyncio.run(_server_version(url))
    except Exception as first:
        vhost = vhost_of(url)
        user = urlsplit(url).username or "guest"
        if vhost == "/" or shutil.which("rabbitmqctl") is None:
            raise SystemExit(f"cannot connect to {common_redact(url)}: {first!r}") from None
        print(f"creating the RabbitMQ vhost {vhost!r} for the benchmarks (rabbitmqctl)", file=sys.stderr)
        subprocess.run(["rabbitmqctl", "add_vhost", vhost], check=False, capture_output=True)
        subprocess.run(["rabbitmqctl", "set_permissions", "-p", vhost, user, ".*", ".*", ".*"], check=True,
                       capture_output=True)
        return asyncio.run(_server_version(url))


def common_redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return url.replace(f":{parts.password}@", ":***@", 1)


def cleanup(url: str, prefix: str, also: tuple[str, ...] = ()) -> None:
    """Delete the queues and exchanges this invocation declared (durable ones outlive their processes); ``also``:
    name prefixes a peer uses that cannot carry ours (Nameko's standalone reply queues)."""
    if shutil.which("rabbitmqctl") is None:
        return
    vhost = vhost_of(url)

    def names(what: str) -> list[str]:
        proc = subprocess.run(["rabbitmqctl", what, "-p", vhost, "name", "--no-table-headers", "--silent"],
                              capture_output=True, text=True, check=False)
        return [n for n in proc.stdout.split() if prefix in n or n.startswith(also)]  # nameko: mid-name

    queues, exchanges = names("list_queues"), names("list_exchanges")
    if not queues and not exchanges:
        return

    async def delete() -> None:
        import aio_pika

        conn = await aio_pika.connect(url)
        async with conn:
            for kind, items in (("queue", queues), ("exchange", exchanges)):
                for name in items:
                    channel = await conn.channel()
                    with contextlib.suppress(Exception):
                        if kind == "queue":
                            await channel.queue_delete(name)
                        else:
                            await channel.exchange_delete(name)
                    with contextlib.suppress(Exception):
                        await channel.close()

    with contextlib.suppress(Exception):
        asyncio.run(delete())


# -- systems ------------------------------------------------------------------------------------------------------
def importable(python: str, module: str | None) -> bool:
    if module is None:
        return True
    if python == sys.executable:
        return importlib.util.find_spec(module) is not None
    if not os.path.exists(python):
        return False
    return subprocess.run([python, "-c", f"import {module}"], capture_output=True, check=False).returncode == 0


def pick_systems(args: argparse.Namespace) -> tuple[list[System], list[str]]:
    """The systems to run and notes about peers that were asked for but are not installed."""
    names = args.systems.split(",") if args.systems else list(SMOKE_SYSTEMS if args.smoke else DEFAULT_SYSTEMS)
    peer_pythons = dict(item.split("=", 1) for item in args.peer_python.split(",") if item)
    notes: list[str] = []
    for peer in filter(None, args.with_peers.split(",")):
        if peer not in PEERS:
            raise SystemExit(f"unknown peer {peer!r}; known: {', '.join(PEERS)}")
        names.append(peer)
    chosen = []
    for name in names:
        system = SYSTEMS.get(name) or PEERS.get(name)
        if system is None:
            raise SystemExit(f"unknown system {name!r}; known: {', '.join([*SYSTEMS, *PEERS])}")
        candidates = [peer_pythons[name]] if name in peer_pythons else [
            sys.executable, os.path.join(args.peer_venvs, name, "bin", "python")]
        python = next((py for py in candidates if importable(py, system.module)), None)
        if python is None:
            notes.append(f"{name}: skipped, {system.module!r} is not importable (tried {', '.join(candidates)}; "
                         f"see benchmarks/README.md)")
            continue
        chosen.append(dataclasses.replace(system, python=python))
    if not any(s.name == BASELINE for s in chosen):
        chosen.insert(0, SYSTEMS[BASELINE])
    return chosen, notes


# -- environment --------------------------------------------------------------------------------------------------
def versions() -> dict[str, Any]:
    from importlib import metadata

    out: dict[str, Any] = {"python": platform.python_version()}
    for dist in ("otter", "aio-pika", "aiormq", "pamqp", "kiwipy", "orjson", "uvloop"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def git_state() -> dict[str, Any]:
    root = os.path.dirname(HERE)
    head = subprocess.run(["git", "-C", root, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", root, "status", "--porcelain", "--", "src"], capture_output=True,
                           text=True)
    return {"commit": head.stdout.strip() or None, "src_modified": bool(dirty.stdout.strip())}


def otter_env(pairs: list[str]) -> dict[str, str]:
    """``KEY=VALUE`` pairs as ``OTTER_KEY`` environment variables (Otter's own config mechanism). Tracing is off
    unless a pair turns it on: as for a user without ``otter-mq[otel]``, although the dev venv has OpenTelemetry."""
    env = dict(os.environ)
    env.setdefault("OTTER_TRACING", "false")
    for pair in pairs:
        key, _, value = pair.partition("=")
        env[f"OTTER_{key.upper()}"] = value
    env["PYTHONPATH"] = HERE + os.pathsep + env.get("PYTHONPATH", "")
    return env


# -- reporting ----------------------------------------------------------------------------------------------------
def median(values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def summarise(runs: list[dict[str, Any]], systems: list[System], workloads: dict[str, Workload]
              ) -> dict[str, dict[str, Any]]:
    """Per workload and system: medians, and the median of per-round ratios to the baseline."""
    base = {(r["wl"], r["round"]): r["rate"] for r in runs if r["ok"] and r["system"] == BASELINE}
    plain = {(r["wl"], r["round"]): r for r in runs if r["ok"] and r["system"] == "otter"}
    summary: dict[str, dict[str, Any]] = {}
    for wl in workloads:
        summary[wl] = {}
        for system in systems:
            rs = [r for r in runs if r["wl"] == wl and r["system"] == system.name and r["ok"]]
            failed = sum(1 for r in runs if r["wl"] == wl and r["system"] == system.name and not r["ok"])
            if not rs and not failed:
                continue
            ratios = [r["rate"] / base[(wl, r["round"])] for r in rs if (wl, r["round"]) in base]
            summary[wl][system.name] = {
                "runs": len(rs), "failed": failed,
                "rate": median([r["rate"] for r in rs]),
                "ratio": median(ratios),
                "p50_us": median([r.get("p50_us") for r in rs]),
                "p99_us": median([r.get("p99_us") for r in rs]),
                "publish_s": median([r.get("publish_s") for r in rs]),
                "client_cpu_us_per_msg": median([r["client_cpu_us_per_msg"] for r in rs]),
                "server_cpu_us_per_msg": median([r["server_cpu_us_per_msg"] for r in rs]),
                "rates": [round(r["rate"], 1) for r in rs],
            }
            if system.name in PAIRED_WITH_OTTER:  # paired with plain Otter's run of the same round, as the ratios are
                pairs = [(r, plain[(wl, r["round"])]) for r in rs if (wl, r["round"]) in plain]
                summary[wl][system.name]["vs_otter"] = median([on["rate"] / off["rate"] for on, off in pairs])
                summary[wl][system.name]["server_cpu_vs_otter"] = median(
                    [on["server_cpu_us_per_msg"] / off["server_cpu_us_per_msg"] for on, off in pairs
                     if on.get("server_cpu_us_per_msg") and off.get("server_cpu_us_per_msg")])
    return summary


def fmt(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def print_report(summary: dict[str, dict[str, Any]], systems: list[System], workloads: dict[str, Workload],
                 meta: dict[str, Any]) -> None:
    labels = {s.name: s.label for s in systems}
    print()
    print(f"Medians of {meta['rounds']} round(s); ratio = system / {labels[BASELINE]} (median of per-round ratios, "
          f"higher is better). CPU = user+system seconds of the whole process (all threads) / messages.")
    print(f"Baseline: aio-pika {meta['versions']['aio-pika']} from the project venv (pinned by kiwipy), not "
          f"aio-pika 10. uvloop: {meta['uvloop']}. RabbitMQ {meta['rabbitmq']}, Python {meta['versions']['python']},"
          f" {meta['cpus']} CPUs, load average {meta['loadavg_start']:.2f} at start, {meta['loadavg_end']:.2f} at end.")
    header = (f"{'workload':<30} {'system':<28} {'rate/s':>9} {'ratio':>6} {'p50 µs':>8} {'p99 µs':>8} "
              f"{'client CPU µs/msg':>18} {'server CPU µs/msg':>18}")
    print()
    print(header)
    print("-" * len(header))
    for key, wl in workloads.items():
        first = True
        for system in systems:
            row = summary.get(key, {}).get(system.name)
            if row is None:
                continue
            title = f"{wl.title} ({wl.n})" if first else ""
            first = False
            if not row["runs"]:
                print(f"{title:<30} {labels[system.name]:<28} {'FAILED':>9}")
                continue
            print(f"{title:<30.30} {labels[system.name]:<28.28} {fmt(row['rate']):>9} {fmt(row['ratio'], 2):>6} "
                  f"{fmt(row['p50_us']):>8} {fmt(row['p99_us']):>8} {fmt(row['client_cpu_us_per_msg']):>18} "
                  f"{fmt(row['server_cpu_us_per_msg']):>18}")
    print()
    print("Markdown (ratio to the baseline, rate in brackets):")
    print()
    print("| system | " + " | ".join(workloads[k].title for k in workloads) + " |")
    print("|---|" + "---|" * len(workloads))
    for system in systems:
        cells = []
        for key in workloads:
            row = summary.get(key, {}).get(system.name)
            if row is None or not row["runs"]:
                cells.append("-" if row is None else "failed")
                continue
            extra = f", p50 {fmt(row['p50_us'])} µs" if key == "rpc_seq" else ""
            cells.append(f"{fmt(row['ratio'], 2)} ({fmt(row['rate'])}/s{extra})")
        print(f"| {labels[system.name]} | " + " | ".join(cells) + " |")
    print()
    print("What each row runs:")
    for system in systems:
        what = meta.get("systems", {}).get(system.name, {}).get("what") or system.what
        print(f"- {labels[system.name]}: {what}")
    print_metrics_cost(summary, workloads)


def print_metrics_cost(summary: dict[str, dict[str, Any]], workloads: dict[str, Workload]) -> None:
    """With 'otter' and a system paired with it in the run (metrics on; discovery off): what the difference costs,
    as the median of per-round ratios."""
    for name, label in PAIRED_WITH_OTTER.items():
        rows = {key: summary.get(key, {}).get(name) or {} for key in workloads}
        cells = [f"{workloads[key].title}: rate {row['vs_otter']:.3f}, server CPU "
                 f"{fmt(row.get('server_cpu_vs_otter'), 3)}" for key, row in rows.items()
                 if row.get("vs_otter") is not None]
        if cells:
            print()
            print(f"{label} (median of per-round ratios to Otter; rate 1.000 = no difference): " + "; ".join(cells))


# -- memory mode --------------------------------------------------------------------------------------------------
def memory_runs(args: argparse.Namespace, tmp: str, prefix: str, env: dict[str, str], systems: list[System]
                ) -> list[dict[str, Any]]:
    count = 2000 if args.smoke else args.memory_count
    every = max(1, count // 10)
    results = []
    for system in systems:
        for key in ("rpc_conc", "task"):
            wl = dataclasses.replace(FULL[key], n=count, warm=0 if key == "rpc_conc" else 1)
            ns = f"{prefix}-mem-{system.name}-{key}"
            rss_file = os.path.join(tmp, f"{ns}.rss")
            run = Run(system, wl, 0, ns, tmp, args.url, max(args.timeout, count / 100), env,
                      extra_server_args=["--rss-every", str(every), "--rss-file", rss_file])
            print(f"[memory] {system.name} {key}: {count} messages ...", flush=True)
            rec = run.execute()
            rec["memory_count"] = count
            with contextlib.suppress(OSError):
                rec["rss"] = common.read_json(rss_file)["rss"]
            results.append(rec)
            if not rec["ok"] or not rec.get("rss"):
                print(f"[memory] {system.name} {key}: FAILED {rec.get('error', 'no RSS samples')[:1500]}")
                continue
            samples = rec["rss"]
            start, end = samples[0][1], samples[-1][1]
            settled = next((rss for n, rss in samples if n >= count // 10), start)
            rec["rss_start_mib"], rec["rss_end_mib"] = start / 2**20, end / 2**20
            rec["rss_growth_after_first_tenth_mib"] = (end - settled) / 2**20
            line = ", ".join(f"{n:,}: {rss / 2**20:.1f}" for n, rss in samples)
            print(f"[memory] {system.name} {key}: RSS MiB by messages handled: {line}")
            print(f"[memory] {system.name} {key}: start {start / 2**20:.1f} MiB, end {end / 2**20:.1f} MiB, "
                  f"growth after the first {count // 10:,}: {(end - settled) / 2**20:+.1f} MiB "
                  f"({rec['rate']:.0f} msgs/s)")
    return results


# -- main ---------------------------------------------------------------------------------------------------------
def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--smoke", action="store_true", help="tiny counts and one round (CI): checks the harness runs")
    p.add_argument("--memory", action="store_true", help="only the memory mode: a worker's RSS over many messages")
    p.add_argument("--memory-count", type=int, default=100_000)
    p.add_argument("--workloads", default=",".join(WORKLOAD_ORDER), help="subset, e.g. rpc_seq,task")
    p.add_argument("--systems", default="", help=f"default: {','.join(DEFAULT_SYSTEMS)}; known: "
                   f"{','.join([*SYSTEMS, *PEERS])}")
    p.add_argument("--with", dest="with_peers", default="", help="add peers: kiwipy,faststream,nameko (if installed)")
    p.add_argument("--peer-python", default="", help="NAME=/path/to/python for a peer in its own venv")
    p.add_argument("--peer-venvs", default=os.environ.get("BENCH_PEER_VENVS", "/tmp/benchvenvs"),
                   help="a peer NAME is also looked for in DIR/NAME/bin/python")
    p.add_argument("--otter-config", action="append", default=[], metavar="KEY=VALUE",
                   help="Otter config for server and client, as OTTER_KEY env vars (e.g. CONCURRENCY=16)")
    p.add_argument("--url", default=DEFAULT_URL, help="broker URL; its vhost is created if missing")
    p.add_argument("--out", default=None, help="JSON results path (default benchmarks/results/<timestamp>.json)")
    p.add_argument("--timeout", type=float, default=180.0, help="seconds per run")
    p.add_argument("--report", metavar="JSON", help="print the tables of an earlier results file and exit")
    p.add_argument("--keep-tmp", action="store_true", help="keep the per-run logs and marks")
    args = p.parse_args(argv)
    if args.smoke:
        args.rounds = 1
    return args


def reprint(path: str) -> int:
    """Print the tables of a results file again."""
    data = common.read_json(path)
    meta = data["meta"]
    if "summary" not in data:  # memory mode
        for rec in data["runs"]:
            series = ", ".join(f"{n:,}: {rss / 2**20:.1f}" for n, rss in rec.get("rss", []))
            print(f"[memory] {rec['system']} {rec['wl']}: RSS MiB by messages handled: {series or rec.get('error')}")
        return 0
    systems = [dataclasses.replace(SYSTEMS.get(name) or PEERS[name], label=info["label"])
               for name, info in meta["systems"].items()]
    workloads = {key: Workload(**fields) for key, fields in meta["workloads"].items()}
    print_report(data["summary"], systems, workloads, meta)
    return 0


def main(argv: list[str] | None = None) -> int:
    # SIGTERM (a test's timeout, a CI job cancelled) unwinds like Ctrl-C, so the servers, each in a session of its
    # own, are stopped by Run.execute's finally instead of being left running.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    args = parse(argv)
    if args.report:
        return reprint(args.report)
    workloads_table = SMOKE if args.smoke else FULL
    workloads = {k: workloads_table[k] for k in args.workloads.split(",")}
    systems, notes = pick_systems(args)
    rabbitmq = ensure_vhost(args.url)
    batch = uuid.uuid4().hex[:8]
    prefix = f"ob{batch}"
    tmp = tempfile.mkdtemp(prefix="otter-bench-")
    env = otter_env(args.otter_config)
    uv = versions()["uvloop"]
    meta: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "argv": sys.argv[1:], "batch": batch,
        "mode": "memory" if args.memory else ("smoke" if args.smoke else "full"), "rounds": args.rounds,
        "url": common_redact(args.url), "rabbitmq": rabbitmq, "versions": versions(), "git": git_state(),
        "cpus": os.cpu_count(), "loadavg_start": common.loadavg(), "otter_config": args.otter_config,
        "uvloop": (f"uvloop {uv} in every server and async client (Otter's app.run picks it itself; the sync "
                   f"Client's own loop is whatever Otter chooses)") if uv else "not installed",
        "systems": {s.name: {"label": s.label, "what": s.what, "python": s.python, "variant": s.variant}
                    for s in systems},
        "workloads": {k: dataclasses.asdict(w) for k, w in workloads.items()},
        "notes": notes,
    }
    for note in notes:
        print(note, file=sys.stderr)
    runs: list[dict[str, Any]] = []
    try:
        if args.memory:
            runs = memory_runs(args, tmp, prefix, env, [s for s in systems if s.name.startswith("otter")][:1]
                               if not args.systems else systems)
        else:
            for rnd in range(args.rounds):
                for key, wl in workloads.items():
                    order = [s for s in systems if key in s.workloads]
                    shift = rnd % len(order) if order else 0
                    for system in order[shift:] + order[:shift]:  # alternate who goes first
                        ns = f"{prefix}-r{rnd}-{system.name}-{key}"
                        rec = Run(system, wl, rnd, ns, tmp, args.url, args.timeout, env).execute()
                        runs.append(rec)
                        if rec["ok"]:
                            lat = f" p50={rec['p50_us']:.0f}µs p99={rec['p99_us']:.0f}µs" if "p50_us" in rec else ""
                            print(f"[round {rnd}] {key:<8} {system.name:<14} {rec['rate']:>9.1f}/s{lat} "
                                  f"client {rec['client_cpu_us_per_msg']:.0f} µs/msg, server "
                                  f"{rec['server_cpu_us_per_msg']:.0f} µs/msg (load {rec['loadavg_before']:.2f})",
                                  flush=True)
                        else:
                            print(f"[round {rnd}] {key:<8} {system.name:<14} FAILED: {rec.get('error', '')[:3000]}",
                                  flush=True)
    finally:
        nameko = any(s.name == "nameko" for s in systems)
        cleanup(args.url, prefix, ("rpc.reply-standalone_rpc_proxy-",) if nameko else ())
        if not args.keep_tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    meta["loadavg_end"] = common.loadavg()
    meta["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    output: dict[str, Any] = {"meta": meta, "runs": runs}
    if not args.memory:
        output["summary"] = summarise(runs, systems, workloads)
        print_report(output["summary"], systems, workloads, meta)
    out = args.out or os.path.join(RESULTS, f"{time.strftime('%Y%m%d-%H%M%S')}-{meta['mode']}-{batch}.json")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        json.dump(output, f, indent=1)
    print(f"\nresults: {out}")
    return 0 if all(r["ok"] for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
