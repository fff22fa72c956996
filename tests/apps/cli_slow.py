"""An app for tests/test_shutdown.py: a task that takes a while and writes when it starts and when it ends.

``CLI_TASK_QUEUE`` names the task queue and ``CLI_RECORD_FILE`` is where ``start N <time>`` and ``done N <time>``
lines go; the task body is ``{"n": N, "seconds": S}``.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

from otter import Otter

app = Otter("cli-slow")
_lock = threading.Lock()


def _write(line: str) -> None:
    with _lock, open(os.environ["CLI_RECORD_FILE"], "a") as record:
        record.write(f"{line} {time.time():.3f}\n")
        record.flush()
        os.fsync(record.fileno())


@app.add_task(os.environ.get("CLI_TASK_QUEUE", "cli.slow"))
def slow(comm: Any, body: dict[str, Any]) -> None:
    _write(f"start {body['n']}")
    time.sleep(body["seconds"])
    _write(f"done {body['n']}")
