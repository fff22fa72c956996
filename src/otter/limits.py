"""Task priorities, rate limits and time limits: their values checked once, and what they mean, with no I/O.

- A task's ``priority`` is AMQP's (0-255); it orders a queue only when the queue was declared for it: a classic queue
  with ``x-max-priority`` (``add_task(..., max_priority=10)``), or a quorum queue on RabbitMQ 4+, which has two
  levels built in (priority 5 and up before the rest) and refuses ``x-max-priority``. Anywhere else the broker
  ignores it, so a sender is told once (``unheeded_priority``).
- ``rate_limit="100/s"`` (``/s``, ``/m``, ``/h``) spaces the starts of one task's handlers evenly in each worker
  process, as Celery's does (``Pacer``), and caps the queue's prefetch so that few messages wait unacked meanwhile.
- ``time_limit`` (seconds) is enforced by the worker (``otter.worker``); the error it raises is
  ``otter.TimeLimitExceeded``.

>>> RateLimit.parse("100/s").interval
0.01
>>> priority_levels("quorum", None, broker_major=4)
2
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from .errors import ConfigurationError

__all__ = [
    "MAX_PRIORITY",
    "QUORUM_HIGH_PRIORITY",
    "Pacer",
    "RateLimit",
    "check_max_priority",
    "check_priority",
    "check_time_limit",
    "priority_levels",
    "unheeded_priority",
]

MAX_PRIORITY = 255  # AMQP's priority property is an octet; RabbitMQ takes x-max-priority up to 255 (advises <= 10)
QUORUM_HIGH_PRIORITY = 5  # RabbitMQ 4's quorum queues deliver priority 5 and up before the rest (2:1 when both wait)


def check_priority(priority: Any) -> int:
    """A send's ``priority``: a whole number from 0 to 255 (``ValueError`` otherwise)."""
    if isinstance(priority, bool) or not isinstance(priority, int) or not 0 <= priority <= MAX_PRIORITY:
        raise ValueError(f"priority must be a whole number from 0 to {MAX_PRIORITY}, got {priority!r:.40}")
    return priority


def check_max_priority(where: str, value: Any) -> int | None:
    """``max_priority`` of a task queue: 1 to 255, or 0/None for none."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_PRIORITY:
        raise ConfigurationError(f"{where}: max_priority must be a whole number from 1 to {MAX_PRIORITY} (RabbitMQ "
                                 f"advises at most 10), or 0/None for a queue without priorities; got {value!r:.40}")
    return value or None


def check_time_limit(where: str, value: Any) -> float | None:
    """``time_limit`` of a task: seconds, more than 0; None: none."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < math.inf:
        raise ConfigurationError(f"{where}: time_limit must be a number of seconds, more than 0, got {value!r:.40}")
    return float(value)


def priority_levels(queue_type: str, max_priority: int | None, *, broker_major: int | None) -> int:
    """How many priority levels a task queue orders its messages by (0 or 1: it ignores ``priority``).
    ``broker_major`` None: the in-memory broker, which behaves as RabbitMQ 4."""
    if queue_type == "quorum":
        return 2 if broker_major is None or broker_major >= 4 else 0
    return max_priority + 1 if max_priority else 0


def unheeded_priority(queue: str, queue_type: str | None, broker: str) -> str:
    """The one warning a sender gets for sending ``priority=`` to a queue that ignores it, with the fix."""
    if queue_type == "quorum":
        why = (f"it is a quorum queue, and quorum queues have priorities only from RabbitMQ 4.0 on ({broker} is "
               f"older)")
        fix = "upgrade RabbitMQ, or use a classic queue declared with add_task(..., max_priority=N)"
    else:
        why = "it was declared without x-max-priority"
        fix = (f"declare it with @app.add_task({queue!r}, max_priority=N) (or TASK_MAX_PRIORITY); an existing queue "
               f"must be deleted first (rabbitmqctl delete_queue {queue}), since RabbitMQ cannot change its arguments")
    return (f"task queue {queue!r} ignores priority=: {why}, so the broker delivers its tasks in the order they came. "
            f"Fix: {fix}")


_RATE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*/\s*([smh])\s*")
_PER = {"s": 1.0, "m": 60.0, "h": 3600.0}


@dataclass(frozen=True)
class RateLimit:
    """At most ``per_second`` handler starts a second, evenly spaced (no bursts: Celery's token bucket of one)."""

    text: str
    per_second: float

    @classmethod
    def parse(cls, text: Any, where: str = "rate_limit") -> RateLimit:
        """``"100/s"``, ``"30/m"``, ``"10/h"``; ``ConfigurationError`` for anything else."""
        found = _RATE.fullmatch(text) if isinstance(text, str) else None
        if found is None or float(found.group(1)) <= 0:
            raise ConfigurationError(f"{where}: rate_limit must be a text such as '100/s', '30/m' or '10/h' (more "
                                     f"than 0 per second, minute or hour), got {text!r:.40}")
        return cls(text.strip(), float(found.group(1)) / _PER[found.group(2)])

    @property
    def interval(self) -> float:
        """Seconds between two starts."""
        return 1.0 / self.per_second

    def prefetch(self, usual: int) -> int:
        """The queue's prefetch under this limit: what the next ~2 s may start, so a delivery waits here unacked for
        about that long at most (never hours, past the broker's consumer timeout), and never more than ``usual``."""
        return max(1, min(usual, math.ceil(self.per_second * 2)))


class Pacer:
    """When each handler of one rate-limited task may start: ``reserve(now)`` books the next free start and returns
    how long to wait for it. Booked in arrival order, so deliveries start in the order they came."""

    __slots__ = ("_interval", "_next")

    def __init__(self, limit: RateLimit) -> None:
        self._interval = limit.interval
        self._next = -math.inf

    def reserve(self, now: float) -> float:
        start = max(now, self._next)
        self._next = start + self._interval
        return start - now
