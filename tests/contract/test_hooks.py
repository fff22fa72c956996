"""Hooks and blueprints on both transports: before/after/error hooks, their scope, and name prefixes."""

from __future__ import annotations

import queue
from collections.abc import Callable
from typing import Any

import pytest

import otter

from .conftest import Serve

MISSING: dict[str, Any] = {}


def test_before_and_after_hooks_wrap_every_kind(
    serve: Serve, names: dict[str, Any], queue_name: Callable[[str], str]
) -> None:
    app = otter.Otter(**names)
    before: queue.Queue[Any] = queue.Queue()
    done: queue.Queue[Any] = queue.Queue()
    work = queue_name("work")

    @app.before_handler
    def remember(ctx: Any) -> None:
        before.put((ctx.kind, ctx.name, ctx.subject, ctx.correlation_id is not None or ctx.kind == "broadcast"))

    @app.after_handler
    def wrap(ctx: Any, result: Any) -> Any:
        return {"wrapped": result} if ctx.kind == "rpc" else result

    app.add_rpc("svc.sync")(lambda comm, data: data + 1)

    @app.add_rpc("svc.async")
    async def add_two(comm: Any, data: int) -> int:
        return data + 2

    app.add_task(work)(lambda comm, body: done.put(body))
    app.add_broadcast("event.*")(lambda comm, body, sender, subject, cid: done.put(body))
    client = serve(app)

    assert client.rpc("svc.sync", 1).result(timeout=5) == {"wrapped": 2}
    assert before.get(timeout=5) == ("rpc", "svc.sync", None, True)
    assert client.rpc("svc.async", 1).result(timeout=5) == {"wrapped": 3}
    assert before.get(timeout=5) == ("rpc", "svc.async", None, True)
    client.task(work, "t")
    assert done.get(timeout=5) == "t"
    assert before.get(timeout=5) == ("task", work, None, True)
    client.broadcast("b", subject="event.x")
    assert done.get(timeout=5) == "b"
    assert before.get(timeout=5) == ("broadcast", "event.*", "event.x", True)


@pytest.mark.parametrize("hook_style", ["sync", "async"])
@pytest.mark.parametrize("style", ["sync", "async"])
def test_before_hook_can_refuse_a_call(serve: Serve, names: dict[str, Any], style: str, hook_style: str) -> None:
    app = otter.Otter(**names)
    ran: list[Any] = []

    def guard(ctx: Any) -> None:
        if ctx.name.startswith("admin."):
            raise PermissionError("admins only")

    async def async_guard(ctx: Any) -> None:
        guard(ctx)

    app.before_handler(guard if hook_style == "sync" else async_guard)

    if style == "sync":
        app.add_rpc("admin.drop")(lambda comm, data: ran.append(data))
    else:

        @app.add_rpc("admin.drop")
        async def drop(comm: Any, data: Any) -> None:
            ran.append(data)

    app.add_rpc("public.echo")(lambda comm, data: data)
    client = serve(app)

    with pytest.raises(otter.RemoteError) as caught:
        client.rpc("admin.drop", "everything").result(timeout=5)
    assert (caught.value.remote_type, caught.value.message) == ("PermissionError", "admins only")
    assert ran == []
    assert client.rpc("public.echo", "ok").result(timeout=5) == "ok"


@pytest.mark.parametrize("style", ["sync", "async"])
def test_errorhandler_turns_an_exception_into_a_reply(serve: Serve, names: dict[str, Any], style: str) -> None:
    app = otter.Otter(**names)

    @app.errorhandler(ValueError)
    def value_error(ctx: Any, exc: ValueError) -> dict[str, str]:
        return {"error": str(exc), "in": ctx.name}

    @app.errorhandler(LookupError)
    async def lookup_error(ctx: Any, exc: LookupError) -> dict[str, str]:
        return {"missing": type(exc).__name__}

    if style == "sync":

        @app.add_rpc("svc.parse")
        def parse(comm: Any, data: Any) -> Any:
            return {"int": int(data)} if data != "key" else MISSING["key"]

    else:

        @app.add_rpc("svc.parse")
        async def parse_async(comm: Any, data: Any) -> Any:
            return {"int": int(data)} if data != "key" else MISSING["key"]

    client = serve(app)
    assert client.rpc("svc.parse", "12").result(timeout=5) == {"int": 12}
    assert client.rpc("svc.parse", "twelve").result(timeout=5) == {
        "error": "invalid literal for int() with base 10: 'twelve'",
        "in": "svc.parse",
    }
    assert client.rpc("svc.parse", "key").result(timeout=5) == {"missing": "KeyError"}  # an async error handler
    with pytest.raises(otter.RemoteError) as caught:  # not handled: a TypeError
        client.rpc("svc.parse", None).result(timeout=5)
    assert caught.value.remote_type == "TypeError"


def test_blueprint_hooks_apply_only_to_its_handlers(serve: Serve, names: dict[str, Any]) -> None:
    app = otter.Otter(**names)
    bp = otter.Blueprint("greetings")

    @bp.after_handler
    def bp_wrap(ctx: Any, result: Any) -> Any:
        return {"bp": result}

    @bp.errorhandler(ValueError)
    def bp_value_error(ctx: Any, exc: ValueError) -> str:
        return "handled by the blueprint"

    @app.after_handler
    def app_wrap(ctx: Any, result: Any) -> Any:
        return {"app": result}

    @app.errorhandler(ValueError)
    def app_value_error(ctx: Any, exc: ValueError) -> str:
        return "handled by the app"

    bp.add_rpc("bp.hello")(lambda comm, data: f"hello {data}")
    bp.add_rpc("bp.fail")(lambda comm, data: int("x"))
    app.add_rpc("app.hello")(lambda comm, data: f"hi {data}")
    app.add_rpc("app.fail")(lambda comm, data: int("x"))
    app.register_blueprint(bp)
    client = serve(app)

    assert client.rpc("bp.hello", "otter").result(timeout=5) == {"app": {"bp": "hello otter"}}
    assert client.rpc("app.hello", "otter").result(timeout=5) == {"app": "hi otter"}
    # The nearest error handler wins; the app's after hook still wraps what it returned.
    assert client.rpc("bp.fail").result(timeout=5) == "handled by the blueprint"
    assert client.rpc("app.fail").result(timeout=5) == "handled by the app"


def test_blueprint_name_prefix(serve: Serve, names: dict[str, Any]) -> None:
    app = otter.Otter(**names)
    blueprint = otter.Blueprint()

    @blueprint.add_rpc("hello.world")
    def example_hash(comm: Any, data: Any) -> dict[str, str]:
        return {"result": "Hello world from blueprint!"}

    versioned = otter.Blueprint("versioned", name_prefix="v2")
    versioned.add_rpc("hello.world")(lambda comm, data: "v2")
    app.register_blueprint(blueprint, name_prefix="greeter")
    app.register_blueprint(versioned)
    client = serve(app)

    assert client.rpc("greeter.hello.world").result(timeout=5) == {"result": "Hello world from blueprint!"}
    assert client.rpc("v2.hello.world").result(timeout=5) == "v2"
    with pytest.raises(otter.Unroutable):
        client.rpc("hello.world").result(timeout=5)
