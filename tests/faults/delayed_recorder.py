"""What the delayed-task fault tests serve and send: one task that records when each body first ran, and the
delayed sends, one at a time, each confirmed before the next."""

from __future__ import annotations

import queue
import time
import uuid
from typing import Any

from otter import Client, Otter


class DelayedRecorder:
    """``app`` serves the task ``work``; ``ran`` maps each body to when it first ran, ``done`` gets every run."""

    def __init__(self, names: dict[str, Any], prefix: str) -> None:
        self.work = f"{prefix}-{uuid.uuid4().hex[:8]}.run"
        self.ran: dict[str, float] = {}
        self.done: queue.Queue[str] = queue.Queue()
        self.app = Otter(**names)
        self.app.add_task(self.work)(self._record)

    def _record(self, comm: Any, body: str) -> None:
        self.ran.setdefault(body, time.monotonic())
        self.done.put(body)

    def send(self, client: Client, delays: dict[str, float]) -> float:
        """Send each body with its delay, in order, each confirmed (``flush``) before the next; returns when the
        first was sent (``time.monotonic()``)."""
        sent = time.monotonic()
        for body, delay in delays.items():
            client.task(self.work, body, delay=delay)
            client.flush()
        return sent
