"""The runtime of one worker process: consume, run handlers, settle, reply, shut down gracefully.

- ``async def`` handlers run on the event loop; plain handlers run in bounded thread pools (one per RPC name, one
  for tasks, one for broadcasts), so a task that sleeps never delays RPCs, broadcasts or the connection's heartbeats,
  and a handler waiting on a nested call to another RPC name never takes that name's slots.
- Each consumer's prefetch is ``CONCURRENCY x PREFETCH_MULTIPLIER`` (4, as Celery's): the next messages wait here
  while handlers run, so none waits for an ack's round trip; messages beyond the running handlers are not acked
  until they start, and a stopping worker returns them to their queue.
- RPCs and broadcasts are acked as soon as a concurrency slot is free for them, before decoding (at-most-once: a
  worker that dies mid-call does not run it twice); tasks when their handler returns (at-least-once).
- Bad input never reaches a handler: an RPC gets an error reply, a task is dead-lettered with the reason, a
  broadcast is logged and dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Literal

from . import protocol
from .codec import JsonCodec
from .comm import Communicator
from .dispatch import HandlerContext, Pipeline, deadline_passed, decode, encode_error, encode_result
from .errors import BrokerUnavailable, MessageError, OtterError, RemoteError
from .retry import RetryPolicy
from .routing import BroadcastRoute, Route, RpcRoute, TaskRoute
from .threadpool import HandlerThreadPool
from .transports import Delivery, Subscription, Transport

if TYPE_CHECKING:
    from .app import Otter

__all__ = ["Worker"]

log = logging.getLogger("otter.worker")


class Worker:
    """Serve an app's routes over a connected transport until ``stop()``."""

    def __init__(self, app: Otter, transport: Transport, config: dict[str, Any]) -> None:
        self.app = app
        self.transport = transport
        self.config = config
        self.debug = bool(config["DEBUG"])
        self.concurrency = max(1, int(config["CONCURRENCY"]))
        # AMQP's prefetch count is an unsigned short.
        self.prefetch = min(self.concurrency * max(1, int(config["PREFETCH_MULTIPLIER"])), 65535)
        self.grace = float(config["SHUTDOWN_GRACE"])
        self.codec = JsonCodec(int(config["MAX_MESSAGE_SIZE"]))
        self.comm: Communicator | None = None
        self._pools: dict[str, HandlerThreadPool] = {}
        self._limits: dict[str, _Gate] = {}
        self._subscriptions: list[Subscription] = []
        self._running: dict[asyncio.Task[Any], tuple[Delivery, str]] = {}  # what runs, and its kind
        self._idle: asyncio.Event | None = None
        self.started = asyncio.Event()

    # -- lifecycle ----------------------------------------------------------------------------------------------
    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._idle = asyncio.Event()
        self._idle.set()
        await self.transport.connect()
        self.comm = Communicator(
            self.transport, self.codec, loop, rpc_timeout=float(self.config["RPC_TIMEOUT"]),
            loop_thread=threading.current_thread(),  # so .result() on the loop fails fast instead of freezing it
        )
        routes = self.app.routes
        # Each RPC name gets its own slots and threads, so a handler waiting on a nested call to another name never
        # starves it; tasks and broadcasts share one pool per kind.
        limited = ["task", "broadcast"] + [_rpc_slots(route) for route in routes if isinstance(route, RpcRoute)]
        for key in limited:
            self._pools[key] = HandlerThreadPool(self.concurrency, thread_name_prefix=f"otter-{key}")
            self._limits[key] = _Gate(self.concurrency)
        for route in routes:
            if isinstance(route, RpcRoute):
                self._subscriptions.append(await self.transport.consume_rpc(
                    route.name, self._tracked(self._rpc_consumer(route), "rpc"), prefetch=self.prefetch))
        for queue, route in self.app.task_queues(self.config["DEFAULT_TASK_QUEUE"]).items():
            self._subscriptions.append(await self.transport.consume_tasks(
                queue, self._tracked(self._task_consumer(route), "task"), prefetch=self.prefetch))
        broadcasts = [route for route in routes if isinstance(route, BroadcastRoute)]
        if broadcasts:
            self._subscriptions.append(await self.transport.consume_broadcasts(
                self._tracked(self._broadcast_consumer(broadcasts), "broadcast"), prefetch=self.prefetch))
        log.info("serving %d handlers on %s", len(routes), self.transport.url)
        self.started.set()

    async def stop(self) -> None:
        """Stop taking messages, let running handlers finish within the grace period, requeue the rest.

        Messages already delivered (prefetched) but whose handler has not started go back to the queue at once
        rather than starting during the grace period.
        """
        for gate in self._limits.values():
            gate.close()
        for subscription in self._subscriptions:
            await subscription.cancel()
        self._subscriptions.clear()
        if self._running and self._idle is not None:
            log.info("waiting up to %gs for %d running handlers", self.grace, len(self._running))
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._idle.wait(), self.grace)
        for task, (delivery, kind) in list(self._running.items()):
            task.cancel()
            if kind == "task":
                log.warning("a task from %r did not finish within %gs; returning it to the queue",
                            delivery.queue, self.grace)
                with contextlib.suppress(Exception):
                    await delivery.requeue()
            elif kind == "rpc" and delivery.reply_to:  # acked already: tell the caller rather than let it wait
                log.warning("rpc %s did not finish within %gs; replying with an error", delivery.correlation_id,
                            self.grace)
                stopped = BrokerUnavailable("the service stopped before the call finished; it may have partly run")
                with contextlib.suppress(Exception):
                    await self.transport.reply(delivery.reply_to, encode_error(self.codec, stopped, debug=False),
                                               correlation_id=delivery.correlation_id)
        for pool in self._pools.values():
            pool.shutdown(wait=False, cancel_futures=True)
        if self.comm is not None:
            self.comm.close()
        await self.transport.close()

    # -- consumers ----------------------------------------------------------------------------------------------
    def _tracked(
        self, consumer: Callable[[Delivery], Awaitable[None]], kind: str
    ) -> Callable[[Delivery], Awaitable[None]]:
        async def run(delivery: Delivery) -> None:
            task = asyncio.current_task()
            assert task is not None and self._idle is not None
            self._running[task] = (delivery, kind)
            self._idle.clear()
            try:
                await consumer(delivery)
            except asyncio.CancelledError:
                raise
            except WorkerStopping:  # delivered, but the worker stopped before its handler could start
                with contextlib.suppress(Exception):
                    await delivery.requeue()
            except Exception:  # a bug in Otter itself must not kill the consumer
                log.exception("unexpected error while handling a message from %r", delivery.queue)
            finally:
                del self._running[task]
                if not self._running:
                    self._idle.set()

        return run

    def _rpc_consumer(self, route: RpcRoute) -> Callable[[Delivery], Awaitable[None]]:
        pipeline = self.app.pipeline(route)

        slots = _rpc_slots(route)

        async def on_rpc(delivery: Delivery) -> None:
            async with self._limits[slots]:
                await delivery.ack()
                started = time.perf_counter() if self.debug else 0.0
                outcome = "ok"
                try:
                    if deadline_passed(delivery.headers, time.time()):
                        log.warning("rpc %s %s: deadline passed before it started; not run", route.name,
                                    delivery.correlation_id)
                        return
                    data = decode(self.codec, delivery)
                except MessageError as exc:
                    log.warning("rpc %s %s: bad request: %s", route.name, delivery.correlation_id, exc)
                    reply, outcome = encode_error(self.codec, exc, debug=self.debug), "bad request"
                else:
                    try:
                        result = await self._invoke(pipeline, "rpc", delivery, (data,), pool=slots)
                    except Exception as exc:
                        outcome = f"error {type(exc).__name__}"
                        self._log_handler_error("rpc", route, delivery, exc)
                        reply = encode_error(self.codec, exc, debug=self.debug)
                    else:
                        reply = encode_result(self.codec, result, debug=self.debug)
                if delivery.reply_to:
                    await self.transport.reply(delivery.reply_to, reply, correlation_id=delivery.correlation_id)
                self._log_handled("rpc", route.name, delivery, started, outcome)

        return on_rpc

    def _task_consumer(self, route: TaskRoute) -> Callable[[Delivery], Awaitable[None]]:
        """Run a task; on failure retry it through the broker or dead-letter it, per the route's retry policy.

        Whatever the message holds, it is settled exactly once: acked, parked for a retry, or dead-lettered. If
        the broker refuses the retry or the dead letter, the task goes back to its queue instead of being lost.
        """
        pipeline = self.app.pipeline(route)
        policy = RetryPolicy.for_task(route.options, self.config)

        async def settle(delivery: Delivery, move: Awaitable[None]) -> bool:
            try:
                await move
            except OtterError as exc:
                log.error("task %s %s: could not retry or dead-letter it (%s); returning it to the queue",
                          route.name, delivery.correlation_id, exc)
                with contextlib.suppress(OtterError):
                    await delivery.requeue()
                return False
            return True

        async def on_task(delivery: Delivery) -> None:
            started = time.perf_counter() if self.debug else 0.0
            attempts = 0
            try:
                attempts = protocol.read_attempts(delivery.headers)
                task, no_reply = protocol.read_task(decode(self.codec, delivery))
            except MessageError as exc:
                log.warning("task %s %s: bad message, dead-lettered: %s", route.name, delivery.correlation_id, exc)
                await settle(delivery, self.transport.dead_letter(delivery, protocol.dead_letter_headers(
                    "bad-message", exc, route.name, attempts)))
                return
            async with self._limits["task"]:
                try:
                    result = await self._invoke(pipeline, "task", delivery, (task,))
                except Exception as exc:
                    attempts += 1
                    self._log_handler_error("task", route, delivery, exc)
                    if policy.should_retry(exc, attempts):
                        delay = policy.delay(attempts)
                        retried = await settle(delivery, self.transport.retry_later(
                            delivery, delay, {protocol.ATTEMPTS_HEADER: attempts}))
                        log.warning("task %s %s: attempt %d failed; %s", route.name, delivery.correlation_id,
                                    attempts, f"retrying in {delay:g}s" if retried else "back in its queue")
                        self._log_handled("task", route.name, delivery, started, f"error {type(exc).__name__}, "
                                          f"retry {attempts}/{policy.max_retries}")
                        return  # a kiwipy sender waiting for the outcome hears about the last attempt only
                    exhausted = policy.max_retries > 0 and policy.retryable(exc)
                    reason = "retries-exhausted" if exhausted else "handler-error"
                    await settle(delivery, self.transport.dead_letter(delivery, protocol.dead_letter_headers(
                        reason, exc, route.name, attempts)))
                    log.warning("task %s %s: dead-lettered after %d attempt%s: %s", route.name,
                                delivery.correlation_id, attempts, "" if attempts == 1 else "s", reason)
                    reply = encode_error(self.codec, exc, debug=self.debug)
                    outcome = f"error {type(exc).__name__}, dead-lettered"
                else:
                    await delivery.ack()
                    reply = encode_result(self.codec, result, debug=self.debug)
                    outcome = "ok"
            if not no_reply and delivery.reply_to:  # a kiwipy sender waiting for the outcome
                await self.transport.reply(delivery.reply_to, reply, correlation_id=delivery.correlation_id)
            self._log_handled("task", route.name, delivery, started, outcome)

        return on_task

    def _broadcast_consumer(self, routes: list[BroadcastRoute]) -> Callable[[Delivery], Awaitable[None]]:
        pipelines = [self.app.pipeline(route) for route in routes]

        async def on_broadcast(delivery: Delivery) -> None:
            async with self._limits["broadcast"]:
                await delivery.ack()
                try:
                    message = protocol.read_broadcast(decode(self.codec, delivery))
                except MessageError as exc:
                    log.warning("broadcast: bad message dropped: %s", exc)
                    return
                args = (message.body, message.sender, message.subject, message.correlation_id)
                for pipeline in pipelines:
                    route = pipeline.route
                    if not route.matches(message.subject):  # type: ignore[attr-defined]
                        continue
                    started = time.perf_counter() if self.debug else 0.0
                    try:
                        await self._invoke(pipeline, "broadcast", delivery, args, subject=message.subject)
                    except Exception as exc:
                        self._log_handler_error("broadcast", route, delivery, exc)
                        self._log_handled("broadcast", route.name, delivery, started, f"error {type(exc).__name__}")
                    else:
                        self._log_handled("broadcast", route.name, delivery, started, "ok")

        return on_broadcast

    async def _invoke(
        self, pipeline: Pipeline, kind: str, delivery: Delivery, args: tuple[Any, ...], subject: str | None = None,
        pool: str | None = None,
    ) -> Any:
        comm = self.comm
        assert comm is not None
        threads = self._pools[pool or kind]
        if pipeline.plain:  # no hooks to tell about the message: no HandlerContext to build
            if pipeline.is_async:
                return await pipeline.handler(comm, *args)
            return await threads.run(asyncio.get_running_loop(), pipeline.handler, comm, *args)
        ctx = HandlerContext(kind, pipeline.route.name, pipeline.route, comm, delivery.correlation_id,
                             delivery.headers, subject)
        if pipeline.is_async:
            return await pipeline.call_async(ctx, args)
        return await threads.run(asyncio.get_running_loop(), pipeline.call_sync, ctx, args)

    # -- logging ------------------------------------------------------------------------------------------------
    def _log_handler_error(self, kind: str, route: Route, delivery: Delivery, exc: Exception) -> None:
        message = exc.message if isinstance(exc, RemoteError) else exc  # str(RemoteError) repeats the type
        log.error("%s %s %s: handler raised %s: %s", kind, route.name, delivery.correlation_id,
                  type(exc).__name__, message, exc_info=self.debug)

    def _log_handled(self, kind: str, name: str, delivery: Delivery, started: float, outcome: str) -> None:
        if self.debug:
            log.info("%s %s %s %.1fms %s", kind, name, delivery.correlation_id or "-",
                     (time.perf_counter() - started) * 1000, outcome)


def _rpc_slots(route: RpcRoute) -> str:
    """The key of an RPC name's own concurrency limit and thread pool."""
    return f"rpc:{route.name}"


class WorkerStopping(Exception):
    """Raised instead of starting a handler once the worker is stopping; the message goes back to its queue."""


class _Gate(asyncio.Semaphore):
    """The concurrency limit of one message kind; once closed, a message that gets through starts nothing."""

    def __init__(self, value: int) -> None:
        super().__init__(value)
        self.closed = False

    def close(self) -> None:
        self.closed = True

    async def acquire(self) -> Literal[True]:
        await super().acquire()
        if self.closed:
            self.release()
            raise WorkerStopping
        return True
