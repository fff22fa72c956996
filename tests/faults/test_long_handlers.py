"""Handlers that run longer than the broker's consumer_timeout, on a private RabbitMQ 3.10 node with a timeout of
a few seconds: 3.10 takes no per-queue or per-consumer timeout, so the channel is closed and Otter must cope."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers_process import wait_until
from otter import Otter, protocol
from otter.testing import ServedApp, unique_names
from rawbroker import RawBroker

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


@pytest.mark.parametrize("hold", [TIMEOUT / 4, None], ids=["held-briefly", "held-past-the-timeout"])
def test_a_schedule_holder_never_holds_its_state_past_the_consumer_timeout(
    timeout_node: PrivateRabbitMQ, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch,
    hold: float | None,
) -> None:
    """A yearly schedule's next tick is months away, but its holder sends its state again and acks the old one every
    SCHEDULE_HOLD seconds, so the broker's consumer_timeout never closes its channel. The control holds the state
    longer than the node's timeout (as a naive holder waiting for the next tick would) and loses it."""
    monkeypatch.setattr(protocol, "SCHEDULE_HOLD", hold if hold is not None else TIMEOUT * 10)
    names = unique_names("hold")
    name = f"hold-{uuid.uuid4().hex[:10]}"
    app = Otter("hold", **names)
    app.add_periodic(name, cron="0 0 1 1 *")(lambda comm, tick: None)
    caplog.set_level(logging.INFO, logger="otter.periodic")
    with ServedApp(app, timeout_node.url, **names, SHUTDOWN_GRACE=5):
        wait_until(lambda: "holds its schedule" in caplog.text, 10, "the schedule's holder")
        if hold is None:
            wait_until(lambda: "took back the schedule state" in caplog.text, TIMEOUT * 5, "the consumer timeout")
        else:
            # Three timeouts long, the broker would have closed the channel (as in the control), were it to close it.
            deadline = time.monotonic() + TIMEOUT * 3
            wait_until(lambda: time.monotonic() > deadline or "took back" in caplog.text, TIMEOUT * 4, "the deadline")
            assert "took back the schedule state" not in caplog.text
            with RawBroker.open(timeout_node.url, names) as raw:  # one state, held (so none ready) by one consumer
                assert (raw.depth(protocol.schedule_queue_name(name)), raw.consumers(name + ".schedule")) == (0, 1)
