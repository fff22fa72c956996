"""The runtime of one worker process: consume, run handlers, carry out what ``core`` decided, shut down gracefully.

The worker decides nothing about what a message means: for each delivery it asks the route's rules (``core``) what
to do, runs the handler when told to, and carries out the decision (ack, reply, retry, dead-letter, requeue, log).
What it owns is the how:

- ``async def`` handlers run on the event loop; plain handlers run in bounded thread pools (one per RPC name, one
  for tasks, one for broadcasts), so a task that sleeps never delays RPCs, broadcasts or the connection's heartbeats,
  and a handler waiting on a nested call to another RPC name never takes that name's slots.
- Each consumer's prefetch is ``CONCURRENCY x PREFETCH_MULTIPLIER`` (4, as Celery's): the next messages wait here
  while handlers run, so none waits for an ack's round trip. A message is settled on receipt (RPCs, broadcasts)
  only once a concurrency slot is free for it, so a stopping worker returns every message it has not started.
- It serves a ``RouteTable`` frozen when the app started, and never calls back into the app.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from . import protocol
from .codec import JsonCodec
from .comm import Communicator
from .core import (
    FOLLOWING,
    NOT_STARTED,
    Ack,
    BroadcastRules,
    DeadLetter,
    Decision,
    Drop,
    Redeliveries,
    Reply,
    Requeue,
    RetryLater,
    RpcRules,
    Run,
    TaskRules,
    ack_timeout_note,
)
from .errors import BrokerRefused, BrokerUnavailable, OtterError, TimeLimitExceeded
from .limits import Pacer, RateLimit
from .logs import MessageContext, current_message
from .pipeline import HandlerContext, Pipeline, RouteTable
from .retry import RetryPolicy
from .routing import BroadcastRoute, TaskRoute
from .stats import RouteTally, Tally, outcome_label
from .threadpool import HandlerThreadPool
from .tracing import tracing_for
from .transports import Delivery, Subscription, Transport
from .transports.base import AckTimeout, QueueInUse

if TYPE_CHECKING:
    from .scheduler import ScheduleHolder

__all__ = ["Handled", "Observer", "Worker"]

log = logging.getLogger("otter.worker")

Rules = RpcRules | TaskRules | BroadcastRules


@dataclass(slots=True)  # not frozen: a frozen dataclass's __init__ sets each field through object.__setattr__,
class Handled:  # which cost more per message than the metrics observer itself. Observers read it, never change it.
    """One message a route finished with, as observers see it. ``final`` is False when the message will be seen
    again (a task parked for a retry or returned to its queue); ``error`` is what the handler raised, if anything;
    ``action`` what was done: ack, reply, retry, dead-letter, requeue or drop."""

    kind: str
    name: str
    queue: str
    correlation_id: str | None
    outcome: str
    seconds: float
    error: BaseException | None
    final: bool
    action: str = ""


# Told of every handled message, on the worker's loop: must be quick and must not block (test helpers, metrics).
# An observer may also have ``in_flight(kind, name)``, asked once per route for a function the worker calls with +1
# when a handler starts and -1 when it ends, and ``watch_transport(transport)``, called once with the worker's
# transport (see ``otter.metrics``).
Observer = Callable[[Handled], None]
InFlight = Callable[[int], None]

_ACTIONS = {Ack: "ack", Reply: "reply", RetryLater: "retry", DeadLetter: "dead-letter", Requeue: "requeue",
            Drop: "drop"}


class Worker:
    """Serve a frozen route table over a transport (connected by ``start``) until ``stop()``."""

    def __init__(
        self, table: RouteTable, transport: Transport, config: dict[str, Any], observers: Sequence[Observer] = ()
    ) -> None:
        self.table = table
        self.observers = tuple(observers)
        # A Tally (the worker's counts for discovery and metrics) is told directly, per route, with no event built
        # (``_counters``); every other observer gets a ``Handled``.
        self._tallies = tuple(observer for observer in self.observers if isinstance(observer, Tally))
        self._event_observers = tuple(observer for observer in self.observers if not isinstance(observer, Tally))
        self._in_flight_observers = [observer for observer in self._event_observers
                                     if callable(getattr(observer, "in_flight", None))]
        for observer in self.observers:
            watch = getattr(observer, "watch_transport", None)
            if callable(watch):
                watch(transport)
        self.transport = transport
        self.config = config
        self.debug = bool(config["DEBUG"])
        self.concurrency = max(1, int(config["CONCURRENCY"]))
        # AMQP's prefetch count is an unsigned short.
        self.prefetch = min(self.concurrency * max(1, int(config["PREFETCH_MULTIPLIER"])), 65535)
        self.grace = float(config["SHUTDOWN_GRACE"])
        self.codec = JsonCodec.from_config(config)
        self.tracing = tracing_for(config)
        self.comm: Communicator | None = None
        self._pools: dict[str, HandlerThreadPool] = {}
        self._gates: dict[str, _Gate] = {}
        self._subscriptions: list[Subscription] = []
        self._schedules: list[ScheduleHolder] = []  # one per periodic task
        self._running: dict[asyncio.Task[Any], tuple[Delivery, Rules]] = {}
        self._idle: asyncio.Event | None = None
        self._connected = False
        self.state = "starting"  # then "serving" once every consumer is up, "stopping" from stop() on
        # Long tasks (see core.Redeliveries): the task deliveries whose handler runs (since when), the last ones each
        # task queue settled, and what to do with the redeliveries when the broker closes a channel under them.
        self._started: dict[Delivery, float] = {}
        self._recent: dict[str, deque[Delivery]] = {}
        self._redeliveries = Redeliveries()
        self._task_names: dict[str, tuple[str, float | None]] = {}  # queue -> handler, consumer timeout asked
        self._stopping: asyncio.Event | None = None  # set by stop(): rate-limited deliveries stop waiting
        self._overruns: set[asyncio.Future[Any]] = set()  # plain handlers still running past their time limit

    def readiness(self) -> str | None:
        """None while the worker can take messages (connected, every consumer active), else why not: what
        ``/readyz`` answers (``otter.health``)."""
        if self.state != "serving":
            return self.state
        if not self.transport.connected:
            return f"not connected to the broker at {self.transport.url} (reconnecting)"
        idle = sum(not subscription.active for subscription in self._subscriptions)
        if idle:
            return f"{idle} of {len(self._subscriptions)} consumers not active"
        return None

    # -- lifecycle ----------------------------------------------------------------------------------------------
    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._idle = asyncio.Event()
        self._idle.set()
        self._stopping = asyncio.Event()
        if not self._connected:
            await self.connect()
        self.comm = Communicator(
            self.transport, self.codec, loop, rpc_timeout=float(self.config["RPC_TIMEOUT"]),
            loop_thread=threading.current_thread(),  # so .result() on the loop fails fast instead of freezing it
            tracing=self.tracing,
        )
        self.transport.on_ack_timeout = self._on_ack_timeout
        table = self.table
        # Each RPC name gets its own slots and threads, so a handler waiting on a nested call to another name never
        # starves it; tasks and broadcasts share one pool per kind.
        for key in ["task", "broadcast"] + [_rpc_slots(pipeline) for pipeline in table.rpcs]:
            self._pools[key] = HandlerThreadPool(self.concurrency, thread_name_prefix=f"otter-{key}")
            self._gates[key] = _Gate(self.concurrency)
        for pipeline in table.rpcs:
            self._subscriptions.append(await self.transport.consume_rpc(
                pipeline.route.name, self._rpc_consumer(pipeline), prefetch=self.prefetch))
        for queue, pipeline in table.tasks.items():
            if queue == table.default_queue:
                await self._consume_default_queue(queue, pipeline)
                continue
            self._subscriptions.append(await self.transport.consume_tasks(
                queue, self._task_consumer(pipeline), prefetch=self._task_prefetch(pipeline),
                queue_type=_queue_type(pipeline), consumer_timeout=self._consumer_timeout(queue, pipeline),
                max_priority=pipeline.route.options.get("max_priority")))
        if table.broadcasts:
            self._subscriptions.append(await self.transport.consume_broadcasts(
                self._broadcast_consumer(table.broadcasts), prefetch=self.prefetch))
        await self._join_schedules()
        self.state = "serving"
        log.info("serving %d handlers on %s", len(table), self.transport.url)

    async def _join_schedules(self) -> None:
        """Periodic tasks: take part in each one's lease (``otter.scheduler``); apps without any import nothing."""
        periodic = [(queue, pipeline.route.periodic) for queue, pipeline in self.table.tasks.items()
                    if isinstance(pipeline.route, TaskRoute) and pipeline.route.periodic is not None]
        if not periodic:
            return
        from .scheduler import ScheduleHolder

        assert self.comm is not None
        for queue, schedule in periodic:
            holder = ScheduleHolder(queue, schedule, self.transport, self.comm, self.codec, self.config)
            await holder.start()
            self._schedules.append(holder)

    async def _consume_default_queue(self, queue: str, pipeline: Pipeline) -> None:
        """Nameless tasks reach one well-defined consumer: the app's only task handler holds the default queue for
        itself (a second service that tries is told no, and says so); ``default=True`` shares it between replicas."""
        shared = self.table.default_shared
        name = pipeline.route.name
        try:
            subscription = await self.transport.consume_tasks(
                queue, self._task_consumer(pipeline), prefetch=self._task_prefetch(pipeline), exclusive=not shared,
                queue_type=_queue_type(pipeline), consumer_timeout=self._consumer_timeout(queue, pipeline),
                max_priority=pipeline.route.options.get("max_priority"))
        except QueueInUse as exc:
            if shared:
                raise QueueInUse(
                    f"{name} has default=True, but another service holds the default task queue {queue!r} for "
                    f"itself ({exc}); name your tasks, or give that service's task default=True too"
                ) from None
            log.warning("nameless tasks (the default queue %r) already go to another consumer, so %s takes none of "
                        "them; send them by name (client.task(%r, body)), or use default=True on one task of "
                        "each replica of a single service to share the queue", queue, name, name)
            return
        self._subscriptions.append(subscription)
        log.info("nameless tasks (the default queue %r) go to %s%s", queue, name,
                 ", shared with other workers (default=True)" if shared else ", and to no other consumer")

    async def connect(self) -> None:
        """Connect, waiting up to ``STARTUP_WAIT`` for a broker that cannot be reached yet (a worker often starts
        before its broker). A broker that answers and refuses (``BrokerRefused``) is not waited for. ``start``
        connects too; calling this first lets a caller give up the wait (cancel it) without stopping a start."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + float(self.config.get("STARTUP_WAIT", 0.0))
        attempt = 0
        while True:
            attempt += 1
            try:
                await self.transport.connect()
                break
            except BrokerRefused:
                raise
            except BrokerUnavailable as exc:
                left = deadline - loop.time()
                if left <= 0:
                    raise
                pause = min(0.5 * 2 ** (attempt - 1), 5.0, left)
                log.warning("%s; attempt %d, trying again in %.1fs (STARTUP_WAIT: %.0fs left)", exc, attempt, pause,
                            left)
                await asyncio.sleep(pause)
        self._connected = True
        if attempt > 1:
            log.info("connected to %s after %d attempts", self.transport.url, attempt)

    async def stop(self) -> None:
        """Stop taking messages, let running handlers finish within the grace period, requeue the rest.

        Messages already delivered (prefetched) but whose handler has not started go back to the queue at once
        rather than starting during the grace period.
        """
        self.state = "stopping"
        for holder in self._schedules:  # first, so that another replica takes the schedules over at once
            await holder.stop(self.grace)
        self._schedules.clear()
        for gate in self._gates.values():
            gate.close()
        for subscription in self._subscriptions:
            await subscription.cancel()
        self._subscriptions.clear()
        # Only now, with no consumer left to take them straight back: the messages waiting for a slot go back to
        # their queues (each waiter, woken, finds the gate closed and returns its message; see ``_Gate``).
        for gate in self._gates.values():
            gate.wake_waiters()
        if self._stopping is not None:  # and so do those waiting for their rate limit
            self._stopping.set()
        if self._running and self._idle is not None:
            running = sum(gate.in_use for gate in self._gates.values())  # not the prefetched ones going back
            log.info("waiting up to %gs for %d running handlers", self.grace, running)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._idle.wait(), self.grace)
        for task, (delivery, rules) in list(self._running.items()):
            task.cancel()
            with contextlib.suppress(Exception):
                await self._carry_out(delivery, rules.abandoned(delivery, self.grace), rules)
        for overrun in list(self._overruns):  # their threads cannot be stopped; the process exit ends them
            overrun.cancel()
        for pool in self._pools.values():
            pool.shutdown(wait=False, cancel_futures=True)
        if self.comm is not None:
            self.comm.close()
        await self.transport.close()

    # -- consumers ----------------------------------------------------------------------------------------------
    def _rpc_consumer(self, pipeline: Pipeline) -> Callable[[Delivery], Awaitable[None]]:
        return self._consumer(pipeline, RpcRules(pipeline.route.name, self.codec, debug=self.debug),
                              _rpc_slots(pipeline))

    def _task_consumer(self, pipeline: Pipeline) -> Callable[[Delivery], Awaitable[None]]:
        options = pipeline.route.options
        policy = RetryPolicy.for_task(options, self.config)
        rules = TaskRules(pipeline.route.name, self.codec, policy, debug=self.debug)
        time_limit = options.get("time_limit", self.config.get("TASK_TIME_LIMIT"))
        rate_limit: RateLimit | None = options.get("rate_limit")
        return self._consumer(pipeline, rules, "task", None if time_limit is None else float(time_limit),
                              None if rate_limit is None else Pacer(rate_limit))

    def _task_prefetch(self, pipeline: Pipeline) -> int:
        """A rate-limited task's queue prefetches what it may start in the next seconds (``RateLimit.prefetch``)."""
        rate_limit: RateLimit | None = pipeline.route.options.get("rate_limit")
        return self.prefetch if rate_limit is None else rate_limit.prefetch(self.prefetch)

    def _paced(
        self, pacer: Pacer, consumer: Callable[[Delivery], Awaitable[None]]
    ) -> Callable[[Delivery], Awaitable[None]]:
        """Start each delivery no sooner than its rate limit allows. It waits before taking a concurrency slot, so
        other tasks run meanwhile, and stops waiting once the worker's consumers are cancelled (``WorkerStopping``:
        back to its queue)."""
        stopping = self._stopping
        assert stopping is not None

        async def paced(delivery: Delivery) -> None:
            wait = pacer.reserve(time.monotonic())
            if wait > 0:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stopping.wait(), wait)
                    raise WorkerStopping
            await consumer(delivery)

        return paced

    def _consumer(
        self, pipeline: Pipeline, rules: RpcRules | TaskRules, slots: str, time_limit: float | None = None,
        pacer: Pacer | None = None,
    ) -> Callable[[Delivery], Awaitable[None]]:
        """RPCs and tasks: take a slot, ask the rules, run the handler if told to, carry out the outcome."""
        gate, kind, name = self._gates[slots], pipeline.route.kind, pipeline.route.name
        invoke = self._invoke if time_limit is None else self._time_limited(time_limit, gate)
        timed = self.debug or bool(self.observers)
        in_flight, counters = self._in_flight(kind, name), self._counters(kind, name)
        tracing = self.tracing
        task = isinstance(rules, TaskRules)
        redeliveries, running = self._redeliveries, self._started

        async def on_delivery(delivery: Delivery) -> None:
            if task and delivery.redelivered and redeliveries:
                first = redeliveries.arrived(delivery)
                if first is FOLLOWING:  # its first run goes on here: settled when that run ends
                    return
                if first is not None:
                    await self._carry_out(delivery, first, rules)
                    return
            async with gate:
                if delivery.orphaned:  # its channel closed while it waited: back in its queue, to run from there
                    return
                context = MessageContext(kind, name, delivery.correlation_id, delivery.headers)
                if task:
                    context.task_id = protocol.task_id_of(delivery.message_id, delivery.correlation_id)
                current_message.set(context)
                if rules.settle_on_receipt:
                    await delivery.ack()
                started = time.perf_counter() if timed else 0.0
                step = rules.receive(delivery, time.time())
                decision: Decision
                error: Exception | None = None
                if isinstance(step, Run):
                    for counter in counters:
                        counter.running += 1
                    context.attempt = step.attempts + 1
                    if in_flight:
                        _tell(in_flight, 1)
                    if task:
                        running[delivery] = time.monotonic()
                    try:
                        result = await invoke(pipeline, kind, delivery, step, slots)
                    except Exception as exc:
                        error, decision = exc, rules.failed(delivery, step, exc)
                        if tracing is not None:
                            tracing.failed(exc)
                    else:
                        decision = rules.succeeded(delivery, step, result)
                    finally:
                        for counter in counters:
                            counter.running -= 1
                        if in_flight:
                            _tell(in_flight, -1)
                else:
                    decision = step
                if task:
                    running.pop(delivery, None)
                    if delivery.orphaned:
                        done = await self._settle_orphan(delivery, decision, rules)
                    else:
                        done = await self._carry_out(delivery, decision, rules)
                        self._settled_lately(delivery.queue).append(delivery)
                else:
                    done = await self._carry_out(delivery, decision, rules)
                if timed:
                    self._handled(kind, name, delivery, started, done, error, counters)

        handle = on_delivery if tracing is None else tracing.processing(kind, name, on_delivery)
        return self._tracked(handle if pacer is None else self._paced(pacer, handle), rules)

    def _settled_lately(self, queue: str) -> deque[Delivery]:
        """The last tasks of ``queue`` settled here (their acks may be lost if the channel closes for an ack
        timeout); made once per queue, not per message as ``setdefault`` with a new deque would."""
        recent = self._recent.get(queue)
        if recent is None:
            recent = self._recent[queue] = deque(maxlen=self.prefetch)
        return recent

    async def _settle_orphan(self, delivery: Delivery, decision: Decision, rules: Rules) -> Decision:
        """A task whose channel closed while it ran: the broker has already put it back on its queue, so its run's
        decision is carried out on the redelivery (now, if it is here, else when it comes)."""
        for note in decision.notes:
            log.log(note.level, note.message, exc_info=note.exc)
        follower = self._redeliveries.ended(delivery, decision)
        if follower is None:
            return decision
        redelivery, quiet = follower
        assert isinstance(redelivery, Delivery)
        return await self._carry_out(redelivery, quiet, rules)

    def _consumer_timeout(self, queue: str, pipeline: Pipeline) -> float | None:
        """The consumer timeout asked of the broker for a task queue: the task's own, else ``CONSUMER_TIMEOUT``."""
        asked = pipeline.route.options.get("consumer_timeout", self.config.get("CONSUMER_TIMEOUT"))
        timeout = None if asked is None else float(asked)
        self._task_names[queue] = (pipeline.route.name, timeout)
        return timeout

    def _on_ack_timeout(self, event: AckTimeout) -> None:
        """The broker closed a task queue's channel for a delivery left unacked too long (it re-opens by itself and
        the consumer starts again): say so once, and see that the handlers still running are not run again here."""
        queue = event.queue
        now = time.monotonic()
        running = [delivery for delivery in self._started if delivery.queue == queue]
        waiting = sum(1 for delivery, _ in self._running.values()
                      if delivery.queue == queue and delivery not in self._started)
        self._redeliveries.orphaned(running, self._recent.pop(queue, ()))
        name, asked = self._task_names.get(queue, (queue, None))
        note = ack_timeout_note(queue, name, [now - self._started[d] for d in running], waiting, event.timeout,
                                asked)
        log.log(note.level, note.message)

    def _broadcast_consumer(self, pipelines: tuple[Pipeline, ...]) -> Callable[[Delivery], Awaitable[None]]:
        by_route = {id(pipeline.route): pipeline for pipeline in pipelines}
        routes = [pipeline.route for pipeline in pipelines]
        rules = BroadcastRules([r for r in routes if isinstance(r, BroadcastRoute)], self.codec, debug=self.debug)
        gate = self._gates["broadcast"]
        timed = self.debug or bool(self.observers)
        in_flight_by_route = {id(route): self._in_flight("broadcast", route.name) for route in routes}
        counters_by_route = {id(route): self._counters("broadcast", route.name) for route in routes}
        tracing = self.tracing

        async def on_broadcast(delivery: Delivery) -> None:
            async with gate:
                await delivery.ack()
                step = rules.receive(delivery, time.time())
                if not isinstance(step, Run):
                    await self._carry_out(delivery, step, rules)
                    return
                for route in step.routes:
                    current_message.set(MessageContext("broadcast", route.name, delivery.correlation_id,
                                                       delivery.headers))
                    started = time.perf_counter() if timed else 0.0
                    error: Exception | None = None
                    in_flight, counters = in_flight_by_route[id(route)], counters_by_route[id(route)]
                    for counter in counters:
                        counter.running += 1
                    if in_flight:
                        _tell(in_flight, 1)
                    try:
                        await self._invoke(by_route[id(route)], "broadcast", delivery, step, "broadcast")
                    except Exception as exc:
                        error, decision = exc, rules.finished(delivery, route, exc)
                        if tracing is not None:
                            tracing.failed(exc)
                    else:
                        decision = rules.finished(delivery, route)
                    finally:
                        for counter in counters:
                            counter.running -= 1
                        if in_flight:
                            _tell(in_flight, -1)
                    await self._carry_out(delivery, decision, rules)
                    if timed:
                        self._handled("broadcast", route.name, delivery, started, decision, error, counters)

        if tracing is not None:
            exchange = self.transport.topology.message_exchange  # type: ignore[attr-defined]
            return self._tracked(tracing.processing("broadcast", exchange, on_broadcast), rules)
        return self._tracked(on_broadcast, rules)

    def _tracked(
        self, consumer: Callable[[Delivery], Awaitable[None]], rules: Rules
    ) -> Callable[[Delivery], Awaitable[None]]:
        """Know what runs (for a graceful stop), and never let an error in Otter itself kill the consumer."""

        async def run(delivery: Delivery) -> None:
            task = asyncio.current_task()
            assert task is not None and self._idle is not None
            self._running[task] = (delivery, rules)
            self._idle.clear()
            try:
                await consumer(delivery)
            except asyncio.CancelledError:
                raise
            except WorkerStopping:
                with contextlib.suppress(Exception):
                    await self._carry_out(delivery, NOT_STARTED, rules)
            except Exception:
                log.exception("unexpected error while handling a message from %r", delivery.queue)
            finally:
                del self._running[task]
                if not self._running:
                    self._idle.set()

        return run

    # -- carrying out -------------------------------------------------------------------------------------------
    async def _carry_out(self, delivery: Delivery, decision: Decision, rules: Rules) -> Decision:
        """Do what ``decision`` says; returns what was done (the rules' fallback when the broker refused it)."""
        for note in decision.notes:
            log.log(note.level, note.message, exc_info=note.exc, extra={"outcome": decision.outcome})
        if isinstance(decision, Reply):
            await self._reply(delivery, decision.body)
        elif isinstance(decision, Ack):
            await delivery.ack()
            if decision.reply is not None:
                await self._reply(delivery, decision.reply)
        elif isinstance(decision, (RetryLater, DeadLetter)):
            return await self._move(delivery, decision, rules)
        elif isinstance(decision, Requeue):
            with contextlib.suppress(OtterError):
                await delivery.requeue()
        return decision

    async def _move(self, delivery: Delivery, decision: RetryLater | DeadLetter, rules: Rules) -> Decision:
        """Retry or dead-letter a task; if the broker refuses, the rules say what instead (back to its queue)."""
        assert isinstance(rules, TaskRules)
        try:
            if isinstance(decision, RetryLater):
                await self.transport.retry_later(delivery, decision.delay, decision.headers or {})
            else:
                await self.transport.dead_letter(delivery, decision.headers or {})
        except OtterError as exc:
            return await self._carry_out(delivery, rules.not_moved(delivery, exc), rules)
        if isinstance(decision, DeadLetter) and decision.reply is not None:
            await self._reply(delivery, decision.reply)
        return decision

    async def _reply(self, delivery: Delivery, body: bytes) -> None:
        assert delivery.reply_to, "the rules reply only to a caller who gave a reply_to"
        await self.transport.reply(delivery.reply_to, body, correlation_id=delivery.correlation_id)

    def _handled(
        self, kind: str, name: str, delivery: Delivery, started: float, decision: Decision, error: Exception | None,
        counters: tuple[RouteTally, ...],
    ) -> None:
        seconds = time.perf_counter() - started
        if self.debug:
            log.info("%s %s %s %.1fms %s", kind, name, delivery.correlation_id or "-", seconds * 1000,
                     decision.outcome, extra={"outcome": decision.outcome})
        action = _ACTIONS.get(type(decision), "")
        if counters:
            outcome = outcome_label(action, error, decision.outcome)
            for counter in counters:
                counter.record(seconds, outcome, error)
        if not self._event_observers:
            return
        final = not isinstance(decision, (RetryLater, Requeue))
        event = Handled(kind, name, delivery.queue, delivery.correlation_id, decision.outcome, seconds, error, final,
                        action)
        for observer in self._event_observers:
            try:
                observer(event)
            except Exception:
                log.exception("an observer of handled messages failed")

    def _in_flight(self, kind: str, name: str) -> tuple[InFlight, ...]:
        """What to tell when a handler of this route starts and ends: asked once per route, not per message."""
        return tuple(observer.in_flight(kind, name) for observer in self._in_flight_observers)  # type: ignore[attr-defined]

    def _counters(self, kind: str, name: str) -> tuple[RouteTally, ...]:
        """The route's counts in each Tally among the observers: asked once per route, not per message."""
        return tuple(tally.route(kind, name) for tally in self._tallies)

    async def _invoke(self, pipeline: Pipeline, kind: str, delivery: Delivery, run: Run, pool: str) -> Any:
        comm = self.comm
        assert comm is not None
        threads = self._pools[pool]
        if pipeline.plain:  # no hooks to tell about the message: no HandlerContext to build
            if pipeline.is_async:
                return await pipeline.handler(comm, *run.args)
            # In the handler's thread too, log lines know their message (otter.logs): a copy of this task's context.
            return await threads.run(asyncio.get_running_loop(), contextvars.copy_context().run, pipeline.handler,
                                     comm, *run.args)
        message = current_message.get()
        ctx = HandlerContext(kind, pipeline.route.name, pipeline.route, comm, delivery.correlation_id,
                             delivery.headers, run.subject, message.task_id if message else None, run.attempts + 1)
        if pipeline.is_async:
            return await pipeline.call_async(ctx, run.args)
        return await threads.run(asyncio.get_running_loop(), contextvars.copy_context().run, pipeline.call_sync, ctx,
                                 run.args)

    def _time_limited(self, limit: float, gate: _Gate) -> Callable[..., Awaitable[Any]]:
        """``_invoke`` with a time limit. An ``async def`` handler still running at the limit is cancelled; a plain
        one cannot be (Python cannot stop a thread): the task fails at the limit all the same, and its thread runs
        on, keeping its concurrency slot (and pool thread) until it returns, when a line says how long it overran."""

        async def invoke(pipeline: Pipeline, kind: str, delivery: Delivery, run: Run, pool: str) -> Any:
            running = asyncio.ensure_future(self._invoke(pipeline, kind, delivery, run, pool))
            try:
                done, _ = await asyncio.wait((running,), timeout=limit)
            except asyncio.CancelledError:  # the worker stopped after its grace period: the handler goes too
                running.cancel()
                raise
            if done:
                return running.result()
            name = pipeline.route.name
            if pipeline.is_async:
                running.cancel()
                await asyncio.wait((running,))  # its cancellation done (a handler may clean up first)
                raise TimeLimitExceeded(f"task {name} ran longer than its time limit of {limit:g} s; cancelled")
            release = gate.keep()
            self._overruns.add(running)
            began = time.monotonic() - limit
            running.add_done_callback(lambda ended: self._overrun_ended(ended, name, delivery, began, limit, release))
            raise TimeLimitExceeded(f"task {name} ran longer than its time limit of {limit:g} s; its plain handler "
                                    f"cannot be stopped and runs on in its thread, which keeps a concurrency slot "
                                    f"until it returns")

        return invoke

    def _overrun_ended(
        self, ended: asyncio.Future[Any], name: str, delivery: Delivery, began: float, limit: float,
        release: Callable[[], None],
    ) -> None:
        self._overruns.discard(ended)
        if ended.cancelled():  # the worker stopped first
            return
        release()
        error = ended.exception()
        outcome = "returned" if error is None else f"raised {type(error).__name__}"
        log.warning("task %s %s: its handler %s %.1f s after it started, %.1f s past its time limit of %g s; the "
                    "task had already failed with TimeLimitExceeded, so this outcome is ignored, and its concurrency "
                    "slot is free again", name, delivery.correlation_id, outcome, time.monotonic() - began,
                    time.monotonic() - began - limit, limit)


def _tell(counters: tuple[InFlight, ...], change: int) -> None:
    for in_flight in counters:
        try:
            in_flight(change)
        except Exception:
            log.exception("an observer of running handlers failed")


def _queue_type(pipeline: Pipeline) -> str | None:
    route = pipeline.route
    return route.queue_type if isinstance(route, TaskRoute) else None


def _rpc_slots(pipeline: Pipeline) -> str:
    """The key of an RPC name's own concurrency limit and thread pool."""
    return f"rpc:{pipeline.route.name}"


class WorkerStopping(Exception):
    """Raised instead of starting a handler once the worker is stopping; the message goes back to its queue."""


class _Gate(asyncio.Semaphore):
    """The concurrency limit of one message kind; once closed, a message that gets through starts nothing."""

    def __init__(self, value: int) -> None:
        super().__init__(value)
        self.closed = False
        self.in_use = 0  # slots held by messages whose handling started
        self._kept: set[asyncio.Task[Any] | None] = set()  # whose slot outlives their ``async with`` (``keep``)

    def keep(self) -> Callable[[], None]:
        """Keep the current task's slot past the end of its ``async with``, until the returned function is called
        (a plain handler's thread still running past its time limit)."""
        self._kept.add(asyncio.current_task())

        def release() -> None:
            self.in_use -= 1
            self.release()

        return release

    def close(self) -> None:
        self.closed = True

    def wake_waiters(self) -> None:
        """Once closed: let the messages waiting for a slot through, to be returned rather than run. One extra
        permit is enough: each waiter it wakes finds the gate closed and hands the permit on (``acquire``)."""
        assert self.closed
        if self.locked():
            self.release()

    async def acquire(self) -> Literal[True]:
        await super().acquire()
        if self.closed:
            self.release()
            raise WorkerStopping
        self.in_use += 1
        return True

    async def __aexit__(self, *exc_info: object) -> None:
        if self._kept and asyncio.current_task() in self._kept:
            self._kept.discard(asyncio.current_task())
            return
        self.in_use -= 1
        self.release()
