"""A backlog of tasks behind one that holds the worker's only slot: what priority tests send a high task into."""

from __future__ import annotations

import threading
from typing import Any

import otter
from helpers_process import wait_until


class Backlog:
    """Serve ``handle`` with ``CONCURRENCY=1, PREFETCH_MULTIPLIER=1``: its first run holds the slot until ``send``
    has queued ``low`` tasks and one high-priority one behind it; ``order`` is the order the bodies ran in."""

    def __init__(self) -> None:
        self.order: list[Any] = []
        self._first_running, self._go_on = threading.Event(), threading.Event()

    def handle(self, comm: Any, body: Any) -> None:
        self.order.append(body)
        if len(self.order) == 1:
            self._first_running.set()
            self._go_on.wait(10)

    def send(self, client: otter.Client, queue: str, low: int, priority: int = 9) -> None:
        client.task(queue, "low-0")
        assert self._first_running.wait(10), "the first task never started"
        for n in range(1, low + 1):
            client.task(queue, f"low-{n}")
        client.task(queue, "high", priority=priority)
        client.flush()
        self._go_on.set()

    def wait(self, count: int, timeout: float = 20.0) -> list[Any]:
        """The order, once ``count`` tasks ran (``AssertionError`` if they did not within ``timeout``)."""
        wait_until(lambda: len(self.order) >= count, timeout, f"{count} tasks to run")
        return self.order
