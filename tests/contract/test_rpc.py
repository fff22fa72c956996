"""RPC on both transports: results, deadlines, typed errors and nested calls."""

from __future__ import annotations

import asyncio
import hashlib
import queue
import threading
import time
from typing import Any

import kiwipy
import pytest
from marshmallow import fields, validate

import otter
from otter.decorators import use_args
from rawbroker import RawBroker

from .conftest import Serve


def test_sync_and_async_handlers_return_results(serve: Serve, names: dict[str, Any]) -> None:
    app = otter.Otter(**names)

    @app.add_rpc("example.hash")
    def example_hash(comm: Any, data: str) -> dict[str, str]:
        return {"result": hashlib.sha256(data.encode("utf-8")).hexdigest()}

    @app.add_rpc("math.double")
    async def double(comm: Any, number: int) -> int:
        await asyncio.sleep(0)
        return number * 2

    client = serve(app)
    assert client.rpc("example.hash", "otter").result() == {"result": hashlib.sha256(b"otter").hexdigest()}
    assert client.rpc("math.double", 21).result(timeout=5) == 42
    assert client.rpc("math.double", [1]).result(timeout=5) == [1, 1]


def test_every_call_has_a_default_deadline(serve: Serve, names: dict[str, Any]) -> None:
    app = otter.Otter(**names)
    app.add_rpc("echo")(lambda comm, data: data)
    client = serve(app)

    future = client.rpc("echo", {"a": [1, None, "x"]})
    assert isinstance(future, otter.CallFuture)
    assert future.default_timeout is not None and future.default_timeout > 0
    assert future.result() == {"a": [1, None, "x"]}


def test_async_client_calls_the_same_app(serve: Serve, broker_url: str, names: dict[str, Any]) -> None:
    app = otter.Otter(**names)
    app.add_rpc("echo")(lambda comm, data: {"echo": data})
    serve(app)

    async def call() -> Any:
        async with otter.AsyncClient(broker_url, **names) as client:
            return await client.rpc("echo", "hi", timeout=5)

    assert asyncio.run(call()) == {"echo": "hi"}


# -- typed errors -----------------------------------------------------------------------------------------------
def failing_app(names: dict[str, Any]) -> otter.Otter:
    app = otter.Otter(**names)

    @app.add_rpc("svc.fail")
    def fail(comm: Any, data: Any) -> None:
        raise ValueError("boom")

    return app


def test_handler_exception_reaches_caller_typed(serve: Serve, names: dict[str, Any]) -> None:
    client = serve(failing_app(names))
    with pytest.raises(otter.RemoteError) as caught:
        client.rpc("svc.fail", None).result(timeout=5)
    assert caught.value.remote_type == "ValueError"
    assert caught.value.message == "boom"
    assert isinstance(caught.value, kiwipy.RemoteException)
    assert caught.value.remote_traceback is None  # only in debug


def test_debug_reply_carries_the_remote_traceback(serve: Serve, names: dict[str, Any]) -> None:
    client = serve(failing_app(names), DEBUG=True)
    with pytest.raises(otter.RemoteError) as caught:
        client.rpc("svc.fail", None).result(timeout=5)
    trace = caught.value.remote_traceback
    assert trace is not None
    assert "Traceback" in trace and "in fail" in trace and "ValueError: boom" in trace


def test_use_args_names_every_failing_field(serve: Serve, names: dict[str, Any]) -> None:
    app = otter.Otter(**names)
    login_args = {
        "password": fields.Str(required=True, validate=validate.Length(min=8)),
        "email": fields.Email(required=True),
    }

    @app.add_rpc("auth.login")
    @use_args(login_args)
    def login(comm: Any, data: dict[str, Any]) -> dict[str, Any]:
        return {"args": data}

    client = serve(app)
    with pytest.raises(otter.ValidationError) as caught:
        client.rpc("auth.login", {"email": "not-an-email", "password": "short"}).result(timeout=5)
    assert set(caught.value.messages) == {"password", "email"}
    assert caught.value.remote_type == "ValidationError"

    with pytest.raises(otter.ValidationError) as missing:
        client.rpc("auth.login", {}).result(timeout=5)
    assert set(missing.value.messages) == {"password", "email"}

    good = {"email": "otter@example.com", "password": "long enough"}
    assert client.rpc("auth.login", good).result(timeout=5) == {"args": good}


def test_unserved_name_is_unroutable_at_once(serve: Serve, names: dict[str, Any]) -> None:
    app = otter.Otter(**names)
    app.add_rpc("served")(lambda comm, data: data)
    client = serve(app)

    started = time.monotonic()
    with pytest.raises(otter.Unroutable):
        client.rpc("not.served", 1).result(timeout=10)
    assert time.monotonic() - started < 2
    assert client.rpc("served", 1).result(timeout=5) == 1


@pytest.mark.parametrize("style", ["sync", "async"])
def test_late_answer_raises_deadline_exceeded(serve: Serve, names: dict[str, Any], style: str) -> None:
    app = otter.Otter(**names)
    entered: queue.Queue[Any] = queue.Queue()
    release = threading.Event()

    if style == "sync":

        @app.add_rpc("svc.slow")
        def slow(comm: Any, data: Any) -> str:
            entered.put(release.set)
            release.wait(10)
            return "late"

    else:

        @app.add_rpc("svc.slow")
        async def slow_async(comm: Any, data: Any) -> str:
            loop, event = asyncio.get_running_loop(), asyncio.Event()
            entered.put(lambda: loop.call_soon_threadsafe(event.set))
            await asyncio.wait_for(event.wait(), 10)
            return "late"

    app.add_rpc("echo")(lambda comm, data: data)
    client = serve(app)

    started = time.monotonic()
    with pytest.raises(otter.DeadlineExceeded) as caught:
        client.rpc("svc.slow", None, timeout=0.3).result()
    assert 0.25 < time.monotonic() - started < 2
    assert isinstance(caught.value, TimeoutError)
    entered.get(timeout=5)()  # let the handler finish; its late reply must be dropped quietly
    assert client.rpc("echo", "still serving").result(timeout=5) == "still serving"


def test_unserialisable_result_is_an_error_reply(serve: Serve, names: dict[str, Any]) -> None:
    app = otter.Otter(**names)
    app.add_rpc("svc.weird")(lambda comm, data: {"value": object()})
    client = serve(app)

    started = time.monotonic()
    with pytest.raises(otter.RemoteError) as caught:
        client.rpc("svc.weird", None).result(timeout=10)
    assert time.monotonic() - started < 2
    assert caught.value.remote_type == "MessageError"
    assert "encode" in caught.value.message


# -- nested calls -----------------------------------------------------------------------------------------------
def nested_app(names: dict[str, Any]) -> otter.Otter:
    app = otter.Otter(**names)

    @app.add_rpc("inner.square")
    def square(comm: Any, number: int) -> int:
        if number < 0:
            raise ValueError("negative")
        return number * number

    @app.add_rpc("outer.plain")
    def outer_plain(comm: Any, number: int) -> dict[str, int]:
        return {"square": comm.rpc_send("inner.square", number).result()}

    @app.add_rpc("outer.async")
    async def outer_async(comm: Any, number: int) -> dict[str, int]:
        return {"square": await comm.rpc_send("inner.square", number)}

    return app


@pytest.mark.parametrize("outer", ["outer.plain", "outer.async"])
def test_nested_calls_from_handlers(serve: Serve, names: dict[str, Any], outer: str) -> None:
    client = serve(nested_app(names))
    assert client.rpc(outer, 7).result(timeout=5) == {"square": 49}
    with pytest.raises(otter.RemoteError) as caught:  # the inner error travels through the outer handler
        client.rpc(outer, -1).result(timeout=5)
    assert caught.value.remote_type == "ValueError"
    assert caught.value.message == "negative"


def test_blocking_result_in_async_handler_fails_fast(serve: Serve, names: dict[str, Any]) -> None:
    """``.result()`` on the loop thread would freeze the worker; Otter says what to do instead."""
    app = nested_app(names)

    @app.add_rpc("outer.blocking")
    async def outer_blocking(comm: Any, number: int) -> int:
        return int(comm.rpc_send("inner.square", number).result())

    client = serve(app)
    started = time.monotonic()
    with pytest.raises(otter.RemoteError) as caught:
        client.rpc("outer.blocking", 3).result(timeout=10)
    assert time.monotonic() - started < 2
    assert caught.value.remote_type == "ConfigurationError"
    assert "await" in caught.value.message
    assert client.rpc("outer.async", 3).result(timeout=5) == {"square": 9}


def test_app_test_client_serves_and_stops(broker_url: str, names: dict[str, Any], probe: RawBroker) -> None:
    """``app.test_client(url)`` on either transport (``probe`` only cleans up the broker afterwards)."""
    app = otter.Otter(**names)
    app.add_rpc("echo")(lambda comm, data: data)
    with app.test_client(broker_url, **names) as client:
        assert client.rpc("echo", "via test client").result(timeout=5) == "via test client"
    with otter.Client(broker_url, **names) as other, pytest.raises(otter.Unroutable):  # the app stopped with it
        other.rpc("echo", 1).result(timeout=5)
