"""What Otter parks on the broker survives a broker restart: a transient message in a durable queue would not.

A dead letter waits for someone to look at it, and a retry waits out its backoff in a delay queue; both can wait for
hours, so both must be persistent messages in durable queues.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from helpers_process import wait_until
from otter import Client, Otter
from otter.dlq import list_dead_letters
from otter.protocol import retry_queue_name
from otter.testing import ServedApp
from rawbroker import RawBroker

from .rabbitmq_node import PrivateRabbitMQ
from .socket_leaks import LEAKED_SOCKET_FILTER

pytestmark = [pytest.mark.faults, LEAKED_SOCKET_FILTER]

BACKOFF = 600.0  # the retry is still parked long after the test ends (its delay queue then expires by itself)


def test_a_dead_letter_and_a_parked_retry_survive_a_broker_restart(
    private_broker: PrivateRabbitMQ, names: dict[str, Any]
) -> None:
    url = private_broker.url
    prefix = f"persist-{uuid.uuid4().hex[:8]}"
    doomed, retried = f"{prefix}.doomed", f"{prefix}.retried"
    dead_letter_queue, delay_queue = names["DEAD_LETTER_QUEUE"], retry_queue_name(retried, round(BACKOFF * 1000))
    app = Otter(**names)

    @app.add_task(doomed, max_retries=0)
    def fails_for_good(comm: Any, body: Any) -> None:
        raise ValueError("cannot process this")

    @app.add_task(retried, max_retries=1, backoff=BACKOFF, backoff_max=BACKOFF, jitter=False)
    def fails_once(comm: Any, body: Any) -> None:
        raise OSError("try again later")

    with RawBroker.open(url, names) as raw:  # connects again after the restart
        try:
            with ServedApp(app, url, **names), Client(url, **names) as client:
                client.task(doomed, "dead")
                client.task(retried, "parked")
                wait_until(lambda: raw.depth(dead_letter_queue) == raw.depth(delay_queue) == 1,
                           10, "the dead letter and the parked retry")
            private_broker.restart_app()
            assert raw.depth(dead_letter_queue) == 1, "the dead letter was lost in the restart"
            assert raw.depth(delay_queue) == 1, "the parked retry was lost in the restart"
            [letter] = list_dead_letters(url, names)
            assert (letter.queue, letter.reason, letter.error_type) == (doomed, "handler-error", "ValueError")
        finally:
            raw.delete(doomed, retried, delay_queue)
