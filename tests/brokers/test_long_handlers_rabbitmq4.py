"""Handlers that run longer than the broker's consumer_timeout, on RabbitMQ 4.0.5 (consumer_timeout of a few
seconds): 4.0 takes a per-queue timeout (queue argument or policy) but no per-consumer one, so with a queue declared
the kiwipy way the channel is closed, as on 3.10, and Otter must cope."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from brokers.rabbitmq4 import Rabbitmq4Node, root_or_skip
from faults.long_handlers import TIMEOUT, run_scenario


@pytest.fixture(scope="module")
def timeout_node4() -> Iterator[Rabbitmq4Node]:
    node = Rabbitmq4Node(root_or_skip(), consumer_timeout=TIMEOUT)
    try:
        node.start()
        yield node
    finally:
        node.stop()


def test_a_task_longer_than_the_consumer_timeout_runs_once_on_a_classic_queue(
    timeout_node4: Rabbitmq4Node, caplog: pytest.LogCaptureFixture
) -> None:
    [line] = run_scenario(timeout_node4.url, caplog, timeout_node4.queue_depth)
    message = line.getMessage()
    assert f"consumer_timeout ({TIMEOUT:g} s)" in message
    assert "has run" in message and "raise consumer_timeout in rabbitmq.conf" in message
    assert "was asked for" not in message  # no CONSUMER_TIMEOUT here


def test_a_task_longer_than_the_consumer_timeout_runs_once_on_a_quorum_queue(
    timeout_node4: Rabbitmq4Node, caplog: pytest.LogCaptureFixture
) -> None:
    [line] = run_scenario(timeout_node4.url, caplog, timeout_node4.queue_depth, TASK_QUEUE_TYPE="quorum")
    assert "has run" in line.getMessage()
