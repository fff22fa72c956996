"""Priorities, rate limits and time limits without a broker: the values ``otter.limits`` accepts, the queue arguments
they give, the pacing of rate-limited starts, and what ``core`` decides for a task that ran out of time."""

from __future__ import annotations

import asyncio
import math
import uuid
from typing import Any

import pytest

import otter
from otter import dlq, protocol
from otter.codec import JsonCodec
from otter.config import resolve
from otter.core import DeadLetter, RetryLater, Run, TaskRules
from otter.errors import ConfigurationError, TimeLimitExceeded
from otter.limits import Pacer, RateLimit, check_priority, priority_levels, unheeded_priority
from otter.retry import RetryPolicy
from otter.transports.base import Delivery, Snapshot, Topology

KIWIPY_TTL = protocol.KiwipyDefaults.TASK_MESSAGE_TTL


@pytest.mark.parametrize(("text", "per_second"), [("100/s", 100.0), ("30/m", 0.5), ("36/h", 0.01), (" 2.5 / s ", 2.5)])
def test_a_rate_limit_reads_per_second_minute_or_hour(text: str, per_second: float) -> None:
    limit = RateLimit.parse(text)
    assert math.isclose(limit.per_second, per_second)
    assert math.isclose(limit.interval, 1 / per_second)


@pytest.mark.parametrize("text", ["100", "0/s", "10/d", "-1/s", "fast", 100, None, "1/s/s"])
def test_a_rate_limit_that_means_nothing_is_refused(text: Any) -> None:
    with pytest.raises(ConfigurationError, match=r"rate_limit must be a text such as '100/s'"):
        RateLimit.parse(text)


def test_the_pacer_spaces_starts_evenly_and_never_bursts_after_a_pause() -> None:
    pacer = Pacer(RateLimit.parse("4/s"))
    assert [pacer.reserve(10.0) for _ in range(4)] == [0.0, 0.25, 0.5, 0.75]
    # Long idle: the next start is free at once, but the one after still waits a whole interval (no burst).
    assert pacer.reserve(100.0) == 0.0
    assert pacer.reserve(100.0) == 0.25


@pytest.mark.parametrize(("text", "usual", "prefetch"), [("100/s", 32, 32), ("4/s", 32, 8), ("1/m", 32, 1),
                                                          ("1/h", 1, 1)])
def test_a_rate_limited_queue_prefetches_only_what_the_next_seconds_may_start(text: str, usual: int,
                                                                             prefetch: int) -> None:
    assert RateLimit.parse(text).prefetch(usual) == prefetch


@pytest.mark.parametrize("priority", [0, 1, 9, 255])
def test_a_priority_is_an_amqp_octet(priority: int) -> None:
    assert check_priority(priority) == priority


@pytest.mark.parametrize("priority", [-1, 256, 1.5, "5", True])
def test_a_priority_outside_the_octet_is_refused(priority: Any) -> None:
    with pytest.raises(ValueError, match="priority must be a whole number from 0 to 255"):
        check_priority(priority)


def test_a_client_refuses_a_bad_priority_before_sending() -> None:
    with otter.Client("memory://limits-bad-priority") as client:
        with pytest.raises(ValueError, match="0 to 255"):
            client.task("work", 1, priority=300)
        assert client.comm is not None
        with pytest.raises(ValueError, match="0 to 255"):
            client.comm.task("work", 1, priority=-1)


@pytest.mark.parametrize(("queue_type", "max_priority", "major", "levels"), [
    ("classic", None, 3, 0), ("classic", 10, 3, 11), ("classic", 10, 4, 11),
    ("quorum", None, 3, 0), ("quorum", None, 4, 2), ("quorum", None, None, 2),
])
def test_which_queues_order_by_priority(queue_type: str, max_priority: int | None, major: int | None,
                                        levels: int) -> None:
    assert priority_levels(queue_type, max_priority, broker_major=major) == levels


def test_the_default_task_queue_arguments_stay_kiwipys() -> None:
    topology = Topology.from_config(resolve({}))
    assert topology.task_queue_arguments() == protocol.TASK_QUEUE_ARGUMENTS


def test_max_priority_adds_x_max_priority_to_classic_queues_only() -> None:
    arguments = protocol.task_queue_arguments("classic", message_ttl_ms=KIWIPY_TTL, delivery_limit=20,
                                              dead_letter_queue="dlq", max_priority=10)
    assert arguments == {**protocol.TASK_QUEUE_ARGUMENTS, "x-max-priority": 10}
    quorum = protocol.task_queue_arguments("quorum", message_ttl_ms=KIWIPY_TTL, delivery_limit=20,
                                           dead_letter_queue="dlq", max_priority=10)
    assert "x-max-priority" not in quorum  # RabbitMQ refuses it on a quorum queue


def test_task_max_priority_is_the_default_and_a_task_s_own_wins() -> None:
    topology = Topology.from_config(resolve({"TASK_MAX_PRIORITY": 5}))
    assert topology.task_queue_arguments()["x-max-priority"] == 5
    assert topology.task_queue_arguments(max_priority=9)["x-max-priority"] == 9
    assert "x-max-priority" not in topology.task_queue_arguments(max_priority=0)


@pytest.mark.parametrize(("value", "converted"), [(10, 10), ("3", 3), (0, None), (None, None)])
def test_task_max_priority_config(value: Any, converted: int | None) -> None:
    assert resolve({"TASK_MAX_PRIORITY": value})["TASK_MAX_PRIORITY"] == converted


@pytest.mark.parametrize("value", [256, -1, "ten", 2.5])
def test_a_task_max_priority_out_of_range_is_refused(value: Any) -> None:
    with pytest.raises(ConfigurationError, match="TASK_MAX_PRIORITY"):
        resolve({"TASK_MAX_PRIORITY": value})


@pytest.mark.parametrize(("options", "message"), [
    ({"max_priority": 300}, "max_priority must be a whole number from 1 to 255"),
    ({"max_priority": 10, "queue_type": "quorum"}, "a quorum queue takes no max_priority"),
    ({"rate_limit": "lots"}, "rate_limit must be a text such as '100/s'"),
    ({"time_limit": 0}, "time_limit must be a number of seconds, more than 0"),
    ({"time_limit": "5"}, "time_limit must be a number of seconds, more than 0"),
])
def test_add_task_refuses_limits_that_cannot_work(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        otter.Otter().add_task("work", **options)


def test_add_task_keeps_its_limits_on_the_route() -> None:
    app = otter.Otter()
    app.add_task("work", max_priority=10, rate_limit="10/s", time_limit=2)(lambda comm, body: None)
    [route] = [route for route in app.routes if route.name == "work"]
    assert route.options["max_priority"] == 10
    assert route.options["rate_limit"] == RateLimit("10/s", 10.0)
    assert route.options["time_limit"] == 2.0


def test_the_unheeded_priority_warning_names_the_fix() -> None:
    classic = unheeded_priority("mail.send", None, "memory://")
    assert "declared without x-max-priority" in classic and "max_priority=N" in classic
    assert "rabbitmqctl delete_queue mail.send" in classic
    quorum = unheeded_priority("mail.send", "quorum", "RabbitMQ 3.10.8")
    assert "quorum queues have priorities only from RabbitMQ 4.0 on (RabbitMQ 3.10.8 is older)" in quorum


def _delivery() -> Delivery:
    return Snapshot(b'[1, true]', queue="work", content_type=protocol.CONTENT_TYPE, correlation_id="c1")


def test_a_task_out_of_time_is_dead_lettered_as_time_limit() -> None:
    rules = TaskRules("work", JsonCodec(), RetryPolicy(), debug=False)
    decision = rules.failed(_delivery(), Run((1,)), TimeLimitExceeded("task work ran longer than 2 s"))
    assert isinstance(decision, DeadLetter) and decision.headers is not None
    assert decision.headers[protocol.REASON_HEADER] == "time-limit"
    assert decision.headers[protocol.ERROR_TYPE_HEADER] == "TimeLimitExceeded"
    assert any("handler raised TimeLimitExceeded" in note.message for note in decision.notes)


def test_a_task_out_of_time_is_retried_per_its_policy_then_dead_lettered_as_time_limit() -> None:
    rules = TaskRules("work", JsonCodec(), RetryPolicy(max_retries=1, jitter=False), debug=False)
    first = rules.failed(_delivery(), Run((1,)), TimeLimitExceeded("late"))
    assert isinstance(first, RetryLater)
    last = rules.failed(_delivery(), Run((1,), attempts=1), TimeLimitExceeded("late"))
    assert isinstance(last, DeadLetter) and last.headers is not None
    assert (last.headers[protocol.REASON_HEADER], last.headers[protocol.ATTEMPTS_HEADER]) == ("time-limit", 2)


def test_time_limit_exceeded_is_an_otter_error_and_a_timeout() -> None:
    assert issubclass(TimeLimitExceeded, otter.OtterError) and issubclass(TimeLimitExceeded, TimeoutError)
    assert "time-limit" in protocol.DEAD_LETTER_REASONS


def test_task_time_limit_applies_to_every_task_and_a_task_s_own_wins() -> None:
    app = otter.Otter(TASK_TIME_LIMIT=0.2)

    @app.add_task("sleepy")
    async def sleepy(comm: Any, body: Any) -> None:
        await asyncio.sleep(10)

    @app.add_task("patient", time_limit=5)
    async def patient(comm: Any, body: Any) -> None:
        await asyncio.sleep(0.4)  # past the app's limit, within its own

    url = f"memory://limits-{uuid.uuid4().hex}"
    with app.test_client(url) as client:
        client.task("sleepy", 1)
        client.task("patient", 2)
        [late] = client.wait_handled("sleepy")
        [kept] = client.wait_handled("patient")
        letters = dlq.list_dead_letters(url, {})
    assert (late.outcome, type(late.error)) == ("error TimeLimitExceeded, dead-lettered", TimeLimitExceeded)
    assert kept.outcome == "ok"
    assert [(letter.task, letter.reason) for letter in letters] == [("sleepy", "time-limit")]
