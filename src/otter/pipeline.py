"""A route's handler wrapped in its hooks, and the frozen table of every route a worker serves.

A plain handler's whole pipeline (hooks included) runs in one worker thread, an ``async def`` handler's on the loop.
What the message means, before and after the pipeline runs, is ``core``'s to decide.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .routing import BroadcastRoute, Route, RpcRoute, TaskRoute

if TYPE_CHECKING:
    from .comm import Communicator

__all__ = ["HandlerContext", "Pipeline", "RouteTable"]


@dataclass(slots=True)
class HandlerContext:
    """What hooks and error handlers are told about the message being handled: its ``kind`` ("rpc", "task",
    "broadcast"), the route's ``name``, the ``comm`` to make calls with, and the message's ``headers``, among them
    the caller's own (``client.rpc(name, data, headers={"tenant": "acme"})``); for a task, its ``task_id`` (the same
    on every attempt) and ``attempt`` (1 for the first run). A handler reads the same with
    ``otter.current_context()``.

    >>> @app.before_handler
    ... def require_tenant(ctx: HandlerContext) -> None:
    ...     if "tenant" not in (ctx.headers or {}): raise PermissionError("no tenant")
    """

    kind: str
    name: str
    route: Route
    comm: Communicator
    correlation_id: str | None = None
    headers: Mapping[str, Any] | None = None
    subject: str | None = None
    task_id: str | None = None
    attempt: int = 1


class Pipeline:
    """A route's handler wrapped in its hooks: ``before(ctx)``, ``after(ctx, result)``, ``errorhandler(ctx, exc)``."""

    def __init__(
        self,
        route: Route,
        before: Sequence[Callable[..., Any]],
        after: Sequence[Callable[..., Any]],
        error_handlers: Sequence[Mapping[type[BaseException], Callable[..., Any]]],
    ) -> None:
        self.route = route
        self.handler = route.handler
        self.is_async = route.is_async
        self.before = tuple(before)
        self.after = tuple(after)
        self.error_handlers = tuple(error_handlers)
        self.plain = not (self.before or self.after or any(self.error_handlers))

    def call_sync(self, ctx: HandlerContext, args: tuple[Any, ...]) -> Any:
        if self.plain:
            return self.handler(ctx.comm, *args)
        try:
            for hook in self.before:
                _run_on_loop(ctx, hook(ctx))
            result = self.handler(ctx.comm, *args)
            for hook in self.after:
                result = _run_on_loop(ctx, hook(ctx, result))
            return result
        except Exception as exc:
            handler = self._error_handler(exc)
            if handler is None:
                raise
            return _run_on_loop(ctx, handler(ctx, exc))

    async def call_async(self, ctx: HandlerContext, args: tuple[Any, ...]) -> Any:
        if self.plain:
            return await self.handler(ctx.comm, *args)
        try:
            for hook in self.before:
                await _maybe_await(hook(ctx))
            result = await self.handler(ctx.comm, *args)
            for hook in self.after:
                result = await _maybe_await(hook(ctx, result))
            return result
        except Exception as exc:
            handler = self._error_handler(exc)
            if handler is None:
                raise
            return await _maybe_await(handler(ctx, exc))

    def _error_handler(self, exc: BaseException) -> Callable[..., Any] | None:
        for cls in type(exc).__mro__:
            for handlers in self.error_handlers:
                if cls in handlers:
                    return handlers[cls]
        return None


async def _maybe_await(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


def _run_on_loop(ctx: HandlerContext, value: Any) -> Any:
    """An ``async def`` hook around a plain handler: await it on the worker's loop while this pool thread waits
    (calling it would only make a coroutine, and the hook would silently never run)."""
    if not inspect.isawaitable(value):
        return value
    return asyncio.run_coroutine_threadsafe(_maybe_await(value), ctx.comm.loop).result()


@dataclass(frozen=True)
class RouteTable:
    """What a worker serves, fixed when the app starts: every route in its hooks, and the queue of each task.

    ``default_queue`` is the default (nameless) task queue when this app consumes it, and is in ``tasks`` then;
    ``default_shared`` says whether its handler asked to share it (``default=True``) or claims it for itself.
    """

    rpcs: tuple[Pipeline, ...]
    tasks: Mapping[str, Pipeline]
    broadcasts: tuple[Pipeline, ...]
    default_queue: str | None = None
    default_shared: bool = False

    def __post_init__(self) -> None:
        assert all(isinstance(p.route, RpcRoute) for p in self.rpcs)
        assert all(isinstance(p.route, TaskRoute) for p in self.tasks.values())
        assert all(isinstance(p.route, BroadcastRoute) for p in self.broadcasts)

    def __len__(self) -> int:
        """How many handlers: the default queue's owner is counted once."""
        return len(self.rpcs) + len({id(p) for p in self.tasks.values()}) + len(self.broadcasts)
