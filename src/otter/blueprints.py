"""Blueprints: a module's handlers, recorded now and registered on an app later.

>>> bp = Blueprint()
>>> @bp.add_rpc("hello.world")
... def hello(comm, data): return {"result": "Hello world from blueprint!"}
>>> app.register_blueprint(bp, name_prefix="greeter")   # serves "greeter.hello.world"
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .errors import ConfigurationError
from .routing import HANDLER_ARGUMENTS, check_handler
from .scaffold import Scaffold

if TYPE_CHECKING:
    from .app import Otter

__all__ = ["Blueprint"]

Deferred = Callable[["BlueprintSetupState"], None]


class BlueprintSetupState:
    """What a deferred registration needs to know about the app it lands on."""

    def __init__(self, blueprint: Blueprint, app: Otter, name_prefix: str | None) -> None:
        self.blueprint = blueprint
        self.app = app
        self.name_prefix = name_prefix

    def prefixed(self, kind: str, name: str) -> str:
        if not self.name_prefix or kind == "broadcast":
            return name
        return f"{self.name_prefix}.{name}"


class Blueprint(Scaffold):
    """A group of handlers and hooks to register on an app; hooks apply to the blueprint's own handlers."""

    def __init__(self, name: str | None = None, *, name_prefix: str | None = None) -> None:
        super().__init__()
        self.name = name or sys._getframe(1).f_globals.get("__name__", "blueprint")
        self.name_prefix = name_prefix
        self.deferred: list[Deferred] = []
        self.registered_on: list[Otter] = []

    def _register(self, kind: str, name: str, handler: Callable[..., Any], options: dict[str, Any]) -> None:
        if self.registered_on:
            raise ConfigurationError(
                f"blueprint {self.name!r} was already registered; add its handlers before register_blueprint()"
            )
        check_handler(f"{kind} handler", handler, HANDLER_ARGUMENTS[kind], f" for {name!r}")  # now, not at replay

        def replay(state: BlueprintSetupState) -> None:
            state.app.add_route(kind, state.prefixed(kind, name), handler, options, blueprint=self.name)

        self.deferred.append(replay)

    def check_setup(self, what: str) -> None:
        """Hooks read when an app starts serving: too late once an app this blueprint is on has started."""
        for app in self.registered_on:
            app.check_setup(what)

    def register(self, app: Otter, name_prefix: str | None = None) -> None:
        """Replay the recorded registrations on ``app``; called by ``app.register_blueprint``."""
        prefix = name_prefix if name_prefix is not None else self.name_prefix
        state = BlueprintSetupState(self, app, prefix)
        for replay in self.deferred:
            replay(state)
        self.registered_on.append(app)
