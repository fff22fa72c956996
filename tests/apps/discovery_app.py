"""An app for tests/test_services.py, served with ``otter run``: one service of a family, named by
``DISCOVERY_SERVICE``, with an RPC that fails on demand, a task and a broadcast filter, all named after it.
Exchange names come from ``OTTER_*`` variables; ``DISCOVERY_TASK`` names the task queue (global on a broker)."""

from __future__ import annotations

import os
from typing import Any

from otter import Otter

SERVICE = os.environ.get("DISCOVERY_SERVICE", "discovery")
app = Otter(SERVICE)


@app.add_rpc(f"{SERVICE}.echo")
def echo(comm: Any, data: Any) -> Any:
    if data == "fail":
        raise ValueError("asked to fail")
    return data


@app.add_task(os.environ.get("DISCOVERY_TASK", f"{SERVICE}.work"), default=False)
def work(comm: Any, body: Any) -> None:
    return None


@app.add_broadcast([f"{SERVICE}.#"])
def news(comm: Any, body: Any, sender: Any, subject: str, correlation_id: Any) -> None:
    return None
