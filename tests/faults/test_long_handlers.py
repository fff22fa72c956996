"""Handlers that run longer than the broker's consumer_timeout, on a private RabbitMQ 3.10 node with a timeout of
a few seconds: 3.10 takes no per-queue or per-consumer timeout, so the channel is closed and Otter must cope."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .long_handlers import TIMEOUT, run_scenario
from .rabbitmq_node import PrivateRabbitMQ, require_rabbitmq_server


@pytest.fixture(scope="module")
def timeout_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateRabbitMQ]:
    require_rabbitmq_server()
    node = PrivateRabbitMQ(Path(tmp_path_factory.mktemp("rabbitmq-timeout")), consumer_timeout=TIMEOUT)
    try:
        node.start()
        yield node
    finally:
        node.stop()


def test_a_task_longer_than_the_consumer_timeout_runs_once(
    timeout_node: PrivateRabbitMQ, caplog: pytest.LogCaptureFixture
) -> None:
    [line] = run_scenario(timeout_node.url, caplog, timeout_node.queue_depth, CONSUMER_TIMEOUT=3600)
    message = line.getMessage()
    assert f"consumer_timeout ({TIMEOUT:g} s)" in message
    assert "has run" in message
    assert "raise consumer_timeout in rabbitmq.conf" in message
    assert "CONSUMER_TIMEOUT 3600 s was asked for, but this broker ignores it" in message
