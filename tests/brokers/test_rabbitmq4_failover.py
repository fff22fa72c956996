"""Failover on a three-node RabbitMQ 4 cluster: ``BROKER_URL`` is the ``;``-list of its nodes; the node a client is
on is SIGKILLed and it goes on through another node, to a worker on a third.

Opt-in (``OTTER_TEST_RABBITMQ4_SLOW=1``) like the cluster's own test: booting and joining three nodes costs a
minute of CPU on a 2-core machine.
"""

from __future__ import annotations

import logging
import os
import threading
import uuid
from typing import Any

import pytest

from brokers.rabbitmq4 import Rabbitmq4Cluster
from helpers_process import wait_until
from otter import Client, Otter
from otter.testing import ServedApp
from rawbroker import RawBroker

pytestmark = [
    pytest.mark.rabbitmq4,
    pytest.mark.skipif(os.environ.get("OTTER_TEST_RABBITMQ4_SLOW") != "1",
                       reason="a longer RabbitMQ 4 test; OTTER_TEST_RABBITMQ4_SLOW=1 runs it"),
]


def test_a_client_goes_on_through_another_node_when_its_node_is_killed(
    rabbitmq4_cluster: Rabbitmq4Cluster, names: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="otter")
    cluster = rabbitmq4_cluster
    app = Otter("cluster-failover")
    done = threading.Event()

    @app.add_rpc("cluster.echo")
    def echo(comm: Any, data: Any) -> Any:
        return data

    task_queue = f"cluster.mark.{uuid.uuid4().hex[:8]}"

    @app.add_task(task_queue)
    def mark(comm: Any, body: Any) -> None:
        done.set()

    # The worker starts on node 2, so its queues (classic: each lives on the node that declared it) survive the
    # loss of node 1. A worker moved off a lost node cannot declare its queues again while their home node is
    # down (see the README's "Several brokers"); quorum queues are needed for that (test_rabbitmq4_nodeloss.py).
    worker_url = ";".join(cluster.urls[1:] + cluster.urls[:1])
    with ServedApp(app, worker_url, **names, RECONNECT_INTERVAL=0.2, SHUTDOWN_GRACE=1), \
            Client(cluster.url, **names, RECONNECT_INTERVAL=0.2) as client:
        assert client.comm, client.error
        assert client.rpc("cluster.echo", 1).result(timeout=10) == 1

        cluster.kill(0)
        try:
            wait_until(lambda: _answers(client), 30, "the client to go on through another node")
            client.task(task_queue, {})
            assert done.wait(10), "the task sent after the move did not run"
            with RawBroker.open(cluster.urls[2], names) as raw:  # seen from the third node
                assert raw.consumers(f"{names['RPC_QUEUE_PREFIX']}cluster.echo") == 1
        finally:
            cluster.restart(0)
    node1 = cluster.urls[0].rsplit("@", 1)[1]
    assert f"lost the connection to amqp://otter:***@{node1}" in caplog.text
    assert "(moved from amqp://otter:***@" in caplog.text
    assert cluster.nodes[0].password not in caplog.text


def _answers(client: Client) -> bool:
    try:
        return bool(client.rpc("cluster.echo", "x", timeout=2).result() == "x")
    except Exception:  # still moving
        return False
