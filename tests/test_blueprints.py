"""Blueprints record now and register later, with name prefixes; setup mistakes fail loudly and early."""

from __future__ import annotations

from typing import Any

import pytest

from otter import Blueprint, Otter
from otter.errors import ConfigurationError


def echo(comm: Any, data: Any, *broadcast_fields: Any) -> Any:  # also takes a broadcast's sender, subject, id
    return data


def routes_of(app: Otter) -> set[tuple[str, str, str | None]]:
    return {(route.kind, route.name, route.blueprint) for route in app.routes}


def test_registration_is_deferred_until_register_blueprint() -> None:
    app = Otter()
    bp = Blueprint("greetings")
    assert bp.add_rpc("hello.world")(echo) is echo  # decorators return the function unchanged
    bp.add_task("greet.later")(echo)
    bp.add_broadcast(["greet.*"])(echo)
    assert app.routes == []

    app.register_blueprint(bp)
    assert routes_of(app) == {
        ("rpc", "hello.world", "greetings"),
        ("task", "greet.later", "greetings"),
        ("broadcast", "greet.*", "greetings"),
    }
    assert app.blueprints == {"greetings": bp}
    assert all(route.handler is echo for route in app.routes)


def test_name_prefix_applies_to_rpcs_and_tasks_not_broadcast_filters() -> None:
    bp = Blueprint("greetings", name_prefix="default")
    bp.add_rpc("hello.world")(echo)
    bp.add_task("greet.later")(echo)
    bp.add_broadcast("greet.*")(echo)

    app = Otter()
    app.register_blueprint(bp, name_prefix="greeter")  # the argument wins over the blueprint's own prefix
    assert {name for _, name, _ in routes_of(app)} == {"greeter.hello.world", "greeter.greet.later", "greet.*"}

    other = Otter()
    other.register_blueprint(bp)
    assert {name for _, name, _ in routes_of(other)} == {"default.hello.world", "default.greet.later", "greet.*"}


def test_same_blueprint_twice_needs_different_prefixes() -> None:
    bp = Blueprint("versions")
    bp.add_rpc("status")(echo)
    app = Otter()
    app.register_blueprint(bp, name_prefix="v1")
    app.register_blueprint(bp, name_prefix="v2")
    assert {name for _, name, _ in routes_of(app)} == {"v1.status", "v2.status"}
    with pytest.raises(ConfigurationError, match="already handled"):
        app.register_blueprint(bp, name_prefix="v1")


def test_duplicate_names_are_refused() -> None:
    app = Otter()
    app.add_rpc("svc.echo")(echo)
    with pytest.raises(ConfigurationError, match=r"svc\.echo"):
        app.add_rpc("svc.echo")(echo)

    bp = Blueprint("clash")
    bp.add_rpc("svc.echo")(echo)
    with pytest.raises(ConfigurationError, match="already handled"):
        app.register_blueprint(bp)

    app.add_task("work")(echo)
    app.add_rpc("work")(echo)  # an RPC and a task may share a name: they live in different queues
    app.add_broadcast("a.*")(echo)
    app.add_broadcast("a.*")(echo)  # several subscribers to one subject are fine


def test_two_blueprints_with_one_name_are_refused() -> None:
    app = Otter()
    app.register_blueprint(Blueprint("same"))
    with pytest.raises(ConfigurationError, match="same"):
        app.register_blueprint(Blueprint("same"))


def test_default_name_is_the_defining_module() -> None:
    assert Blueprint().name == __name__


def test_adding_to_a_registered_blueprint_is_refused() -> None:
    bp = Blueprint("late")
    Otter().register_blueprint(bp)
    with pytest.raises(ConfigurationError, match="before register_blueprint"):
        bp.add_rpc("too.late")(echo)


def test_registering_on_a_running_app_is_refused() -> None:
    app = Otter()
    app.add_rpc("svc.echo")(echo)
    with app.test_client() as client:
        assert client.rpc("svc.echo", 1).result(timeout=5) == 1
        with pytest.raises(ConfigurationError, match="already running"):
            app.register_blueprint(Blueprint("late"))
        with pytest.raises(ConfigurationError, match="already running"):
            app.add_rpc("svc.late")(echo)
    assert [route.name for route in app.routes] == ["svc.echo"]


@pytest.mark.parametrize("name", ["", " padded", "a.*", "a.#", None, 5])
def test_bad_names_are_refused(name: Any) -> None:
    for scaffold in (Otter(), Blueprint("names")):
        with pytest.raises(ConfigurationError):
            scaffold.add_rpc(name)


def test_add_task_needs_parentheses() -> None:
    with pytest.raises(ConfigurationError, match="parentheses"):
        Otter().add_task(echo)  # type: ignore[arg-type]


def test_blueprint_hooks_stay_on_the_blueprint() -> None:
    app, bp = Otter(), Blueprint("scoped")

    def app_hook(ctx: Any) -> None: ...

    def bp_hook(ctx: Any) -> None: ...

    app.before_handler(app_hook)
    bp.before_handler(bp_hook)
    bp.add_rpc("bp.echo")(echo)
    app.add_rpc("app.echo")(echo)
    app.register_blueprint(bp)
    by_name = {route.name: app.pipeline(route) for route in app.routes}
    assert by_name["bp.echo"].before == (app_hook, bp_hook)  # the app's hooks run first, as in Flask
    assert by_name["app.echo"].before == (app_hook,)
