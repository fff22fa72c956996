"""An app for tests/test_blocking_task.py: a plain task that blocks its thread, and an RPC that must stay quick.

Names come from ``OTTER_*`` variables; ``BLOCKING_TASK_QUEUE`` names the task queue (unique per test).
"""

from __future__ import annotations

import os
import time
from typing import Any

from otter import Otter

app = Otter("blocking")


@app.add_task(os.environ.get("BLOCKING_TASK_QUEUE", "blocking.sleep"))
def sleep_task(comm: Any, seconds: float) -> None:
    print(f"task started: sleeping {seconds} s", flush=True)
    time.sleep(seconds)
    print("task finished", flush=True)


@app.add_rpc("blocking.ping")
def ping(comm: Any, data: Any) -> str:
    return "pong"


if __name__ == "__main__":
    app.run()
