"""SIGTERM on a real ``otter run`` process with tasks in flight on the real RabbitMQ: nothing is lost.

The service stops taking messages, lets the running handlers finish within ``--grace``, acks what finished,
returns the rest to the queue and exits 0. ``tests/apps/cli_slow.py`` writes ``start N`` and ``done N`` marker
lines, and its tasks run until the test creates the release file: the tests wait for markers, never for a clock.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import unique_names
from helpers_process import AppProcess, wait_until
from otter import Client
from rawbroker import RawBroker

SLOW_APP = "tests/apps/cli_slow.py"
# The service's environment, its task queue, its record file, its release file and the unique names a client needs.
ServiceSetup = tuple[dict[str, str], str, Path, Path, dict[str, Any]]


def records(path: Path) -> dict[str, set[int]]:
    """``{"start": {n, ...}, "done": {n, ...}}`` from the complete marker lines of the record file."""
    found: dict[str, set[int]] = {"start": set(), "done": set()}
    if path.exists():
        text = path.read_text()
        for line in text[: text.rfind("\n") + 1].splitlines():
            what, n = line.split()
            assert int(n) not in found[what], f"{what} {n} recorded twice"
            found[what].add(int(n))
    return found


@pytest.fixture
def slow_service(amqp_url: str, tmp_path: Path) -> Iterator[ServiceSetup]:
    names = unique_names("shutdown")
    queue = f"shutdown-{uuid.uuid4().hex[:10]}.slow"
    record, release = tmp_path / "record.txt", tmp_path / "release"
    env = {f"OTTER_{key}": value for key, value in names.items()}
    env.update(OTTER_BROKER_URL=amqp_url, CLI_TASK_QUEUE=queue, CLI_RECORD_FILE=str(record),
               CLI_RELEASE_FILE=str(release))
    yield env, queue, record, release, names
    release.touch()  # no task left holding a slot, whatever the test did
    with RawBroker.open(amqp_url, names) as raw:
        raw.delete(queue)


@pytest.mark.amqp
def test_sigterm_finishes_running_tasks_and_returns_the_rest_to_the_queue(
    amqp_url: str, slow_service: ServiceSetup
) -> None:
    env, queue, record, release, names = slow_service
    total = 8
    with Client(amqp_url, **names) as client:
        for n in range(total):
            client.task(queue, {"n": n})
    with AppProcess("-m", "otter", "run", SLOW_APP, "--concurrency", "2", "--grace", "30", env=env) as process:
        wait_until(lambda: len(records(record)["start"]) == 2, what="two tasks running")
        running = records(record)["start"]  # both slots held until the release: nothing else can start
        os.kill(process.pid, signal.SIGTERM)
        process.wait_for("stopping: finishing running handlers")
        release.touch()  # the running tasks end only now, after the worker has stopped taking new ones
        assert process.stop(signal.SIGTERM) == 0
    assert records(record) == {"start": running, "done": running}, "a task started after SIGTERM, or was cut off"
    # The finished ones were acked, the others are back: none lost, none twice.
    with RawBroker.open(amqp_url) as raw:
        assert raw.depth(queue) == total - len(running)


@pytest.mark.amqp
def test_a_handler_longer_than_the_grace_period_returns_its_task_to_the_queue(
    amqp_url: str, slow_service: ServiceSetup
) -> None:
    env, queue, record, _, names = slow_service
    with Client(amqp_url, **names) as client:
        client.task(queue, {"n": 0})
    with AppProcess("-m", "otter", "run", SLOW_APP, "--grace", "0.3", env=env) as process:
        wait_until(lambda: 0 in records(record)["start"], what="the task running")
        signalled = time.monotonic()
        assert process.stop(signal.SIGTERM, timeout=15) == 0  # the task holds on until the release, never given
        stopped_after = time.monotonic() - signalled
    assert stopped_after < 10, f"took {stopped_after:.1f}s to stop: it waited for the handler"
    assert records(record)["done"] == set()
    with RawBroker.open(amqp_url) as raw:
        assert raw.depth(queue) == 1
    assert "did not finish within 0.3s; returning it to the queue" in process.output
