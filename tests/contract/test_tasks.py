"""Tasks on both transports: named and nameless routing, at-least-once running, dead-lettering of failures."""

from __future__ import annotations

import asyncio
import queue
from collections.abc import Callable
from typing import Any

import orjson
import pytest

import otter
from rawbroker import RawBroker

from .conftest import Serve

QueueName = Callable[[str], str]


def record_into(app: otter.Otter, name: str, seen: queue.Queue[Any], *, style: str = "sync", **options: Any) -> None:
    if style == "sync":
        app.add_task(name, **options)(lambda comm, body: seen.put((name, body)))
    else:

        async def record(comm: Any, body: Any) -> None:
            await asyncio.sleep(0)
            seen.put((name, body))

        app.add_task(name, **options)(record)


@pytest.mark.parametrize("style", ["sync", "async"])
def test_named_task_runs_once_with_its_body(
    serve: Serve, names: dict[str, Any], queue_name: QueueName, probe: RawBroker, style: str
) -> None:
    app = otter.Otter(**names)
    work = queue_name("work")
    seen: queue.Queue[Any] = queue.Queue()
    record_into(app, work, seen, style=style)
    client = serve(app, CONCURRENCY=1)  # one at a time: a repeated first task would show up before the second

    client.task(work, {"n": 1})
    client.task(work, {"n": 2})
    assert [seen.get(timeout=5), seen.get(timeout=5)] == [(work, {"n": 1}), (work, {"n": 2})]
    assert seen.empty()


def test_nameless_task_goes_to_the_only_task_handler(
    serve: Serve, names: dict[str, Any], queue_name: QueueName
) -> None:
    app = otter.Otter(**names)
    only = queue_name("only")
    seen: queue.Queue[Any] = queue.Queue()
    record_into(app, only, seen)
    client = serve(app)

    client.task(5)  # the seed's form
    assert seen.get(timeout=5) == (only, 5)
    client.task(only, "named")
    assert seen.get(timeout=5) == (only, "named")


def test_nameless_task_goes_to_the_default_handler(serve: Serve, names: dict[str, Any], queue_name: QueueName) -> None:
    app = otter.Otter(**names)
    first, fallback = queue_name("first"), queue_name("fallback")
    seen: queue.Queue[Any] = queue.Queue()
    record_into(app, first, seen)
    record_into(app, fallback, seen, default=True)
    client = serve(app)

    client.task({"nameless": True})
    assert seen.get(timeout=5) == (fallback, {"nameless": True})
    client.task(first, "named")
    assert seen.get(timeout=5) == (first, "named")


def test_async_client_sends_tasks(serve: Serve, broker_url: str, names: dict[str, Any], queue_name: QueueName) -> None:
    app = otter.Otter(**names)
    work = queue_name("work")
    seen: queue.Queue[Any] = queue.Queue()
    record_into(app, work, seen)
    serve(app)

    async def send() -> None:
        async with otter.AsyncClient(broker_url, **names) as client:
            await client.task(work, "named")
            await client.task(body="nameless")  # a lone string would be a task name

    asyncio.run(send())
    assert sorted([seen.get(timeout=5), seen.get(timeout=5)]) == [(work, "named"), (work, "nameless")]


@pytest.mark.parametrize("style", ["sync", "async"])
def test_failing_task_is_dead_lettered_with_the_reason(
    serve: Serve, names: dict[str, Any], queue_name: QueueName, probe: RawBroker, style: str
) -> None:
    app = otter.Otter(**names)
    work = queue_name("work")
    attempts: queue.Queue[Any] = queue.Queue()

    if style == "sync":

        @app.add_task(work)
        def fail(comm: Any, body: Any) -> None:
            attempts.put(body)
            if body == "bad":
                raise ValueError("cannot do it")

    else:

        @app.add_task(work)
        async def fail_async(comm: Any, body: Any) -> None:
            attempts.put(body)
            if body == "bad":
                raise ValueError("cannot do it")

    client = serve(app)
    client.task(work, "bad")
    [dead] = probe.dead_letters(1)
    assert dead.headers["x-otter-reason"] == "handler-error"
    assert dead.headers["x-otter-error-type"] == "ValueError"
    assert "cannot do it" in dead.headers["x-otter-error-message"]
    assert dead.headers["x-otter-queue"] == work
    assert orjson.loads(dead.body) == ["bad", True]  # the original message, as kiwipy framed it
    assert attempts.get(timeout=5) == "bad"

    client.task(work, "good")  # the worker keeps going
    assert attempts.get(timeout=5) == "good"
