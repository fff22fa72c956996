"""SIGTERM while the broker is down: the worker exits 0 within its grace period, and the outage leaves one warning
when it starts, one info line when it ends, and no tracebacks."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator

import pytest

from helpers_process import wait_until

from .processes import FaultRig
from .rabbitmq_node import PrivateRabbitMQ
from .socket_leaks import LEAKED_SOCKET_FILTER

pytestmark = [pytest.mark.faults, LEAKED_SOCKET_FILTER]


@pytest.fixture
def outage_rig(rig: FaultRig, private_broker: PrivateRabbitMQ) -> Iterator[FaultRig]:
    yield rig
    private_broker.ensure_serving()


def test_sigterm_during_an_outage_exits_0_within_the_grace_period(outage_rig: FaultRig) -> None:
    rig = outage_rig
    client = rig.client()
    worker = rig.spawn(SHUTDOWN_GRACE=5, RECONNECT_INTERVAL=0.5)
    rig.wait_serving(client, worker)
    rig.broker.stop_app()
    wait_until(lambda: "lost the connection" in worker.output(), 20, "the worker to notice the outage")
    worker.send(signal.SIGTERM)
    started = time.monotonic()
    assert worker.wait(15) == 0, worker.output()
    assert time.monotonic() - started < 5 + 3, f"took {time.monotonic() - started:.1f}s\n{worker.output()}"
    output = worker.output()
    assert "Traceback" not in output and "NoneType: None" not in output, output
    assert output.count("lost the connection") == 1, output


def test_an_outage_leaves_one_warning_and_one_info_line_and_no_traceback(outage_rig: FaultRig) -> None:
    rig = outage_rig
    client = rig.client()
    worker = rig.spawn(RECONNECT_INTERVAL=0.5)
    rig.wait_serving(client, worker)
    rig.broker.stop_app()
    wait_until(lambda: "lost the connection" in worker.output(), 20, "the worker to notice the outage")
    rig.broker.start_app()
    wait_until(lambda: "reconnected to" in worker.output(), 30, "the worker to reconnect")
    rig.wait_serving(client, worker)
    worker.send(signal.SIGTERM)
    assert worker.wait(15) == 0
    output = worker.output()
    warnings = [line for line in output.splitlines() if " WARNING " in line or " ERROR " in line]
    assert len(warnings) == 1 and "lost the connection" in warnings[0], output
    assert output.count("reconnected to") == 1 and "Traceback" not in output, output
