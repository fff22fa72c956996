"""``Outbox``: the sync ``Client``'s pipelined sends, and the window of confirms they wait for.

Why: waiting for each publisher confirm costs a broker round trip and a disk write per message, so a loop of
``client.task(...)`` ran at a fifth of what aio-pika can publish. Now a send is encoded in the caller's thread and
handed over; the broker's confirms are counted here. A full window (``SEND_WINDOW``) blocks the caller, so memory
stays flat when the broker is slower than the caller, and nothing fails unseen: ``wait`` (``flush``, ``close``,
interpreter exit) raises ``Undelivered`` with every message refused or left unconfirmed.

Hand-overs are batched: the message that finds the batch empty wakes the I/O thread, which takes every message
queued by the time it runs, so a busy loop costs one wake-up per batch rather than one per message.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import itertools
import threading
import time
from typing import Any

from .comm import Outgoing, warn_unconsumed
from .errors import BrokerUnavailable, DeadlineExceeded, Undelivered
from .transports import Transport

__all__ = ["Failure", "Outbox"]


class Failure:
    """One message that was not delivered, and why."""

    __slots__ = ("correlation_id", "error", "kind", "target", "task_id")

    def __init__(self, message: Outgoing, error: BaseException) -> None:
        self.kind, self.target, self.correlation_id = message.kind, message.target, message.correlation_id
        self.task_id = message.message_id or None  # a task's id; None for a broadcast
        self.error = error

    def __str__(self) -> str:
        what = f"task {self.task_id} to {self.target!r}" if self.kind == "task" else f"broadcast {self.target!r}"
        return f"{what} (correlation id {self.correlation_id}): {type(self.error).__name__}: {self.error}"

    __repr__ = __str__


class Outbox:
    """Sends handed over by one thread (or several) and carried out on ``loop``; see the module docstring."""

    def __init__(
        self, transport: Transport, loop: asyncio.AbstractEventLoop, window: int, loop_thread: threading.Thread
    ) -> None:
        self._transport = transport
        self._loop = loop
        self._loop_thread = loop_thread
        self.window = window
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)  # a send settled, for callers waiting on room or on flush
        self._waiting = 0  # callers waiting on _changed
        self._batch: list[tuple[int, Outgoing]] = []  # handed over, not yet taken by the loop
        self._pending: dict[int, tuple[Outgoing, concurrent.futures.Future[None] | None]] = {}  # not yet settled
        self._failures: list[Failure] = []
        self._keys = itertools.count()
        self._closed = False
        self.wakeups = 0  # of the I/O thread: one per batch

    @property
    def pending(self) -> int:
        """Messages handed over and not yet confirmed or failed."""
        return len(self._pending)

    def put(self, message: Outgoing, waiter: concurrent.futures.Future[None] | None = None) -> None:
        """Hand ``message`` over; block while the window is full. With ``waiter``, its outcome goes there (the
        caller asked to wait for it) rather than to the next ``wait``."""
        key = next(self._keys)
        with self._lock:
            if self._closed:
                raise BrokerUnavailable("this client was closed")
            if len(self._pending) >= self.window:
                self._wait_for(lambda: len(self._pending) < self.window, None, "room in the send window")
            self._pending[key] = (message, waiter)
            self._batch.append((key, message))
            if len(self._batch) > 1:
                return  # the I/O thread is woken already and takes this one with the others
            self.wakeups += 1
        try:
            self._loop.call_soon_threadsafe(self._drain)
        except RuntimeError:  # the loop was closed under us
            self._settled(key, None, BrokerUnavailable("the client's connection was closed"))

    def wait(self, timeout: float | None) -> None:
        """Wait until every message handed over so far is confirmed or failed (up to ``timeout`` seconds), then
        raise ``Undelivered`` with the failures since the last ``wait`` (and forget them)."""
        with self._lock:
            unconfirmed: list[Outgoing] = []
            try:
                self._wait_for(lambda: not self._pending, timeout, "every confirm")
            except DeadlineExceeded:
                unconfirmed = [message for message, _ in self._pending.values()]
            failures, self._failures = self._failures, []
        if failures or unconfirmed:
            raise Undelivered(failures, unconfirmed=len(unconfirmed))

    def close(self, timeout: float) -> Undelivered | None:
        """Take no more messages, wait up to ``timeout`` for those handed over, give up the rest (the connection
        closes without them) and return every failure not reported yet, if any."""
        with self._lock:
            self._closed = True
            with contextlib.suppress(DeadlineExceeded):
                self._wait_for(lambda: not self._pending, timeout, "every confirm")
            keys = list(self._pending)
        for key in keys:
            self._settled(key, None, BrokerUnavailable(
                f"no confirm from the broker within {timeout:g} s, and the client was closed"))
        with self._lock:
            failures, self._failures = self._failures, []
        return Undelivered(failures) if failures else None

    # -- on the loop --------------------------------------------------------------------------------------------
    def _drain(self) -> None:
        with self._lock:
            batch, self._batch = self._batch, []
        transport = self._transport
        for key, message in batch:
            done = functools.partial(self._settled, key)
            try:
                if message.kind == "task":
                    transport.start_task(message.target, message.body, correlation_id=message.correlation_id,
                                         headers=message.headers, done=done, priority=message.priority,
                                         message_id=message.message_id, delay=message.delay)
                else:
                    transport.start_broadcast(message.body, headers=message.headers, done=done)
            except Exception as exc:  # a closed transport, a bug: reported with the message, never lost
                done(None, exc)

    def _settled(self, key: int, result: Any, error: BaseException | None) -> None:
        with self._lock:
            entry = self._pending.pop(key, None)
            if entry is None:
                return
            message, waiter = entry
            if error is not None and waiter is None:
                self._failures.append(Failure(message, error))
            if self._waiting:
                self._changed.notify_all()
        if waiter is not None:
            if error is None:
                waiter.set_result(None)
            else:
                waiter.set_exception(error)
        if result == 0 and message.kind == "task":
            warn_unconsumed(message.name, message.target)

    # -- internals ----------------------------------------------------------------------------------------------
    def _wait_for(self, ready: Any, timeout: float | None, what: str) -> None:
        """With the lock held: wait until ``ready()``, or raise ``DeadlineExceeded`` after ``timeout``."""
        if threading.current_thread() is self._loop_thread:
            raise RuntimeError("waiting for the client's confirms on its own I/O thread would deadlock it")
        deadline = None if timeout is None else time.monotonic() + timeout
        self._waiting += 1
        try:
            while not ready():
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise DeadlineExceeded(f"no {what} within {timeout:g} s")
                if self._loop.is_closed():
                    raise BrokerUnavailable("the client's connection was closed")
                # Bounded, so a loop closed under a waiter is noticed.
                self._changed.wait(1.0 if left is None else min(left, 1.0))
        finally:
            self._waiting -= 1
