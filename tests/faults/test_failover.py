"""Several brokers in BROKER_URL: when the one a worker or client is on dies (SIGKILL), it moves to the next.

Two independent private RabbitMQ nodes, A and B (not a cluster: nothing is shared, so whatever works on B after A
died was declared there again by the moved worker or client). Each test kills A and the fixture starts it again.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from helpers_process import wait_until
from otter import Client, Unroutable
from otter.config import redact_url
from rawbroker import RawBroker

from .processes import FaultRig, rig_for
from .rabbitmq_node import PrivateRabbitMQ, require_rabbitmq_server
from .socket_leaks import LEAKED_SOCKET_FILTER

pytestmark = [pytest.mark.faults, LEAKED_SOCKET_FILTER]


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[PrivateRabbitMQ, PrivateRabbitMQ]]:
    """Nodes A and B, started side by side (each boot takes seconds of CPU)."""
    require_rabbitmq_server()
    nodes = (PrivateRabbitMQ(tmp_path_factory.mktemp("node-a")), PrivateRabbitMQ(tmp_path_factory.mktemp("node-b")))
    errors: list[BaseException] = []

    def boot(node: PrivateRabbitMQ) -> None:
        try:
            node.start()
        except BaseException as error:  # re-raised below, in the test's thread
            errors.append(error)

    threads = [threading.Thread(target=boot, args=(node,)) for node in nodes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        if errors:
            raise errors[0]
        yield nodes
    finally:
        for node in nodes:
            node.stop()


@pytest.fixture
def nodes(two_nodes: tuple[PrivateRabbitMQ, PrivateRabbitMQ]) -> tuple[PrivateRabbitMQ, PrivateRabbitMQ]:
    """A and B, both running when the test starts: A is started again here if an earlier test killed it (not after
    the test that did, which would boot it just to stop it when that test was the module's last)."""
    a = two_nodes[0]
    if a._pid() is None:
        a.restart()
    return two_nodes


@pytest.fixture
def failover_rig(nodes: tuple[PrivateRabbitMQ, PrivateRabbitMQ], tmp_path: Path,
                 names: dict[str, Any]) -> Iterator[FaultRig]:
    a, b = nodes
    yield from rig_for(a, tmp_path, names, url=f"{a.url};{b.url}")


def _secrets(*nodes: PrivateRabbitMQ) -> list[str]:
    return [node.password for node in nodes]


def test_a_worker_moves_to_the_next_broker_and_serves_there(
    nodes: tuple[PrivateRabbitMQ, PrivateRabbitMQ], failover_rig: FaultRig, names: dict[str, Any]
) -> None:
    a, b = nodes
    rig = failover_rig
    worker = rig.spawn(RECONNECT_INTERVAL=0.2)
    client = rig.client(RECONNECT_INTERVAL=0.2)  # given both URLs too: on A, the first that answers
    rig.wait_serving(client, worker)
    echo_queue = f"{names['RPC_QUEUE_PREFIX']}{rig.prefix}.echo"
    task_queue = f"{rig.prefix}.count"
    with RawBroker.open(a.url, names) as on_a:  # the first URL that answers; its consumers may still be starting
        wait_until(lambda: (on_a.consumers(echo_queue), on_a.consumers(task_queue)) == (1, 1), 20,
                   "the worker's consumers on A, the first broker of its list")
    with RawBroker.open(b.url, names) as on_b:
        assert on_b.consumers(echo_queue) is None, "nothing on B yet"

        a.kill()

        def consumers_on_b() -> tuple[int | None, ...]:
            return tuple(on_b.consumers(queue) for queue in (echo_queue, task_queue, f"{rig.prefix}.slow"))

        wait_until(lambda: consumers_on_b() == (1, 1, 1), 20, f"the worker's consumers on B (now {consumers_on_b()})")

    wait_until(lambda: _answers(client, f"{rig.prefix}.echo"), 20, "the client, moved to B too, to get an answer")
    task_id = uuid.uuid4().hex
    client.task(task_queue, {"id": task_id})
    wait_until(lambda: rig.ledger.ids("done")[task_id] == 1, 10, "the task sent through B to run")

    output = worker.output()
    lost_a, on_b_url = redact_url(a.url), redact_url(b.url)
    assert f"lost the connection to {lost_a}" in output, output
    assert f"reconnected to {on_b_url} (moved from {lost_a})" in output, output
    assert output.count("lost the connection to") == 1, output
    assert not any(secret in output for secret in _secrets(a, b)), "a password reached the worker's log"


def test_a_client_moves_to_the_next_broker_and_a_later_call_works(
    nodes: tuple[PrivateRabbitMQ, PrivateRabbitMQ], failover_rig: FaultRig, names: dict[str, Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="otter")
    a, b = nodes
    rig = failover_rig
    worker = rig.spawn(BROKER_URL=b.url)  # on B only: A and B share nothing
    with Client(b.url, **names) as on_b:
        rig.wait_serving(on_b, worker)
    client = rig.client(RECONNECT_INTERVAL=0.2, PUBLISH_TIMEOUT=5.0)
    with pytest.raises(Unroutable):  # the client is on A, where nobody serves it
        client.rpc(f"{rig.prefix}.echo", "a").result(timeout=5)

    a.kill()

    wait_until(lambda: _answers(client, f"{rig.prefix}.echo"), 20, "the client to move to B and get an answer")
    assert client.rpc(f"{rig.prefix}.echo", "later").result(timeout=5) == "later"
    lost_a, on_b_url = redact_url(a.url), redact_url(b.url)
    assert f"lost the connection to {lost_a}" in caplog.text
    assert f"reconnected to {on_b_url} (moved from {lost_a})" in caplog.text
    assert not any(secret in caplog.text for secret in _secrets(a, b)), "a password reached the log"


def _answers(client: Client, name: str) -> bool:
    try:
        return bool(client.rpc(name, "ping", timeout=2).result() == "ping")
    except Exception:  # still on A, or moving: unroutable, unavailable or a timeout
        return False
