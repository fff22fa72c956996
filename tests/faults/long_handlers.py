"""The long-handler scenario, run on a broker whose ``consumer_timeout`` is ``TIMEOUT`` (a private 3.10 node in
``test_long_handlers.py``, RabbitMQ 4 nodes in ``brokers/test_long_handlers_rabbitmq4.py``).

Two handler slots and three tasks on one queue: A outlives the timeout (the broker closes the channel under it),
B is still running then, C has been delivered and waits for a slot. Each must run exactly once, the queue must end
empty with nothing unacked (the redeliveries of A and B were settled by their first runs), and the worker must say
what happened in one log line.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from otter import Otter
from otter.testing import unique_names

__all__ = ["TIMEOUT", "run_scenario"]

TIMEOUT = 2.0  # seconds: the nodes' consumer_timeout
# A runs past the timeout, but ends before its redelivery (which arrives just after the close) would time out too.
DURATIONS = {"A": TIMEOUT * 1.6, "B": TIMEOUT * 1.25, "C": 0.1}


def run_scenario(
    url: str, caplog: pytest.LogCaptureFixture, queue_depth: Callable[[str], tuple[int, int]],
    **config: Any,
) -> list[logging.LogRecord]:
    """Run it; returns the worker's ack-timeout log lines (the caller checks how many and what they say)."""
    queue = f"long-{uuid.uuid4().hex[:10]}"
    runs: list[str] = []
    lock = threading.Lock()
    app = Otter("long", CONCURRENCY=2, PREFETCH_MULTIPLIER=4, **unique_names("long"), **config)

    @app.add_task(queue)
    def work(comm: Any, body: str) -> None:
        with lock:
            runs.append(body)
        time.sleep(DURATIONS[body])

    caplog.set_level(logging.INFO, logger="otter")
    started = time.monotonic()
    with app.test_client(url) as client:
        for body in "ABC":
            client.task(queue, body)
        handled = client.wait_handled(queue, count=3, timeout=TIMEOUT * 6)
        assert sorted(event.outcome for event in handled) == ["ok", "ok", "ok"]
        deadline = time.monotonic() + TIMEOUT * 3
        while queue_depth(queue) != (0, 0):  # the broker's count: polled, there is no event to wait on
            assert time.monotonic() < deadline, f"{queue} still holds {queue_depth(queue)} (ready, unacked)"
            time.sleep(0.1)
    assert sorted(runs) == ["A", "B", "C"], f"each task runs once, got {runs}"
    assert time.monotonic() - started < TIMEOUT * 8
    return [record for record in caplog.records
            if record.name == "otter.worker" and "consumer_timeout" in record.getMessage()]
