"""A service whose handlers write down what they do, so a test can count every task that ran, where and how often.

Run as ``python tests/faults/apps/ledger.py``; configured like any Otter app through ``OTTER_*`` variables (broker URL,
exchange and queue names, concurrency, shutdown grace), plus:

- ``FAULT_LEDGER_DIR``: where each process appends ``<event> <task id> <pid> <time.time()>`` lines to
  ``<pid>.ledger``;
- ``FAULT_PREFIX``: the prefix of the task and RPC names, unique per test.

Handlers:
- ``<prefix>.slow`` (plain, in the thread pool): ``{"id": ..., "seconds": s}`` records ``start``, sleeps, records
  ``done``; with ``"hold": true`` it waits instead until the file ``release`` appears in ``FAULT_LEDGER_DIR``;
- ``<prefix>.count`` (async): ``{"id": ...}``, records ``done``;
- broadcasts with the subject ``<prefix>.note``: ``{"id": ...}``, records ``broadcast``;
- RPC ``<prefix>.echo``: returns its argument; ``<prefix>.ping.<pid>``: answers only from this process;
- RPC ``<prefix>.held`` (plain): ``"<id>"`` records ``start``, waits until ``release`` appears, records ``done``
  and returns the id.

Lines are written with one ``os.write`` on an ``O_APPEND`` file, so they are whole and survive a SIGKILL.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

from otter import Otter

PREFIX = os.environ["FAULT_PREFIX"]
LEDGER_DIR = Path(os.environ["FAULT_LEDGER_DIR"])
RELEASE = LEDGER_DIR / "release"
HOLD_AT_MOST = 60.0
_fd = os.open(LEDGER_DIR / f"{os.getpid()}.ledger", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

app = Otter("fault-ledger")


def record(event: str, task_id: Any) -> None:
    os.write(_fd, f"{event} {task_id} {os.getpid()} {time.time():.6f}\n".encode())


def hold() -> None:
    deadline = time.monotonic() + HOLD_AT_MOST
    while not RELEASE.exists() and time.monotonic() < deadline:
        time.sleep(0.01)


@app.add_task(f"{PREFIX}.slow")
def slow(comm: Any, body: dict[str, Any]) -> None:
    record("start", body["id"])
    if body.get("hold"):
        hold()
    else:
        time.sleep(float(body.get("seconds", 0)))
    record("done", body["id"])


@app.add_task(f"{PREFIX}.count")
async def count(comm: Any, body: dict[str, Any]) -> None:
    record("done", body["id"])
    await asyncio.sleep(0)


@app.add_broadcast([f"{PREFIX}.note"])
def note(comm: Any, body: dict[str, Any], sender: Any, subject: str, correlation_id: Any) -> None:
    record("broadcast", body["id"])


@app.add_rpc(f"{PREFIX}.echo")
def echo(comm: Any, data: Any) -> Any:
    return data


@app.add_rpc(f"{PREFIX}.held")
def held(comm: Any, call_id: str) -> str:
    record("start", call_id)
    hold()
    record("done", call_id)
    return call_id


@app.add_rpc(f"{PREFIX}.ping.{os.getpid()}")
def ping(comm: Any, data: Any) -> int:
    return os.getpid()


if __name__ == "__main__":
    app.run()
