"""A plain task that blocks its thread does not delay the same app's RPCs (a real process on the real RabbitMQ).

kiwipy runs handlers on its event-loop thread, so one ``time.sleep`` stalls every message and the heartbeats;
Otter runs plain handlers in a thread pool (DESIGN.md section 4). Stopping the app then must not wait for the
sleeping handler beyond ``SHUTDOWN_GRACE``: its message goes back to the queue and the process exits.
"""

from __future__ import annotations

import signal
import time
import uuid

import pytest

from conftest import unique_names
from helpers_process import READY, AppProcess
from otter import Client
from rawbroker import RawBroker

SLEEP = 10


@pytest.mark.amqp
def test_sleeping_task_does_not_delay_rpcs_or_shutdown(amqp_url: str) -> None:
    names = unique_names("blocking")
    task_queue = f"blocking-{uuid.uuid4().hex[:10]}.sleep"
    env = {f"OTTER_{key}": value for key, value in names.items()}
    env.update(OTTER_BROKER_URL=amqp_url, OTTER_SHUTDOWN_GRACE="0.5", BLOCKING_TASK_QUEUE=task_queue)
    try:
        with AppProcess("tests/apps/blocking_app.py", env=env) as app:
            app.wait_for(READY)
            with Client(amqp_url, **names) as client:
                client.task(task_queue, SLEEP)
                app.wait_for(f"task started: sleeping {SLEEP} s")
                for _ in range(5):
                    started = time.monotonic()
                    assert client.rpc("blocking.ping").result(timeout=5) == "pong"
                    assert time.monotonic() - started < 1.0
            assert "task finished" not in app.output  # the task really was asleep while the RPCs were answered

            stopping = time.monotonic()
            assert app.stop(signal.SIGTERM, timeout=SLEEP) == 0, app.output
            assert time.monotonic() - stopping < 5, "the process waited for the sleeping handler"
            assert "task finished" not in app.output
        with RawBroker.open(amqp_url) as raw:
            assert raw.depth(task_queue) == 1  # the abandoned task went back to its queue, not lost
    finally:
        with RawBroker.open(amqp_url, names) as raw:
            raw.delete(task_queue)
