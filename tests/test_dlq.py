"""Dead-letter inspection, replay and purge (``otter.dlq``), on both transports.

Dead letters are made the way they happen in production: tasks whose handler fails, and a task whose body cannot
be read. Listing must not consume them; replay must send them back to their own queue as fresh tasks (only the
chosen task's, at most ``limit``); purge must empty the queue and say how many it removed.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from helpers_process import wait_until
from otter import Client, MessageError, Otter
from otter.dlq import DeadLetter, list_dead_letters, list_dead_letters_async, purge, replay
from otter.testing import ServedApp
from rawbroker import RawBroker, unique


class Service:
    """Two failing tasks; ``healed`` makes them succeed, as after a fix is deployed."""

    def __init__(self, names: dict[str, Any]) -> None:
        self.alpha, self.beta = unique("alpha"), unique("beta")
        self.app = Otter(**names)
        self.healed = threading.Event()
        self.runs: list[tuple[str, Any]] = []
        self._lock = threading.Lock()
        for name in (self.alpha, self.beta):
            self.app.add_task(name)(self._handler(name))

    def _handler(self, name: str) -> Any:
        def handler(comm: Any, body: Any) -> None:
            with self._lock:
                self.runs.append((name, body))
            if not self.healed.is_set():
                raise LookupError(f"no record {body!r}")

        return handler

    def runs_of(self, name: str) -> list[Any]:
        with self._lock:
            return [body for task, body in self.runs if task == name]


@pytest.fixture
def service(broker_url: str, names: dict[str, Any]) -> Iterator[Service]:
    service = Service(names)
    yield service
    with RawBroker.open(broker_url, names) as raw:
        raw.delete(service.alpha, service.beta)


def letters_when(url: str, names: dict[str, Any], count: int) -> list[DeadLetter]:
    return wait_until(lambda: len(letters := list_dead_letters(url, names)) == count and letters,
                      what=f"exactly {count} dead letters")


def test_list_shows_each_dead_letter_with_its_reason_and_leaves_them_in_place(
    broker_url: str, names: dict[str, Any], service: Service
) -> None:
    with ServedApp(service.app, broker_url, **names), Client(broker_url, **names) as client, \
            RawBroker.open(broker_url, names) as raw:
        client.task(service.alpha, "a1")
        letters_when(broker_url, names, 1)  # one at a time, so the order below is known
        raw.task(service.beta, b"\xff\xfe not json", content_type="application/json")
        letters_when(broker_url, names, 2)
        first, second = list_dead_letters(broker_url, names)
        assert len(list_dead_letters(broker_url, names, limit=1)) == 1
        assert len(list_dead_letters(broker_url, names)) == 2  # listing twice consumed nothing

    assert (first.queue, first.task, first.reason) == (service.alpha, service.alpha, "handler-error")
    assert (first.error_type, first.error_message, first.attempts) == ("LookupError", "no record 'a1'", 1)
    assert first.body == b'["a1",true]' and first.size == len(first.body)  # kiwipy's [body, no_reply] on the wire
    assert first.body_preview == '"a1"' and first.payload == "a1"  # the task body, as its handler got it
    assert (second.queue, second.reason, second.error_type) == (service.beta, "bad-message", "MessageError")
    assert "not valid JSON" in (second.error_message or "")
    assert second.body == b"\xff\xfe not json" and second.body_preview.endswith(" not json")
    with pytest.raises(MessageError, match="not JSON"):
        second.payload  # noqa: B018


def test_replay_sends_only_the_chosen_tasks_back_as_fresh_tasks_and_removes_them(
    broker_url: str, names: dict[str, Any], service: Service
) -> None:
    with ServedApp(service.app, broker_url, **names), Client(broker_url, **names) as client:
        for body in ("a1", "a2", "a3"):
            client.task(service.alpha, body)
        client.task(service.beta, "b1")
        letters_when(broker_url, names, 4)
        service.healed.set()

        assert replay(broker_url, names, task=service.alpha, limit=2) == 2
        wait_until(lambda: len(service.runs_of(service.alpha)) == 5, what="two replayed runs")
        remaining = letters_when(broker_url, names, 2)
        assert sorted(letter.queue or "" for letter in remaining) == sorted([service.alpha, service.beta])

        assert replay(broker_url, names, task="no-such-task") == 0
        assert replay(broker_url, names, where=lambda letter: letter.payload == "b1") == 1
        wait_until(lambda: len(service.runs_of(service.beta)) == 2, what="the replayed beta run")
        [alpha_left] = letters_when(broker_url, names, 1)
        assert alpha_left.queue == service.alpha
        assert replay(broker_url, names) == 1
        assert wait_until(lambda: len(service.runs_of(service.alpha)) == 6)
        assert list_dead_letters(broker_url, names) == []

    assert sorted(service.runs_of(service.alpha)[3:]) == ["a1", "a2", "a3"]


def test_a_replayed_task_starts_its_attempts_again(broker_url: str, names: dict[str, Any]) -> None:
    name = unique("attempts")
    app = Otter(**names)
    seen: list[Any] = []

    @app.before_handler
    def record(ctx: Any) -> None:
        seen.append(dict(ctx.headers or {}))

    @app.add_task(name, max_retries=1, backoff=0.05, jitter=False)
    def job(comm: Any, body: Any) -> None:
        if len(seen) <= 2:
            raise OSError("down")

    try:
        with ServedApp(app, broker_url, **names), Client(broker_url, **names) as client:
            client.task(name, "x")
            (letter,) = letters_when(broker_url, names, 1)
            assert letter.attempts == 2
            assert replay(broker_url, names) == 1
            wait_until(lambda: len(seen) == 3, what="the replayed run")
        assert not any(key.startswith("x-otter-") for key in seen[2])
    finally:
        with RawBroker.open(broker_url, names) as raw:
            raw.delete(name)


def test_purge_removes_every_dead_letter_and_counts_them(
    broker_url: str, names: dict[str, Any], service: Service
) -> None:
    assert purge(broker_url, names) == 0
    with ServedApp(service.app, broker_url, **names), Client(broker_url, **names) as client:
        for body in range(3):
            client.task(service.alpha, body)
        letters_when(broker_url, names, 3)
    assert purge(broker_url, names) == 3
    assert list_dead_letters(broker_url, names) == []
    assert purge(broker_url, names) == 0


def test_the_async_api_reads_the_same_letters(broker_url: str, names: dict[str, Any], service: Service) -> None:
    with ServedApp(service.app, broker_url, **names), Client(broker_url, **names) as client:
        client.task(service.beta, "b")
        (letter,) = letters_when(broker_url, names, 1)
    assert asyncio.run(list_dead_letters_async(broker_url, names)) == [letter]


def test_a_negative_limit_is_refused(broker_url: str, names: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="limit"):
        list_dead_letters(broker_url, names, limit=-1)
    with pytest.raises(ValueError, match="limit"):
        replay(broker_url, names, limit=-1)
