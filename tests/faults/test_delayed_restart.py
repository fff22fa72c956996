"""Delayed tasks wait in the broker, so they outlive it: a broker restarted with delayed tasks pending still delivers
every one, those due while it was down once it is back, the others on time.

The node is stopped as an operator stops it (``rabbitmqctl stop``); ``test_delayed_crash.py`` kills it instead.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from otter import Client
from otter.testing import ServedApp
from rawbroker import RawBroker

from .delayed_recorder import DelayedRecorder
from .rabbitmq_node import PrivateRabbitMQ
from .socket_leaks import LEAKED_SOCKET_FILTER

pytestmark = [pytest.mark.faults, LEAKED_SOCKET_FILTER]

# seconds; the first is due after the broker is back. Sent in this order, one at a time: the first send creates the
# delay levels both go through and returns 5 s later (docs/protocol.md, "Delayed tasks"), the second at once.
DELAYS = {"due after": 45, "due while down": 3}
DOWN_FOR = 5.0  # seconds the broker stays down
# RabbitMQ's quorum queues retry a dead letter they could not forward after this long (its
# dead_letter_worker_publisher_confirm_timeout, 180 s by default): the most a task due while the broker was down can
# wait once it is back.
RETRY_AFTER = 180.0


@pytest.mark.timeout(2 * RETRY_AFTER + 120)
def test_delayed_tasks_survive_a_broker_restart(
    private_broker: PrivateRabbitMQ, names: dict[str, Any], record_property: Any
) -> None:
    url = private_broker.url
    recorder = DelayedRecorder(names, "delayed")
    work, ran, done = recorder.work, recorder.ran, recorder.done

    with RawBroker.open(url, names) as raw:
        try:
            with ServedApp(recorder.app, url, **names, SHUTDOWN_GRACE=5.0), Client(url, **names) as client:
                sent = recorder.send(client, DELAYS)  # each confirmed: the broker has it on disk
                private_broker.shut_down()
                time.sleep(DOWN_FOR)  # the scenario itself: the broker stays down past the first task's time
                private_broker.restart()
                back = time.monotonic()
                for _ in DELAYS:
                    done.get(timeout=max(DELAYS.values()) + 2 * RETRY_AFTER)
            late = {body: ran[body] - max(sent + DELAYS[body], back) for body in DELAYS}
            for body, seconds in late.items():
                record_property(f"{body}: ran after its time or the broker's return (s)", round(seconds, 2))
            print(f"\nbroker back after {back - sent:.1f} s; " +
                  "; ".join(f"{body}: ran {seconds:+.2f} s after max(due, back)" for body, seconds in late.items()))
            assert all(ran[body] - sent >= delay - 0.01 for body, delay in DELAYS.items())  # not early (but for ms)
            assert late["due while down"] < RETRY_AFTER + 15
            if back - sent < DELAYS["due after"] - 2:  # the broker was back in time (not on a very loaded machine)
                assert late["due after"] < 2
            assert done.empty()  # each ran once
        finally:
            raw.delete(work)
