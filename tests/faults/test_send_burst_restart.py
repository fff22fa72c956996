"""A broker restart in the middle of a burst of pipelined ``client.task`` calls loses no task: every task the
client did not report as undelivered is in its queue afterwards (some may be there twice: at-least-once)."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from helpers_process import wait_until
from otter import Client, Otter, Undelivered
from otter.testing import ServedApp
from rawbroker import RawBroker

from .rabbitmq_node import PrivateRabbitMQ
from .socket_leaks import LEAKED_SOCKET_FILTER

pytestmark = [pytest.mark.faults, LEAKED_SOCKET_FILTER]


def test_a_broker_restart_during_a_burst_of_tasks_loses_none(
    private_broker: PrivateRabbitMQ, names: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    url = private_broker.url
    job = f"{names['TASK_EXCHANGE']}.burst"
    restarter = threading.Thread(target=private_broker.restart_app)
    sent = 0
    with Client(url, PUBLISH_TIMEOUT=60, RECONNECT_INTERVAL=0.2, **names) as client:
        client.task(job, -1, wait=True)  # the queue exists before the burst
        while sent < 2000 or restarter.is_alive():  # the burst goes on until the broker is back
            if sent == 500:
                restarter.start()
            client.task(job, sent)
            sent += 1
        try:
            client.flush()
        except Undelivered as exc:  # reported, so not lost; but none is expected within PUBLISH_TIMEOUT
            pytest.fail(f"tasks were not confirmed: {exc}")
    restarter.join()
    assert any("lost the connection" in r.getMessage() for r in caplog.records), "the burst missed the restart"
    assert private_broker.queue_depth(job)[0] >= sent + 1

    seen: set[int] = set()
    app = Otter(**names)
    app.add_task(job)(lambda comm, n: seen.add(n))
    with RawBroker.open(url, names) as raw:
        try:
            with ServedApp(app, url, **names):
                wait_until(lambda: len(seen) == sent + 1, 60, f"all {sent + 1} tasks")
            assert seen == set(range(-1, sent))
        finally:
            raw.delete(job)
