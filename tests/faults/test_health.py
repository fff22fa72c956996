"""Health probes through a broker outage: ``/readyz`` goes 503 while the broker is away and 200 once the worker has
reconnected with every consumer; ``/livez`` stays 200 throughout, so Kubernetes never restarts a worker that is only
waiting for its broker. The metrics count the reconnection. One worker, and two under the supervisor."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from helpers_http import free_port, probe, scrape, value
from helpers_process import READY, AppProcess, wait_until
from otter import Client

from .rabbitmq_node import PrivateRabbitMQ
from .socket_leaks import LEAKED_SOCKET_FILTER

pytestmark = [pytest.mark.faults, LEAKED_SOCKET_FILTER]

APP = "tests/apps/metrics_app.py"


@pytest.mark.parametrize("workers", [1, 2])
def test_readiness_follows_the_broker_and_liveness_stays(
    private_broker: PrivateRabbitMQ, names: dict[str, Any], workers: int
) -> None:
    broker = private_broker
    env = {f"OTTER_{key}": value for key, value in names.items()}
    env.update(OTTER_BROKER_URL=broker.url, OTTER_RECONNECT_INTERVAL="0.2",
               METRICS_TASK=f"health-{uuid.uuid4().hex[:10]}.work")
    metrics_port, health_port = free_port(), free_port()
    command = ["-m", "otter", "run", APP, "--grace", "2", "--metrics-port", str(metrics_port),
               "--health-port", str(health_port)]
    if workers > 1:
        command += ["--workers", str(workers)]
    liveness: list[int] = []

    def ready_is(status: int) -> bool:
        liveness.append(probe(health_port, "/livez")[0])
        return probe(health_port, "/readyz")[0] == status

    with AppProcess(*command, env=env) as worker:
        wait_until(lambda: worker.output.count(READY) == workers, 30, "the workers to start")
        wait_until(lambda: ready_is(200), 10, "readiness")
        try:
            broker.stop_app()
            wait_until(lambda: ready_is(503), 15, "/readyz to answer 503 during the outage")
            status, text = probe(health_port, "/readyz")
            assert status == 503 and "not connected to the broker" in text, text
            assert probe(health_port, "/livez") == (200, "alive\n")
        finally:
            broker.start_app()
        wait_until(lambda: ready_is(200), 30, "/readyz to answer 200 after the broker came back")
        assert set(liveness) == {200}, "liveness must not fail because the broker did"
        with Client(broker.url, **names) as client:
            assert client.rpc("metrics.echo", "back").result(timeout=10) == "back"  # the consumers are really back
        # Several workers' figures reach the supervisor within a second.
        samples = wait_until(lambda: (found := scrape(metrics_port)) and value(found, "otter_connected") == workers
                             and found, 5, "every worker to report its connection")
        assert value(samples, "otter_reconnects_total") == workers
        assert worker.stop() == 0
