"""A service for the dashboard tests (tests/dashboard), served with ``otter run``: an RPC that answers, one that
fails, and a task that fails until the test creates the file ``DASHBOARD_FIXED`` names (so a replayed dead letter
then succeeds). ``DASHBOARD_TASK`` names the task queue (task queue names are global on a broker)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from otter import Otter

app = Otter(os.environ.get("DASHBOARD_SERVICE", "dashboard-demo"))
TASK = os.environ.get("DASHBOARD_TASK", "dashboard.work")
FIXED = Path(os.environ.get("DASHBOARD_FIXED", "/nonexistent/dashboard-fixed"))


@app.add_rpc("dash.echo")
def echo(comm: Any, data: Any) -> Any:
    return {"echo": data}


@app.add_rpc("dash.fail")
def fail(comm: Any, data: Any) -> None:
    raise KeyError(data)


@app.add_task(TASK)
def work(comm: Any, body: Any) -> None:
    if not FIXED.exists():
        raise ValueError("not fixed yet")
    print(f"task done: {body}", flush=True)
