"""``Communicator``: kiwipy's communicator interface on an Otter transport; what handlers receive as ``comm``.

It is thread-safe: a plain handler running in the worker's thread pool can call ``comm.rpc_send(...).result()``
(the call runs on the event loop while the thread waits), and an ``async def`` handler can ``await`` the same call.
Every call has a deadline, so no ``.result()`` waits forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import threading
import time
import uuid
from collections.abc import Callable, Coroutine, Mapping
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, overload

import kiwipy

from . import protocol
from .codec import JsonCodec
from .delays import delay_seconds
from .errors import BrokerUnavailable, ConfigurationError, DeadlineExceeded
from .futures import CallFuture, TaskFuture
from .limits import check_priority
from .logs import current_message
from .routing import check_name
from .transports import Transport
from .transports.base import OnSent

if TYPE_CHECKING:
    from .tracing import Tracing

__all__ = ["Communicator", "Outgoing", "check_task_id", "task_target", "warn_unconsumed"]

log = logging.getLogger("otter.comm")

_NOT_TRACED = contextlib.nullcontext()  # in place of a span when tracing is off

_SUBSCRIBE_HINT = (
    "Otter serves handlers registered on an app: use @app.add_rpc / add_task / add_broadcast "
    "(or a Blueprint) and app.run(); a Communicator only sends"
)


class Communicator(kiwipy.Communicator):  # type: ignore[misc]  # kiwipy ships no type hints
    """Send RPCs, tasks and broadcasts; ``rpc_send`` returns a future you can ``.result()`` or ``await``.

    >>> comm.rpc_send("example.hash", "otter").result()
    {'result': '...'}
    """

    def __init__(
        self,
        transport: Transport,
        codec: JsonCodec,
        loop: asyncio.AbstractEventLoop,
        *,
        rpc_timeout: float,
        loop_thread: threading.Thread | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        self.transport = transport
        self.tracing = tracing
        self.codec = codec
        self.loop = loop
        self.rpc_timeout = rpc_timeout
        self._loop_thread = loop_thread
        self._closed = False
        # Correlation ids: a random prefix per communicator and a counter, unique like a uuid4 each but ~2 µs
        # cheaper per message.
        self._id_prefix = uuid.uuid4().hex[:20]
        self._id_counter = itertools.count()

    def __repr__(self) -> str:
        return f"<otter.Communicator {self.transport.url}>"

    # -- coroutines (run on self.loop) --------------------------------------------------------------------------
    async def call(
        self, name: str, data: Any = None, *, timeout: float | None = None, headers: Mapping[str, Any] | None = None
    ) -> Any:
        """Call the RPC ``name`` and return its result, or raise the typed error it replied with; ``headers`` reach
        the handler's hooks as ``ctx.headers``."""
        self._check_open()
        check_name(name, "RPC")
        timeout = self.rpc_timeout if timeout is None else float(timeout)
        caller = current_message.get()  # made from inside a handler: never outlive the handler's own caller
        if caller is not None and (left := caller.time_left()) is not None:
            if left <= 0:
                raise DeadlineExceeded(f"not calling {name!r}: the deadline of the {caller.kind} {caller.route!r} "
                                       f"that makes this call has passed")
            timeout = min(timeout, left)
        body = self.codec.encode(data, what="RPC request")
        sent = protocol.caller_headers(headers)
        sent[protocol.DEADLINE_HEADER] = protocol.deadline_ms(time.time() + timeout)
        correlation_id = self._next_id()
        with self.tracing.sending("call", name, name, correlation_id, sent) if self.tracing else _NOT_TRACED:
            reply = await self.transport.call(name, body, correlation_id=correlation_id, timeout=timeout, headers=sent)
            return protocol.raise_for_reply(self.codec.decode(reply.body, reply.content_type))

    async def send_task(
        self, name: str | None, body: Any = None, headers: Mapping[str, Any] | None = None, *,
        task_id: str | None = None, delay: int = 0, reply: bool = False, correlation_id: str | None = None,
        priority: int | None = None,
    ) -> str:
        """Queue a task (``name=None``: the default queue) and return its id once the broker has it; ``delay``
        whole seconds (``delays.delay_seconds``) hold it in the broker first. The first send to a queue that no
        worker consumes says so in the log (the task waits there; is the name right?); so does the first with a
        ``priority`` (0-255) to a queue that ignores priorities (``otter.limits``)."""
        task = self._task_parts(name, body, headers, task_id, reply, correlation_id, priority)
        queue, payload, sent, correlation_id = task.target, task.body, task.headers or {}, task.correlation_id
        with self.tracing.sending("publish", queue, queue, correlation_id, sent) if self.tracing else _NOT_TRACED:
            if self.transport.pipelines and not delay and not reply:
                consumers = await self._confirmed(lambda done: self.transport.start_task(
                    queue, payload, correlation_id=correlation_id, headers=sent or None, done=done,
                    message_id=task.message_id, priority=priority))
            else:
                consumers = await self.transport.publish_task(
                    queue, payload, correlation_id=correlation_id, headers=sent or None, message_id=task.message_id,
                    delay=delay, reply=reply, priority=priority)
        if consumers == 0:
            warn_unconsumed(name, queue)
        return task.message_id

    async def task_result(
        self, name: str | None, body: Any = None, headers: Mapping[str, Any] | None = None, *,
        task_id: str, delay: int = 0, timeout: float | None = None, priority: int | None = None,
    ) -> Any:
        """Queue a task that asks for its outcome, and return its handler's result (or raise its typed error, the
        same as an RPC's), waiting at most ``timeout`` seconds (default ``RPC_TIMEOUT``) from when it is due. Only
        a task's final outcome replies: not an attempt that will be retried."""
        wait = delay + (self.rpc_timeout if timeout is None else float(timeout))
        correlation_id = self._next_id()
        reply = self.transport.expect_reply(correlation_id)
        try:
            await self.send_task(name, body, headers, task_id=task_id, delay=delay, reply=True,
                                 correlation_id=correlation_id, priority=priority)
            try:
                answer = await asyncio.wait_for(reply, wait)
            except asyncio.TimeoutError:
                raise DeadlineExceeded(f"no result from the task {task_id} ({name or 'nameless'}) within {wait:g} s; "
                                       f"it may still run, and its result will be dropped") from None
        finally:
            self.transport.forget_reply(correlation_id)
        return protocol.raise_for_reply(self.codec.decode(answer.body, answer.content_type))

    def outgoing_task(
        self, name: str | None, body: Any, headers: Mapping[str, Any] | None, task_id: str | None = None,
        delay: int = 0, priority: int | None = None,
    ) -> Outgoing:
        """A task checked and encoded in the caller's thread (so a bad name or body raises there, at once), for the
        sync ``Client``'s pipelined send. With tracing, its publish span is a zero-length one that carries the trace
        context into the message; the confirm and its outcome come later, outside it (``Undelivered``)."""
        task = self._task_parts(name, body, headers, task_id, priority=priority)
        sent = task.headers or {}
        if self.tracing:
            with self.tracing.sending("publish", task.target, task.target, task.correlation_id, sent):
                pass
        task.headers, task.delay = sent or None, delay
        return task

    def outgoing_broadcast(
        self, body: Any, sender: Any, subject: str | None, correlation_id: Any, headers: Mapping[str, Any] | None
    ) -> Outgoing:
        """A broadcast checked and encoded in the caller's thread; see ``outgoing_task``."""
        payload, sent = self._broadcast_parts(body, sender, subject, correlation_id, headers)
        if self.tracing:
            with self._broadcast_span(subject, correlation_id, sent):
                pass
        return Outgoing("broadcast", subject or "", str(correlation_id or ""), payload, sent or None, None)

    async def send_broadcast(
        self, body: Any, sender: Any = None, subject: str | None = None, correlation_id: Any = None,
        headers: Mapping[str, Any] | None = None,
    ) -> bool:
        """Send a broadcast and wait for the broker's confirm; ``broadcast_send`` is the thread-safe form."""
        payload, sent = self._broadcast_parts(body, sender, subject, correlation_id, headers)
        with self._broadcast_span(subject, correlation_id, sent) if self.tracing else _NOT_TRACED:
            if self.transport.pipelines:
                await self._confirmed(lambda done: self.transport.start_broadcast(payload, headers=sent or None,
                                                                                  done=done))
            else:
                await self.transport.publish_broadcast(payload, headers=sent or None)
        return True

    def _task_parts(
        self, name: str | None, body: Any, headers: Mapping[str, Any] | None, task_id: str | None = None,
        reply: bool = False, correlation_id: str | None = None, priority: int | None = None,
    ) -> Outgoing:
        """A task checked and encoded: its queue, payload, headers (tracing may add to them), correlation id and id
        (``task_id``, else the correlation id: 32 hex digits, unique as a uuid4's)."""
        self._check_open()
        if name is not None:
            check_name(name, "task")
        if task_id is not None:
            check_task_id(task_id)
        if priority is not None:
            check_priority(priority)
        queue = name or self.transport.topology.default_task_queue  # type: ignore[attr-defined]
        payload = self.codec.encode(protocol.task_body(body, no_reply=not reply), what="task body", payload=body)
        correlation_id = correlation_id or self._next_id()
        return Outgoing("task", queue, correlation_id, payload, protocol.caller_headers(headers), name,
                        task_id or correlation_id, priority=priority)

    def _broadcast_parts(
        self, body: Any, sender: Any, subject: str | None, correlation_id: Any, headers: Mapping[str, Any] | None
    ) -> tuple[bytes, dict[str, Any]]:
        """A broadcast checked and encoded: its payload and headers (tracing may add to them)."""
        self._check_open()
        message = protocol.Broadcast(body, sender, subject, correlation_id).to_wire()
        return self.codec.encode(message, what="broadcast body", payload=body), protocol.caller_headers(headers)

    async def _confirmed(self, start: Callable[[OnSent], None]) -> Any:
        """Start a send the transport pipelines (in order, no task of its own) and wait for its outcome, at most
        ``_send_wait`` seconds (the transport retries for PUBLISH_TIMEOUT; this bounds a confirm that never came)."""
        loop = asyncio.get_running_loop()
        outcome: asyncio.Future[Any] = loop.create_future()

        def done(result: Any, error: BaseException | None) -> None:
            if not outcome.done():
                outcome.set_result(result) if error is None else outcome.set_exception(error)

        start(done)
        wait = self._send_wait()
        timer = loop.call_later(wait, done, None, BrokerUnavailable(f"no confirm from the broker within {wait:g} s"))
        try:
            return await outcome
        finally:
            timer.cancel()

    # -- kiwipy's interface: thread-safe, returns futures -------------------------------------------------------
    def rpc_send(
        self, recipient_id: str, msg: Any = None, *, timeout: float | None = None,
        headers: Mapping[str, Any] | None = None,
    ) -> CallFuture:
        """kiwipy's call: send ``msg`` to the RPC ``recipient_id``; returns a future of the reply (``.result()``
        in a plain handler, ``await`` in an ``async def`` one). Raises as ``Client.rpc`` does."""
        wait = (self.rpc_timeout if timeout is None else timeout) + 1.0
        return self._submit(self.call(recipient_id, msg, timeout=timeout, headers=headers), wait)

    def task(
        self, *args: Any, headers: Mapping[str, Any] | None = None, task_id: str | None = None,
        delay: float | timedelta | None = None, eta: datetime | None = None, result: bool = False,
        timeout: float | None = None, priority: int | None = None, **kwargs: Any,
    ) -> TaskFuture:
        """Queue a task, as ``Client.task`` does: ``comm.task(name, body)``, ``comm.task(name)``, or the nameless
        ``comm.task(body=...)``. Returns a ``TaskFuture`` at once (its ``task_id`` is known then) that resolves to
        the task's id once the broker has it; with ``result=True``, to the handler's result (``.result()`` in a
        plain handler, ``await`` in an ``async def`` one). ``delay=``/``eta=`` hold it in the broker until then.
        ``priority`` (0-255) as ``Client.task``'s.

        >>> comm.task("mail.send", {"to": "a@example.com"}).result()
        '5f0c...'
        """
        name, body = task_target(args, kwargs)
        if priority is not None:
            check_priority(priority)  # here, in the caller's thread, rather than in the future
        seconds = delay_seconds(delay, eta)
        task_id = task_id if task_id is not None else self._next_id()
        check_task_id(task_id)
        what = f"the task {task_id} to {name!r}" if name else f"the nameless task {task_id}"
        if result:
            wait = seconds + (self.rpc_timeout if timeout is None else float(timeout)) + 1.0
            return self._submit(self.task_result(name, body, headers, task_id=task_id, delay=seconds,
                                                 timeout=timeout, priority=priority), wait, what, task_id)
        return self._submit(self.send_task(name, body, headers, task_id=task_id, delay=seconds, priority=priority),
                            self._send_wait(), what, task_id)

    def task_send(self, task: Any, no_reply: bool = True, *, name: str | None = None) -> TaskFuture:
        """kiwipy's call: queue ``task`` (the body) on the default task queue, or on ``name``. With ``no_reply``
        (the default here) the future resolves to None once the broker confirmed it; with ``no_reply=False``, to
        the handler's result, as kiwipy's does (waiting at most ``RPC_TIMEOUT``). For a named task,
        ``comm.task(name, body)`` reads better."""
        if not isinstance(no_reply, bool):
            raise TypeError(
                f"task_send(task, no_reply) takes the body first and no_reply as True/False, got no_reply="
                f"{no_reply!r:.40}; to send a named task use comm.task({task!r:.40}, body)"
            )
        task_id = self._next_id()
        what = f"the task {task_id} to {name!r}" if name else f"the nameless task {task_id}"
        if not no_reply:
            return self._submit(self.task_result(name, task, task_id=task_id), self.rpc_timeout + 1.0, what, task_id)
        return self._submit(self._sent(self.send_task(name, task, task_id=task_id)), self._send_wait(), what,
                            task_id)

    def broadcast_send(
        self, body: Any, sender: Any = None, subject: str | None = None, correlation_id: Any = None,
        headers: Mapping[str, Any] | None = None,
    ) -> CallFuture:
        """kiwipy's call: broadcast ``body`` to every app whose filter matches ``subject``; the future resolves once
        the broker has confirmed it."""
        return self._submit(self.send_broadcast(body, sender, subject, correlation_id, headers), self._send_wait(),
                            f"the broadcast {subject!r}")

    def is_closed(self) -> bool:
        """Whether ``close()`` was called (kiwipy's interface)."""
        return self._closed

    def close(self) -> None:
        """Mark the communicator closed (kiwipy's interface); the connection belongs to the client or worker."""
        self._closed = True

    def add_rpc_subscriber(self, subscriber: Any, identifier: Any = None) -> Any:
        """Not supported: Otter serves handlers registered on an app; raises ``ConfigurationError`` saying so."""
        raise ConfigurationError(_SUBSCRIBE_HINT)

    def remove_rpc_subscriber(self, identifier: Any) -> None:
        """Not supported, as ``add_*_subscriber``."""
        raise ConfigurationError(_SUBSCRIBE_HINT)

    def add_task_subscriber(self, subscriber: Any, identifier: Any = None) -> Any:
        """Not supported: Otter serves handlers registered on an app; raises ``ConfigurationError`` saying so."""
        raise ConfigurationError(_SUBSCRIBE_HINT)

    def remove_task_subscriber(self, identifier: Any) -> None:
        """Not supported, as ``add_*_subscriber``."""
        raise ConfigurationError(_SUBSCRIBE_HINT)

    def add_broadcast_subscriber(self, subscriber: Any, identifier: Any = None) -> Any:
        """Not supported: Otter serves handlers registered on an app; raises ``ConfigurationError`` saying so."""
        raise ConfigurationError(_SUBSCRIBE_HINT)

    def remove_broadcast_subscriber(self, identifier: Any) -> None:
        """Not supported, as ``add_*_subscriber``."""
        raise ConfigurationError(_SUBSCRIBE_HINT)

    # -- internals ----------------------------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise BrokerUnavailable("this communicator was closed")

    def _broadcast_span(self, subject: str | None, correlation_id: Any, headers: dict[str, Any]) -> Any:
        assert self.tracing is not None
        destination = subject or self.transport.topology.message_exchange  # type: ignore[attr-defined]
        return self.tracing.sending("publish", destination, subject or "", str(correlation_id or ""), headers)

    @staticmethod
    async def _sent(sending: Coroutine[Any, Any, Any]) -> None:
        """kiwipy's ``task_send(no_reply=True)`` future resolves to None, not to the id."""
        await sending

    def _next_id(self) -> str:
        return f"{self._id_prefix}{next(self._id_counter):012x}"

    def _send_wait(self) -> float:
        """How long ``.result()`` waits for a send: the transport's own retry deadline (PUBLISH_TIMEOUT) and a
        margin, so the transport's clear ``BrokerUnavailable`` arrives before a bare timeout would."""
        return float(getattr(self.transport, "publish_timeout", self.rpc_timeout)) + 5.0

    @overload
    def _submit(self, coro: Coroutine[Any, Any, Any], default_timeout: float, what: str | None = None) -> CallFuture:
        ...
    @overload
    def _submit(self, coro: Coroutine[Any, Any, Any], default_timeout: float, what: str | None,
                task_id: str) -> TaskFuture: ...

    def _submit(self, coro: Coroutine[Any, Any, Any], default_timeout: float, what: str | None = None,
                task_id: str | None = None) -> CallFuture:
        future = (CallFuture(default_timeout, self._loop_thread, what) if task_id is None else
                  TaskFuture(task_id, default_timeout, self._loop_thread, what))

        def start() -> None:
            task = self.loop.create_task(coro)
            task.add_done_callback(lambda done: _copy_outcome(done, future))

        if self._on_loop():
            start()
        elif self.loop.is_closed():
            coro.close()
            future.set_exception(BrokerUnavailable("the connection's event loop has stopped"))
        else:
            self.loop.call_soon_threadsafe(start)
        return future

    def _on_loop(self) -> bool:
        try:
            return asyncio.get_running_loop() is self.loop
        except RuntimeError:
            return False


class Outgoing:
    """A message encoded and ready to hand to the transport: a ``kind`` ("task" or "broadcast") and its ``target``
    (the task queue, or the broadcast's subject), for saying which one failed; a task's id (``message_id``) and
    ``delay`` (whole seconds)."""

    __slots__ = ("body", "correlation_id", "delay", "headers", "kind", "message_id", "name", "priority", "target")

    def __init__(self, kind: str, target: str, correlation_id: str, body: bytes,
                 headers: dict[str, Any] | None, name: str | None, message_id: str = "", delay: int = 0,
                 priority: int | None = None) -> None:
        self.kind, self.target, self.correlation_id = kind, target, correlation_id
        self.body, self.headers, self.name = body, headers, name
        self.message_id, self.delay, self.priority = message_id, delay, priority

    def __repr__(self) -> str:
        if self.kind == "task":
            return f"task {self.message_id} to {self.target!r}"
        return f"broadcast {self.target!r} (correlation id {self.correlation_id or '-'})"


def warn_unconsumed(name: str | None, queue: str) -> None:
    what = f"task {name!r}" if name is not None else f"nameless task (default queue {queue!r})"
    log.warning("no worker consumes the %s yet: it waits in its queue until one starts (is the name "
                "right, and is the service that handles it running?)", what)


_NO_BODY = object()


def task_target(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[str | None, Any]:
    """Where a ``task(...)`` call goes and what it carries: ``(name, body)``, ``name=None`` for the default queue.

    One way everywhere (``Client``, ``AsyncClient``, ``comm``): ``task(name, body)`` and ``task(name)`` send a named
    task; ``task(body=...)`` a nameless one; and the seed's ``task(body)`` with a body that is not a string (a
    lone string is a task's name, so ``task("billing.charge")`` does what it says).
    """
    body = kwargs.pop("body", _NO_BODY)
    if kwargs:
        raise TypeError(f"task() got unexpected keyword arguments {sorted(kwargs)}{_TASK_HINT}")
    if body is not _NO_BODY:
        if len(args) > 1:
            raise TypeError(f"task() got the body twice{_TASK_HINT}")
        name = args[0] if args else None
        if name is not None and not isinstance(name, str):
            raise TypeError(f"a task's name is a string, got {type(name).__name__}{_TASK_HINT}")
        return name, body
    if len(args) == 2:
        if not isinstance(args[0], str):
            raise TypeError(f"a task's name is a string, got {type(args[0]).__name__}{_TASK_HINT}")
        return args[0], args[1]
    if len(args) == 1:
        return (args[0], None) if isinstance(args[0], str) else (None, args[0])
    raise TypeError(f"task() takes a name, a body or both{_TASK_HINT}")


def check_task_id(task_id: Any) -> None:
    """A caller's ``task_id=``: a non-empty string that fits AMQP's ``message_id`` (at most 255 bytes)."""
    if not isinstance(task_id, str) or not task_id or len(task_id.encode("utf-8")) > 255:
        raise ValueError(f"task_id must be a non-empty string of at most 255 bytes, got {task_id!r:.60}")


_TASK_HINT = (
    "; use client.task(name, body) (comm.task in a handler) for a named task, or task(body=...) for a nameless one"
)


def _copy_outcome(task: asyncio.Task[Any], future: CallFuture) -> None:
    if future.done():
        return
    if task.cancelled():  # the communicator's loop or connection went away under the call
        future.set_exception(BrokerUnavailable("the connection was closed before the call completed"))
    elif (exc := task.exception()) is not None:
        if (what := future.unwatched_send) is not None:  # a handler's comm.task(...) nobody waits on: not silently
            log.error("%s failed and nobody was waiting for it (.result() or await): %s: %s", what,
                      type(exc).__name__, exc)
        future.set_exception(exc)
    else:
        future.set_result(task.result())
