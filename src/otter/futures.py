"""``CallFuture``: one future that works from threads (``.result()``) and from coroutines (``await``).

It is a ``concurrent.futures.Future`` (which is what ``kiwipy.Future`` is), so kiwipy code that calls
``.result()`` keeps working, and it is awaitable so ``async def`` handlers can ``await comm.rpc_send(...)``.

>>> reply = client.rpc("example.hash", "otter").result(timeout=5)
>>> reply = await comm.rpc_send("example.hash", "otter")
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable, Generator
from typing import Any

from .errors import ConfigurationError, DeadlineExceeded

__all__ = ["CallFuture", "TaskFuture"]

_DEFAULT = object()


class CallFuture(concurrent.futures.Future[Any]):
    """The outcome of a call; ``result()`` waits ``default_timeout`` seconds unless told otherwise."""

    def __init__(self, default_timeout: float | None, loop_thread: threading.Thread | None = None,
                 what: str | None = None) -> None:
        super().__init__()
        self.default_timeout = default_timeout
        self._loop_thread = loop_thread
        self._what = what  # set for sends (a task, a broadcast): a failure nobody waits for is logged
        self._observed = False

    @property
    def unwatched_send(self) -> str | None:
        """What this future sends (a task, a broadcast) if nobody has waited on it or asked for its outcome yet."""
        return None if self._observed else self._what

    def exception(self, timeout: Any = None) -> BaseException | None:
        """The call's error, or None once it succeeded (``concurrent.futures.Future.exception``); asking counts
        as watching the send, so its failure is not also logged as unwatched."""
        self._observed = True
        return super().exception(timeout)

    def add_done_callback(self, fn: Callable[[concurrent.futures.Future[Any]], object]) -> None:
        """Call ``fn(future)`` once the outcome is in; a callback counts as watching the send (see ``exception``)."""
        self._observed = True
        super().add_done_callback(fn)

    def result(self, timeout: Any = _DEFAULT) -> Any:
        """Wait for the outcome: the reply, or the typed error the call raised; ``DeadlineExceeded`` after
        ``timeout`` seconds (default: the call's own deadline). In an ``async def`` handler, ``await`` the future
        instead: blocking on the event loop's thread raises ``ConfigurationError`` rather than deadlocking it."""
        if not self.done() and threading.current_thread() is self._loop_thread:
            raise ConfigurationError(
                "blocking on .result() inside the event loop would deadlock it: "
                "use 'await comm.rpc_send(...)' in an async def handler"
            )
        self._observed = True
        wait = self.default_timeout if timeout is _DEFAULT else timeout
        try:
            return super().result(wait)
        except DeadlineExceeded:
            raise
        except concurrent.futures.TimeoutError:
            raise DeadlineExceeded(f"no result within {wait:g} s") from None

    def __await__(self) -> Generator[Any, None, Any]:
        return asyncio.wrap_future(self).__await__()


class TaskFuture(CallFuture):
    """A task's future, with its ``task_id`` known at once: it resolves to the id once the broker has the task, or,
    for a task sent with ``result=True``, to its handler's result.

    >>> future = client.task("report.build", {"month": 5}, result=True)
    >>> future.task_id, future.result(timeout=60)
    """

    def __init__(self, task_id: str, default_timeout: float | None, loop_thread: threading.Thread | None = None,
                 what: str | None = None) -> None:
        super().__init__(default_timeout, loop_thread, what)
        self.task_id = task_id
