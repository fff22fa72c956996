"""What a message means, with no I/O: decode, hooks, handler, error handlers, reply envelope.

The worker feeds bytes in and sends the bytes that come out; the same code runs for every transport. A plain
handler's whole pipeline (hooks included) runs in one worker thread, an ``async def`` handler's on the loop.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import protocol
from .codec import JsonCodec
from .errors import MessageError
from .routing import Route
from .transports import Delivery

if TYPE_CHECKING:
    from .comm import Communicator

__all__ = ["HandlerContext", "Pipeline", "deadline_passed", "encode_error", "encode_result"]

log = logging.getLogger("otter.dispatch")


@dataclass(slots=True)
class HandlerContext:
    """What hooks and error handlers are told about the message being handled."""

    kind: str
    name: str
    route: Route
    comm: Communicator
    correlation_id: str | None = None
    headers: Mapping[str, Any] | None = None
    subject: str | None = None


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


def decode(codec: JsonCodec, delivery: Delivery) -> Any:
    return codec.decode(delivery.body, delivery.content_type)


def deadline_passed(headers: Mapping[str, Any], now: float) -> bool:
    """Whether the caller's deadline (``now`` in epoch seconds) is behind us; no header means no deadline (kiwipy).

    A header that is not integer milliseconds makes the request unreadable: ``MessageError``.
    """
    deadline = headers.get(protocol.DEADLINE_HEADER)
    if deadline is None:
        return False
    if isinstance(deadline, bool) or not isinstance(deadline, int):
        raise MessageError(
            f"header {protocol.DEADLINE_HEADER} must be integer milliseconds since the epoch, "
            f"got {type(deadline).__name__}"
        )
    return deadline / 1000 < now


def encode_result(codec: JsonCodec, value: Any, *, debug: bool) -> bytes:
    """The reply for a result; a result that cannot be encoded becomes an error reply, never a hang."""
    try:
        return codec.encode(protocol.result_reply(value))
    except MessageError as exc:
        log.error("reply is not serialisable: %s", exc)
        return encode_error(codec, MessageError(f"the handler's reply could not be encoded: {exc}"), debug=debug)


def encode_error(codec: JsonCodec, exc: BaseException, *, debug: bool) -> bytes:
    try:
        return codec.encode(protocol.error_reply(exc, include_traceback=debug))
    except MessageError:  # details that do not encode: send the type and message only
        return codec.encode(protocol.error_reply(MessageError(f"{type(exc).__name__}: {exc}")))
