"""An app for tests/test_periodic_replicas.py: run several copies; each appends the ticks it ran to a file of its own.

Names come from ``OTTER_*`` variables (unique per test), ``PERIODIC_TASK`` names the periodic task (its queues are
global on a broker), ``PERIODIC_EVERY`` its period in seconds, and ``PERIODIC_RECORD_DIR`` is where each copy writes
``ticks-<pid>.txt``, one line per tick run: its id and when it ran (seconds since the epoch).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from otter import Otter

app = Otter("periodic-replica")


@app.add_periodic(os.environ["PERIODIC_TASK"], every=float(os.environ.get("PERIODIC_EVERY", "1")))
def record_tick(comm: Any, tick: Any) -> None:
    with (Path(os.environ["PERIODIC_RECORD_DIR"]) / f"ticks-{os.getpid()}.txt").open("a") as record:
        record.write(f"{tick['id']} {time.time():.3f}\n")


if __name__ == "__main__":
    app.run()
