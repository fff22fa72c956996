"""An app for the metrics and health tests (tests/test_metrics.py, tests/faults/test_health.py), served with
``otter run``: RPCs, tasks and broadcasts that succeed or fail on demand. ``METRICS_TASK`` names the task queue
(task queue names are global on a broker)."""

from __future__ import annotations

import os
import threading
from typing import Any

from otter import Otter

app = Otter("metrics-app")
TASK = os.environ.get("METRICS_TASK", "metrics.work")


@app.add_rpc("metrics.echo")
def echo(comm: Any, data: Any) -> Any:
    return data


@app.add_rpc("metrics.pid")
def pid(comm: Any, data: Any) -> int:
    return os.getpid()


@app.add_rpc("metrics.fail")
def fail(comm: Any, data: Any) -> None:
    raise KeyError(data)


@app.add_rpc("metrics.hold")
def hold(comm: Any, seconds: float) -> bool:
    """An RPC in flight for ``seconds``."""
    return threading.Event().wait(seconds)


@app.add_task(TASK, max_retries=1, backoff=0.05, jitter=False)
def work(comm: Any, body: Any) -> None:
    if body == "fail":
        raise ValueError("this task always fails")


@app.add_broadcast(["metrics.news.*"])
def news(comm: Any, body: Any, sender: Any, subject: str, correlation_id: Any) -> None:
    if body == "fail":
        raise RuntimeError("this broadcast handler fails")
