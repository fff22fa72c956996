"""``HandlerThreadPool``: where plain (non-async) handlers run; its threads never hold the process open.

``concurrent.futures.ThreadPoolExecutor`` joins its threads when the interpreter exits, so after a SIGTERM a
handler stuck in ``time.sleep(600)`` kept the process alive for the whole ten minutes, although the worker had
already given up on it after ``SHUTDOWN_GRACE`` and returned its message to the queue. These threads are daemons:
once the worker has stopped, the process exits and an abandoned handler goes with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any

__all__ = ["HandlerThreadPool"]



class _LoopOutcome:
    """The part of ``concurrent.futures.Future`` the pool uses, delivering into an asyncio future on its loop."""

    __slots__ = ("future", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop, future: asyncio.Future[Any]) -> None:
        self.loop, self.future = loop, future

    def set_running_or_notify_cancel(self) -> bool:
        return not self.future.done()

    def set_result(self, result: Any) -> None:
        self._deliver(_set_result, result)

    def set_exception(self, error: BaseException) -> None:
        self._deliver(_set_exception, error)

    def cancel(self) -> bool:
        self._deliver(_cancel, None)
        return True

    def _deliver(self, setter: Callable[[asyncio.Future[Any], Any], None], value: Any) -> None:
        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody is waiting any more
            self.loop.call_soon_threadsafe(setter, self.future, value)


def _set_result(future: asyncio.Future[Any], result: Any) -> None:
    if not future.done():
        future.set_result(result)


def _set_exception(future: asyncio.Future[Any], error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)


def _cancel(future: asyncio.Future[Any], _: Any) -> None:
    future.cancel()


_Work = tuple[Future[Any] | _LoopOutcome, Callable[..., Any], tuple[Any, ...], dict[str, Any]]


class HandlerThreadPool(Executor):
    """At most ``max_workers`` daemon threads, started on demand and reused when idle."""

    def __init__(self, max_workers: int, thread_name_prefix: str = "otter-handler") -> None:
        if max_workers < 1:
            raise ValueError("max_workers must be at least 1")
        self.max_workers = max_workers
        self.thread_name_prefix = thread_name_prefix
        self._work: queue.SimpleQueue[_Work | None] = queue.SimpleQueue()
        # Threads waiting for work, counted under ``_lock`` (a ``threading.Semaphore`` is a Python-level Condition:
        # its acquire and release cost more than the rest of a submit together).
        self._idle = 0
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._shut_down = False

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        future: Future[Any] = Future()
        self._put((future, fn, args, kwargs))
        return future

    def run(self, loop: asyncio.AbstractEventLoop, fn: Callable[..., Any], /, *args: Any) -> asyncio.Future[Any]:
        """Run ``fn(*args)`` in the pool; the outcome lands in an asyncio future on ``loop`` with one thread hop
        (``run_in_executor`` chains a concurrent future to an asyncio one, which costs a second)."""
        outcome: asyncio.Future[Any] = loop.create_future()
        self._put((_LoopOutcome(loop, outcome), fn, args, {}))
        return outcome

    def _put(self, work: _Work) -> None:
        with self._lock:
            if self._shut_down:
                raise RuntimeError("cannot run a handler after the pool was shut down")
            self._work.put(work)
            if self._idle:
                self._idle -= 1
            elif len(self._threads) < self.max_workers:
                thread = threading.Thread(
                    target=self._run, name=f"{self.thread_name_prefix}_{len(self._threads)}", daemon=True
                )
                thread.start()
                self._threads.append(thread)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._shut_down = True
            if cancel_futures:
                while True:
                    try:
                        work = self._work.get_nowait()
                    except queue.Empty:
                        break
                    if work is not None:
                        work[0].cancel()
            for _ in self._threads:
                self._work.put(None)
        if wait:
            for thread in self._threads:
                thread.join()

    def _became_idle(self) -> None:
        with self._lock:
            self._idle += 1

    def _run(self) -> None:
        while (work := self._work.get()) is not None:
            future, fn, args, kwargs = work
            del work
            if not future.set_running_or_notify_cancel():
                self._became_idle()
                continue
            error: BaseException | None = None
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:
                error, result = exc, None
            del fn, args, kwargs  # drop references before idling
            # Idle before the outcome is published, so work submitted by whoever waited on it reuses this thread.
            self._became_idle()
            if error is None:
                future.set_result(result)
            else:
                future.set_exception(error)
                del error
            del future, result
