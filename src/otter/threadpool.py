"""``HandlerThreadPool``: where plain (non-async) handlers run; its threads never hold the process open.

``concurrent.futures.ThreadPoolExecutor`` joins its threads when the interpreter exits, so after a SIGTERM a
handler stuck in ``time.sleep(600)`` kept the process alive for the whole ten minutes, although the worker had
already given up on it after ``SHUTDOWN_GRACE`` and returned its message to the queue. These threads are daemons:
once the worker has stopped, the process exits and an abandoned handler goes with it.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any

__all__ = ["HandlerThreadPool"]

_Work = tuple[Future[Any], Callable[..., Any], tuple[Any, ...], dict[str, Any]]


class HandlerThreadPool(Executor):
    """At most ``max_workers`` daemon threads, started on demand and reused when idle."""

    def __init__(self, max_workers: int, thread_name_prefix: str = "otter-handler") -> None:
        if max_workers < 1:
            raise ValueError("max_workers must be at least 1")
        self.max_workers = max_workers
        self.thread_name_prefix = thread_name_prefix
        self._work: queue.SimpleQueue[_Work | None] = queue.SimpleQueue()
        self._idle = threading.Semaphore(0)
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._shut_down = False

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        with self._lock:
            if self._shut_down:
                raise RuntimeError("cannot run a handler after the pool was shut down")
            future: Future[Any] = Future()
            self._work.put((future, fn, args, kwargs))
            if not self._idle.acquire(blocking=False) and len(self._threads) < self.max_workers:
                thread = threading.Thread(
                    target=self._run, name=f"{self.thread_name_prefix}_{len(self._threads)}", daemon=True
                )
                thread.start()
                self._threads.append(thread)
            return future

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

    def _run(self) -> None:
        while (work := self._work.get()) is not None:
            future, fn, args, kwargs = work
            del work
            if not future.set_running_or_notify_cancel():
                self._idle.release()
                continue
            error: BaseException | None = None
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:
                error, result = exc, None
            del fn, args, kwargs  # drop references before idling
            # Idle before the outcome is published, so work submitted by whoever waited on it reuses this thread.
            self._idle.release()
            if error is None:
                future.set_result(result)
            else:
                future.set_exception(error)
                del error
            del future, result
