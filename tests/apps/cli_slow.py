"""An app for tests/test_shutdown.py: a task that writes a marker line when it starts and when it ends.

``CLI_TASK_QUEUE`` names the task queue and ``CLI_RECORD_FILE`` is where ``start N`` and ``done N`` lines go; the
task body is ``{"n": N}``. The task holds its slot until the file ``CLI_RELEASE_FILE`` exists (at most a minute), so
a test decides when it ends instead of guessing how long it takes.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

from otter import Otter

HOLD_AT_MOST = 60.0

app = Otter("cli-slow")
_lock = threading.Lock()


def _write(line: str) -> None:
    with _lock, open(os.environ["CLI_RECORD_FILE"], "a") as record:
        record.write(f"{line}\n")
        record.flush()
        os.fsync(record.fileno())


@app.add_task(os.environ.get("CLI_TASK_QUEUE", "cli.slow"))
def slow(comm: Any, body: dict[str, Any]) -> None:
    _write(f"start {body['n']}")
    release, deadline = Path(os.environ["CLI_RELEASE_FILE"]), time.monotonic() + HOLD_AT_MOST
    while not release.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    _write(f"done {body['n']}")
