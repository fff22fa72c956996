"""RPC queue types on RabbitMQ 3.10 (the shared broker) and 4.0 (a private node). ``RPC_QUEUE_TYPE=quorum`` is for
clusters (a quorum queue survives the loss of a node, see tests/brokers/test_rabbitmq4_nodeloss.py); here: what the
broker makes of it on one node, and the one behaviour that differs from a classic RPC queue."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import aiormq
import pytest

import otter
from otter import protocol
from otter.errors import ConfigurationError, DeadlineExceeded, Unroutable
from otter.testing import ServedApp
from rawbroker import RawBroker


@pytest.fixture
def url(any_rabbitmq_url: str) -> str:
    return any_rabbitmq_url


@pytest.fixture
def raw(url: str, names: dict[str, Any]) -> Iterator[RawBroker]:
    with RawBroker.open(url, names) as broker:
        yield broker
        broker.delete(f"{names['RPC_QUEUE_PREFIX']}echo")


def test_rpc_queue_arguments_by_type() -> None:
    assert protocol.rpc_queue_arguments("classic") == (True, {"x-expires": 60_000})
    assert protocol.rpc_queue_arguments("quorum") == (False, {"x-queue-type": "quorum", "x-expires": 60_000})
    with pytest.raises(ValueError, match="classic, quorum"):
        protocol.rpc_queue_arguments("stream")


def test_rpc_queue_type_is_checked_with_the_config() -> None:
    with pytest.raises(ConfigurationError, match="RPC_QUEUE_TYPE"):
        otter.Client("memory://rpc-queue-type", RPC_QUEUE_TYPE="stream")


def test_a_quorum_rpc_queue_serves_and_outlives_its_last_worker(
    url: str, raw: RawBroker, names: dict[str, Any]
) -> None:
    """Quorum queues cannot be auto-delete: after the last worker the queue stays (until ``x-expires``, a minute)
    and a call waits for its deadline where a classic queue would have been deleted (``Unroutable`` at once)."""
    app = otter.Otter("quorum-rpc")
    app.add_rpc("echo")(lambda comm, data: data)
    queue = f"{names['RPC_QUEUE_PREFIX']}echo"
    config = {**names, "RPC_QUEUE_TYPE": "quorum"}
    with otter.Client(url, **names) as client:
        with ServedApp(app, url, **config):
            assert client.rpc("echo", "hi").result(timeout=10) == "hi"
            # The broker accepts the quorum declaration again (it changes nothing) and holds one consumer.
            raw.declare_queue(queue, {"x-queue-type": "quorum", "x-expires": 60_000})
            assert raw.consumers(queue) == 1
        assert raw.consumers(queue) == 0, "the quorum RPC queue went with its last worker"
        with pytest.raises(DeadlineExceeded):
            client.rpc("echo", "late", timeout=0.5).result()
        asyncio.run(_delete_queue(url, queue))  # what x-expires does a minute later
        with pytest.raises(Unroutable):
            client.rpc("echo", "gone", timeout=5).result()


async def _delete_queue(url: str, queue: str) -> None:
    connection = await aiormq.connect(url)
    try:
        await (await connection.channel()).queue_delete(queue)
    finally:
        await connection.close()


def test_a_classic_rpc_queue_goes_with_its_last_worker(url: str, raw: RawBroker, names: dict[str, Any]) -> None:
    app = otter.Otter("classic-rpc")
    app.add_rpc("echo")(lambda comm, data: data)
    with otter.Client(url, **names) as client:
        with ServedApp(app, url, **names):
            assert client.rpc("echo", "hi").result(timeout=10) == "hi"
        assert raw.consumers(f"{names['RPC_QUEUE_PREFIX']}echo") is None
        with pytest.raises(Unroutable):
            client.rpc("echo", "gone", timeout=5).result()


def test_the_broker_refuses_a_quorum_queue_auto_delete_or_exclusive(url: str) -> None:
    """Why a quorum RPC queue is not auto-delete (measured on 3.10 and 4.0.5)."""

    async def refusals() -> list[str]:
        connection = await aiormq.connect(url)
        found = []
        try:
            for flags in ({"auto_delete": True}, {"exclusive": True}):
                channel = await connection.channel()
                try:
                    await channel.queue_declare(f"otter-test-quorum-{uuid.uuid4().hex[:8]}", durable=True,
                                                arguments={"x-queue-type": "quorum"}, **flags)
                except aiormq.exceptions.ChannelPreconditionFailed as error:
                    found.append(str(error))
        finally:
            await connection.close()
        return found

    auto_delete, exclusive = asyncio.run(refusals())
    assert "invalid property 'auto-delete'" in auto_delete
    assert "invalid property 'exclusive-owner'" in exclusive
