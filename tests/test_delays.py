"""``otter.delays`` without a broker: the whole seconds a delay or eta comes to, and the cascade of delay levels,
walked the way RabbitMQ routes it (topic bindings, exchange-to-exchange bindings, dead-lettering on TTL)."""

from __future__ import annotations

import random
import re
from datetime import datetime, timedelta, timezone

import pytest

from otter.delays import LEVELS, MAX_DELAY, DelayLevels, delay_seconds
from otter.routing import subject_regex

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=timezone.utc)


@pytest.mark.parametrize(("kwargs", "seconds"), [
    ({}, 0),
    ({"delay": 0}, 0),
    ({"delay": 0.001}, 1),  # rounded up: never early
    ({"delay": 2}, 2),
    ({"delay": 2.5}, 3),
    ({"delay": -4}, 0),  # already due
    ({"delay": timedelta(minutes=2)}, 120),
    ({"eta": NOW + timedelta(seconds=10)}, 10),
    ({"eta": NOW + timedelta(seconds=9, milliseconds=1)}, 10),
    ({"eta": NOW - timedelta(days=1)}, 0),
    ({"eta": datetime(2026, 1, 1, 13, 0, 30, tzinfo=timezone(timedelta(hours=1)))}, 30),  # any zone, if aware
    ({"delay": MAX_DELAY}, MAX_DELAY),
])
def test_delays_come_to_whole_seconds(kwargs: dict[str, object], seconds: int) -> None:
    assert delay_seconds(**kwargs, now=NOW) == seconds  # type: ignore[arg-type]


@pytest.mark.parametrize(("kwargs", "error", "message"), [
    ({"eta": datetime(2026, 1, 1, 12, 5)}, ValueError, "eta must be an aware datetime"),
    ({"eta": "2026-01-01T12:05:00Z"}, TypeError, "eta must be a datetime"),
    ({"delay": "5"}, TypeError, "delay must be seconds"),
    ({"delay": True}, TypeError, "delay must be seconds"),
    ({"delay": float("nan")}, ValueError, "nan"),
    ({"delay": MAX_DELAY + 1}, ValueError, "at most 1048575 s"),
    ({"delay": float("inf")}, ValueError, "at most"),
    ({"delay": 1, "eta": NOW}, TypeError, "not both"),
])
def test_bad_delays_are_refused_saying_why(kwargs: dict[str, object], error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        delay_seconds(**kwargs, now=NOW)  # type: ignore[arg-type]


def test_the_levels_cover_more_than_seven_days() -> None:
    assert MAX_DELAY > 12 * 24 * 3600 and LEVELS == 20


def walk(levels: DelayLevels, seconds: int, queue: str, bound: list[str]) -> tuple[int, list[str], list[str]]:
    """Route a delayed message as RabbitMQ would: (seconds waited, level queues it waited in, task queues reached).

    ``bound`` are the task queues the delivery exchange is bound to."""
    exchange, key = levels.route(seconds, queue)
    waited, parked, delivered = 0, [], []
    for _ in range(2 * LEVELS + 2):  # every hop moves one level down: it must end
        if exchange == levels.delivery:
            delivered = [name for name in bound if re.fullmatch(subject_regex(levels.delivery_key(name)), key)]
            return waited, parked, delivered
        n = int(exchange.rsplit(".", 1)[1])
        (level_queue, park), (below, pass_on) = levels.bindings(n)
        matches = [dest for dest, pattern in ((level_queue, park), (below, pass_on))
                   if re.fullmatch(subject_regex(pattern), key)]
        assert len(matches) == 1, (exchange, key, matches)  # a message takes exactly one way at each level
        if matches[0] == level_queue:
            arguments = levels.queue_arguments(n)
            waited += arguments["x-message-ttl"] // 1000
            parked.append(level_queue)
            exchange = arguments["x-dead-letter-exchange"]  # dead-lettered with its routing key unchanged
        else:
            exchange = below
    raise AssertionError("the message went round in circles")


@pytest.mark.parametrize("seconds", [1, 2, 3, 5, 60, 1023, 1024, 86_400, 7 * 86_400, MAX_DELAY,
                                     *random.Random(14).sample(range(1, MAX_DELAY), 30)])
def test_a_delayed_message_waits_exactly_its_seconds_and_reaches_only_its_queue(seconds: int) -> None:
    levels = DelayLevels("kiwipy.tasks")
    queue = "billing.charge"
    bound = [queue, "other.billing.charge", "billing.charge.x", "charge"]  # names that a loose binding would catch
    waited, parked, delivered = walk(levels, seconds, queue, bound)
    assert waited == seconds
    assert delivered == [queue]
    assert len(parked) == bin(seconds).count("1")  # one stay per set bit: at most LEVELS hops
    assert parked[0] == levels.level(DelayLevels.top(seconds))  # it enters at the highest level it needs


def test_every_message_of_a_level_queue_waits_as_long() -> None:
    """So the head of a level queue always expires first: no long wait holds up a short one behind it."""
    levels = DelayLevels("x")
    assert [levels.queue_arguments(n)["x-message-ttl"] for n in range(LEVELS)] == [2**n * 1000 for n in range(LEVELS)]
    assert {levels.queue_arguments(n)["x-queue-type"] for n in range(LEVELS)} == {"quorum"}
    assert {levels.queue_arguments(n)["x-dead-letter-strategy"] for n in range(LEVELS)} == {"at-least-once"}
    exchanges, queues = levels.names()
    assert len(queues) == LEVELS and len(exchanges) == LEVELS + 1  # a fixed set, whatever the delays
