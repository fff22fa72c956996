"""When periodic tasks tick, and which ticks to send: no I/O, no clock of its own (``now`` is always an argument).

A schedule is ``Every(seconds)`` or ``Cron(expression, tz)``. Ticks are absolute times, the same on every replica:
``Every(60)`` ticks at each whole minute (multiples of its period since the Unix epoch, UTC), ``Cron("0 7 * * mon-fri",
"Europe/Paris")`` at 07:00 Paris time on weekdays (through croniter). Nothing accumulates drift: the next tick is
computed from the schedule, never from when the last one ran.

``plan`` decides what the replica holding the schedule sends, given the last tick it recorded and the time now. A
tick is *missed* when it is found more than ``grace`` seconds after its time (no replica held the schedule then);
``missed`` says what to do with those: ``"once"`` sends one tick for all of them (the latest), ``"all"`` sends each,
oldest first, ``"skip"`` drops them. Ticks found within ``grace`` are sent whatever the policy; under ``"once"`` the
first of them carries the missed ones (its ``missed`` count), so an outage costs one run, not two.

>>> step = plan(Every(60), "once", 10.0, last=0.0, now=3600.5)
>>> [tick.at for tick in step.ticks], step.missed, step.last
([3600.0], 59, 3600.0)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone, tzinfo
from typing import Final

from .errors import ConfigurationError

__all__ = ["MISSED_POLICIES", "Cron", "Every", "Periodic", "Plan", "Schedule", "Tick", "iso_time", "plan", "tick_id"]

MISSED_POLICIES: Final = ("once", "all", "skip")
# The most ticks one planning step sends under missed="all": the rest follow in the next steps, so a long outage
# of a fast schedule is caught up in bounded bursts rather than one huge one.
CATCH_UP_BATCH: Final = 100
MIN_PERIOD: Final = 0.01  # seconds


class Schedule:
    """When a periodic task ticks: ``next_after(t)``, the first tick strictly after ``t`` (seconds since the epoch)."""

    def next_after(self, t: float) -> float:
        raise NotImplementedError

    def latest_at_or_before(self, t: float) -> float:
        """The last tick at or before ``t``."""
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError


@dataclass(frozen=True)
class Every(Schedule):
    """Every ``seconds``, at the multiples of ``seconds`` since the epoch (so every replica agrees on the ticks)."""

    seconds: float

    def __post_init__(self) -> None:
        if isinstance(self.seconds, bool) or not isinstance(self.seconds, int | float) \
                or not MIN_PERIOD <= self.seconds < math.inf:
            raise ConfigurationError(f"every= must be a number of seconds (or a timedelta) of at least {MIN_PERIOD}, "
                                     f"got {self.seconds!r}")

    def next_after(self, t: float) -> float:
        return self._tick(self._index(t) + 1)

    def latest_at_or_before(self, t: float) -> float:
        return self._tick(self._index(t))

    def _tick(self, index: int) -> float:
        """The ``index``-th tick, to the millisecond: the precision a schedule's state records, so that a tick read
        back from it is the same number."""
        return round(index * self.seconds, 3)

    def _index(self, t: float) -> int:
        """The index of the last tick at or before ``t``."""
        index = math.floor(t / self.seconds)
        while self._tick(index + 1) <= t:
            index += 1
        while self._tick(index) > t:
            index -= 1
        return index

    def describe(self) -> str:
        return f"every {self.seconds:g}s"


@dataclass(frozen=True)
class Cron(Schedule):
    """A cron expression (five fields, or six with seconds last, as croniter reads them) in the time zone ``tz``
    (an IANA name such as ``"Europe/Paris"``; default UTC). Daylight-saving gaps and repeats follow croniter."""

    expression: str
    tz: str = "UTC"

    def __post_init__(self) -> None:
        from croniter import croniter

        if not isinstance(self.expression, str) or not croniter.is_valid(self.expression):
            raise ConfigurationError(f"cron= must be a cron expression such as '0 7 * * mon-fri', got "
                                     f"{self.expression!r}")
        self.zone  # noqa: B018 - refuse an unknown time zone now, not at the first tick

    @property
    def zone(self) -> tzinfo:
        if self.tz == "UTC":
            return timezone.utc
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            return ZoneInfo(self.tz)
        except (ZoneInfoNotFoundError, ValueError, TypeError):
            raise ConfigurationError(f"tz= must be an IANA time zone such as 'Europe/Paris', got {self.tz!r}") from None

    def next_after(self, t: float) -> float:
        from croniter import croniter

        return float(croniter(self.expression, datetime.fromtimestamp(t, self.zone)).get_next(float))

    def latest_at_or_before(self, t: float) -> float:
        from croniter import croniter

        # croniter works in whole seconds: step back from a second later, then forward while still <= t.
        latest = float(croniter(self.expression, datetime.fromtimestamp(t + 1, self.zone)).get_prev(float))
        while latest > t:
            latest = float(croniter(self.expression, datetime.fromtimestamp(latest, self.zone)).get_prev(float))
        return latest

    def describe(self) -> str:
        return f"cron {self.expression}" + ("" if self.tz == "UTC" else f" ({self.tz})")


@dataclass(frozen=True)
class Periodic:
    """A periodic route's schedule and what it does with missed ticks (None: the app's ``PERIODIC_MISSED``)."""

    schedule: Schedule
    missed: str | None = None

    @classmethod
    def build(
        cls, name: str, every: float | timedelta | None, cron: str | None, tz: str | None, missed: str | None
    ) -> Periodic:
        """What ``add_periodic`` was given, checked: exactly one of ``every`` and ``cron``; ``tz`` only with cron."""
        where = f"add_periodic({name!r})"
        if (every is None) == (cron is None):
            raise ConfigurationError(f"{where} needs exactly one of every= (seconds or a timedelta) and cron=")
        if tz is not None and cron is None:
            raise ConfigurationError(f"{where}: tz= goes with cron= (every= ticks in absolute time)")
        if missed is not None and missed not in MISSED_POLICIES:
            raise ConfigurationError(f"{where}: missed= must be one of {', '.join(map(repr, MISSED_POLICIES))}, got "
                                     f"{missed!r}")
        schedule: Schedule
        if every is not None:
            schedule = Every(every.total_seconds() if isinstance(every, timedelta) else every)
        else:
            assert cron is not None
            schedule = Cron(cron, tz or "UTC")
        return cls(schedule, missed)

    def describe(self) -> str:
        return self.schedule.describe() + ("" if self.missed is None else f", missed={self.missed}")


@dataclass(frozen=True, slots=True)
class Tick:
    """One tick to send: its scheduled time, and how many missed ticks it stands for (``missed="once"``)."""

    at: float
    missed: int = 0


@dataclass(frozen=True, slots=True)
class Plan:
    """What to send now (``ticks``), the last tick time to record (``last``), when to look again (``next_at``),
    and how many missed ticks were coalesced or skipped (``missed``, for the log)."""

    ticks: tuple[Tick, ...]
    last: float
    next_at: float
    missed: int = 0


def plan(schedule: Schedule, missed: str, grace: float, *, last: float | None, now: float) -> Plan:
    """The ticks due after ``last`` up to ``now`` (see the module docstring). ``last`` None: the schedule has no
    record (its first run ever, or its state was lost): it starts now, with nothing to catch up."""
    if last is None or last > now:  # a record from the future: another replica's clock is ahead; wait for ours
        start = now if last is None else last
        return Plan((), start, schedule.next_after(start))
    latest = schedule.latest_at_or_before(now)
    if latest <= last:
        return Plan((), last, schedule.next_after(last))
    on_time_from = now - grace
    if missed == "all":
        ticks: list[Tick] = []
        at = schedule.next_after(last)
        while at <= now and len(ticks) < CATCH_UP_BATCH:
            ticks.append(Tick(at))
            at = schedule.next_after(at)
        more = at <= now
        return Plan(tuple(ticks), ticks[-1].at, now if more else at)
    late_until = schedule.latest_at_or_before(on_time_from)
    late = _count(schedule, last, late_until) if late_until > last else 0
    on_time: list[Tick] = []
    at = schedule.next_after(max(last, late_until))
    while at <= now and len(on_time) < CATCH_UP_BATCH:
        on_time.append(Tick(at))
        at = schedule.next_after(at)
    ticks = on_time
    if late and missed == "once":  # folded into the first tick on time, if there is one
        ticks = [Tick(on_time[0].at, late), *on_time[1:]] if on_time else [Tick(late_until, late)]
    return Plan(tuple(ticks), latest, schedule.next_after(latest), late)


def _count(schedule: Schedule, after: float, until: float, limit: int = 100_000) -> int:
    """How many ticks fall in (``after``, ``until``]; counted exactly for ``Every``, else up to ``limit``."""
    if isinstance(schedule, Every):
        return schedule._index(until) - schedule._index(after)
    count, at = 0, schedule.next_after(after)
    while at <= until and count < limit:
        count, at = count + 1, schedule.next_after(at)
    return count


def tick_id(name: str, at: float) -> str:
    """A tick's id, the same whichever replica sends it: ``<name>@<scheduled time, ISO 8601 UTC, ms>``."""
    return f"{name}@{iso_time(at)}"


def iso_time(at: float) -> str:
    return datetime.fromtimestamp(round(at, 3), timezone.utc).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")
