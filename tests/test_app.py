"""The app's setup closes when it first serves: what a worker serves is frozen, and late changes are refused."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from otter import Blueprint, ConfigurationError, Otter
from otter.routing import TaskRoute


def echo(comm: Any, data: Any, *broadcast_fields: Any) -> Any:  # also takes a broadcast's sender, subject, id
    return data


def hook(ctx: Any, *rest: Any) -> None: ...


@pytest.mark.parametrize(
    "late",
    [
        pytest.param(lambda app, bp: app.before_handler(hook), id="app before_handler"),
        pytest.param(lambda app, bp: app.after_handler(hook), id="app after_handler"),
        pytest.param(lambda app, bp: app.errorhandler(KeyError)(hook), id="app errorhandler"),
        pytest.param(lambda app, bp: bp.before_handler(hook), id="blueprint before_handler"),
        pytest.param(lambda app, bp: bp.errorhandler(KeyError)(hook), id="blueprint errorhandler"),
        pytest.param(lambda app, bp: app.add_task("svc.late")(echo), id="task"),
        pytest.param(lambda app, bp: app.add_broadcast("a.*")(echo), id="broadcast"),
        pytest.param(lambda app, bp: app.add_route("rpc", "svc.late", echo), id="add_route"),
    ],
)
def test_hooks_and_handlers_added_after_the_app_started_are_refused_not_ignored(late: Any) -> None:
    app, bp = Otter(), Blueprint("bp")
    bp.add_rpc("bp.echo")(echo)
    app.register_blueprint(bp)
    with app.test_client() as client:
        assert client.rpc("bp.echo", 1).result(timeout=5) == 1
        with pytest.raises(ConfigurationError, match="already running"):
            late(app, bp)
    with pytest.raises(ConfigurationError, match="already running"):  # and after it stopped: a new app is needed
        late(app, bp)
    assert app.before_handler_funcs == bp.before_handler_funcs == [] and app.error_handlers == bp.error_handlers == {}
    assert app.after_handler_funcs == [] and [route.name for route in app.routes] == ["bp.echo"]


def test_hooks_added_to_a_blueprint_before_the_app_starts_apply_to_its_handlers() -> None:
    app, bp = Otter(), Blueprint("bp")
    bp.add_rpc("bp.echo")(echo)
    app.register_blueprint(bp)

    @bp.after_handler
    def shout(ctx: Any, result: Any) -> Any:
        return str(result).upper()

    with app.test_client() as client:
        assert client.rpc("bp.echo", "hi").result(timeout=5) == "HI"


def test_add_route_is_the_public_registration_that_decorators_and_blueprints_use() -> None:
    app = Otter()
    route = app.add_route("task", "svc.echo", echo, {"max_retries": 2})
    assert isinstance(route, TaskRoute) and route.options == {"max_retries": 2} and app.routes == [route]
    bp = Blueprint("bp")
    bp.add_rpc("echo")(echo)
    app.register_blueprint(bp, name_prefix="p")
    assert [(r.name, r.blueprint) for r in app.routes] == [("svc.echo", None), ("p.echo", "bp")]


def test_the_route_table_holds_each_route_in_its_hooks_and_the_default_task_queue() -> None:
    app = Otter(DEFAULT_TASK_QUEUE="tasks.default")
    app.add_rpc("svc.echo")(echo)
    app.add_task("svc.job")(echo)
    app.add_broadcast(["a.*"])(echo)
    app.before_handler(hook)
    table = app.route_table(app.resolve_config())
    assert [p.route.name for p in table.rpcs] == ["svc.echo"] and table.rpcs[0].before == (hook,)
    assert set(table.tasks) == {"svc.job", "tasks.default"} and table.default_queue == "tasks.default"
    assert table.tasks["svc.job"] is table.tasks["tasks.default"]
    assert [p.route.name for p in table.broadcasts] == ["a.*"]
    assert len(table) == 3


def test_serve_calls_started_once_consuming_and_stops_when_asked() -> None:
    app = Otter()
    app.add_rpc("svc.echo")(echo)
    calls: list[str] = []

    async def main() -> None:
        stop, started = asyncio.Event(), asyncio.Event()

        def on_started() -> None:
            calls.append("started")
            started.set()

        serving = asyncio.ensure_future(app.serve(app.resolve_config(), stop, started=on_started))
        await asyncio.wait_for(started.wait(), 10)
        assert not serving.done()
        stop.set()
        await asyncio.wait_for(serving, 10)

    asyncio.run(main())
    assert calls == ["started"]  # once, and only by serve
