"""The RabbitMQ 4 test infrastructure itself.

By default only the cheap smoke test runs (one node, which refuses a transient non-exclusive queue): the first run on
a machine builds the root (about 75 s), later ones take a few seconds. The full check of every denied feature and the
three-node cluster test cost 30-80 s of CPU on a 2-core machine, so they run with ``OTTER_TEST_RABBITMQ4=1``.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import aiormq
import pytest
from aiormq.connection import EXCEPTION_MAPPING

from brokers.rabbitmq4 import DENIED_FEATURES, Rabbitmq4Cluster, Rabbitmq4Node, root_or_skip

pytestmark = pytest.mark.rabbitmq4
# The cluster and the full deprecated-feature check take a minute of a worker: run by hand until a feature needs them.
SLOW_ENV = "OTTER_TEST_RABBITMQ4_SLOW"
opt_in = pytest.mark.skipif(os.environ.get(SLOW_ENV) != "1", reason=f"a longer RabbitMQ 4 test; {SLOW_ENV}=1 runs it")


async def _on_channel(url: str, action: Callable[[Any], Awaitable[Any]]) -> tuple[Any, BaseException | None]:
    """Run ``action(channel)`` on a fresh connection: (its result, or None; the error the broker closed with)."""
    connection = await aiormq.connect(url)
    try:
        channel = await connection.channel()
        try:
            return await action(channel), None
        except aiormq.exceptions.AMQPError as error:
            return None, error
    finally:
        if not connection.is_closed:
            await connection.close()


def refusal(url: str, action: Callable[[Any], Awaitable[Any]]) -> str:
    """The broker's reply code and text for an action it must refuse by closing the connection."""
    _, error = asyncio.run(_on_channel(url, action))
    assert isinstance(error, aiormq.exceptions.ConnectionClosed), f"not refused: {error!r}"
    code = next((code for code, kind in EXCEPTION_MAPPING.items() if type(error) is kind), None)
    return f"{code} {error.args[-1]}"


# aiormq 6.9 leaves the StreamWriter of a connection that the broker closed (541 here) unclosed; its __del__ warns.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_node_refuses_a_transient_non_exclusive_queue(rabbitmq4_node: Rabbitmq4Node) -> None:
    url, tag = rabbitmq4_node.url, uuid.uuid4().hex[:8]
    # What Otter's RPC queue is today (non-durable, non-exclusive, auto-delete): the whole connection is closed.
    text = refusal(url, lambda ch: ch.queue_declare(f"t4.{tag}.rpc", auto_delete=True))
    assert text.startswith("541 INTERNAL_ERROR - Feature `transient_nonexcl_queues` is deprecated"), text
    # ... while exclusive transient queues (reply queues) are fine.
    ok, error = asyncio.run(_on_channel(url, lambda ch: ch.queue_declare(f"t4.{tag}.reply", exclusive=True)))
    assert error is None and ok is not None


@pytest.fixture
def own_rabbitmq4_node() -> Iterator[Rabbitmq4Node]:
    """A node of the test's own, for a test that stops the broker application (the session's node is shared by every
    worker of the run)."""
    node = Rabbitmq4Node(root_or_skip())
    try:
        yield node.start()
    finally:
        node.stop()


@opt_in
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_node_denies_every_deprecated_feature(own_rabbitmq4_node: Rabbitmq4Node) -> None:
    rabbitmq4_node = own_rabbitmq4_node
    url, tag = rabbitmq4_node.url, uuid.uuid4().hex[:8]
    assert rabbitmq4_node.permitted(DENIED_FEATURES) == dict.fromkeys(DENIED_FEATURES, False)

    # queue_master_locator: as a queue argument (541) and as a policy key.
    text = refusal(url, lambda ch: ch.queue_declare(
        f"t4.{tag}.qml", durable=True, auto_delete=True, arguments={"x-queue-master-locator": "min-masters"}
    ))
    assert text.startswith("541 INTERNAL_ERROR - Feature `queue_master_locator` is deprecated"), text
    with pytest.raises(subprocess.SubprocessError, match="queue-master-locator argument is not permitted"):
        rabbitmq4_node.ctl("set_policy", f"qml-{tag}", f"^t4\\.{tag}\\.", '{"queue-master-locator":"min-masters"}')

    # classic_queue_mirroring: removed in 4.0, so ha-* policy keys are unknown.
    with pytest.raises(subprocess.SubprocessError, match="are not recognised policy settings"):
        rabbitmq4_node.ctl("set_policy", f"ha-{tag}", f"^t4\\.{tag}\\.", '{"ha-mode":"all"}')

    # ram_node_type: the node cannot become a RAM node.
    rabbitmq4_node.stop_app()
    try:
        with pytest.raises(subprocess.SubprocessError, match=r"deprecated_features\.permit\.ram_node_type = true"):
            rabbitmq4_node.ctl("change_cluster_node_type", "ram")
    finally:
        rabbitmq4_node.start_app()

    # global_qos: basic.qos(global=True) is answered, but applied per consumer (the broker rewrites global to
    # false): two consumers on one channel with a "global" prefetch of 1 get one message each, not one in all.
    assert asyncio.run(_deliveries_with_global_prefetch_1(url, f"t4.{tag}.qos")) == 2


async def _deliveries_with_global_prefetch_1(url: str, queue: str) -> int:
    connection = await aiormq.connect(url)
    try:
        channel = await connection.channel()
        await channel.queue_declare(queue, durable=True, auto_delete=True)
        for _ in range(4):
            await channel.basic_publish(b"x", routing_key=queue)
        await channel.basic_qos(prefetch_count=1, global_=True)
        delivered: list[int] = []
        for _ in range(2):
            await channel.basic_consume(queue, lambda message: delivered.append(1) or asyncio.sleep(0))
        # Two deliveries when each consumer has its own prefetch (global QoS denied); with global QoS honoured the
        # second never comes (nothing is acked), and the deadline ends the wait.
        deadline = asyncio.get_running_loop().time() + 10
        while len(delivered) < 2 and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)
        await channel.queue_delete(queue)
        return len(delivered)
    finally:
        await connection.close()


@opt_in
def test_cluster_has_three_nodes_and_survives_losing_one(rabbitmq4_cluster: Rabbitmq4Cluster) -> None:
    cluster = rabbitmq4_cluster
    assert cluster.running_nodes() == sorted(node.node for node in cluster.nodes)
    assert cluster.url == ";".join(f"amqp://otter:{cluster.nodes[0].password}@127.0.0.1:{n.port}/"
                                   for n in cluster.nodes)


    queue = f"t4c.{uuid.uuid4().hex[:8]}"
    killed = cluster.kill(1)
    try:
        assert cluster.wait_running(2, timeout=30) == sorted(n.node for n in cluster.nodes if n is not killed)
        # The other nodes still serve: a durable queue declared on one is usable through the other.
        first, last = cluster.nodes[0].url, cluster.nodes[2].url
        asyncio.run(_on_channel(first, lambda ch: ch.queue_declare(queue, durable=True)))
        asyncio.run(_on_channel(last, lambda ch: ch.basic_publish(b"hello", routing_key=queue)))
        got, error = asyncio.run(_on_channel(first, lambda ch: ch.basic_get(queue, no_ack=True)))
        assert error is None and got.body == b"hello"
    finally:
        cluster.restart(1)
    assert cluster.running_nodes() == sorted(node.node for node in cluster.nodes)
    asyncio.run(_on_channel(cluster.nodes[1].url, lambda ch: ch.queue_delete(queue)))
