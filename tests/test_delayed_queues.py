"""On RabbitMQ, thousands of distinct delays share the fixed set of delay-level queues: no queue per delay."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from otter import Client
from otter.delays import LEVELS, DelayLevels
from rawbroker import RawBroker

DISTINCT = 2000


@pytest.mark.amqp
def test_thousands_of_distinct_delays_wait_in_the_twenty_level_queues(amqp_url: str, names: dict[str, Any]) -> None:
    work = f"delays-{uuid.uuid4().hex[:8]}.unserved"
    levels = DelayLevels(names["TASK_EXCHANGE"])
    with RawBroker.open(amqp_url, names) as raw:
        try:
            with Client(amqp_url, **names) as client:
                for n in range(DISTINCT):  # 1 h and n seconds: every one a different delay, none due in the test
                    client.task(work, n, delay=3600 + n)
                    if n % 250 == 249:
                        client.flush()  # a few hundred in flight at a time: each delayed send is confirmed alone
            depths = [raw.depth(levels.level(n)) for n in range(LEVELS)]
            # 3600..5599 s: each waits first at level 11 (2048 s) or 12 (4096 s), the only levels holding any yet.
            assert sum(depth or 0 for depth in depths) == DISTINCT
            assert {n for n, depth in enumerate(depths) if depth} == {11, 12}
            assert raw.depth(work) == 0  # nothing reached the task queue early
            assert raw.depth(f"{work}.retry.3600000") is None  # no queue per delay, as retries have
        finally:
            raw.delete(work)
