"""The worker side of periodic tasks: hold a schedule's lease, send its ticks, keep its state in the broker.

Every replica consumes each periodic task's schedule queue (``<name>.schedule``, ``protocol.SCHEDULE_QUEUE_ARGUMENTS``)
and the broker delivers to one consumer at a time (single active consumer): the replica that receives the schedule's
state message holds the schedule. It keeps that message unacked until the next tick is due, never longer than
``protocol.SCHEDULE_HOLD`` (RabbitMQ's consumer_timeout would close the channel), then sends the due ticks as
ordinary tasks (each confirmed), sends the new state (confirmed) and acks what it held. The new state comes back to
the same consumer and the cycle goes on. When the holder dies, the broker returns what it held and makes the next
consumer active, which goes on from the last state recorded (``schedules.plan`` decides what it then sends).

Crash windows, both at-least-once: between a tick's send and the new state's, the next holder sends that tick again;
between the new state's send and the ack, the queue holds two states, which the holder merges (the later wins).
Which ticks to send is decided by ``schedules.plan``, without I/O; this module only carries it out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any

from . import protocol
from .errors import MessageError, OtterError
from .schedules import Periodic, Plan, iso_time, plan, tick_id

if TYPE_CHECKING:
    from .codec import JsonCodec
    from .comm import Communicator
    from .transports import Delivery, Subscription, Transport

__all__ = ["ScheduleHolder"]

log = logging.getLogger("otter.periodic")

RETRY_PAUSE = 1.0  # seconds before trying again a step that failed (the broker was unreachable)
# A replica that has received nothing from the schedule queue for this long sends a seed (a state with no record), in
# case the state is gone (the queue deleted or purged under the running workers): the holder merges seeds away, and
# if the state really is gone, the schedule starts anew instead of stopping for good.
RESEED_INTERVAL = 60.0
# A holder with nothing but seeds waits this long for a real state before it starts the schedule anew: a seed can
# arrive just before the state the holder itself re-sent.
SEED_SETTLE = 1.0


class ScheduleHolder:
    """One periodic task's share of the lease on this worker: sends its ticks while the broker lets it hold it."""

    def __init__(
        self, name: str, periodic: Periodic, transport: Transport, comm: Communicator, codec: JsonCodec,
        config: dict[str, Any],
    ) -> None:
        self.name = name
        self.queue = protocol.schedule_queue_name(name)
        self.schedule = periodic.schedule
        self.missed = periodic.missed or str(config["PERIODIC_MISSED"])
        self.grace = float(config["PERIODIC_GRACE"])
        self.transport, self.comm, self.codec = transport, comm, codec
        self.holding = False
        self._held: dict[Delivery, float] = {}  # state messages held, with when each arrived (monotonic)
        self._changed = asyncio.Event()  # something arrived, or stop() was called
        self._stopping = False
        self._subscription: Subscription | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Join the lease; a replica that finds the queue vacant (its first run, or its state was lost) seeds it."""
        self._subscription, vacant = await self.transport.consume_schedule(self.queue, self._on_delivery)
        if vacant:
            await self.transport.publish_schedule(self.queue, self._state(None))
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"otter-schedule-{self.name}")

    async def stop(self, grace: float) -> None:
        """Leave the lease: finish the step under way (within ``grace``), stop consuming, and give back what is held
        so that the next replica takes over at once."""
        self._stopping = True
        self._changed.set()
        if self._subscription is not None:
            await self._subscription.cancel()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), grace)
            except (asyncio.TimeoutError, Exception):
                self._task.cancel()
                with contextlib.suppress(BaseException):
                    await self._task
        for delivery in list(self._held):
            with contextlib.suppress(Exception):
                await delivery.requeue()
        self._held.clear()

    async def _on_delivery(self, delivery: Delivery) -> None:
        if self._stopping:
            with contextlib.suppress(Exception):
                await delivery.requeue()
            return
        self._held[delivery] = time.monotonic()
        self._changed.set()

    # -- the holder's loop --------------------------------------------------------------------------------------
    async def _run(self) -> None:
        while not self._stopping:
            if not await self._wait(RESEED_INTERVAL) and not self._stopping and not self._held:
                with contextlib.suppress(Exception):  # the broker is away: the next interval tries again
                    await self.transport.publish_schedule(self.queue, self._state(None))
            while not self._stopping and self._holds():
                now = time.time()
                last = self._last()
                held_since = min(self._held.values())
                if last is None and time.monotonic() < held_since + SEED_SETTLE:
                    await self._wait(held_since + SEED_SETTLE - time.monotonic())
                    continue
                step = plan(self.schedule, self.missed, self.grace, last=last, now=now)
                hold_until = held_since + protocol.SCHEDULE_HOLD
                if step.ticks or step.last != last or len(self._held) > 1 or time.monotonic() >= hold_until:
                    try:
                        await self._advance(step)
                    except Exception as exc:
                        log.warning("periodic %s: could not send its ticks or state (%s); trying again in %gs",
                                    self.name, exc, RETRY_PAUSE, exc_info=not isinstance(exc, OtterError))
                        await self._wait(RETRY_PAUSE)
                    continue
                await self._wait(max(0.001, min(step.next_at - time.time(), hold_until - time.monotonic())))

    async def _advance(self, step: Plan) -> None:
        """Send the step's ticks, then the new state, then ack the states held before it (not the new one, which may
        already be back)."""
        held = list(self._held)
        for tick in step.ticks:
            body = protocol.tick_body(self.name, tick_id(self.name, tick.at), iso_time(tick.at), tick.missed)
            await self.comm.send_task(self.name, body)
        if step.missed:
            log.warning("periodic %s: %d ticks were missed (no replica held its schedule); missed=%r: %s", self.name,
                        step.missed, self.missed, _MISSED_MEANS[self.missed])
        await self.transport.publish_schedule(self.queue, self._state(step.last))
        for delivery in held:
            self._held.pop(delivery, None)
            with contextlib.suppress(Exception):  # its channel is gone: the broker returns it, and it is merged
                await delivery.ack()

    def _holds(self) -> bool:
        """Whether this worker holds the schedule now: it has state messages whose channel is still open."""
        orphans = [delivery for delivery in self._held if delivery.orphaned]
        for delivery in orphans:  # their channel closed: the broker has them back, for whoever is active now
            del self._held[delivery]
        if orphans:
            log.warning("periodic %s: the broker took back the schedule state this worker held (its channel closed: "
                        "a lost connection, or a consumer_timeout); the replica active now goes on", self.name)
            self.holding = bool(self._held)
        if self._held and not self.holding:
            self.holding = True
            log.info("periodic %s: this worker holds its schedule (%s) and sends its ticks", self.name,
                     self.schedule.describe())
        return bool(self._held)

    def _last(self) -> float | None:
        """The latest tick recorded by the states held (several after a crash or a start: the latest wins)."""
        latest: float | None = None
        for delivery in self._held:
            try:
                last = protocol.read_schedule_state(self.codec.decode(delivery.body, delivery.content_type))
            except (MessageError, ValueError) as exc:
                log.warning("periodic %s: an unreadable message in %r was dropped (%s)", self.name, self.queue, exc)
                continue
            if last is not None and (latest is None or last > latest):
                latest = last
        return latest

    def _state(self, last: float | None) -> bytes:
        return self.codec.encode(protocol.schedule_state(self.name, last), what="schedule state")

    async def _wait(self, timeout: float | None) -> bool:
        """Until something arrives or stop() is called (True), or ``timeout`` seconds pass (False)."""
        try:
            await asyncio.wait_for(self._changed.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        self._changed.clear()
        return True


_MISSED_MEANS = {
    "once": "one tick was sent for all of them",
    "all": "each is sent, oldest first",
    "skip": "none of them was sent",
}
