"""Service discovery on every transport: each serving worker answers a status request with who it is, its routes
and their counts; a stopped one answers nothing; bad requests get an error reply and the worker goes on."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any

import pytest

import otter
from otter import eventloop, protocol
from otter.codec import JsonCodec
from otter.config import resolve
from otter.services import Instance, adiscover, discover
from otter.transports import open_transport

from .conftest import served

QueueName = Callable[[str], str]

pytestmark = pytest.mark.usefixtures("probe")

STATUS_REQUEST = JsonCodec().encode({"otter_control": protocol.CONTROL_VERSION, "command": "status"})


def billing_app(names: dict[str, Any], task: str) -> otter.Otter:
    app = otter.Otter("billing", **names)

    @app.add_rpc("billing.charge")
    def charge(comm: Any, amount: int) -> int:
        if amount < 0:
            raise ValueError("a negative amount")
        return amount

    app.add_task(task)(lambda comm, body: None)
    app.add_broadcast(["billing.*", "audit.#"])(lambda comm, body, sender, subject, correlation_id: None)
    return app


def survey(broker_url: str, names: dict[str, Any], body: bytes) -> list[bytes]:
    """The raw replies to one control request (expecting one worker), below ``otter.services``."""

    async def ask() -> list[bytes]:
        transport = open_transport(broker_url, resolve({"BROKER_URL": broker_url, **names}))
        await transport.connect()
        try:
            replies = await transport.survey(body, correlation_id=uuid.uuid4().hex, timeout=2.0, expected=1)
        finally:
            await transport.close()
        return [reply.body for reply in replies]

    return list(eventloop.run(ask()))


def test_a_served_app_answers_with_its_identity_routes_and_counts(
    broker_url: str, names: dict[str, Any], queue_name: QueueName, client: otter.Client
) -> None:
    task = queue_name("invoice")
    with served(billing_app(names, task), broker_url, names, SERVICE_VERSION="2.1.0", CONCURRENCY=3) as server:
        [before] = discover(broker_url, timeout=2.0, expected=1, **names)
        assert (before.service, before.version, before.concurrency, before.state) == ("billing", "2.1.0", 3,
                                                                                     "serving")
        assert before.uptime >= 0 and before.started_at > 0 and before.instance_id
        assert [(r.kind, r.name) for r in before.routes] == [
            ("rpc", "billing.charge"), ("task", task), ("broadcast", "billing.*,audit.#")]
        rpc, work, _ = before.routes
        assert rpc.queue == f"{names['RPC_QUEUE_PREFIX']}billing.charge"
        assert work.queue.split(", ") == [task, names["DEFAULT_TASK_QUEUE"]]  # its only task holds the default queue
        assert (before.handled, before.errors, rpc.p50_ms, rpc.p99_ms) == (0, 0, None, None)

        for amount in (1, 2, 3):
            assert client.rpc("billing.charge", amount).result() == amount
        with pytest.raises(otter.RemoteError):
            client.rpc("billing.charge", -1).result()
        client.task(task, "x", wait=True)
        server.handled.wait("billing.charge", 4)
        server.handled.wait(task)

        [after] = discover(broker_url, timeout=2.0, expected=1, **names)
    rpc, work, broadcast = after.routes
    assert (rpc.handled, rpc.errors, work.handled, work.errors, broadcast.handled) == (4, 1, 1, 0, 0)
    assert (after.handled, after.errors, after.in_flight) == (5, 1, 0)
    assert rpc.p50_ms is not None and rpc.p99_ms is not None and 0 < rpc.p50_ms <= rpc.p99_ms
    assert after.instance_id == before.instance_id and after.uptime >= before.uptime
    assert json.loads(json.dumps(after.as_dict()))["routes"][0]["name"] == "billing.charge"


def test_adiscover_sees_each_worker_once_and_not_after_it_stopped(
    broker_url: str, names: dict[str, Any], queue_name: QueueName
) -> None:
    task = queue_name("invoice")
    first = served(billing_app(names, task), broker_url, names).start()
    second = served(billing_app(names, task), broker_url, names).start()
    try:
        found = eventloop.run(adiscover(broker_url, timeout=2.0, expected=2, **names))
        assert len({instance.instance_id for instance in found}) == 2
        second.stop()
        [left] = eventloop.run(adiscover(broker_url, timeout=0.5, **names))  # waits the whole timeout for a third
        assert left.instance_id in {instance.instance_id for instance in found}
    finally:
        first.stop()
        second.stop()
    assert eventloop.run(adiscover(broker_url, timeout=0.3, **names)) == []


def test_a_worker_with_discovery_off_does_not_answer(
    broker_url: str, names: dict[str, Any], queue_name: QueueName
) -> None:
    with served(billing_app(names, queue_name("invoice")), broker_url, names, DISCOVERY=False):
        assert discover(broker_url, timeout=0.3, **names) == []


def test_bad_control_requests_get_an_error_reply_and_the_worker_answers_the_next(
    broker_url: str, names: dict[str, Any], queue_name: QueueName, caplog: pytest.LogCaptureFixture
) -> None:
    codec = JsonCodec()
    with served(billing_app(names, queue_name("invoice")), broker_url, names):
        unreadable, unknown, status = (json.loads(reply) for body in (
            b"{not json", codec.encode({"otter_control": protocol.CONTROL_VERSION, "command": "halt"}), STATUS_REQUEST
        ) for reply in survey(broker_url, names, body))
    assert "unreadable control request" in unreadable["error"]
    assert "unknown control command 'halt'" in unknown["error"]
    assert Instance.from_status(status["status"]).service == "billing"
    assert "unknown control command 'halt'" in caplog.text


def test_a_status_reply_holds_no_credentials_or_config_secrets(
    broker_url: str, names: dict[str, Any], queue_name: QueueName
) -> None:
    secret = f"s3cret-{uuid.uuid4().hex}"
    app = billing_app(names, queue_name("invoice"))
    with served(app, broker_url, names, API_SECRET=secret, DATABASE_URL=f"postgres://u:{secret}@db/x"):
        [reply] = survey(broker_url, names, STATUS_REQUEST)
    body = reply.decode()
    assert secret not in body and "guest" not in body and "amqp" not in body and "postgres" not in body
    assert json.loads(body)["status"]["service"] == "billing"
