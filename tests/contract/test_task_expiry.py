"""No task expires silently: past ``TASK_MESSAGE_TTL`` the broker dead-letters it, and ``otter.dlq`` reads, lists
and replays such a letter like Otter's own. On every transport, for both queue types (a classic queue with a TTL of
its own is no longer kiwipy's, so it gets a dead-letter exchange too)."""

from __future__ import annotations

import queue
import time
from collections.abc import Callable
from typing import Any

import pytest

import otter
from otter import dlq, protocol
from otter.transports.base import Snapshot
from rawbroker import RawBroker

from .conftest import Serve

QueueName = Callable[[str], str]
TTL = 0.2  # seconds


def letters(url: str, config: dict[str, Any], count: int, timeout: float = 10.0) -> list[dlq.DeadLetter]:
    """The dead-letter queue's letters once there are ``count`` (the broker expires tasks on its own clock)."""
    deadline = time.monotonic() + timeout
    while True:
        found = dlq.list_dead_letters(url, config)
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


@pytest.mark.parametrize("queue_type", ["classic", "quorum"])
def test_a_task_nobody_takes_within_its_ttl_is_dead_lettered_as_expired(
    broker_url: str, names: dict[str, Any], queue_name: QueueName, probe: RawBroker, queue_type: str
) -> None:
    work = queue_name("unserved")
    with otter.Client(broker_url, TASK_QUEUE_TYPE=queue_type, TASK_MESSAGE_TTL=TTL, **names) as client:
        assert client.comm, client.error
        client.task(work, {"n": 1})
    [raw] = probe.dead_letters(1, timeout=10)
    letter = dlq.DeadLetter.from_delivery(Snapshot(raw.body, queue=probe.dead_letter_queue, headers=raw.headers))
    assert (letter.reason, letter.queue, letter.payload) == ("expired", work, {"n": 1})
    assert "TASK_MESSAGE_TTL" in (letter.error_message or "")
    assert probe.depth(work) == 0


def test_an_expired_task_is_listed_and_replayed_to_its_queue(
    broker_url: str, names: dict[str, Any], queue_name: QueueName, serve: Serve
) -> None:
    work = queue_name("late")
    config = {**names, "TASK_QUEUE_TYPE": "quorum", "TASK_MESSAGE_TTL": TTL}
    with otter.Client(broker_url, **config) as client:
        assert client.comm, client.error
        client.task(work, "late")
    [letter] = letters(broker_url, config, 1)
    assert (letter.reason, letter.queue, letter.task) == ("expired", work, None)

    app = otter.Otter(**config)
    seen: queue.Queue[Any] = queue.Queue()
    app.add_task(work)(lambda comm, body: seen.put(body))
    serve(app, **config)  # now someone takes it: the replayed task runs instead of expiring again
    assert dlq.replay(broker_url, config, task=work) == 1
    assert seen.get(timeout=5) == "late"
    assert dlq.list_dead_letters(broker_url, config) == []


def test_tasks_never_expire_without_a_ttl(
    broker_url: str, names: dict[str, Any], queue_name: QueueName, probe: RawBroker
) -> None:
    work = queue_name("patient")
    with otter.Client(broker_url, TASK_QUEUE_TYPE="quorum", TASK_MESSAGE_TTL=0, **names) as client:
        assert client.comm, client.error
        client.task(work, 1)
    if not broker_url.startswith("memory://"):
        arguments = protocol.task_queue_arguments("quorum", message_ttl_ms=None, delivery_limit=20,
                                                  dead_letter_queue=names["DEAD_LETTER_QUEUE"])
        assert "x-message-ttl" not in arguments
        assert probe.declare_queue(work, arguments) == 1  # the queue has exactly these arguments
    else:
        assert probe.depth(work) == 1


def test_retries_and_dead_letters_work_on_a_quorum_queue(
    serve: Serve, names: dict[str, Any], queue_name: QueueName, probe: RawBroker
) -> None:
    work = queue_name("flaky")
    app = otter.Otter(**names)
    runs: queue.Queue[Any] = queue.Queue()

    @app.add_task(work, queue_type="quorum", max_retries=1, backoff=0.05, jitter=False)
    def flaky(comm: Any, body: Any) -> None:
        runs.put(body)
        raise OSError(f"down ({body})")

    client = serve(app)
    client.task(work, "x")
    assert [runs.get(timeout=5), runs.get(timeout=5)] == ["x", "x"]  # the first run, then the retry
    [raw] = probe.dead_letters(1, timeout=5)
    letter = dlq.DeadLetter.from_delivery(Snapshot(raw.body, queue=probe.dead_letter_queue, headers=raw.headers))
    assert (letter.reason, letter.queue, letter.attempts) == ("retries-exhausted", work, 2)
    assert letter.error_type == "OSError"
