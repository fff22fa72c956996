"""Nameless tasks (``client.task(body)``) reach one well-defined consumer, on both transports.

Two unrelated services with one task each (billing, mailer) used to share the default queue, and nameless tasks
alternated between them. Now the first app holds the queue for itself and the second one says so and takes none;
``default=False`` opts out, and ``default=True`` shares the queue between the replicas of one service.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import pytest

import otter
from otter.testing import ServedApp
from otter.transports.base import QueueInUse

QueueName = Callable[[str], str]

# ``probe`` deletes what each test declared on RabbitMQ (its names and its task queues) when it ends.
pytestmark = pytest.mark.usefixtures("probe")


def service(names: dict[str, Any], task: str, ran: list[Any], **options: Any) -> otter.Otter:
    app = otter.Otter(**names)
    app.add_task(task, **options)(lambda comm, body: ran.append(body))
    return app


def serve(app: otter.Otter, broker_url: str, names: dict[str, Any]) -> ServedApp:
    return ServedApp(app, broker_url, **{**names, "SHUTDOWN_GRACE": 5.0})


def test_two_unrelated_services_never_share_nameless_tasks(
    broker_url: str, names: dict[str, Any], queue_name: QueueName, caplog: pytest.LogCaptureFixture
) -> None:
    billed: list[Any] = []
    mailed: list[Any] = []
    charge, send = queue_name("billing.charge"), queue_name("mail.send")
    caplog.set_level(logging.INFO, logger="otter.worker")
    with serve(service(names, charge, billed), broker_url, names) as billing, \
            serve(service(names, send, mailed), broker_url, names) as mailer, \
            otter.Client(broker_url, **names) as client:
        for n in range(6):
            client.task(n)
        billing.handled.wait(charge, 6)
        client.task(send, "barrier")  # the mailer is up and serving its own queue
        mailer.handled.wait(send)
    assert sorted(billed) == list(range(6)) and mailed == ["barrier"]
    assert f"go to {charge}, and to no other consumer" in caplog.text
    assert "already go to another consumer" in caplog.text and f"so {send} takes none" in caplog.text


def test_default_false_opts_the_only_task_out_of_the_default_queue(
    broker_url: str, names: dict[str, Any], queue_name: QueueName, caplog: pytest.LogCaptureFixture
) -> None:
    ran: list[Any] = []
    work = queue_name("work")
    caplog.set_level(logging.INFO, logger="otter.worker")
    with serve(service(names, work, ran, default=False), broker_url, names) as server, \
            otter.Client(broker_url, **names) as client:
        client.task(body="nameless")
        client.task(work, "named")  # sent after the nameless one: once it is handled, the other would have been
        server.handled.wait(work)
    assert ran == ["named"] and "nameless tasks" not in caplog.text


def test_default_true_shares_the_queue_between_replicas_of_one_service(
    broker_url: str, names: dict[str, Any], queue_name: QueueName
) -> None:
    work, count = queue_name("work"), 20
    ran: dict[str, list[Any]] = {"one": [], "two": []}
    all_ran = threading.Event()

    def replica(label: str) -> otter.Otter:
        app = otter.Otter(**names)

        @app.add_task(work, default=True)
        def record(comm: Any, body: Any) -> None:
            ran[label].append(body)
            if len(ran["one"]) + len(ran["two"]) == count:
                all_ran.set()

        return app

    with serve(replica("one"), broker_url, names), serve(replica("two"), broker_url, names), \
            otter.Client(broker_url, **names) as client:
        for n in range(count):
            client.task(n)
        assert all_ran.wait(10)
    assert sorted(ran["one"] + ran["two"]) == list(range(count))
    assert ran["one"] and ran["two"]  # the broker hands them round: both replicas took some


def test_sharing_is_refused_when_another_service_holds_the_default_queue(
    broker_url: str, names: dict[str, Any], queue_name: QueueName
) -> None:
    with serve(service(names, queue_name("owner"), []), broker_url, names):
        sharer = serve(service(names, queue_name("sharer"), [], default=True), broker_url, names)
        with pytest.raises(QueueInUse, match="holds the default task queue"):
            sharer.start()
