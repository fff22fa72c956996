"""Named tasks sent the same way from a client and from inside handlers, on both transports; sends to a queue nobody
consumes are reported."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import pytest

import otter
from otter.testing import ServedApp

QueueName = Callable[[str], str]

pytestmark = pytest.mark.usefixtures("probe")  # deletes what each test declared on RabbitMQ


def serve(app: otter.Otter, broker_url: str, names: dict[str, Any]) -> ServedApp:
    return ServedApp(app, broker_url, **{**names, "SHUTDOWN_GRACE": 5.0})


def test_a_lone_string_is_the_name_of_the_task_to_send(
    broker_url: str, names: dict[str, Any], queue_name: QueueName
) -> None:
    app, charge, ran = otter.Otter(**names), queue_name("billing.charge"), []
    app.add_task(charge)(lambda comm, body: ran.append(body))
    app.add_task(queue_name("other"))(lambda comm, body: None)  # two tasks: the app does not take nameless ones
    with serve(app, broker_url, names) as server, otter.Client(broker_url, **names) as client:
        client.task(charge)
        server.handled.wait(charge)
    assert ran == [None]


@pytest.mark.parametrize("style", ["sync", "async"])
def test_comm_task_sends_a_named_task_from_inside_a_handler(
    broker_url: str, names: dict[str, Any], queue_name: QueueName, style: str
) -> None:
    app, outer, inner, ran = otter.Otter(**names), queue_name("outer"), queue_name("inner"), []
    if style == "sync":

        @app.add_task(outer)
        def forward(comm: Any, body: Any) -> None:
            comm.task(inner, body + 1).result()

    else:

        @app.add_task(outer)
        async def forward_async(comm: Any, body: Any) -> None:
            await comm.task(inner, body + 1)

    app.add_task(inner)(lambda comm, body: ran.append(body))
    with serve(app, broker_url, names) as server, otter.Client(broker_url, **names) as client:
        client.task(outer, 1)
        server.handled.wait(inner)
    assert ran == [2]


def test_kiwipys_task_send_with_a_name_where_the_body_goes_is_refused_with_the_fix(
    broker_url: str, names: dict[str, Any], queue_name: QueueName
) -> None:
    app, outer, errors = otter.Otter(**names), queue_name("outer"), []

    @app.add_task(outer)
    def misuse(comm: Any, body: Any) -> None:
        try:
            comm.task_send("nested.t", 5)
        except TypeError as exc:
            errors.append(str(exc))

    with serve(app, broker_url, names) as server, otter.Client(broker_url, **names) as client:
        client.task(outer, None)
        server.handled.wait(outer)
    assert len(errors) == 1 and "comm.task('nested.t', body)" in errors[0]


def test_the_first_send_to_a_queue_nobody_consumes_is_reported_once(
    broker_url: str, names: dict[str, Any], queue_name: QueueName, caplog: pytest.LogCaptureFixture
) -> None:
    typo, served_name = queue_name("biling.charge"), queue_name("billing.charge")
    app, ran = otter.Otter(**names), threading.Event()
    app.add_task(served_name)(lambda comm, body: ran.set())
    caplog.set_level(logging.WARNING, logger="otter.comm")
    with serve(app, broker_url, names), otter.Client(broker_url, **names) as client:
        client.task(typo, 1)
        client.task(typo, 2)
        client.task(served_name, 3)
        assert ran.wait(5)
    reports = [r.getMessage() for r in caplog.records if "no worker consumes" in r.getMessage()]
    assert reports == [f"no worker consumes the task {typo!r} yet: it waits in its queue until one starts (is the "
                       f"name right, and is the service that handles it running?)"]


def test_an_oversized_or_unencodable_task_is_refused_by_its_sender_and_never_sent(
    broker_url: str, names: dict[str, Any], queue_name: QueueName
) -> None:
    app, work, ran = otter.Otter(**names), queue_name("work"), []
    app.add_task(work)(lambda comm, body: ran.append(body))
    with serve(app, broker_url, names) as server, otter.Client(broker_url, MAX_MESSAGE_SIZE=1000, **names) as client:
        with pytest.raises(otter.MessageTooLarge, match="the task body encodes to"):
            client.task(work, "x" * 2000)
        with pytest.raises(otter.MessageError, match=r"the task body\['at'\] is a \S*object"):
            client.task(work, {"at": object()})
        with pytest.raises(otter.MessageError, match=r"the task body\['ratio'\] is nan"):
            client.task(work, {"ratio": float("nan")})
        client.task(work, "fits")  # the barrier: had any of the above been sent, it would have run first
        server.handled.wait(work)
    assert ran == ["fits"]
