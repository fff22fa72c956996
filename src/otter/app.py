"""``Otter``: the app object. Register handlers, register blueprints, then ``run()``.

>>> app = Otter()
>>> @app.add_rpc("example.hash")
... def example_hash(comm, data): ...
>>> app.run("amqp://guest:guest@127.0.0.1/")      # blocks until SIGINT/SIGTERM
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import threading
from collections.abc import Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any

from . import eventloop
from .blueprints import Blueprint
from .config import Config, ResolvedConfig, redact_url, resolve
from .errors import ConfigurationError
from .logs import configure_logging
from .pipeline import Pipeline, RouteTable
from .routing import (
    HANDLER_ARGUMENTS,
    BroadcastRoute,
    Route,
    RpcRoute,
    TaskRoute,
    check_handler,
    check_options,
    make_filters,
)
from .scaffold import Scaffold
from .transports import open_transport
from .worker import Observer, Worker

if TYPE_CHECKING:
    from .testing import TestClient

__all__ = ["Otter"]

log = logging.getLogger("otter")

RUN_FROM_CLI_ENV = "OTTER_RUN_FROM_CLI"


class Otter(Scaffold):
    """A service: a name, a config and its handlers. ``Otter(name=None, **config)`` with UPPERCASE config keys."""

    def __init__(self, name: str | None = None, **config: Any) -> None:
        super().__init__()
        self.name = name or "otter"
        self.config = Config()
        self.config.from_mapping(config)
        self.routes: list[Route] = []
        self.blueprints: dict[str, Blueprint] = {}
        self.serving = False  # set for good when the app first serves: its setup is closed from then on

    def __repr__(self) -> str:
        return f"<Otter {self.name!r} with {len(self.routes)} handlers>"

    # -- registration -------------------------------------------------------------------------------------------
    def _register(self, kind: str, name: str, handler: Callable[..., Any], options: dict[str, Any]) -> None:
        self.add_route(kind, name, handler, options)

    def add_route(
        self, kind: str, name: str, handler: Callable[..., Any], options: dict[str, Any] | None = None, *,
        blueprint: str | None = None,
    ) -> Route:
        """Register ``handler`` for the ``kind`` ("rpc", "task" or "broadcast") called ``name``; what the
        decorators and blueprints call. ``options`` are the decorator's keyword arguments."""
        self.check_setup(f"add the {kind} handler {name!r}")
        options = dict(options or {})
        if kind not in HANDLER_ARGUMENTS:
            raise ConfigurationError(f"kind must be one of {', '.join(HANDLER_ARGUMENTS)}, got {kind!r}")
        check_options(kind, name, {key: value for key, value in options.items() if key != "filters"})
        check_handler(f"{kind} handler", handler, HANDLER_ARGUMENTS[kind], f" for {name!r}")
        route: Route
        if kind == "rpc":
            route = RpcRoute(name, handler, blueprint, options)
        elif kind == "task":
            route = TaskRoute(name, handler, blueprint, options)
        else:
            route = BroadcastRoute(name, handler, blueprint, options, filters=make_filters(options["filters"]))
        if kind != "broadcast":
            for existing in self.routes:
                if existing.kind == kind and existing.name == name:
                    raise ConfigurationError(
                        f"{kind} {name!r} is already handled by {_describe(existing.handler)}; "
                        f"names must be unique"
                    )
        self.routes.append(route)
        return route

    def register_blueprint(self, blueprint: Blueprint, *, name_prefix: str | None = None) -> None:
        """Add a blueprint's handlers, optionally prefixing their names (``name_prefix.name``)."""
        self.check_setup(f"register the blueprint {blueprint.name!r}")
        if self.blueprints.get(blueprint.name, blueprint) is not blueprint:
            raise ConfigurationError(f"another blueprint is already registered as {blueprint.name!r}")
        self.blueprints[blueprint.name] = blueprint
        blueprint.register(self, name_prefix)

    def check_setup(self, what: str) -> None:
        """Refuse ``what`` once the app has served: a running worker serves the routes and hooks it started with, so
        a later change would be silently ignored (as Flask's setup methods refuse after the first request)."""
        if self.serving:
            raise ConfigurationError(
                f"cannot {what}: the app {self.name!r} is already running (or ran), with the handlers and hooks it "
                f"started with; register them before run(), or build a new app (e.g. in a create_app() factory)"
            )

    # -- what the worker serves ----------------------------------------------------------------------------------
    def route_table(self, config: dict[str, Any]) -> RouteTable:
        """Close the app's setup and return what a worker serves: every route in its hooks, and each task's queue."""
        self.serving = True
        pipelines = {id(route): self.pipeline(route) for route in self.routes}
        default_queue = config["DEFAULT_TASK_QUEUE"]
        queues = self.task_queues(default_queue)
        owner = queues.get(default_queue)
        return RouteTable(
            rpcs=tuple(pipelines[id(route)] for route in self.routes if isinstance(route, RpcRoute)),
            tasks={queue: pipelines[id(route)] for queue, route in queues.items()},
            broadcasts=tuple(pipelines[id(route)] for route in self.routes if isinstance(route, BroadcastRoute)),
            default_queue=default_queue if owner is not None else None,
            default_shared=owner is not None and owner.is_default,
        )

    def task_queues(self, default_queue: str | None = None) -> dict[str, TaskRoute]:
        """Every task queue this app consumes, with its handler; the default queue when it has a clear owner.

        ``default_queue`` is the effective ``DEFAULT_TASK_QUEUE`` (from ``resolve_config``), which may differ from
        ``app.config``'s when the name comes from an argument or ``OTTER_DEFAULT_TASK_QUEUE``.
        """
        tasks = [route for route in self.routes if isinstance(route, TaskRoute)]
        queues = {route.name: route for route in tasks}
        defaults = [route for route in tasks if route.is_default]
        if len(defaults) > 1:
            names = ", ".join(route.name for route in defaults)
            raise ConfigurationError(f"only one task handler may be the default, got: {names}")
        only = tasks[0] if len(tasks) == 1 and not tasks[0].opts_out_of_default else None
        owner = defaults[0] if defaults else only
        if owner is not None:
            queues[default_queue or self.config["DEFAULT_TASK_QUEUE"]] = owner
        return queues

    def pipeline(self, route: Route) -> Pipeline:
        """The route's handler wrapped in the app's hooks and, for a blueprint's route, the blueprint's."""
        scopes: list[Scaffold] = []
        if route.blueprint is not None and route.blueprint in self.blueprints:
            scopes.append(self.blueprints[route.blueprint])
        scopes.append(self)
        before = [hook for scope in reversed(scopes) for hook in scope.before_handler_funcs]
        after = [hook for scope in scopes for hook in scope.after_handler_funcs]
        return Pipeline(route, before, after, [scope.error_handlers for scope in scopes])

    # -- running ------------------------------------------------------------------------------------------------
    def resolve_config(self, url: str | None = None, **overrides: Any) -> ResolvedConfig:
        """The effective config (``otter.config.resolve``): arguments > ``OTTER_*`` environment > ``app.config`` >
        defaults; a ``ResolvedConfig``, whose ``sources`` say where each value came from."""
        arguments = {key.upper(): value for key, value in overrides.items()}
        if url is not None:
            arguments["BROKER_URL"] = url
        return resolve(arguments, app_config=self.config)

    def run(self, url: str | None = None, debug: bool | None = None, **options: Any) -> None:
        """Serve until SIGINT or SIGTERM, then stop gracefully. Blocks.

        Under ``otter run`` the CLI serves the app itself, so a module-level ``app.run(...)`` does nothing then,
        as with ``flask run``.
        """
        if os.environ.get(RUN_FROM_CLI_ENV) == "true":
            log.debug("app.run() ignored: the otter command line is serving this app")
            return
        config = self.resolve_config(url, debug=debug, **options)
        configure_logging(config["LOG_LEVEL"], log_format=config["LOG_FORMAT"], log_config=config["LOG_CONFIG"],
                          service=self.name)
        run_loop(self.serve(config))

    async def serve(
        self, config: dict[str, Any], stop: asyncio.Event | None = None, started: Callable[[], None] | None = None,
        observers: Sequence[Observer] = (),
    ) -> None:
        """Serve on the running loop until ``stop`` is set (or SIGINT/SIGTERM when in the main thread); ``started``
        is called once every consumer is up, and each of ``observers`` is told of every handled message.
        ``METRICS_PORT`` and ``HEALTH_PORT`` in ``config`` serve metrics and health probes (``otter.operations``)."""
        from .control import Identity
        from .operations import Operations

        identity = Identity.now(self.name, config.get("SERVICE_VERSION"),
                                (getattr(route.handler, "__module__", "") or "" for route in self.routes),
                                int(config["CONCURRENCY"]))
        operations = Operations(config, identity)
        stop = stop or asyncio.Event()
        loop = asyncio.get_running_loop()
        handled_signals = []
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
                handled_signals.append(sig)
        worker = self.start_worker(config, (*observers, *operations.observers))
        try:
            await operations.start(worker)
            if not await _until_stopped(worker.connect(), stop):  # a stop while waiting for the broker ends it
                log.info("stopped before the broker could be reached")
                return
            await worker.start()
            await operations.serving(worker)
            log.info("%s is running on %s; press Ctrl-C to stop", self.name, redact_url(config["BROKER_URL"]))
            if started is not None:
                started()
            await stop.wait()
            log.info("stopping: finishing running handlers (up to %gs)", worker.grace)
        finally:
            try:
                await worker.stop()
            finally:
                await operations.close()
                for sig in handled_signals:
                    loop.remove_signal_handler(sig)

    def start_worker(self, config: dict[str, Any], observers: Sequence[Observer] = ()) -> Worker:
        """A worker for this app's routes (closing its setup), on a transport for ``config["BROKER_URL"]``."""
        table = self.route_table(config)
        return Worker(table, open_transport(config["BROKER_URL"], config), config, observers)

    def test_client(self, url: str | None = None, *, raise_errors: bool = False, **config: Any) -> TestClient:
        """A client talking to this app served in the background on the in-memory broker; ``wait_handled`` waits
        for tasks and broadcasts to be handled, and with ``raise_errors`` re-raises their handlers' errors.

        >>> with app.test_client() as client:
        ...     client.rpc("example.hash", "otter").result()
        """
        from .testing import serve_in_thread

        return serve_in_thread(self, url, raise_errors=raise_errors, **config)


async def _until_stopped(starting: Coroutine[Any, Any, None], stop: asyncio.Event) -> bool:
    """Run ``starting`` unless ``stop`` is set first (then cancel it and return False)."""
    start = asyncio.ensure_future(starting)
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({start, stopping}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:  # serve itself was cancelled: so is the start
        start.cancel()
        raise
    finally:
        stopping.cancel()
    if not start.done():
        start.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await start
        return False
    start.result()
    return True


def _describe(handler: Callable[..., Any]) -> str:
    return f"{getattr(handler, '__module__', '?')}.{getattr(handler, '__qualname__', handler)!s}"


def run_loop(main: Any) -> None:
    eventloop.run(main)
