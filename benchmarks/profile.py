#!/usr/bin/env python3
"""Profile one workload with py-spy: the server processes and the client, sampled while the benchmark runs.

    .venv/bin/pip install py-spy          # or: pip install -e '.[bench]'
    .venv/bin/python benchmarks/profile.py --workload rpc_seq -n 5000
    .venv/bin/python benchmarks/profile.py --workload task -n 20000 --system otter_async
    .venv/bin/python benchmarks/profile.py --summarise benchmarks/results/profile-*/rpc_seq-otter-server0.txt

When the client starts its timed phase (after connecting and the warm-up), py-spy attaches to the client and to
every server by pid and records, until they exit, every thread in py-spy's "raw" (collapsed
stack) format, which ``--summarise`` turns into: where the CPU went by library (self time of the innermost frame),
the Otter functions with the largest inclusive share, and the hottest frames overall. Only threads holding the GIL are
sampled (``--gil``; py-spy's idle detection misses uvloop's and C-level waits here), so percentages are shares of
busy Python samples; time in C code that releases the GIL (socket sends, hashing) is undercounted. Open a raw file in
https://www.speedscope.app to browse it.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import common  # noqa: E402
import run as bench  # noqa: E402

FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")
AREAS = (  # first match wins: (area, substring of the file path)
    ("otter", "otter/"),
    ("benchmark harness", "benchmarks/"),
    ("aio-pika", "aio_pika/"),
    ("aiormq", "aiormq/"),
    ("pamqp", "pamqp/"),
    ("kiwipy", "kiwipy/"),
    ("uvloop", "uvloop"),
    ("asyncio", "asyncio/"),
    ("threads and futures", "concurrent/futures"),
    ("threads and futures", "threading.py"),
    ("threads and futures", "queue.py"),
    ("logging", "logging/"),
    ("json", "json/"),
    ("uuid", "uuid.py"),
    ("hashlib", "hashlib"),
)


def area(file: str) -> str:
    for name, needle in AREAS:
        if needle in file:
            return name
    return "other"


def parse_raw(path: str) -> list[tuple[list[tuple[str, str]], int]]:
    """py-spy raw lines ``frame;frame;... count`` as ([(function, file), ...] outermost first, count)."""
    stacks = []
    with open(path) as f:
        for line in f:
            line = line.rstrip("\n")
            stack, _, count = line.rpartition(" ")
            if not stack or not count.isdigit():
                continue
            frames = []
            for raw in stack.split(";"):
                m = FRAME.match(raw)
                if m:
                    frames.append((m["func"], m["file"]))
                elif raw.startswith(("thread", "process")):
                    continue
                else:
                    frames.append((raw, ""))
            if frames:
                stacks.append((frames, int(count)))
    return stacks


def summarise(path: str, top: int = 20) -> str:
    stacks = parse_raw(path)
    total = sum(count for _, count in stacks)
    if not total:
        return f"{path}: no samples"
    by_area: collections.Counter[str] = collections.Counter()
    self_time: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    otter_inclusive: collections.Counter[str] = collections.Counter()
    for frames, count in stacks:
        func, file = frames[-1]
        by_area[area(file)] += count
        self_time[f"{func} ({file})"] += count
        seen = set()
        for func, file in frames:
            key = f"{func} ({file})"
            if key in seen:
                continue
            seen.add(key)
            inclusive[key] += count
            if area(file) == "otter":
                otter_inclusive[key] += count

    def pct(n: int) -> str:
        return f"{100.0 * n / total:5.1f}%"

    lines = [f"== {os.path.basename(path)}: {total} busy samples", "", "self time by library:"]
    lines += [f"  {pct(n)}  {name}" for name, n in by_area.most_common()]
    lines += ["", f"Otter functions, inclusive (top {top}):"]
    lines += [f"  {pct(n)}  {name}" for name, n in otter_inclusive.most_common(top)]
    lines += ["", f"hottest frames, self time (top {top}):"]
    lines += [f"  {pct(n)}  {name}" for name, n in self_time.most_common(top)]
    return "\n".join(lines)


def profile(args: argparse.Namespace) -> None:
    pyspy = shutil.which("py-spy") or os.path.join(os.path.dirname(sys.executable), "py-spy")
    if not os.path.exists(pyspy):
        raise SystemExit("py-spy is not installed: .venv/bin/pip install py-spy")
    system = bench.SYSTEMS.get(args.system) or bench.PEERS[args.system]
    wl = bench.FULL[args.workload]
    wl = dataclasses.replace(wl, n=args.n or wl.n)
    out_dir = args.out or os.path.join(bench.RESULTS, f"profile-{time.strftime('%Y%m%d-%H%M%S')}")
    os.makedirs(out_dir, exist_ok=True)
    bench.ensure_vhost(args.url)
    record = [pyspy, "record", "--format", "raw", "--rate", str(args.rate), "--threads"]
    if not args.all_threads:
        record.append("--gil")
    if args.nonblocking:
        record.append("--nonblocking")
    stem = os.path.join(out_dir, f"{wl.key}-{system.name}")
    tmp = tempfile.mkdtemp(prefix="otter-profile-")
    phase = os.path.join(tmp, "phase")
    env = {**bench.otter_env(args.otter_config), "BENCH_PHASE_FILE": phase}
    spies: list[subprocess.Popen[bytes]] = []

    def attach(client: subprocess.Popen[str], servers: list[subprocess.Popen[bytes]]) -> None:
        """Once the client starts its timed phase, attach py-spy to it and to every server."""
        def watch() -> None:
            try:
                common.wait_files_blocking([phase], args.timeout, "the timed phase")
            except TimeoutError:
                return
            targets = [("client", client.pid)] + [(f"server{i}", s.pid) for i, s in enumerate(servers)]
            for name, pid in targets:
                log = open(f"{stem}-{name}.pyspy.log", "wb")  # noqa: SIM115 (closed with the process)
                spies.append(subprocess.Popen([*record, "-o", f"{stem}-{name}.txt", "--pid", str(pid)],
                                              stdout=log, stderr=subprocess.STDOUT))

        threading.Thread(target=watch, daemon=True).start()

    prefix = f"op{uuid.uuid4().hex[:8]}"
    try:
        run = bench.Run(system, wl, 0, f"{prefix}-{system.name}-{wl.key}", tmp, args.url, args.timeout, env)
        rec = run.execute(on_client_started=attach)
    finally:
        for spy in spies:
            try:
                spy.wait(30)
            except subprocess.TimeoutExpired:
                spy.terminate()
        bench.cleanup(args.url, prefix)
        shutil.rmtree(tmp, ignore_errors=True)
    if not rec["ok"]:
        raise SystemExit(f"the run failed: {rec.get('error')}")
    lat = f", p50 {rec['p50_us']:.0f} µs" if "p50_us" in rec else ""
    print(f"{system.name} {wl.key}: {rec['rate']:.0f}/s{lat} under py-spy ({args.rate} Hz); client "
          f"{rec['client_cpu_us_per_msg']:.0f} µs/msg, server {rec['server_cpu_us_per_msg']:.0f} µs/msg CPU\n")
    for path in sorted(p for p in os.listdir(out_dir) if p.startswith(os.path.basename(stem)) and p.endswith(".txt")):
        print(summarise(os.path.join(out_dir, path), args.top))
        print()
    print(f"raw profiles: {out_dir}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workload", default="rpc_seq", choices=list(bench.FULL))
    p.add_argument("--system", default="otter", help="a name from run.py --systems")
    p.add_argument("-n", type=int, default=0, help="messages in the timed phase (default: the benchmark's)")
    p.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    p.add_argument("--nonblocking", action="store_true", help="do not pause the process to sample (less exact)")
    p.add_argument("--all-threads", action="store_true",
                   help="sample threads that do not hold the GIL too (py-spy's idle detection misses uvloop and "
                        "C-level waits here, so these samples include waiting)")
    p.add_argument("--otter-config", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--url", default=bench.DEFAULT_URL)
    p.add_argument("--timeout", type=float, default=300.0)
    p.add_argument("--top", type=int, default=20)
    p.add_argument("--out", default=None, help="directory for the raw profiles")
    p.add_argument("--summarise", nargs="*", metavar="RAW", help="only summarise existing raw profiles")
    args = p.parse_args(argv)
    if args.summarise:
        for path in args.summarise:
            print(summarise(path, args.top))
            print()
        return
    profile(args)


if __name__ == "__main__":
    main()
