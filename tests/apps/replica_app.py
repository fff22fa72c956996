"""An app for tests/test_replicas.py: run several copies; each records what it ran in files of its own.

Exchange and queue names come from ``OTTER_*`` variables (unique per test; ``Otter.resolve_config`` applies them),
``REPLICA_TASK_QUEUE`` names the task queue (task queue names are global on a broker) and ``REPLICA_RECORD_DIR`` is
where each copy writes ``rpc-<pid>.txt``, ``task-<pid>.txt`` and ``broadcast-<pid>.txt``.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

from otter import Otter

app = Otter("replica")
_record_lock = threading.Lock()


def _record(kind: str, line: str) -> None:
    path = Path(os.environ["REPLICA_RECORD_DIR"]) / f"{kind}-{os.getpid()}.txt"
    with _record_lock, path.open("a") as record:
        record.write(f"{line}\n")


@app.add_rpc("replica.pid")
def which_process(comm: Any, data: Any) -> int:
    _record("rpc", str(data))
    return os.getpid()


@app.add_task(os.environ.get("REPLICA_TASK_QUEUE", "replica.record"))
def record_task(comm: Any, body: Any) -> None:
    _record("task", str(body))


@app.add_broadcast(["replica.*"])
def record_broadcast(comm: Any, body: Any, sender: Any, subject: str, correlation_id: Any) -> None:
    _record("broadcast", f"{subject} {body}")


if __name__ == "__main__":
    app.run()
