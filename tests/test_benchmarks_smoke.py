"""The benchmark harness runs end to end: ``benchmarks/run.py --smoke`` on the real broker, Otter and the aio-pika
baseline in separate processes. Not a timing assertion: it checks that every workload produced a result for both
systems, that the table shows them and that the JSON file is complete."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.amqp

ROOT = Path(__file__).resolve().parents[1]
WORKLOADS = ("rpc_seq", "rpc_conc", "task", "bcast")
SYSTEMS = {"aiopika": "aio-pika (hand-written)", "otter": "Otter", "otter_seed": "Otter, the seed's loops"}
# The seed's plain loops on the sync Client: client.rpc().result(), client.task() and client.broadcast() then flush().
SEED_WORKLOADS = ("rpc_seq", "task", "bcast")


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], dict]:
    out = tmp_path_factory.mktemp("bench") / "smoke.json"
    command = [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--smoke", "--out", str(out)]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT) as running:
        try:
            stdout, stderr = running.communicate(timeout=110)
        except subprocess.TimeoutExpired:
            running.terminate()  # not kill: run.py then stops the benchmark servers it started
            stdout, stderr = running.communicate(timeout=30)
            pytest.fail(f"benchmarks/run.py --smoke took more than 110 s: {stdout[-2000:]}{stderr[-2000:]}")
    proc = subprocess.CompletedProcess(command, running.returncode, stdout, stderr)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return proc, json.loads(out.read_text())


def test_table_has_every_workload_for_both_systems(smoke: tuple[subprocess.CompletedProcess[str], dict]) -> None:
    proc, _ = smoke
    rows = {line.split("|")[1].strip(): line for line in proc.stdout.splitlines() if line.startswith("| ")}
    for system, label in SYSTEMS.items():
        cells = [cell.strip() for cell in rows[label].strip("|").split("|")[1:]]
        assert len(cells) == len(WORKLOADS), rows[label]
        ran = SEED_WORKLOADS if system == "otter_seed" else WORKLOADS
        for workload, cell in zip(WORKLOADS, cells, strict=True):  # a ratio and a rate, not "failed"; "-" if not run
            assert ("/s" in cell) if workload in ran else cell == "-", rows[label]
    assert "client.task(name, body) then flush()" in proc.stdout  # every row says what it runs
    header = next(line for line in proc.stdout.splitlines() if line.startswith("| system |"))
    for title in ("A. RPC one at a time", "B. RPC, 64 in flight", "C. tasks", "D. broadcast to 3 subscribers"):
        assert title in header


def test_json_records_every_run_with_rates_and_cpu(smoke: tuple[subprocess.CompletedProcess[str], dict]) -> None:
    _, data = smoke
    assert data["meta"]["mode"] == "smoke"
    assert data["meta"]["versions"]["aio-pika"]
    runs = {(run["system"], run["wl"]): run for run in data["runs"]}
    for system in SYSTEMS:
        for wl in SEED_WORKLOADS if system == "otter_seed" else WORKLOADS:
            run = runs[(system, wl)]
            assert run["ok"], run.get("error")
            assert run["rate"] > 0 and run["client_cpu_s"] >= 0 and run["server_cpu_s"] >= 0
            summary = data["summary"][wl][system]
            assert summary["runs"] == 1 and summary["ratio"] > 0
    # each row runs the client its label says: the seed's sync Client, or AsyncClient for the "Otter" row
    assert runs[("otter_seed", "rpc_seq")]["client"]["client"] == "Client (sync)"
    assert runs[("otter_seed", "task")]["client"]["client"] == "Client (sync), plain loop"
    assert {runs[("otter", wl)]["client"]["client"] for wl in WORKLOADS} == {"AsyncClient"}
    assert data["summary"]["rpc_seq"]["aiopika"]["ratio"] == 1.0
    assert data["summary"]["rpc_seq"]["otter"]["p99_us"] >= data["summary"]["rpc_seq"]["otter"]["p50_us"] > 0
