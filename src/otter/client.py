"""``Client`` (for plain code, runs its own I/O thread) and ``AsyncClient`` (for coroutines, on your loop).

>>> client = Client("amqp://guest:guest@127.0.0.1/")
>>> if client.comm:                                   # None when the broker could not be reached
...     client.rpc("example.hash", "otter").result()
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import logging
import threading
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any, Literal, overload

from . import eventloop
from .codec import JsonCodec
from .comm import Communicator, check_task_id, task_target
from .config import ResolvedConfig, redact_url, resolve
from .delays import delay_seconds
from .errors import BrokerUnavailable, OtterError, Undelivered
from .futures import CallFuture, TaskFuture
from .outbox import Outbox
from .tracing import tracing_for
from .transports import Transport, open_transport

__all__ = ["AsyncClient", "Client"]

log = logging.getLogger("otter.client")

Headers = Mapping[str, Any] | None  # a caller's own message headers, seen by the service as ctx.headers
Delay = float | timedelta | None  # how long a task waits in the broker before it runs


def _client_config(url: str | None, config: dict[str, Any], timeout: float | None = None) -> ResolvedConfig:
    """``otter.config.resolve`` with the client's arguments (``url``, ``timeout`` as the default RPC deadline and the
    keyword arguments, as config keys in any case: ``rpc_timeout=5`` is ``RPC_TIMEOUT``); a client has no app
    config, so ``OTTER_*`` then the defaults fill the rest. A mistyped key is refused by the resolver."""
    arguments = {key.upper(): value for key, value in config.items()}
    arguments["BROKER_URL"] = url or arguments.get("BROKER_URL")
    if timeout is not None:
        arguments["RPC_TIMEOUT"] = float(timeout)
    return resolve(arguments)


def _communicator(
    transport: Transport, config: dict[str, Any], loop: asyncio.AbstractEventLoop, loop_thread: threading.Thread
) -> Communicator:
    return Communicator(
        transport,
        JsonCodec.from_config(config),
        loop,
        rpc_timeout=float(config["RPC_TIMEOUT"]),
        loop_thread=loop_thread,
        tracing=tracing_for(config),
    )


class Client:
    """Connects in the constructor; ``comm`` is the communicator, or ``None`` if the broker cannot be reached
    (``error`` then says why, and every call raises ``BrokerUnavailable`` with that message).

    ``task`` and ``broadcast`` return once the message is handed to the connection; the broker's confirms are
    awaited in a window of ``SEND_WINDOW`` messages (a full window blocks the caller), and ``flush()``, ``close()``
    and interpreter exit wait for all of them and raise (at exit: log) ``Undelivered`` for any the broker refused
    or did not confirm. ``wait=True`` waits for one message's own confirm and raises its error.
    """

    def __init__(self, url: str | None = None, *, timeout: float | None = None, **config: Any) -> None:
        self.config = _client_config(url, config, timeout)
        self.url = redact_url(self.config["BROKER_URL"])
        self.comm: Communicator | None = None
        self.error: OtterError | None = None
        self._loop = eventloop.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="otter-client", daemon=True)
        self._thread.start()
        self._transport: Transport | None = None
        try:
            self._transport = open_transport(self.config["BROKER_URL"], self.config)
            connecting = asyncio.run_coroutine_threadsafe(self._transport.connect(), self._loop)
            try:
                connecting.result(float(self.config["CONNECT_TIMEOUT"]) + 5)
            except concurrent.futures.TimeoutError:
                connecting.cancel()  # no connection may open behind a client that reported failure
                raise BrokerUnavailable(f"cannot connect to {self.url}: no answer within the connect timeout") from None
        except OtterError as exc:
            self.error = exc
            log.error("%s", exc)
        except Exception as exc:  # an unexpected failure still leaves a usable, falsy client
            self.error = BrokerUnavailable(f"cannot connect to {self.url}: {type(exc).__name__}: {exc}")
            log.error("%s", self.error)
        else:
            self.comm = _communicator(self._transport, self.config, self._loop, self._thread)
            self._outbox = Outbox(self._transport, self._loop, int(self.config["SEND_WINDOW"]), self._thread)
            _OPEN.add(self)

    def __repr__(self) -> str:
        state = "connected" if self.comm else "not connected"
        return f"<otter.Client {self.url} {state}>"

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def rpc(
        self, name: str, data: Any = None, *, timeout: float | None = None, headers: Mapping[str, Any] | None = None
    ) -> CallFuture:
        """Call the RPC ``name``; ``.result()`` returns the reply or raises a typed ``OtterError``. ``headers`` (an
        auth token, a tenant) reach the service's hooks as ``ctx.headers``."""
        return self._connected().rpc_send(name, data, timeout=timeout, headers=headers)

    @overload
    def task(self, name: str, body: Any = None, /, *, headers: Headers = None, wait: bool = False,
             task_id: str | None = None, delay: Delay = None, eta: datetime | None = None,
             priority: int | None = None, result: Literal[False] = False) -> str: ...
    @overload
    def task(self, body: Any, /, *, headers: Headers = None, wait: bool = False, task_id: str | None = None,
             delay: Delay = None, eta: datetime | None = None, priority: int | None = None,
             result: Literal[False] = False) -> str: ...
    @overload
    def task(self, *, body: Any, headers: Headers = None, wait: bool = False, task_id: str | None = None,
             delay: Delay = None, eta: datetime | None = None, priority: int | None = None,
             result: Literal[False] = False) -> str: ...
    @overload
    def task(self, name: str, /, *, body: Any, headers: Headers = None, wait: bool = False,
             task_id: str | None = None, delay: Delay = None, eta: datetime | None = None,
             priority: int | None = None, result: Literal[False] = False) -> str: ...
    @overload
    def task(self, *args: Any, headers: Headers = None, task_id: str | None = None, delay: Delay = None,
             eta: datetime | None = None, priority: int | None = None, result: Literal[True],
             timeout: float | None = None, **kwargs: Any) -> TaskFuture: ...

    def task(
        self, *args: Any, headers: Headers = None, wait: bool = False, task_id: str | None = None,
        delay: Delay = None, eta: datetime | None = None, priority: int | None = None, result: bool = False,
        timeout: float | None = None, **kwargs: Any,
    ) -> str | TaskFuture:
        """Queue a task and return its id (``task_id=``, else a new one): return once it is handed to the
        connection (``wait=True``: once the broker confirmed it, raising what it refused). ``flush()`` or
        ``close()`` then wait for every confirm and raise ``Undelivered`` for the tasks that failed; until the
        window of unconfirmed tasks has room, this call blocks.

        ``task(name, body)`` and ``task(name)`` send the named task; ``task(body=...)`` a nameless one, to the default
        queue; the seed's ``task(5)`` too, when the lone argument is not a string (a lone string is a name).
        ``delay=`` (seconds, or a ``timedelta``) or ``eta=`` (an aware ``datetime``) hold the task in the broker
        until then (rounded up to whole seconds, at most about 12 days). ``result=True`` returns a ``TaskFuture``
        instead, whose ``.result()`` is the handler's result (or its typed error), waited for at most ``timeout``
        seconds (default ``RPC_TIMEOUT``) from when the task is due.

        ``priority`` (0-255, AMQP's message priority) orders the task in a queue declared for priorities
        (``add_task(..., max_priority=N)``; quorum queues on RabbitMQ 4+); the first one sent to a queue that
        ignores it logs a warning (see docs/task-limits.md).
        """
        name, body = task_target(args, kwargs)
        comm = self._connected()
        seconds = delay_seconds(delay, eta)
        if result:
            return comm.task(name, body=body, headers=headers, task_id=task_id, delay=seconds, result=True,
                             timeout=timeout, priority=priority)
        message = comm.outgoing_task(name, body, headers, task_id, seconds, priority)
        self._send(comm, message, wait)
        return message.message_id

    def broadcast(
        self, body: Any, subject: str | None = None, sender: Any = None, correlation_id: Any = None, *,
        headers: Headers = None, wait: bool = False,
    ) -> None:
        """Send ``body`` to every app with a broadcast filter matching ``subject``; handed over and confirmed
        later, as ``task`` (``wait=True``: once the broker confirmed it)."""
        comm = self._connected()
        self._send(comm, comm.outgoing_broadcast(body, sender, subject, correlation_id, headers), wait)

    def flush(self, timeout: float | None = None) -> None:
        """Wait until the broker confirmed every task and broadcast sent so far (``timeout`` seconds at most;
        None: as long as it takes, which the transport bounds by ``PUBLISH_TIMEOUT`` per message); raise
        ``Undelivered`` naming those it refused or that could not be confirmed since the last flush."""
        if self.comm is not None:
            self._outbox.wait(timeout)

    def close(self) -> None:
        """Wait for every outstanding confirm (up to ``PUBLISH_TIMEOUT`` and a margin), close the connection and
        the client's I/O thread, and raise ``Undelivered`` if a message handed over was not delivered; closing twice
        is harmless."""
        if self._loop.is_closed():
            return
        _OPEN.discard(self)
        undelivered: Undelivered | None = None
        if self.comm is not None:
            self.comm.close()  # sends from other threads from now on raise BrokerUnavailable
            undelivered = self._outbox.close(float(self.config["PUBLISH_TIMEOUT"]) + 5.0)
        if self._transport is not None:
            asyncio.run_coroutine_threadsafe(self._transport.close(), self._loop).result(10)
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(_end_tasks(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()
        if undelivered is not None:
            raise undelivered

    def _send(self, comm: Communicator, message: Any, wait: bool) -> None:
        if not wait:
            self._outbox.put(message)
            return
        waiter = CallFuture(comm._send_wait(), self._thread)
        self._outbox.put(message, waiter)
        waiter.result()

    def _connected(self) -> Communicator:
        if self.comm is None:
            raise BrokerUnavailable(str(self.error) if self.error else f"not connected to {self.url}")
        return self.comm


async def _end_tasks() -> None:
    """Cancel what still runs on a closing client's loop (a send waiting for a broker that is gone) and let it end,
    so that every future waiting on it is told (``BrokerUnavailable``) rather than left pending."""
    tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    if tasks:
        await asyncio.wait(tasks, timeout=2.0)


# Clients not closed yet, held until they are (a client dropped without close() still has sends in flight):
# interpreter exit closes them, so what they handed over is confirmed or reported.
_OPEN: set[Client] = set()


@atexit.register
def _close_at_exit() -> None:
    for client in list(_OPEN):
        try:
            client.close()
        except Undelivered as exc:
            log.error("at exit, %s", exc)
        except Exception as exc:  # exit goes on; the reason is in the log
            log.error("at exit, closing %r failed: %s: %s", client, type(exc).__name__, exc)


class AsyncClient:
    """The same calls as ``Client``, as coroutines on the running loop.

    >>> async with AsyncClient("amqp://guest:guest@127.0.0.1/") as client:
    ...     reply = await client.rpc("example.hash", "otter")
    """

    def __init__(self, url: str | None = None, *, timeout: float | None = None, **config: Any) -> None:
        self.config = _client_config(url, config, timeout)
        self.url = redact_url(self.config["BROKER_URL"])
        self.comm: Communicator | None = None
        self._transport: Transport | None = None

    async def connect(self) -> AsyncClient:
        """Connect to the broker; ``async with AsyncClient(...)`` does it for you. Raises ``BrokerUnavailable`` or
        ``BrokerRefused`` saying why it could not."""
        self._transport = open_transport(self.config["BROKER_URL"], self.config)
        await self._transport.connect()
        self.comm = _communicator(self._transport, self.config, asyncio.get_running_loop(), threading.current_thread())
        return self

    async def __aenter__(self) -> AsyncClient:
        return await self.connect()

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.close()

    async def rpc(
        self, name: str, data: Any = None, *, timeout: float | None = None, headers: Headers = None
    ) -> Any:
        """Call the RPC ``name`` with ``data`` and return its reply; raises ``RemoteError``, ``ValidationError``,
        ``Unroutable`` or ``DeadlineExceeded`` (after ``timeout``, default ``RPC_TIMEOUT``), as ``Client.rpc`` does."""
        return await self._connected().call(name, data, timeout=timeout, headers=headers)

    @overload
    async def task(self, name: str, body: Any = None, /, *, headers: Headers = None, task_id: str | None = None,
                   delay: Delay = None, eta: datetime | None = None, priority: int | None = None,
                   result: Literal[False] = False) -> str: ...
    @overload
    async def task(self, body: Any, /, *, headers: Headers = None, task_id: str | None = None, delay: Delay = None,
                   eta: datetime | None = None, priority: int | None = None,
                   result: Literal[False] = False) -> str: ...
    @overload
    async def task(self, *, body: Any, headers: Headers = None, task_id: str | None = None, delay: Delay = None,
                   eta: datetime | None = None, priority: int | None = None,
                   result: Literal[False] = False) -> str: ...
    @overload
    async def task(self, name: str, /, *, body: Any, headers: Headers = None, task_id: str | None = None,
                   delay: Delay = None, eta: datetime | None = None, priority: int | None = None,
                   result: Literal[False] = False) -> str: ...
    @overload
    async def task(self, *args: Any, headers: Headers = None, task_id: str | None = None, delay: Delay = None,
                   eta: datetime | None = None, priority: int | None = None, result: Literal[True],
                   timeout: float | None = None, **kwargs: Any) -> TaskFuture: ...

    async def task(
        self, *args: Any, headers: Headers = None, task_id: str | None = None, delay: Delay = None,
        eta: datetime | None = None, priority: int | None = None, result: bool = False,
        timeout: float | None = None, **kwargs: Any,
    ) -> str | TaskFuture:
        """As ``Client.task``, returning the task's id once the broker has confirmed it; with ``result=True``, a
        ``TaskFuture`` at once, to ``await`` for the handler's result."""
        name, body = task_target(args, kwargs)
        comm = self._connected()
        seconds = delay_seconds(delay, eta)
        if result:
            return comm.task(name, body=body, headers=headers, task_id=task_id, delay=seconds, result=True,
                             timeout=timeout, priority=priority)
        if task_id is not None:
            check_task_id(task_id)
        return await comm.send_task(name, body, headers, task_id=task_id, delay=seconds, priority=priority)

    async def broadcast(
        self, body: Any, subject: str | None = None, sender: Any = None, correlation_id: Any = None, *,
        headers: Headers = None,
    ) -> None:
        """As ``Client.broadcast``: returns once the broker has confirmed the broadcast."""
        await self._connected().send_broadcast(body, sender, subject, correlation_id, headers)

    async def close(self) -> None:
        """Close the connection; calls still waiting fail with ``BrokerUnavailable``."""
        if self.comm is not None:
            self.comm.close()
        if self._transport is not None:
            await self._transport.close()

    def _connected(self) -> Communicator:
        if self.comm is None:
            raise BrokerUnavailable(f"not connected to {self.url}: use 'async with AsyncClient(...)' or connect()")
        return self.comm
