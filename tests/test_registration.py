"""Registration refuses mistakes when the decorator runs, not when the first message arrives: unknown options (with
the nearest valid one) and handlers or hooks that could not be called with the arguments they will get."""

from __future__ import annotations

import functools
import threading
from typing import Any

import pytest
from marshmallow import fields

from otter import Blueprint, ConfigurationError, Otter
from otter.decorators import use_args


def handler(comm: Any, data: Any) -> Any:
    return data


# -- options -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("scaffold", [Otter, Blueprint], ids=["app", "blueprint"])
def test_an_unknown_task_option_is_refused_with_the_nearest_one(scaffold: type[Otter] | type[Blueprint]) -> None:
    with pytest.raises(ConfigurationError) as caught:
        scaffold().add_task("mail.send", max_retry=3)
    message = str(caught.value)
    assert "add_task('mail.send') got an unknown option 'max_retry'; did you mean 'max_retries'?" in message
    assert ("(it takes: backoff, backoff_max, consumer_timeout, default, jitter, max_priority, max_retries, "
            "queue_type, rate_limit, retry_on, time_limit)") in message


@pytest.mark.parametrize("scaffold", [Otter, Blueprint], ids=["app", "blueprint"])
def test_rpc_and_broadcast_take_no_options(scaffold: type[Otter] | type[Blueprint]) -> None:
    with pytest.raises(ConfigurationError, match=r"add_rpc\('svc.hash'\) got the option 'timout', but add_rpc"):
        scaffold().add_rpc("svc.hash", timout=1)
    with pytest.raises(ConfigurationError, match="add_broadcast takes no options"):
        scaffold().add_broadcast("news.*", queue="x")


def test_add_route_checks_its_kind_and_options() -> None:
    app = Otter()
    with pytest.raises(ConfigurationError, match="did you mean 'backoff'"):
        app.add_route("task", "svc.t", handler, {"backof": 2.0})
    with pytest.raises(ConfigurationError, match="kind must be one of rpc, task, broadcast, got 'rpcs'"):
        app.add_route("rpcs", "svc.t", handler)
    assert app.routes == []


# -- handler signatures ------------------------------------------------------------------------------------------
def only_comm(comm: Any) -> None: ...


def three_required(comm: Any, data: Any, extra: Any) -> None: ...


def two(comm: Any, body: Any) -> None: ...


@pytest.mark.parametrize(
    ("register", "wanted", "why"),
    [
        (lambda s: s.add_rpc("svc.r")(only_comm), "(comm, data)", "too many positional arguments"),
        (lambda s: s.add_rpc("svc.r")(three_required), "(comm, data)", "missing a required argument: 'extra'"),
        (lambda s: s.add_task("svc.t")(lambda: None), "(comm, body)", "too many positional arguments"),
        (lambda s: s.add_broadcast("a.*")(two), "(comm, body, sender, subject, correlation_id)", "too many positional"),
    ],
    ids=["rpc-too-few", "rpc-too-many", "task-none", "broadcast-seed-shape-missing"],
)
@pytest.mark.parametrize("scaffold", [Otter, Blueprint], ids=["app", "blueprint"])
def test_a_handler_that_cannot_take_its_arguments_is_refused_at_registration(
    scaffold: type[Otter] | type[Blueprint], register: Any, wanted: str, why: str
) -> None:
    target = scaffold()
    with pytest.raises(ConfigurationError) as caught:
        register(target)
    message = str(caught.value)
    assert f"cannot be called with {wanted}: {why}" in message
    assert "define it as def " in message and f"{wanted[1:-1]}): ..." in message
    if isinstance(target, Blueprint):
        assert target.deferred == []  # refused when decorated, not later at register_blueprint()
    else:
        assert target.routes == []


def test_hooks_are_checked_too() -> None:
    app = Otter()
    with pytest.raises(ConfigurationError, match=r"before_handler hook .* cannot be called with \(ctx\)"):
        app.before_handler(lambda: None)
    with pytest.raises(ConfigurationError, match=r"after_handler hook .* cannot be called with \(ctx, result\)"):
        app.after_handler(lambda ctx: None)
    with pytest.raises(ConfigurationError, match=r"errorhandler .* for KeyError cannot be called with \(ctx, exc\)"):
        app.errorhandler(KeyError)(lambda exc: None)
    assert app.before_handler_funcs == app.after_handler_funcs == [] and app.error_handlers == {}


class Doubler:
    def __call__(self, comm: Any, data: Any) -> Any:
        return data * 2


class AsyncTripler:
    async def __call__(self, comm: Any, data: Any) -> Any:
        return data * 3


def scaled(factor: int, comm: Any, data: Any) -> Any:
    return data * factor


def test_every_callable_shape_that_can_take_its_arguments_is_accepted_and_served() -> None:
    app = Otter()
    broadcasts: list[tuple[Any, ...]] = []
    received = threading.Event()

    app.add_rpc("svc.varargs")(lambda *args: args[1])
    app.add_rpc("svc.kwargs")(lambda comm, data, **kwargs: data)
    app.add_rpc("svc.defaults")(lambda comm, data, extra=1: data + extra)
    app.add_rpc("svc.instance")(Doubler())
    app.add_rpc("svc.async-instance")(AsyncTripler())
    app.add_rpc("svc.partial")(functools.partial(scaled, 10))
    app.add_rpc("svc.validated")(use_args({"n": fields.Int(required=True)})(lambda comm, data: data["n"]))

    @app.add_broadcast("news.*")
    def on_news(comm: Any, *fields_: Any) -> None:
        broadcasts.append(fields_)
        received.set()

    with app.test_client() as client:
        calls = {"svc.varargs": 1, "svc.kwargs": 2, "svc.defaults": 3, "svc.instance": 4, "svc.async-instance": 5,
                 "svc.partial": 6, "svc.validated": {"n": 7}}
        replies = {name: client.rpc(name, data).result(timeout=5) for name, data in calls.items()}
        client.broadcast("hi", subject="news.today", sender="ops", correlation_id="c1")
        assert received.wait(5)
    assert replies == {"svc.varargs": 1, "svc.kwargs": 2, "svc.defaults": 4, "svc.instance": 8,
                       "svc.async-instance": 15, "svc.partial": 60, "svc.validated": 7}
    assert broadcasts == [("hi", "ops", "news.today", "c1")]
