"""Retry policy: failed tasks run again through the broker with backoff, then end in the dead-letter queue.

Integration tests run on both transports (``broker_url``); they prove the retry waits in the broker (the worker's
only slot runs another task meanwhile, and a retry outlives the worker that scheduled it), that attempts are
counted in ``x-otter-attempts``, and what a dead letter carries when the retries run out.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from helpers_process import wait_until
from otter import Client, Otter, protocol
from otter.dlq import DeadLetter, list_dead_letters
from otter.errors import ConfigurationError, MessageError, ValidationError
from otter.protocol import ATTEMPTS_HEADER, read_attempts, retry_queue_name
from otter.retry import RetryPolicy
from otter.testing import ServedApp
from otter.transports.amqp import TASK_QUEUE_ARGUMENTS
from rawbroker import RawBroker, unique


# -- the policy, without a broker ------------------------------------------------------------------------------
def test_delays_double_from_the_backoff_up_to_the_cap() -> None:
    policy = RetryPolicy(max_retries=10, backoff=0.5, backoff_max=3.0, jitter=False)
    assert [policy.delay(n) for n in range(1, 7)] == [0.5, 1.0, 2.0, 3.0, 3.0, 3.0]
    assert policy.delay(10_000) == 3.0  # no overflow for absurd attempt counts


def test_jittered_delays_stay_within_half_to_full_delay_and_use_few_distinct_queues() -> None:
    policy = RetryPolicy(max_retries=5, backoff=2.0, backoff_max=60.0, jitter=True)
    rng = random.Random(7)
    for attempts, full in ((1, 2.0), (2, 4.0), (3, 8.0)):
        delays = {policy.delay(attempts, rng) for _ in range(2000)}
        assert min(delays) >= full / 2 * 0.95 and max(delays) <= full * 1.05, (attempts, delays)
        assert 3 <= len(delays) <= 10, delays  # spread out, but a bounded set of delay queues


def test_max_retries_counts_runs_after_the_first() -> None:
    policy = RetryPolicy(max_retries=2)
    assert [policy.should_retry(OSError(), attempts) for attempts in (1, 2, 3)] == [True, True, False]
    assert not RetryPolicy(max_retries=0).should_retry(OSError(), 1)


def test_retry_on_limits_which_errors_retry_and_bad_arguments_never_do_by_default() -> None:
    only_io = RetryPolicy(max_retries=3, retry_on=(OSError,))
    assert only_io.should_retry(ConnectionResetError(), 1)
    assert not only_io.should_retry(KeyError("x"), 1)
    default = RetryPolicy(max_retries=3)
    assert default.should_retry(KeyError("x"), 1)
    assert not default.should_retry(ValidationError({"n": ["required"]}), 1)


def test_task_options_override_the_app_config_which_overrides_defaults() -> None:
    config = {"TASK_MAX_RETRIES": 4, "TASK_RETRY_BACKOFF": 0.25, "TASK_RETRY_BACKOFF_MAX": 9,
              "TASK_RETRY_JITTER": False, "TASK_RETRY_ON": ["builtins.OSError", "KeyError"]}
    from_config = RetryPolicy.for_task({}, config)
    assert from_config == RetryPolicy(4, (OSError, KeyError), 0.25, 9.0, False)
    from_task = RetryPolicy.for_task({"max_retries": 1, "retry_on": ValueError, "jitter": True}, config)
    assert from_task == RetryPolicy(1, (ValueError,), 0.25, 9.0, True)
    assert RetryPolicy.for_task({}, {}) == RetryPolicy()


@pytest.mark.parametrize(
    ("options", "complaint"),
    [
        ({"max_retries": -1}, "max_retries"),
        ({"max_retries": 1.5}, "max_retries"),
        ({"backoff": float("nan")}, "backoff"),
        ({"backoff_max": -3}, "backoff_max"),
        ({"jitter": "yes"}, "jitter"),
        ({"retry_on": "no.such.Error"}, "cannot be imported"),
        ({"retry_on": (OSError, 3)}, "exception classes"),
    ],
)
def test_add_task_refuses_retry_options_that_cannot_work(options: dict[str, Any], complaint: str) -> None:
    app = Otter()
    with pytest.raises(ConfigurationError, match=complaint):
        app.add_task("some.task", **options)


def test_the_attempts_header_is_a_small_non_negative_integer_or_the_message_is_unreadable() -> None:
    assert read_attempts({}) == 0
    assert read_attempts({ATTEMPTS_HEADER: 3}) == 3
    for garbage in ("3", True, -1, 2**40, 1.0, b"1", [1]):
        with pytest.raises(MessageError, match=ATTEMPTS_HEADER):
            read_attempts({ATTEMPTS_HEADER: garbage})


# -- through a broker ------------------------------------------------------------------------------------------
class Runs:
    """Every handler run of a test: (task, attempts header, monotonic time), thread-safe."""

    def __init__(self) -> None:
        self.items: list[tuple[str, Any, float]] = []
        self._lock = threading.Lock()

    def record(self, ctx: Any) -> None:
        with self._lock:
            self.items.append((ctx.name, (ctx.headers or {}).get(ATTEMPTS_HEADER), time.monotonic()))

    def of(self, task: str) -> list[tuple[str, Any, float]]:
        with self._lock:
            return [item for item in self.items if item[0] == task]


@pytest.fixture
def tasks(broker_url: str, names: dict[str, Any]) -> Iterator[list[str]]:
    """Task names for one test, unique on the shared broker; their queues are removed afterwards."""
    created: list[str] = []
    yield created
    with RawBroker.open(broker_url, names) as raw:
        raw.delete(*created)


def dead_letters(url: str, names: dict[str, Any], count: int) -> list[DeadLetter]:
    return wait_until(lambda: (letters := list_dead_letters(url, names)) and len(letters) >= count and letters,
                      what=f"{count} dead letters")


def test_a_failing_task_runs_again_after_its_backoff_until_it_succeeds(
    broker_url: str, names: dict[str, Any], tasks: list[str]
) -> None:
    name = unique("flaky")
    tasks.append(name)
    app, runs, done = Otter(**names), Runs(), threading.Event()
    app.before_handler(runs.record)

    @app.add_task(name, max_retries=3, retry_on=(OSError,), backoff=0.2, jitter=False)
    def flaky(comm: Any, body: Any) -> None:
        if len(runs.of(name)) < 3:
            raise OSError("the disk is on fire")
        done.set()

    with ServedApp(app, broker_url, **names), Client(broker_url, **names) as client:
        client.task(name, {"n": 1})
        assert done.wait(15), runs.items
    attempts = [item[1] for item in runs.of(name)]
    times = [item[2] for item in runs.of(name)]
    assert attempts == [None, 1, 2]  # the first run has no header; each retry counts the failed runs
    assert times[1] - times[0] >= 0.2 * 0.9 and times[2] - times[1] >= 0.4 * 0.9  # the backoff doubles
    assert list_dead_letters(broker_url, names) == []


def test_a_retry_waits_in_the_broker_not_in_the_worker(
    broker_url: str, names: dict[str, Any], tasks: list[str]
) -> None:
    """With one slot, a task queued after a failing one runs during the failing one's backoff."""
    failing, other = unique("failing"), unique("other")
    tasks.extend([failing, other])
    app, runs, done = Otter(CONCURRENCY=1, **names), Runs(), threading.Event()
    app.before_handler(runs.record)

    @app.add_task(failing, max_retries=1, backoff=1.0, jitter=False)
    def fail_once(comm: Any, body: Any) -> None:
        if len(runs.of(failing)) == 1:
            raise RuntimeError("first time fails")
        done.set()

    @app.add_task(other)
    def quick(comm: Any, body: Any) -> None:
        return None

    with ServedApp(app, broker_url, **names), Client(broker_url, **names) as client:
        client.task(failing, 1)
        wait_until(lambda: runs.of(failing), what="the first run")
        client.task(other, 2)
        assert done.wait(15), runs.items
    first, second = (item[2] for item in runs.of(failing))
    (quick_run,) = (item[2] for item in runs.of(other))
    assert first < quick_run < second
    assert second - first >= 0.9


def test_a_retry_outlives_the_worker_that_scheduled_it(
    broker_url: str, names: dict[str, Any], tasks: list[str]
) -> None:
    name = unique("survivor")
    tasks.append(name)
    app, runs, done = Otter(**names), Runs(), threading.Event()
    app.before_handler(runs.record)

    @app.add_task(name, max_retries=2, backoff=1.5, jitter=False)  # long enough for worker one to be gone
    def job(comm: Any, body: Any) -> None:
        if len(runs.of(name)) == 1:
            raise OSError("worker one fails")
        done.set()

    with Client(broker_url, **names) as client:
        with ServedApp(app, broker_url, **names):
            client.task(name, "payload")
            wait_until(lambda: runs.of(name), what="the first run")
        assert not done.is_set()
        with ServedApp(app, broker_url, **names):  # a new worker picks the retry up from the broker
            assert done.wait(15), runs.items
    assert [item[1] for item in runs.of(name)] == [None, 1]


def test_a_task_that_keeps_failing_ends_in_the_dead_letter_queue_with_its_story(
    broker_url: str, names: dict[str, Any], tasks: list[str]
) -> None:
    name = unique("poison")
    tasks.append(name)
    app, runs = Otter(**names), Runs()
    app.before_handler(runs.record)

    @app.add_task(name, max_retries=2, backoff=0.05, jitter=False)
    def poison(comm: Any, body: Any) -> None:
        raise ValueError(f"cannot process {body['n']}")

    with ServedApp(app, broker_url, **names), Client(broker_url, **names) as client:
        client.task(name, {"n": 7})
        (letter,) = dead_letters(broker_url, names, 1)
    assert len(runs.of(name)) == 3
    assert letter.body == orjson.dumps(protocol.task_body({"n": 7}))  # the original bytes
    assert (letter.queue, letter.task, letter.reason) == (name, name, "retries-exhausted")
    assert (letter.error_type, letter.error_message, letter.attempts) == ("ValueError", "cannot process 7", 3)


def test_an_error_not_in_retry_on_is_dead_lettered_at_once(
    broker_url: str, names: dict[str, Any], tasks: list[str]
) -> None:
    name = unique("no-retry")
    tasks.append(name)
    app, runs = Otter(**names), Runs()
    app.before_handler(runs.record)

    @app.add_task(name, max_retries=5, retry_on=(OSError,), backoff=0.05)
    def job(comm: Any, body: Any) -> None:
        raise KeyError("missing")

    with ServedApp(app, broker_url, **names), Client(broker_url, **names) as client:
        client.task(name, None)
        (letter,) = dead_letters(broker_url, names, 1)
    assert len(runs.of(name)) == 1
    assert (letter.reason, letter.error_type, letter.attempts) == ("handler-error", "KeyError", 1)


def test_the_app_config_sets_the_policy_of_tasks_without_their_own(
    broker_url: str, names: dict[str, Any], tasks: list[str]
) -> None:
    inherits, overrides = unique("inherits"), unique("overrides")
    tasks.extend([inherits, overrides])
    app = Otter(TASK_MAX_RETRIES=1, TASK_RETRY_BACKOFF=0.05, TASK_RETRY_JITTER=False, **names)
    runs = Runs()
    app.before_handler(runs.record)

    @app.add_task(inherits)
    def one(comm: Any, body: Any) -> None:
        raise RuntimeError("always")

    @app.add_task(overrides, max_retries=0)
    def two(comm: Any, body: Any) -> None:
        raise RuntimeError("always")

    with ServedApp(app, broker_url, **names), Client(broker_url, **names) as client:
        client.task(inherits, 1)
        client.task(overrides, 2)
        letters = {letter.queue: letter for letter in dead_letters(broker_url, names, 2)}
    assert (len(runs.of(inherits)), letters[inherits].attempts, letters[inherits].reason) == (
        2, 2, "retries-exhausted")
    assert (len(runs.of(overrides)), letters[overrides].attempts, letters[overrides].reason) == (
        1, 1, "handler-error")


def test_on_rabbitmq_a_retry_waits_in_a_delay_queue_that_leaves_the_task_queue_as_kiwipy_declares_it(
    amqp_url: str, names: dict[str, Any]
) -> None:
    name = unique("delayed")
    delay_queue = retry_queue_name(name, 30_000)
    app, failed = Otter(**names), threading.Event()

    @app.add_task(name, max_retries=1, backoff=30.0, jitter=False)
    def job(comm: Any, body: Any) -> None:
        failed.set()
        raise OSError("later")

    with RawBroker.open(amqp_url, names) as raw:
        try:
            with ServedApp(app, amqp_url, **names), Client(amqp_url, **names) as client:
                client.task(name, 1)
                assert failed.wait(10)
                assert wait_until(lambda: raw.depth(delay_queue) == 1, what="the parked retry")
                assert raw.depth(name) == 0  # the original was acked
            # Declaring with kiwipy's arguments succeeds only if the queue still has exactly those.
            assert raw.declare_queue(name, TASK_QUEUE_ARGUMENTS) == 0
        finally:
            raw.delete(name, delay_queue)


@pytest.mark.parametrize("refused", ["dead-letter", "retry"])
def test_on_rabbitmq_a_task_whose_retry_or_dead_letter_the_broker_refuses_goes_back_to_its_queue(
    amqp_url: str, names: dict[str, Any], caplog: pytest.LogCaptureFixture, refused: str
) -> None:
    """The queue the failed task should move to exists with other arguments, so the broker refuses to declare it
    (PRECONDITION_FAILED): the task must stay in its own queue and run again, not be acked and lost."""
    name = unique("refused")
    delay_queue = retry_queue_name(name, 30_000)
    target = names["DEAD_LETTER_QUEUE"] if refused == "dead-letter" else delay_queue
    app, runs, done = Otter(**names), Runs(), threading.Event()
    app.before_handler(runs.record)

    @app.add_task(name, max_retries=0 if refused == "dead-letter" else 1, backoff=30.0, jitter=False)
    def job(comm: Any, body: Any) -> None:
        if len(runs.of(name)) == 1:
            raise OSError("the first run fails")
        done.set()

    with RawBroker.open(amqp_url, names) as raw:
        try:
            assert raw.declare_queue(target, {"x-max-length": 1}) == 0  # declared with other arguments
            with ServedApp(app, amqp_url, **names), Client(amqp_url, **names) as client:
                client.task(name, 1)
                assert done.wait(10), f"the task ran {len(runs.of(name))} time(s) and was lost after the refusal"
            assert [item[1] for item in runs.of(name)] == [None, None]  # the original message, run again
            assert any("could not retry or dead-letter it" in record.getMessage() for record in caplog.records)
            assert raw.depth(name) == 0
            assert raw.depth(target) == 0
        finally:
            raw.delete(name, delay_queue)
