"""Task results on every transport: fire-and-forget stays the default; a caller who asks (``result=True``,
``comm.task_send(body, no_reply=False)``) gets the handler's final outcome, as kiwipy's task futures do."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import orjson
import pytest

import otter
from otter.testing import ServedApp
from rawbroker import RawBroker

from .conftest import Doubler, Serve, task_context

QueueName = Callable[[str], str]


def test_a_caller_who_asks_gets_the_result_and_its_task_id(doubler: Doubler) -> None:
    client, work, ids = doubler.client, doubler.name, doubler.ids
    future = client.task(work, 21, result=True)
    assert future.result(timeout=10) == 42
    assert ids.get(timeout=1) == future.task_id
    assert client.task(work, 5, result=True, task_id="mine").result(timeout=10) == 10
    assert ids.get(timeout=1) == "mine"


def test_the_caller_gets_the_typed_error_of_a_task_that_was_dead_lettered(
    serve: Serve, names: dict[str, Any], queue_name: QueueName
) -> None:
    app = otter.Otter(**names)
    work = queue_name("fails")
    runs: list[int] = []

    @app.add_task(work, max_retries=1, backoff=0.05, jitter=False)
    def fail(comm: Any, n: int) -> None:
        runs.append(n)
        raise LookupError(f"no order {n}")

    client = serve(app)
    with pytest.raises(otter.RemoteError, match="no order 7") as caught:
        client.task(work, 7, result=True).result(timeout=10)
    assert caught.value.remote_type == "LookupError"
    assert runs == [7, 7]  # one reply, after the retry: the first failure was not the outcome


def test_only_the_final_attempt_replies(serve: Serve, names: dict[str, Any], queue_name: QueueName) -> None:
    app = otter.Otter(**names)
    work = queue_name("flaky")

    @app.add_task(work, max_retries=2, backoff=0.05, jitter=False)
    def flaky(comm: Any, body: Any) -> str:
        context = task_context()
        if context.attempt < 3:
            raise ConnectionError("not yet")
        return f"done on attempt {context.attempt}"

    client = serve(app)
    assert client.task(work, None, result=True).result(timeout=10) == "done on attempt 3"


def test_fire_and_forget_stays_the_default_on_the_wire(
    broker_url: str, names: dict[str, Any], queue_name: QueueName, probe: RawBroker
) -> None:
    """Nobody consumes the queue: the messages are read as the broker holds them."""
    work = queue_name("unserved")
    with otter.Client(broker_url, **names) as client:
        task_id = client.task(work, {"n": 1}, wait=True)
        with_result = client.task(work, {"n": 2}, result=True, timeout=0.5)
        with pytest.raises(otter.DeadlineExceeded, match="no result from the task"):
            with_result.result()
    plain, asking = probe.take(work, 2)
    assert orjson.loads(plain.body) == [{"n": 1}, True] and plain.message_id == task_id and not plain.reply_to
    assert orjson.loads(asking.body) == [{"n": 2}, False] and asking.message_id == with_result.task_id
    assert asking.reply_to


def test_kiwipy_style_task_send_with_a_reply_gets_the_result_from_a_handler(
    broker_url: str, names: dict[str, Any], queue_name: QueueName
) -> None:
    app = otter.Otter(**names)
    relay, work = queue_name("relay"), queue_name("square")
    app.add_task(work)(lambda comm, n: n * n)

    @app.add_task(relay)
    async def ask(comm: Any, n: int) -> Any:
        return await comm.task_send(n, no_reply=False, name=work)

    with ServedApp(app, broker_url, **names, SHUTDOWN_GRACE=5.0), otter.Client(broker_url, **names) as client:
        assert client.task(relay, 9, result=True).result(timeout=10) == 81
        assert client.comm is not None
        assert client.comm.task_send(4, no_reply=True, name=work).result(timeout=10) is None  # kiwipy's: None


def test_async_client_asks_for_a_result(serve: Serve, broker_url: str, names: dict[str, Any],
                                        queue_name: QueueName) -> None:
    app = otter.Otter(**names)
    work = queue_name("upper")
    app.add_task(work)(lambda comm, text: text.upper())
    serve(app)

    async def ask() -> tuple[str, Any]:
        async with otter.AsyncClient(broker_url, **names) as client:
            future = await client.task(work, "otter", result=True)
            return future.task_id, await future

    task_id, value = asyncio.run(ask())
    assert value == "OTTER" and len(task_id) == 32
