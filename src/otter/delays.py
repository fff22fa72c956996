"""Delayed tasks: when a task is due, in whole seconds, and how the broker holds it until then (no I/O here).

A delayed task waits in the broker, never unacked in a worker, so it survives a worker's death and a broker restart
and never collides with prefetch or RabbitMQ's consumer timeout. On RabbitMQ it goes through a fixed cascade of
``LEVELS`` delay levels (see docs/protocol.md, "Delayed tasks"): level ``n`` is a topic exchange and a durable
queue whose messages all wait ``2**n`` seconds, then dead-letter into level ``n - 1``'s exchange (level 0's into
the delivery exchange, which routes to the task queue). The routing key spells the delay in binary, one word per
level, then the task queue's name: each level's exchange parks the message in its queue when its bit is 1 and
passes it straight down when it is 0. Every message of one level queue has the same TTL, so the message at the head
always expires first and no long wait holds up a short one; and thousands of distinct delays share these few
queues.

>>> delay_seconds(delay=90.2)                       # whole seconds, rounded up: not early
91
>>> DelayLevels("kiwipy.tasks").route(5, "mail.send")
('kiwipy.tasks.delay.02', '0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.1.0.1.mail.send')
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Final

__all__ = ["LEVELS", "MAX_DELAY", "DelayLevels", "delay_seconds"]

LEVELS: Final = 20  # level n holds a message 2**n seconds
MAX_DELAY: Final = 2**LEVELS - 1  # seconds: 12 days, 3 hours and a bit


def delay_seconds(delay: float | timedelta | None = None, eta: datetime | None = None,
                  now: datetime | None = None) -> int:
    """How many whole seconds from ``now`` a task with ``delay=`` (seconds or a ``timedelta``) or ``eta=`` (an
    aware ``datetime``) is due: rounded up, so it does not run early (but for RabbitMQ's expiry timers, a few ms);
    0 (send it now) when neither is given or the time has passed (a negative delay, an ``eta`` behind us).
    ``TypeError``/``ValueError`` saying what is wrong otherwise, before anything is sent."""
    if delay is not None and eta is not None:
        raise TypeError("give a task delay= or eta=, not both")
    if eta is not None:
        if not isinstance(eta, datetime):
            raise TypeError(f"eta must be a datetime, got {type(eta).__name__}")
        if eta.tzinfo is None or eta.utcoffset() is None:
            raise ValueError("eta must be an aware datetime (one with a time zone), such as "
                             "datetime.now(timezone.utc) + timedelta(minutes=5): a naive one could mean any zone")
        seconds = (eta - (now or datetime.now(timezone.utc))).total_seconds()
    elif delay is None:
        return 0
    elif isinstance(delay, timedelta):
        seconds = delay.total_seconds()
    elif isinstance(delay, bool) or not isinstance(delay, (int, float)):
        raise TypeError(f"delay must be seconds (a number) or a timedelta, got {type(delay).__name__}")
    else:
        seconds = float(delay)
    if math.isnan(seconds):
        raise ValueError("delay must be a number of seconds, got nan")
    whole = math.ceil(seconds) if 0 < seconds <= MAX_DELAY else (0 if seconds <= 0 else MAX_DELAY + 1)
    if whole > MAX_DELAY:
        raise ValueError(f"a task can be delayed at most {MAX_DELAY} s (about 12 days), not {seconds:g} s; "
                         f"for later than that, schedule it from a periodic task")
    return whole


@dataclass(frozen=True)
class DelayLevels:
    """The names, routing keys, bindings and arguments of the delay cascade under one task exchange."""

    task_exchange: str

    @property
    def prefix(self) -> str:
        return f"{self.task_exchange}.delay"

    def level(self, n: int) -> str:
        """The name of level ``n``'s exchange and of its queue (exchanges and queues have separate names)."""
        return f"{self.prefix}.{n:02d}"

    @property
    def delivery(self) -> str:
        """The exchange level 0 dead-letters into: bound to each task queue that has had a delayed task."""
        return f"{self.prefix}.deliver"

    def names(self) -> tuple[list[str], list[str]]:
        """(exchanges, queues) of the whole cascade: what tidying up a test's names deletes."""
        levels = [self.level(n) for n in range(LEVELS)]
        return [*levels, self.delivery], levels

    @staticmethod
    def top(seconds: int) -> int:
        """The highest level a delay of ``seconds`` (>= 1) goes through, where it enters the cascade."""
        return seconds.bit_length() - 1

    def route(self, seconds: int, queue: str) -> tuple[str, str]:
        """(exchange, routing key) to publish a task for ``queue`` delayed ``seconds`` (1 to ``MAX_DELAY``)."""
        assert 1 <= seconds <= MAX_DELAY, seconds
        bits = format(seconds, f"0{LEVELS}b")  # the highest level's bit first
        return self.level(self.top(seconds)), ".".join(bits) + "." + queue

    def queue_arguments(self, n: int) -> dict[str, Any]:
        """Level ``n``'s queue: a quorum queue (replicated, and dead-letters at-least-once: a message leaves it only
        once the next level has it) where every message waits ``2**n`` seconds."""
        return {
            "x-queue-type": "quorum",
            "x-message-ttl": 2**n * 1000,
            "x-dead-letter-exchange": self.level(n - 1) if n else self.delivery,
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",  # what at-least-once dead-lettering requires
        }

    def bindings(self, n: int) -> tuple[tuple[str, str], tuple[str, str]]:
        """Level ``n``'s two bindings, as (destination, binding key): its bit 1 parks the message in its queue,
        0 passes it to the next level's exchange (an exchange-to-exchange binding) or, below level 0, to delivery."""
        stars = "*." * (LEVELS - 1 - n)
        below = self.level(n - 1) if n else self.delivery
        return (self.level(n), f"{stars}1.#"), (below, f"{stars}0.#")

    @staticmethod
    def delivery_key(queue: str) -> str:
        """How the delivery exchange is bound to ``queue``: every bit, then exactly the queue's name (a plain
        ``#.name`` would also match a queue whose name ends in ``.name``)."""
        return "*." * LEVELS + queue
