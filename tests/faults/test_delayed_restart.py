"""Delayed tasks wait in the broker, so they outlive it: a broker that crashes and comes back with delayed tasks
pending still delivers every one, those due while it was down as soon as it is back, the others on time."""

from __future__ import annotations

import queue
import time
import uuid
from typing import Any

import pytest

from otter import Client, Otter
from otter.testing import ServedApp
from rawbroker import RawBroker

from .rabbitmq_node import PrivateRabbitMQ
from .socket_leaks import LEAKED_SOCKET_FILTER

pytestmark = [pytest.mark.faults, LEAKED_SOCKET_FILTER]

DUE_WHILE_DOWN = 3  # seconds: due while the broker is down
DUE_AFTER = 14  # seconds: due well after it is back
DOWN_FOR = 5.0  # seconds the broker stays down


def test_delayed_tasks_survive_a_broker_crash_and_run_on_time(
    private_broker: PrivateRabbitMQ, names: dict[str, Any], record_property: Any
) -> None:
    url = private_broker.url
    work = f"delayed-{uuid.uuid4().hex[:8]}.run"
    ran: queue.Queue[tuple[str, float]] = queue.Queue()
    app = Otter(**names)
    app.add_task(work)(lambda comm, body: ran.put((body, time.monotonic())))

    with RawBroker.open(url, names) as raw:
        try:
            with ServedApp(app, url, **names, SHUTDOWN_GRACE=5.0), Client(url, **names) as client:
                sent = time.monotonic()
                client.task(work, "while down", delay=DUE_WHILE_DOWN)
                client.task(work, "after", delay=DUE_AFTER)
                client.flush()  # both confirmed: the broker has them, on disk
                private_broker.kill()  # a crash, not a clean stop
                time.sleep(DOWN_FOR)  # the scenario itself: the broker is down past the first task's time
                private_broker.restart()
                back = time.monotonic()
                first, first_at = ran.get(timeout=60)
                second, second_at = ran.get(timeout=DUE_AFTER + 240)
            assert (first, second) == ("while down", "after")
            late_first, late_second = first_at - back, second_at - sent - DUE_AFTER
            record_property("first task ran after the broker was back (s)", round(late_first, 2))
            record_property("second task ran late by (s)", round(late_second, 2))
            print(f"\ndue while down: ran {late_first:.2f} s after the broker was back; "
                  f"due after: ran {late_second:+.2f} s from its time")
            assert first_at - sent >= DUE_WHILE_DOWN
            assert late_first < 10  # the reconnection (about a second) and the broker recovering its queues
            assert 0 <= late_second < 2
            assert ran.empty()
        finally:
            raw.delete(work)
