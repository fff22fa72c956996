"""Edge cases a reviewer found, pinned on both transports: class-based async handlers, nested calls under full load,
an RPC cut off by shutdown, names the broker cannot take, and broadcasts kept within their message exchange."""

from __future__ import annotations

import queue
import threading
import time
from typing import Any

import pytest

import otter
from otter.testing import ServedApp, unique_names

from .conftest import Serve


class AsyncDouble:
    """A handler object whose ``__call__`` is a coroutine function."""

    def __init__(self, seen: queue.Queue[Any] | None = None) -> None:
        self.seen = seen

    async def __call__(self, comm: Any, data: Any) -> Any:
        if self.seen is not None:
            self.seen.put(data)
        return data * 2


def test_async_callable_objects_are_awaited(serve: Serve, queue_name: Any) -> None:
    app = otter.Otter()
    seen: queue.Queue[Any] = queue.Queue()
    task = queue_name("double")
    app.add_rpc("double")(AsyncDouble())
    app.add_task(task)(AsyncDouble(seen))
    client = serve(app)
    assert client.rpc("double", 21).result(timeout=10) == 42
    client.task(task, 5)
    assert seen.get(timeout=10) == 5


def test_nested_calls_do_not_starve_when_every_slot_is_busy(serve: Serve) -> None:
    app = otter.Otter()

    @app.add_rpc("outer")
    def outer(comm: Any, data: Any) -> Any:
        return comm.rpc_send("inner", data).result()

    @app.add_rpc("inner")
    def inner(comm: Any, data: Any) -> Any:
        return data + 1

    client = serve(app, CONCURRENCY=2, RPC_TIMEOUT=5)
    started = time.monotonic()
    calls = [client.rpc("outer", n) for n in range(4)]  # more outer calls than slots
    assert [call.result(timeout=10) for call in calls] == [1, 2, 3, 4]
    assert time.monotonic() - started < 4


def test_an_rpc_cut_off_by_shutdown_gets_an_error_reply(broker_url: str, names: dict[str, Any]) -> None:
    app = otter.Otter()
    entered = threading.Event()
    release = threading.Event()

    @app.add_rpc("slow")
    def slow(comm: Any, data: Any) -> Any:
        entered.set()
        release.wait(10)
        return "late"

    served = ServedApp(app, broker_url, **names, SHUTDOWN_GRACE=0.5).start()
    try:
        with otter.Client(broker_url, **names) as client:
            call = client.rpc("slow", None, timeout=20)
            assert entered.wait(10)
            started = time.monotonic()
            served.stop()
            with pytest.raises(otter.RemoteError, match="stopped before the call finished") as caught:
                call.result()
            assert caught.value.remote_type == "BrokerUnavailable"
            assert time.monotonic() - started < 10
    finally:
        release.set()
        served.stop()


@pytest.mark.parametrize("name", ["jobs.*", "has space", "x" * 300, "é"])
def test_names_the_broker_cannot_take_are_refused_before_sending(broker_url: str, names: dict[str, Any],
                                                                 name: str) -> None:
    with otter.Client(broker_url, **names) as client:
        with pytest.raises(otter.ConfigurationError, match="name must be"):
            client.task(name, 1)
        with pytest.raises(otter.ConfigurationError, match="name must be"):
            client.rpc(name, 1).result(timeout=5)
    with pytest.raises(otter.ConfigurationError, match="name must be"):
        otter.Otter().add_rpc(name)


def test_broadcasts_stay_within_their_message_exchange(broker_url: str, names: dict[str, Any]) -> None:
    other = unique_names("other")
    heard: dict[str, queue.Queue[Any]] = {"mine": queue.Queue(), "other": queue.Queue()}
    apps = []
    for key in heard:
        app = otter.Otter()
        app.add_broadcast("#")(lambda comm, body, sender, subject, cid, key=key: heard[key].put(body))
        apps.append(ServedApp(app, broker_url, **(names if key == "mine" else other)))
    with apps[0], apps[1], otter.Client(broker_url, **names) as mine, otter.Client(broker_url, **other) as theirs:
        mine.broadcast("for mine", subject="a.b")
        theirs.broadcast("for other", subject="a.b")  # sent after: it arrives after anything of ours that leaked
        assert heard["mine"].get(timeout=10) == "for mine"
        assert heard["other"].get(timeout=10) == "for other"
        # Barriers: each marker is sent after the other app's broadcast was confirmed, so a leaked one comes first.
        mine.broadcast("mine again", subject="a.b")
        theirs.broadcast("other again", subject="a.b")
        assert heard["mine"].get(timeout=10) == "mine again", "a broadcast of the other exchange leaked into mine"
        assert heard["other"].get(timeout=10) == "other again", "a broadcast of mine leaked into the other exchange"
    assert heard["mine"].empty() and heard["other"].empty()
