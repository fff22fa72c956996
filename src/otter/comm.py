"""``Communicator``: kiwipy's communicator interface on an Otter transport; what handlers receive as ``comm``.

It is thread-safe: a plain handler running in the worker's thread pool can call ``comm.rpc_send(...).result()``
(the call runs on the event loop while the thread waits), and an ``async def`` handler can ``await`` the same call.
Every call has a deadline, so no ``.result()`` waits forever.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
import uuid
from collections.abc import Coroutine
from typing import Any

import kiwipy

from . import protocol
from .codec import JsonCodec
from .errors import BrokerUnavailable, ConfigurationError
from .futures import CallFuture
from .routing import check_name
from .transports import Transport

__all__ = ["Communicator"]

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
    ) -> None:
        self.transport = transport
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
    async def call(self, name: str, data: Any = None, *, timeout: float | None = None) -> Any:
        """Call the RPC ``name`` and return its result, or raise the typed error it replied with."""
        self._check_open()
        check_name(name, "RPC")
        timeout = self.rpc_timeout if timeout is None else float(timeout)
        body = self.codec.encode(data)
        headers = {protocol.DEADLINE_HEADER: protocol.deadline_ms(time.time() + timeout)}
        reply = await self.transport.call(
            name, body, correlation_id=self._next_id(), timeout=timeout, headers=headers
        )
        return protocol.raise_for_reply(self.codec.decode(reply.body, reply.content_type))

    async def send_task(self, name: str | None, body: Any = None) -> None:
        """Queue a task (``name=None``: the default queue) and return once the broker has it."""
        self._check_open()
        if name is not None:
            check_name(name, "task")
        queue = name or self.transport.topology.default_task_queue  # type: ignore[attr-defined]
        payload = self.codec.encode(protocol.task_body(body, no_reply=True))
        await self.transport.publish_task(queue, payload, correlation_id=self._next_id())

    async def send_broadcast(
        self, body: Any, sender: Any = None, subject: str | None = None, correlation_id: Any = None
    ) -> bool:
        self._check_open()
        message = protocol.Broadcast(body, sender, subject, correlation_id).to_wire()
        await self.transport.publish_broadcast(self.codec.encode(message))
        return True

    # -- kiwipy's interface: thread-safe, returns futures -------------------------------------------------------
    def rpc_send(self, recipient_id: str, msg: Any = None, *, timeout: float | None = None) -> CallFuture:
        wait = (self.rpc_timeout if timeout is None else timeout) + 1.0
        return self._submit(self.call(recipient_id, msg, timeout=timeout), wait)

    def task_send(self, task: Any, no_reply: bool = True, *, name: str | None = None) -> CallFuture:
        """Queue ``task`` on the queue ``name`` (default: the default task queue); resolves to None once the
        broker confirmed it. Otter tasks do not send results back; use an RPC when you need one."""
        if not no_reply:
            raise ConfigurationError("Otter tasks are fire-and-forget (no_reply=True); use rpc_send for a result")
        return self._submit(self.send_task(name, task), self._send_wait())

    def broadcast_send(
        self, body: Any, sender: Any = None, subject: str | None = None, correlation_id: Any = None
    ) -> CallFuture:
        return self._submit(self.send_broadcast(body, sender, subject, correlation_id), self._send_wait())

    def is_closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        self._closed = True

    def add_rpc_subscriber(self, subscriber: Any, identifier: Any = None) -> Any:
        raise ConfigurationError(_SUBSCRIBE_HINT)

    def remove_rpc_subscriber(self, identifier: Any) -> None:
        raise ConfigurationError(_SUBSCRIBE_HINT)

    def add_task_subscriber(self, subscriber: Any, identifier: Any = None) -> Any:
        raise ConfigurationError(_SUBSCRIBE_HINT)

    def remove_task_subscriber(self, identifier: Any) -> None:
        raise ConfigurationError(_SUBSCRIBE_HINT)

    def add_broadcast_subscriber(self, subscriber: Any, identifier: Any = None) -> Any:
        raise ConfigurationError(_SUBSCRIBE_HINT)

    def remove_broadcast_subscriber(self, identifier: Any) -> None:
        raise ConfigurationError(_SUBSCRIBE_HINT)

    # -- internals ----------------------------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise BrokerUnavailable("this communicator was closed")

    def _next_id(self) -> str:
        return f"{self._id_prefix}{next(self._id_counter):012x}"

    def _send_wait(self) -> float:
        """How long ``.result()`` waits for a send: the transport's own retry deadline (PUBLISH_TIMEOUT) and a
        margin, so the transport's clear ``BrokerUnavailable`` arrives before a bare timeout would."""
        return float(getattr(self.transport, "publish_timeout", self.rpc_timeout)) + 5.0

    def _submit(self, coro: Coroutine[Any, Any, Any], default_timeout: float) -> CallFuture:
        future = CallFuture(default_timeout, self._loop_thread)

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


def _copy_outcome(task: asyncio.Task[Any], future: CallFuture) -> None:
    if future.done():
        return
    if task.cancelled():  # the communicator's loop or connection went away under the call
        future.set_exception(BrokerUnavailable("the connection was closed before the call completed"))
    elif (exc := task.exception()) is not None:
        future.set_exception(exc)
    else:
        future.set_result(task.result())
