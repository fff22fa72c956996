"""Task ids on every transport: the sender gets the id, the handler and its hooks see it (with the attempt number),
retries keep it, dead letters carry it, and ``otter dlq replay --id`` replays exactly those."""

from __future__ import annotations

import asyncio
import queue
import re
from collections.abc import Callable
from typing import Any

import pytest

import otter
from otter import dlq
from otter.testing import ServedApp

from .conftest import Serve, add_recorder, task_context

QueueName = Callable[[str], str]
HEX_ID = re.compile(r"[0-9a-f]{32}")


def test_client_task_returns_the_id_the_handler_and_its_hooks_see(
    serve: Serve, names: dict[str, Any], queue_name: QueueName
) -> None:
    app = otter.Otter(**names)
    work = queue_name("work")
    seen: queue.Queue[tuple[str, Any, Any]] = queue.Queue()

    @app.before_handler
    def hook(ctx: otter.HandlerContext) -> None:
        seen.put(("hook", ctx.task_id, ctx.attempt))

    @app.add_task(work)
    def handler(comm: Any, body: Any) -> None:
        context = task_context()
        seen.put(("handler", context.task_id, context.attempt))

    client = serve(app)
    task_id = client.task(work, {"n": 1})
    assert HEX_ID.fullmatch(task_id)
    assert seen.get(timeout=5) == ("hook", task_id, 1)
    assert seen.get(timeout=5) == ("handler", task_id, 1)

    chosen = client.task(work, {"n": 2}, task_id="order-42", wait=True)
    assert chosen == "order-42"
    assert seen.get(timeout=5) == ("hook", "order-42", 1)
    assert seen.get(timeout=5) == ("handler", "order-42", 1)
    assert client.task(5) != client.task(6)  # the seed's nameless form returns an id too, a new one each time


def test_async_client_and_comm_give_the_id(
    serve: Serve, broker_url: str, names: dict[str, Any], queue_name: QueueName
) -> None:
    app = otter.Otter(**names)
    work, relay = queue_name("work"), queue_name("relay")
    seen: queue.Queue[tuple[Any, Any]] = queue.Queue()

    @app.add_task(work)
    async def handler(comm: Any, body: Any) -> None:
        context = task_context()
        seen.put((body, context.task_id))

    @app.add_task(relay)
    def relay_on(comm: Any, body: Any) -> None:
        future = comm.task(work, "nested")
        seen.put(("future", future.task_id))
        seen.put(("resolved", future.result()))

    client = serve(app)

    async def send() -> str:
        async with otter.AsyncClient(broker_url, **names) as async_client:
            return await async_client.task(work, "async")

    sent = asyncio.run(send())
    assert seen.get(timeout=5) == ("async", sent)
    client.task(relay, None)
    got = {seen.get(timeout=5) for _ in range(3)}
    [(_, nested_id)] = [item for item in got if item[0] == "future"]
    assert got == {("future", nested_id), ("resolved", nested_id), ("nested", nested_id)}


def test_a_retry_keeps_the_id_and_counts_the_attempt(
    serve: Serve, names: dict[str, Any], queue_name: QueueName
) -> None:
    app = otter.Otter(**names)
    flaky = queue_name("flaky")
    runs = add_recorder(app, flaky, fails=lambda context: context.attempt < 3, max_retries=2, backoff=0.05,
                        jitter=False)
    client = serve(app)
    task_id = client.task(flaky, "x")
    assert [runs.get(timeout=10) for _ in range(3)] == [("x", task_id, 1), ("x", task_id, 2), ("x", task_id, 3)]


def test_dead_letters_carry_the_id_and_replay_picks_them_by_id(
    broker_url: str, names: dict[str, Any], queue_name: QueueName
) -> None:
    app = otter.Otter(**names)
    failing = queue_name("failing")
    runs = add_recorder(app, failing, fails=lambda context: True)

    with ServedApp(app, broker_url, **names, SHUTDOWN_GRACE=5.0) as server, otter.Client(broker_url, **names) as client:
        ids = [client.task(failing, n) for n in range(3)]
        assert {event.outcome for event in server.handled.wait(failing, 3)} == {"error LookupError, dead-lettered"}
        assert sorted(runs.get_nowait() for _ in range(3)) == [(n, ids[n], 1) for n in range(3)]
        assert sorted(letter.task_id for letter in dlq.list_dead_letters(broker_url, names)) == sorted(ids)

        assert dlq.replay(broker_url, names, ids=[ids[0], ids[2]]) == 2
        server.handled.wait(failing, 5)  # they ran again, failed again and came back with their ids
        assert sorted(runs.get_nowait() for _ in range(2)) == [(0, ids[0], 1), (2, ids[2], 1)]  # attempts anew
        assert runs.empty()
        assert sorted(letter.task_id for letter in dlq.list_dead_letters(broker_url, names)) == sorted(ids)


@pytest.mark.parametrize("bad", ["", "x" * 256, 42])
def test_a_bad_task_id_is_refused_before_sending(
    serve: Serve, names: dict[str, Any], queue_name: QueueName, bad: Any
) -> None:
    app = otter.Otter(**names)
    work = queue_name("work")
    app.add_task(work)(lambda comm, body: None)
    client = serve(app)
    with pytest.raises(ValueError, match="task_id must be a non-empty string"):
        client.task(work, 1, task_id=bad)
