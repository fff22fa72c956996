"""A caller's own headers reach the service's hooks as ``ctx.headers`` on every kind of message, on both
transports, and bad headers are refused before anything is sent."""

from __future__ import annotations

import queue
from collections.abc import Callable
from typing import Any

import pytest

import otter
from otter.testing import ServedApp

QueueName = Callable[[str], str]

pytestmark = pytest.mark.usefixtures("probe")  # deletes what each test declared on RabbitMQ


def test_headers_reach_hooks_for_rpcs_tasks_and_broadcasts_and_survive_a_retry(
    broker_url: str, names: dict[str, Any], queue_name: QueueName
) -> None:
    app, work = otter.Otter(**names), queue_name("work")
    seen: queue.Queue[tuple[str, Any]] = queue.Queue()
    runs: list[int] = []

    @app.before_handler
    def remember(ctx: otter.HandlerContext) -> None:
        seen.put((ctx.kind, (ctx.headers or {}).get("tenant")))

    app.add_rpc("svc.echo")(lambda comm, data: data)

    @app.add_task(work, max_retries=1, backoff=0.01, jitter=False)
    def flaky(comm: Any, body: Any) -> None:
        runs.append(1)
        if len(runs) == 1:
            raise OSError("once")

    app.add_broadcast(["news.*"])(lambda comm, body, sender, subject, correlation_id: None)
    with ServedApp(app, broker_url, **names, SHUTDOWN_GRACE=5.0) as server, \
            otter.Client(broker_url, **names) as client:
        assert client.rpc("svc.echo", 1, headers={"tenant": "acme"}).result(timeout=5) == 1
        client.task(work, 2, headers={"tenant": "globex"})
        server.handled.wait(work)  # failed once, retried: the copy keeps the caller's headers
        client.broadcast("hi", subject="news.today", headers={"tenant": "initech"})
        server.handled.wait("news.*")
        client.rpc("svc.echo", 3).result(timeout=5)  # none given: none seen
    got = [seen.get(timeout=1) for _ in range(5)]
    assert got == [("rpc", "acme"), ("task", "globex"), ("task", "globex"), ("broadcast", "initech"), ("rpc", None)]


@pytest.mark.parametrize(
    ("headers", "error", "match"),
    [
        pytest.param({"x-otter-deadline": 1}, ValueError, "reserved", id="Otter's own"),
        pytest.param({"x-death": []}, ValueError, "reserved", id="the broker's"),
        pytest.param({"tenant": object()}, ValueError, "cannot travel in AMQP headers", id="a value AMQP cannot hold"),
        pytest.param({5: "x"}, ValueError, "header name must be", id="a name that is not a string"),
        pytest.param(["tenant"], TypeError, "must be a mapping", id="not a mapping"),
    ],
)
def test_bad_headers_are_refused_before_anything_is_sent(
    broker_url: str, names: dict[str, Any], headers: Any, error: type[Exception], match: str
) -> None:
    with otter.Client(broker_url, **names) as client:
        with pytest.raises(error, match=match):
            client.rpc("svc.none", 1, headers=headers).result(timeout=5)
        with pytest.raises(error, match=match):
            client.broadcast(1, subject="a.b", headers=headers)
