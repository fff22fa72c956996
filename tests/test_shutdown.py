"""SIGTERM on a real ``otter run`` process with tasks in flight on the real RabbitMQ: nothing is lost.

The service stops taking messages, lets the running handlers finish within ``--grace``, acks what finished,
returns the rest to the queue and exits 0. ``tests/apps/cli_slow.py`` writes ``start N <time>`` and ``done N``.
"""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aio_pika
import pytest

from conftest import unique_names
from helpers_process import AppProcess, delete_names, wait_until
from otter import Client

SLOW_APP = "tests/apps/cli_slow.py"
# The service's environment, its task queue, its record file and the unique names a client needs.
ServiceSetup = tuple[dict[str, str], str, Path, dict[str, Any]]


def queue_depth(url: str, queue: str) -> int:
    """Messages ready in ``queue``, as the broker counts them."""

    async def depth() -> int:
        connection = await aio_pika.connect(url)
        async with connection:
            channel = await connection.channel()
            declared = await channel.declare_queue(queue, passive=True)
            return int(declared.declaration_result.message_count or 0)

    return asyncio.run(depth())


def records(path: Path) -> dict[str, dict[int, float]]:
    """``{"start": {n: time}, "done": {n: time}}`` from the complete lines of the record file."""
    found: dict[str, dict[int, float]] = {"start": {}, "done": {}}
    if path.exists():
        text = path.read_text()
        for line in text[: text.rfind("\n") + 1].splitlines():
            what, n, at = line.split()
            assert int(n) not in found[what], f"{what} {n} recorded twice"
            found[what][int(n)] = float(at)
    return found


@pytest.fixture
def slow_service(amqp_url: str, tmp_path: Path) -> Iterator[ServiceSetup]:
    names = unique_names("shutdown")
    queue = f"shutdown-{uuid.uuid4().hex[:10]}.slow"
    record = tmp_path / "record.txt"
    env = {f"OTTER_{key}": value for key, value in names.items()}
    env.update(OTTER_BROKER_URL=amqp_url, CLI_TASK_QUEUE=queue, CLI_RECORD_FILE=str(record))
    yield env, queue, record, names
    delete_names(amqp_url, names, [queue])


@pytest.mark.amqp
def test_sigterm_finishes_running_tasks_and_returns_the_rest_to_the_queue(
    amqp_url: str, slow_service: ServiceSetup
) -> None:
    env, queue, record, names = slow_service
    total = 8
    with Client(amqp_url, **names) as client:
        for n in range(total):
            client.task(queue, {"n": n, "seconds": 1.0})
    with AppProcess("-m", "otter", "run", SLOW_APP, "--concurrency", "2", "--grace", "10", env=env) as process:
        wait_until(lambda: len(records(record)["start"]) >= 2, what="two tasks running")
        signalled = time.time()
        assert process.stop(signal.SIGTERM) == 0
    started, done = records(record)["start"], records(record)["done"]
    assert set(started) == set(done), "a handler that was running when SIGTERM came did not finish"
    assert all(at < signalled + 0.5 for at in started.values()), "a handler started after SIGTERM"
    remaining = queue_depth(amqp_url, queue)
    assert remaining > 0
    assert len(done) + remaining == total  # finished ones were acked, the others are back: none lost, none twice
    assert "stopping: finishing running handlers" in process.output


@pytest.mark.amqp
def test_a_handler_longer_than_the_grace_period_returns_its_task_to_the_queue(
    amqp_url: str, slow_service: ServiceSetup
) -> None:
    env, queue, record, names = slow_service
    with Client(amqp_url, **names) as client:
        client.task(queue, {"n": 0, "seconds": 30})
    with AppProcess("-m", "otter", "run", SLOW_APP, "--grace", "0.3", env=env) as process:
        wait_until(lambda: 0 in records(record)["start"], what="the task running")
        signalled = time.monotonic()
        assert process.stop(signal.SIGTERM, timeout=15) == 0
        stopped_after = time.monotonic() - signalled
    assert stopped_after < 10, f"took {stopped_after:.1f}s to stop: it waited for the handler"
    assert records(record)["done"] == {}
    assert queue_depth(amqp_url, queue) == 1
    assert "did not finish within 0.3s; returning it to the queue" in process.output
