"""Broadcasts on both transports: delivery with metadata, AMQP-topic subject filters, isolation of failures.

To prove a broadcast did *not* reach a handler without sleeping, each app also registers a catch-all ``#`` handler
last: a delivery runs its matching handlers one after another in registration order, so once the catch-all has seen
a subject every other handler has already decided about it.
"""

from __future__ import annotations

import asyncio
import queue
from typing import Any

import otter

from .conftest import Serve


class Recorder:
    """Broadcast handlers that record what they receive, one queue per handler."""

    def __init__(self, app: otter.Otter) -> None:
        self.app = app
        self.seen: dict[str, queue.Queue[Any]] = {}

    def listen(self, label: str, filters: list[str]) -> None:
        seen = self.seen[label] = queue.Queue()

        @self.app.add_broadcast(filters)
        def record(comm: Any, body: Any, sender: Any, subject: str | None, correlation_id: Any) -> None:
            seen.put(subject)

    def catch_all(self) -> None:
        self.listen("all", ["#"])

    def wait_all(self, subjects: list[str]) -> None:
        received = [self.seen["all"].get(timeout=5) for _ in subjects]
        assert sorted(received) == sorted(subjects)

    def received(self, label: str) -> list[str | None]:
        items = []
        while not self.seen[label].empty():
            items.append(self.seen[label].get_nowait())
        return items


def test_broadcast_reaches_handler_with_metadata(serve: Serve, names: dict[str, Any]) -> None:
    app = otter.Otter(**names)
    got: queue.Queue[Any] = queue.Queue()

    @app.add_broadcast(["message.*"])
    def example_broadcast(comm: Any, body: Any, sender: Any, subject: str, correlation_id: Any) -> None:
        got.put((body, sender, subject, correlation_id))

    client = serve(app)
    client.broadcast("otter", subject="message.send")
    assert got.get(timeout=5) == ("otter", None, "message.send", None)
    client.broadcast({"k": [1, 2]}, subject="message.other", sender="tests", correlation_id="c-1")
    assert got.get(timeout=5) == ({"k": [1, 2]}, "tests", "message.other", "c-1")


def test_star_matches_exactly_one_word(serve: Serve, names: dict[str, Any]) -> None:
    app = otter.Otter(**names)
    recorder = Recorder(app)
    recorder.listen("star", ["message.*"])
    recorder.catch_all()
    client = serve(app)

    subjects = ["message.a.b", "messages.x", "message", "xmessage.send", "message.send"]
    for subject in subjects:
        client.broadcast("hi", subject=subject)
    recorder.wait_all(subjects)
    assert recorder.received("star") == ["message.send"]


def test_several_filters_per_handler(serve: Serve, names: dict[str, Any]) -> None:
    app = otter.Otter(**names)
    recorder = Recorder(app)
    recorder.listen("multi", ["user.*", "audit.#"])
    recorder.catch_all()
    client = serve(app)

    subjects = ["user.created", "audit", "audit.login.failed", "user.a.b", "order.created"]
    for subject in subjects:
        client.broadcast(None, subject=subject)
    recorder.wait_all(subjects)
    assert sorted(map(str, recorder.received("multi"))) == ["audit", "audit.login.failed", "user.created"]


def test_broadcast_without_subject_reaches_no_filter(serve: Serve, names: dict[str, Any]) -> None:
    app = otter.Otter(**names)
    recorder = Recorder(app)
    recorder.listen("star", ["*"])
    recorder.catch_all()
    client = serve(app, CONCURRENCY=1)  # one delivery at a time, in order: the marker comes after the nameless

    client.broadcast("no subject")
    client.broadcast("marker", subject="marker")
    recorder.wait_all(["marker"])
    assert recorder.received("star") == ["marker"]
    assert recorder.received("all") == []


def test_failing_handler_does_not_stop_the_others(serve: Serve, names: dict[str, Any]) -> None:
    app = otter.Otter(**names)
    got: queue.Queue[Any] = queue.Queue()

    @app.add_broadcast("news.*")
    def broken(comm: Any, body: Any, sender: Any, subject: str, correlation_id: Any) -> None:
        raise RuntimeError("broken subscriber")

    @app.add_broadcast("news.*")
    async def broken_async(comm: Any, body: Any, sender: Any, subject: str, correlation_id: Any) -> None:
        await asyncio.sleep(0)
        raise RuntimeError("broken async subscriber")

    @app.add_broadcast(["news.#"])
    def healthy(comm: Any, body: Any, sender: Any, subject: str, correlation_id: Any) -> None:
        got.put(body)

    client = serve(app)
    client.broadcast("first", subject="news.today")
    assert got.get(timeout=5) == "first"
    client.broadcast("second", subject="news.today")  # and the consumer is still alive
    assert got.get(timeout=5) == "second"
