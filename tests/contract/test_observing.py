"""What a test and an operator see of handled messages, on both transports: ``wait_handled``, ``raise_errors``, and
log levels that mean something (a handler's failure is an ERROR with its traceback, bad input a WARNING)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pytest

import otter
from otter.errors import DeadlineExceeded

from .conftest import served

QueueName = Callable[[str], str]

# ``probe`` deletes what each test declared on RabbitMQ (its names and its task queues) when it ends.
pytestmark = pytest.mark.usefixtures("probe")


def test_wait_handled_returns_once_the_tasks_and_broadcasts_sent_are_handled(
    broker_url: str, names: dict[str, Any], queue_name: QueueName, client: otter.Client
) -> None:
    app, work, ran = otter.Otter(**names), queue_name("work"), []
    app.add_task(work)(lambda comm, body: ran.append(body))
    app.add_broadcast(["news.*"])(lambda comm, body, sender, subject, correlation_id: ran.append(subject))
    with served(app, broker_url, names) as server:
        for n in range(3):
            client.task(work, n)
        client.broadcast("y", subject="weather.today")  # matches no filter: never handled
        client.broadcast("x", subject="news.today")  # sent after it, so handling it is the barrier
        events = server.handled.wait(work, 3)
        assert [event.outcome for event in events] == ["ok"] * 3
        assert sorted(x for x in ran if isinstance(x, int)) == [0, 1, 2]  # handled means run: no sleep needed
        [news] = server.handled.wait("news.*")
        assert "news.today" in ran
    assert news.kind == "broadcast" and news.final and news.error is None
    assert "weather.today" not in ran


def test_a_retried_task_is_handled_only_once_its_last_run_ends(
    broker_url: str, names: dict[str, Any], queue_name: QueueName, client: otter.Client
) -> None:
    app, work, runs = otter.Otter(**names), queue_name("flaky"), []

    @app.add_task(work, max_retries=1, backoff=0.05, jitter=False)
    def flaky(comm: Any, body: Any) -> None:
        runs.append(body)
        if len(runs) == 1:
            raise OSError("first run fails")

    with served(app, broker_url, names) as server:
        client.task(work, "x")
        [event] = server.handled.wait(work)
        assert len(runs) == 2 and event.outcome == "ok" and event.final
        retried = [e for e in server.handled.handled if not e.final]
        assert len(retried) == 1 and isinstance(retried[0].error, OSError)


def test_wait_handled_says_how_far_it_got_when_time_runs_out(
    broker_url: str, names: dict[str, Any], queue_name: QueueName
) -> None:
    app, work = otter.Otter(**names), queue_name("never")
    app.add_task(work)(lambda comm, body: None)
    with served(app, broker_url, names) as server, pytest.raises(DeadlineExceeded, match="0 of 1"):
        server.handled.wait(work, timeout=0.2)


@pytest.mark.parametrize("kind", ["task", "broadcast"])
def test_raise_errors_re_raises_a_task_or_broadcast_handlers_error_in_the_test(
    broker_url: str, names: dict[str, Any], queue_name: QueueName, client: otter.Client, kind: str
) -> None:
    app, work = otter.Otter(**names), queue_name("boom")

    def boom(comm: Any, *args: Any) -> None:
        raise LookupError(f"{kind} handler failed")

    if kind == "task":
        app.add_task(work)(boom)
        route = work
    else:
        app.add_broadcast(["alarm.*"])(boom)
        route = "alarm.*"
    with served(app, broker_url, names, raise_errors=True) as server:
        if kind == "task":
            client.task(work, 1)
        else:
            client.broadcast(1, subject="alarm.fire")
        with pytest.raises(LookupError, match=f"{kind} handler failed"):
            server.handled.wait(route)


def test_the_log_tells_a_handler_failure_from_bad_input_and_from_a_handled_error(
    broker_url: str, names: dict[str, Any], client: otter.Client, caplog: pytest.LogCaptureFixture
) -> None:
    app = otter.Otter(**names)

    @app.add_rpc("svc.crash")
    def crash(comm: Any, data: Any) -> None:
        raise ZeroDivisionError("crashed")

    @app.add_rpc("svc.picky")
    def picky(comm: Any, data: Any) -> None:
        raise otter.ValidationError({"name": ["required"]})

    @app.add_rpc("svc.lookup")
    def lookup(comm: Any, data: Any) -> None:
        raise KeyError(data)

    @app.errorhandler(KeyError)
    def not_found(ctx: Any, exc: KeyError) -> dict[str, str]:
        return {"error": "not found"}

    caplog.set_level(logging.INFO, logger="otter")
    with served(app, broker_url, names) as server:  # not debug: the traceback must be in the log anyway
        with pytest.raises(otter.RemoteError):
            client.rpc("svc.crash", 1).result(timeout=5)
        with pytest.raises(otter.ValidationError):
            client.rpc("svc.picky", 1).result(timeout=5)
        assert client.rpc("svc.lookup", "k").result(timeout=5) == {"error": "not found"}
        server.handled.wait("svc.crash"), server.handled.wait("svc.picky"), server.handled.wait("svc.lookup")

    records = [r for r in caplog.records if r.name.startswith("otter") and "svc." in r.getMessage()]
    crashed = [r for r in records if "svc.crash" in r.getMessage()]
    assert [(r.levelno, r.exc_info is not None and r.exc_info[0] is ZeroDivisionError) for r in crashed] == [
        (logging.ERROR, True)
    ]
    assert "ZeroDivisionError" in caplog.text and "Traceback" in caplog.text
    rejected = [r for r in records if "svc.picky" in r.getMessage()]
    assert [(r.levelno, r.exc_info) for r in rejected] == [(logging.WARNING, None)]
    assert not [r for r in records if "svc.lookup" in r.getMessage() and r.levelno >= logging.WARNING]
