"""Sending while the broker is down: a task waits for it (up to PUBLISH_TIMEOUT) and is then queued exactly once, or
the caller gets a clear ``BrokerUnavailable``; never a silent drop, never a hang, never a raw aiormq error.

The broker application is stopped with ``rabbitmqctl stop_app`` (connections drop, nothing listens) and started
again with ``start_app``; durable queues and their persistent messages survive.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from helpers_process import wait_until
from otter import BrokerUnavailable, Client, DeadlineExceeded, Otter, Undelivered, Unroutable
from otter.testing import ServedApp

from .rabbitmq_node import PrivateRabbitMQ
from .socket_leaks import LEAKED_SOCKET_FILTER

pytestmark = [pytest.mark.faults, LEAKED_SOCKET_FILTER]


@pytest.fixture
def broker(private_broker: PrivateRabbitMQ) -> Iterator[PrivateRabbitMQ]:
    """The private node, running again after the test whatever the test did to it."""
    yield private_broker
    private_broker.ensure_serving()


@pytest.fixture
def client(broker: PrivateRabbitMQ, names: dict[str, Any]) -> Iterator[Client]:
    with Client(broker.url, **names, PUBLISH_TIMEOUT=2.0, RECONNECT_INTERVAL=0.2) as connected:
        assert connected.comm, connected.error
        yield connected


def test_a_task_sent_during_a_short_outage_is_queued_once_the_broker_is_back(
    broker: PrivateRabbitMQ, names: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="otter")
    queue = f"outage.short.{names['MESSAGE_EXCHANGE']}"
    with Client(broker.url, **names, PUBLISH_TIMEOUT=30.0, RECONNECT_INTERVAL=0.2) as client:
        client.task(queue, {"n": 0})  # declares the durable queue
        broker.stop_app()
        wait_until(lambda: "lost the connection" in caplog.text, 10, "the client to notice the outage")
        assert client.comm is not None
        sending = client.comm.task_send({"n": 1}, name=queue)
        with pytest.raises(DeadlineExceeded):
            sending.result(timeout=0.5)  # neither sent nor failed while the broker is down: it waits
        broker.start_app()
        assert sending.result(timeout=30) is None
        assert "reconnected to" in caplog.text
    assert broker.queue_depth(queue) == (2, 0), "both tasks are queued, the one sent during the outage once"


def test_a_task_sent_during_a_long_outage_raises_broker_unavailable(
    broker: PrivateRabbitMQ, client: Client, names: dict[str, Any]
) -> None:
    queue = f"outage.long.{names['MESSAGE_EXCHANGE']}"
    client.task(queue, {"n": 0}, wait=True)
    broker.stop_app()
    started = time.monotonic()
    with pytest.raises(BrokerUnavailable) as raised:
        client.task(queue, {"n": 1}, wait=True)
    waited = time.monotonic() - started
    message = str(raised.value)
    assert 2.0 <= waited < 6.0, f"PUBLISH_TIMEOUT is 2 s, gave up after {waited:.1f} s"
    assert "PUBLISH_TIMEOUT" in message and queue in message, message
    assert broker.password not in message
    with pytest.raises(BrokerUnavailable):
        client.broadcast("anyone?", subject="outage.test", wait=True)
    client.task(queue, {"n": 1.5})  # handed over at once; flush reports it
    with pytest.raises(Undelivered) as undelivered:
        client.flush()
    [failure] = undelivered.value.failures
    assert failure.target == queue and isinstance(failure.error, BrokerUnavailable), failure
    assert "PUBLISH_TIMEOUT" in str(undelivered.value) and broker.password not in str(undelivered.value)

    broker.start_app()
    wait_until(lambda: _attempt(lambda: client.task(queue, {"n": 2}, wait=True)) == "ok", 20,
               "sending to work again")
    # The failed sends were given up for good: they were not queued later behind the caller's back.
    assert broker.queue_depth(queue) == (2, 0)


@pytest.fixture
def slow_service(broker: PrivateRabbitMQ, names: dict[str, Any]) -> Iterator[ServedApp]:
    app = Otter("outage-service")
    started, release = threading.Event(), threading.Event()

    @app.add_rpc("outage.slow")
    def slow(comm: Any, data: Any) -> str:
        started.set()
        release.wait(30)  # busy until the test ends, however long stopping the broker takes
        return "done"

    @app.add_rpc("outage.echo")
    def echo(comm: Any, data: Any) -> Any:
        return data

    served = ServedApp(app, broker.url, **names, RECONNECT_INTERVAL=0.2, SHUTDOWN_GRACE=1)
    served.handler_started = started  # type: ignore[attr-defined]
    with served:
        try:
            yield served
        finally:
            release.set()


def test_rpcs_during_an_outage_fail_fast_with_a_typed_error_and_work_again_after(
    broker: PrivateRabbitMQ, client: Client, slow_service: ServedApp
) -> None:
    assert client.rpc("outage.echo", 1).result(timeout=10) == 1
    call = client.rpc("outage.slow", timeout=20)
    assert slow_service.handler_started.wait(10)  # type: ignore[attr-defined]
    broker.stop_app()  # returns once the broker has closed every connection
    stopped = time.monotonic()
    with pytest.raises(BrokerUnavailable, match="lost while waiting for the reply"):
        call.result()
    assert time.monotonic() - stopped < 2.0, "the caller should learn at once that its reply is gone, not at 20 s"

    started = time.monotonic()
    with pytest.raises(BrokerUnavailable, match="broker connection is down"):
        client.rpc("outage.echo", 2, timeout=1.0).result()
    assert time.monotonic() - started < 3.0

    broker.start_app()
    wait_until(
        lambda: _attempt(lambda: client.rpc("outage.echo", 3, timeout=2).result()) == "ok",
        30,
        "the RPC to be served again (client and worker both reconnected)",
    )


def _attempt(action: Any) -> str:
    try:
        action()
    except Exception as exc:
        return f"{type(exc).__module__}.{type(exc).__name__}: {exc}"
    return "ok"


def test_closing_a_client_whose_task_send_waits_for_the_broker_fails_the_send_with_broker_unavailable(
    broker: PrivateRabbitMQ, names: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    """The send is in flight for as long as the broker is down; closing the client must end it at once with the
    typed error, not leave it to a bare ``CancelledError`` or to its deadline."""
    caplog.set_level(logging.INFO, logger="otter")
    queue = f"outage.close.{names['MESSAGE_EXCHANGE']}"
    client = Client(broker.url, **names, PUBLISH_TIMEOUT=30.0, RECONNECT_INTERVAL=0.2)
    assert client.comm, client.error
    try:
        client.task(queue, {"n": 0}, wait=True)
        broker.stop_app()
        wait_until(lambda: "lost the connection" in caplog.text, 10, "the client to notice the outage")
        sending = client.comm.task_send({"n": 1}, name=queue)
        with pytest.raises(DeadlineExceeded):
            sending.result(timeout=0.2)  # waiting for the broker: in flight
    finally:
        client.close()
    with pytest.raises(BrokerUnavailable):
        sending.result(timeout=5)


def test_after_a_reconnection_a_call_nobody_serves_is_unroutable_at_once(
    broker: PrivateRabbitMQ, names: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    """aio-pika forwards the returns of a re-opened channel nowhere: the call waited for its whole deadline."""
    caplog.set_level(logging.INFO, logger="otter")
    with Client(broker.url, **names, RECONNECT_INTERVAL=0.2) as client:
        assert client.comm, client.error
        with pytest.raises(Unroutable):
            client.rpc("outage.nobody", timeout=10).result()
        broker.ctl("close_all_connections", "otter test: reconnect")
        wait_until(lambda: "reconnected to" in caplog.text, 10, "the client to reconnect")
        started = time.monotonic()
        with pytest.raises(Unroutable, match=r"nobody serves the RPC 'outage\.nobody'"):
            client.rpc("outage.nobody", timeout=10).result()
        assert time.monotonic() - started < 3.0, "the broker's return after the reconnection was not reported"
