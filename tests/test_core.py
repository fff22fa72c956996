"""The I/O-free core: what each kind of message means, decided from its bytes and headers alone, with no broker."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import orjson
import pytest

from otter import protocol
from otter.codec import JsonCodec
from otter.core import (
    ACKED,
    FOLLOWING,
    SETTLED,
    Ack,
    BroadcastRules,
    DeadLetter,
    Drop,
    Note,
    Redeliveries,
    Reply,
    Requeue,
    RetryLater,
    RpcRules,
    Run,
    TaskRules,
    ack_timeout_note,
)
from otter.errors import BrokerUnavailable, MessageError, ValidationError
from otter.retry import RetryPolicy
from otter.routing import BroadcastRoute, make_filters

NOW = 1_800_000_000.0
LIMIT = 1024


@dataclass
class Message:
    body: bytes
    content_type: str | None = protocol.CONTENT_TYPE
    headers: Mapping[str, Any] = field(default_factory=dict)
    correlation_id: str | None = "cid-1"
    reply_to: str | None = "reply.q"


def rpc_rules(debug: bool = False) -> RpcRules:
    return RpcRules("svc.echo", JsonCodec(LIMIT), debug=debug)


def task_rules(**policy: Any) -> TaskRules:
    return TaskRules("svc.job", JsonCodec(LIMIT), RetryPolicy(**{"jitter": False, **policy}), debug=False)


def reply_of(body: bytes) -> Any:
    return orjson.loads(body)


# -- RPC -----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("message", "expected", "outcome", "error"),
    [
        pytest.param(Message(b'"otter"'), Run, None, None, id="readable: run it"),
        pytest.param(Message(b'"x"', headers={protocol.DEADLINE_HEADER: int((NOW - 1) * 1000)}), Drop, "expired",
                     None, id="deadline passed: not run, no reply"),
        pytest.param(Message(b'"x"', headers={protocol.DEADLINE_HEADER: int((NOW + 5) * 1000)}), Run, None, None,
                     id="deadline ahead: run"),
        pytest.param(Message(b"{not json"), Reply, "bad request", "MessageError", id="undecodable: error reply"),
        pytest.param(Message(b'"x"', content_type="application/yaml"), Reply, "bad request", "MessageError",
                     id="foreign content type: error reply"),
        pytest.param(Message(b'"' + b"x" * LIMIT + b'"'), Reply, "bad request", "MessageTooLarge",
                     id="too large: error reply"),
        pytest.param(Message(b'"x"', headers={protocol.DEADLINE_HEADER: "soon"}), Reply, "bad request",
                     "MessageError", id="garbage deadline: error reply"),
        pytest.param(Message(b"{not json", reply_to=None), Drop, "bad request", None,
                     id="undecodable without reply_to: dropped"),
    ],
)
def test_what_an_rpc_request_means(message: Message, expected: type, outcome: str | None, error: str | None) -> None:
    decision = rpc_rules().receive(message, NOW)
    assert type(decision) is expected
    if outcome is not None:
        assert decision.outcome == outcome  # type: ignore[union-attr]
        assert [note.level for note in decision.notes] == [logging.WARNING]  # type: ignore[union-attr]
    if error is not None:
        assert isinstance(decision, Reply)
        assert reply_of(decision.body)["error"]["type"] == error


def test_an_rpc_result_and_an_rpc_error_are_replies_only_to_a_caller_who_listens() -> None:
    rules, run = rpc_rules(), Run(("x",))
    ok = rules.succeeded(Message(b'"x"'), run, {"result": 1})
    assert isinstance(ok, Reply) and reply_of(ok.body) == {"result": {"result": 1}} and ok.notes == ()
    failed = rules.failed(Message(b'"x"'), run, ZeroDivisionError("boom"))
    assert isinstance(failed, Reply) and failed.outcome == "error ZeroDivisionError"
    assert reply_of(failed.body)["error"]["type"] == "ZeroDivisionError"
    assert [note.level for note in failed.notes] == [logging.ERROR]
    assert "boom" in failed.notes[0].message and "cid-1" in failed.notes[0].message
    assert isinstance(rules.succeeded(Message(b'"x"', reply_to=None), run, 1), Drop)
    assert isinstance(rules.failed(Message(b'"x"', reply_to=None), run, ValueError()), Drop)


def test_an_unencodable_result_becomes_an_error_reply_with_a_log_line() -> None:
    decision = rpc_rules().succeeded(Message(b'"x"'), Run(("x",)), {"bad": object()})
    assert isinstance(decision, Reply) and decision.outcome == "unencodable reply"
    assert reply_of(decision.body)["error"]["type"] == "MessageError"
    assert "not serialisable" in decision.notes[0].message


@pytest.mark.parametrize("debug", [False, True])
def test_a_traceback_always_goes_to_the_log_and_to_the_caller_only_in_debug(debug: bool) -> None:
    try:
        raise KeyError("k")
    except KeyError as exc:
        decision = rpc_rules(debug).failed(Message(b'"x"'), Run(("x",)), exc)
    assert isinstance(decision, Reply)
    assert (reply_of(decision.body)["error"]["traceback"] is not None) is debug
    assert decision.notes[0].level == logging.ERROR and isinstance(decision.notes[0].exc, KeyError)


@pytest.mark.parametrize("rules", [rpc_rules(), task_rules(max_retries=3)], ids=["rpc", "task"])
def test_a_callers_bad_input_is_a_warning_without_a_traceback(rules: RpcRules | TaskRules) -> None:
    decision = rules.failed(Message(b'"x"'), Run(("x",)), ValidationError({"f": ["bad"]}))
    assert [(note.level, note.exc) for note in decision.notes[:1]] == [(logging.WARNING, None)]
    assert "input was rejected" in decision.notes[0].message and "f: bad" in decision.notes[0].message
    assert all(note.level < logging.ERROR for note in decision.notes)


def test_an_rpc_cut_off_by_shutdown_gets_an_error_reply() -> None:
    decision = rpc_rules().abandoned(Message(b'"x"'), grace=2.0)
    assert isinstance(decision, Reply)
    assert reply_of(decision.body)["error"]["type"] == BrokerUnavailable.__name__
    assert "did not finish within 2s" in decision.notes[0].message


def test_settling_on_receipt_is_the_delivery_guarantee() -> None:
    assert RpcRules.settle_on_receipt is True  # at-most-once: a worker that dies mid-call does not run it twice
    assert BroadcastRules.settle_on_receipt is True
    assert TaskRules.settle_on_receipt is False  # at-least-once: acked when the handler returns


# -- tasks ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("message", "attempts", "wants_reply"),
    [
        pytest.param(Message(b'["x", true]'), 0, False, id="kiwipy body, no reply wanted"),
        pytest.param(Message(b'["x", false]'), 0, True, id="kiwipy sender waits for the outcome"),
        pytest.param(Message(b'["x", false]', reply_to=None), 0, False, id="reply wanted but nowhere to send it"),
        pytest.param(Message(b'["x", true]', headers={protocol.ATTEMPTS_HEADER: 2}), 2, False, id="a retry"),
    ],
)
def test_a_readable_task_runs(message: Message, attempts: int, wants_reply: bool) -> None:
    decision = task_rules().receive(message, NOW)
    assert decision == Run(("x",), attempts=attempts, wants_reply=wants_reply)


@pytest.mark.parametrize(
    ("message", "why"),
    [
        pytest.param(Message(b"garbage"), "not valid JSON", id="undecodable"),
        pytest.param(Message(b'"x"'), "two-item list", id="not kiwipy's [task, no_reply]"),
        pytest.param(Message(b'["x", 1]'), "two-item list", id="no_reply not a bool"),
        pytest.param(Message(b'["x", true]', headers={protocol.ATTEMPTS_HEADER: -1}), protocol.ATTEMPTS_HEADER,
                     id="negative attempts"),
        pytest.param(Message(b'["x", true]', headers={protocol.ATTEMPTS_HEADER: "2"}), protocol.ATTEMPTS_HEADER,
                     id="attempts not an integer"),
        pytest.param(Message(b'["' + b"x" * LIMIT + b'", true]'), "over the limit of 1024 bytes", id="too large"),
    ],
)
def test_an_unreadable_task_is_dead_lettered_at_once_with_the_reason(message: Message, why: str) -> None:
    decision = task_rules(max_retries=5).receive(message, NOW)
    assert isinstance(decision, DeadLetter)
    # its sender gave a reply_to and may be waiting (the unreadable body would say): it hears the error
    assert decision.reply is not None and reply_of(decision.reply)["error"]["type"] in ("MessageError",
                                                                                        "MessageTooLarge")
    silent = task_rules(max_retries=5).receive(replace(message, reply_to=None), NOW)
    assert isinstance(silent, DeadLetter) and silent.reply is None
    assert decision.headers is not None
    assert decision.headers[protocol.REASON_HEADER] == "bad-message"
    assert decision.headers[protocol.TASK_HEADER] == "svc.job"
    assert why in decision.headers[protocol.ERROR_MESSAGE_HEADER] or why in decision.notes[0].message
    assert decision.notes[0].level == logging.WARNING


def test_a_task_that_returns_is_acked_and_answers_a_sender_who_waits() -> None:
    rules = task_rules()
    assert task_rules().succeeded(Message(b""), Run(("x",)), 5) == Ack("ok")
    decision = rules.succeeded(Message(b""), Run(("x",), wants_reply=True), 5)
    assert isinstance(decision, Ack) and decision.reply is not None and reply_of(decision.reply) == {"result": 5}


@pytest.mark.parametrize(
    ("policy", "attempts_before", "exc", "expected", "reason", "delay"),
    [
        pytest.param({}, 0, OSError("x"), DeadLetter, "handler-error", None, id="no retries: dead letter"),
        pytest.param({"max_retries": 2, "backoff": 1.5}, 0, OSError("x"), RetryLater, None, 1.5, id="first retry"),
        pytest.param({"max_retries": 2, "backoff": 1.5}, 1, OSError("x"), RetryLater, None, 3.0,
                     id="backoff doubles"),
        pytest.param({"max_retries": 2}, 2, OSError("x"), DeadLetter, "retries-exhausted", None,
                     id="retries exhausted"),
        pytest.param({"max_retries": 2}, 0, ValidationError({"a": ["bad"]}), DeadLetter, "handler-error", None,
                     id="bad arguments are not retried"),
        pytest.param({"max_retries": 2, "retry_on": (OSError,)}, 0, KeyError("k"), DeadLetter, "handler-error",
                     None, id="not in retry_on"),
        pytest.param({"max_retries": 2, "backoff": 2.0, "backoff_max": 3.0}, 1, OSError("x"), RetryLater, None, 3.0,
                     id="capped at backoff_max"),
    ],
)
def test_what_a_failed_task_means(
    policy: dict[str, Any], attempts_before: int, exc: Exception, expected: type, reason: str | None,
    delay: float | None,
) -> None:
    decision = task_rules(**policy).failed(Message(b""), Run(("x",), attempts=attempts_before), exc)
    assert type(decision) is expected
    bad_input = isinstance(exc, ValidationError)
    assert decision.notes[0].level == (logging.WARNING if bad_input else logging.ERROR)
    assert (type(exc).__name__ in decision.notes[0].message) is not bad_input
    if isinstance(decision, RetryLater):
        assert decision.delay == delay
        assert decision.headers == {protocol.ATTEMPTS_HEADER: attempts_before + 1}
    else:
        assert isinstance(decision, DeadLetter) and decision.headers is not None
        assert decision.headers[protocol.REASON_HEADER] == reason
        assert decision.headers[protocol.ATTEMPTS_HEADER] == attempts_before + 1
        assert decision.headers[protocol.ERROR_TYPE_HEADER] == type(exc).__name__


def test_a_dead_lettered_task_answers_a_waiting_sender_but_a_retried_one_does_not_yet() -> None:
    waiting = Run(("x",), wants_reply=True)
    dead = task_rules().failed(Message(b""), waiting, OSError("gone"))
    assert isinstance(dead, DeadLetter) and dead.reply is not None
    assert reply_of(dead.reply)["error"]["type"] == "OSError"
    retried = task_rules(max_retries=1).failed(Message(b""), waiting, OSError("again"))
    assert isinstance(retried, RetryLater)  # the sender hears about the last attempt only


def test_a_dead_letter_header_is_bounded_valid_text_even_for_a_hostile_error() -> None:
    class Unprintable(Exception):
        def __str__(self) -> str:
            raise RuntimeError("no")

    decision = task_rules().failed(Message(b""), Run(("x",)), Unprintable())
    assert isinstance(decision, DeadLetter) and decision.headers is not None
    assert "unprintable" in decision.headers[protocol.ERROR_MESSAGE_HEADER]
    long = task_rules().failed(Message(b""), Run(("x",)), ValueError("\udcff" * 5000))
    assert isinstance(long, DeadLetter) and long.headers is not None
    text = long.headers[protocol.ERROR_MESSAGE_HEADER]
    assert len(text) <= protocol.ERROR_MESSAGE_LIMIT and text.encode("utf-8")


def test_a_task_the_broker_would_not_move_or_that_shutdown_cut_off_goes_back_to_its_queue() -> None:
    refused = task_rules().not_moved(Message(b""), BrokerUnavailable("refused"))
    assert isinstance(refused, Requeue) and refused.notes[0].level == logging.ERROR
    assert isinstance(task_rules().abandoned(Message(b""), grace=1.0), Requeue)


# -- broadcasts ----------------------------------------------------------------------------------------------------
def broadcast_rules() -> tuple[BroadcastRules, BroadcastRoute, BroadcastRoute]:
    one = BroadcastRoute("message.*", print, None, {}, filters=make_filters(["message.*"]))
    all_ = BroadcastRoute("#", print, None, {}, filters=make_filters(["#"]))
    return BroadcastRules([one, all_], JsonCodec(LIMIT), debug=False), one, all_


def broadcast(subject: Any, body: Any = "hi") -> Message:
    return Message(orjson.dumps({"body": body, "sender": "s", "subject": subject, "correlation_id": None}))


@pytest.mark.parametrize(
    ("message", "matched", "outcome"),
    [
        pytest.param(broadcast("message.send"), (0, 1), None, id="both filters match"),
        pytest.param(broadcast("other.thing"), (1,), None, id="only #"),
        pytest.param(broadcast(None), (), "no match", id="no subject matches no filter"),
        pytest.param(Message(b"[1, 2]"), (), "bad message", id="not a broadcast"),
        pytest.param(Message(orjson.dumps({"body": 1, "subject": 5})), (), "bad message", id="subject not a string"),
    ],
)
def test_what_a_broadcast_means(message: Message, matched: tuple[int, ...], outcome: str | None) -> None:
    rules, *routes = broadcast_rules()
    decision = rules.receive(message, NOW)
    if outcome is None:
        assert isinstance(decision, Run)
        assert decision.routes == tuple(routes[i] for i in matched)
        assert decision.args == ("hi", "s", decision.subject, None)
    else:
        assert isinstance(decision, Drop) and decision.outcome == outcome
        assert [note.level for note in decision.notes] == ([logging.WARNING] if outcome == "bad message" else [])


def test_a_failed_broadcast_handler_is_logged_and_nothing_is_sent() -> None:
    rules, route, _ = broadcast_rules()
    assert rules.finished(broadcast("message.a"), route) == Drop("ok")
    failed = rules.finished(broadcast("message.a"), route, MessageError("nope"))
    assert isinstance(failed, Drop) and failed.notes[0].level == logging.ERROR


def test_a_dead_letter_keeps_the_handlers_traceback_bounded_to_its_last_frames() -> None:
    def ping(n: int) -> None:
        if n == 0:
            raise KeyError("at the bottom")
        pong(n - 1)

    def pong(n: int) -> None:
        ping(n)

    try:
        ping(100)  # 200 distinct frames (Python folds only repeats of one line): some 30,000 characters
    except KeyError as exc:
        decision = task_rules().failed(Message(b""), Run(("x",)), exc)
    assert isinstance(decision, DeadLetter) and decision.headers is not None
    trace = decision.headers[protocol.ERROR_TRACEBACK_HEADER]
    assert len(trace) <= protocol.TRACEBACK_LIMIT + 4 and trace.startswith("...\n")
    assert trace.rstrip().endswith("KeyError: 'at the bottom'")
    unraised = task_rules().failed(Message(b""), Run(("x",)), ValueError("never raised"))
    assert isinstance(unraised, DeadLetter) and protocol.ERROR_TRACEBACK_HEADER not in (unraised.headers or {})


# -- redeliveries of tasks still running (a channel closed under them) ----------------------------------------------
@dataclass
class Delivered:
    body: bytes = b'"A"'
    queue: str = "svc.job"
    message_id: str | None = "m-1"
    correlation_id: str | None = "cid-1"
    redelivered: bool = False
    orphaned: bool = False
    content_type: str | None = protocol.CONTENT_TYPE
    headers: Mapping[str, Any] = field(default_factory=dict)
    reply_to: str | None = None


def test_a_redelivery_of_a_task_still_running_follows_it_and_gets_its_decision_without_notes() -> None:
    redeliveries = Redeliveries()
    first = Delivered()
    redeliveries.orphaned(running=[first], settled=[])
    again = Delivered(redelivered=True)
    assert redeliveries.arrived(again) is FOLLOWING
    decision = Ack("ok", (Note(logging.INFO, "done"),))
    assert redeliveries.ended(first, decision) == (again, Ack("ok"))
    assert not redeliveries  # nothing left to remember


def test_a_redelivery_after_its_first_run_ended_is_settled_as_that_run_decided() -> None:
    redeliveries = Redeliveries()
    first = Delivered(orphaned=True)
    retry = RetryLater("error, retry 1/3", (Note(logging.WARNING, "retrying"),), 1.0, {"x": 1})
    assert redeliveries.ended(first, retry) is None  # no redelivery here yet: kept
    assert redeliveries.arrived(Delivered(redelivered=True)) == RetryLater("error, retry 1/3", (), 1.0, {"x": 1})
    assert redeliveries.arrived(Delivered(redelivered=True)) is None  # settled once only


def test_a_task_settled_just_before_the_close_is_acked_when_it_comes_back() -> None:
    redeliveries = Redeliveries()
    redeliveries.orphaned(running=[], settled=[Delivered()])
    assert redeliveries.arrived(Delivered(redelivered=True)) == SETTLED


@pytest.mark.parametrize("other", [
    pytest.param(Delivered(redelivered=False), id="not redelivered: a new send"),
    pytest.param(Delivered(redelivered=True, message_id="m-2"), id="another message id"),
    pytest.param(Delivered(redelivered=True, body=b'"B"'), id="another body"),
    pytest.param(Delivered(redelivered=True, queue="other"), id="another queue"),
])
def test_only_the_same_message_redelivered_follows_a_run(other: Delivered) -> None:
    redeliveries = Redeliveries()
    redeliveries.orphaned(running=[Delivered()], settled=[])
    assert redeliveries.arrived(other) is None


def test_a_follower_whose_channel_closed_too_is_not_settled_the_next_redelivery_is() -> None:
    redeliveries = Redeliveries()
    first = Delivered()
    redeliveries.orphaned(running=[first], settled=[])
    stale = Delivered(redelivered=True)
    assert redeliveries.arrived(stale) is FOLLOWING
    stale.orphaned = True  # the run outlived a second timeout
    assert redeliveries.ended(first, ACKED) is None
    assert redeliveries.arrived(Delivered(redelivered=True)) == ACKED


def test_redeliveries_remember_a_bounded_number_of_ended_runs() -> None:
    redeliveries = Redeliveries(keep=2)
    for index in range(3):
        redeliveries.ended(Delivered(message_id=f"m-{index}", orphaned=True), ACKED)
    assert redeliveries.arrived(Delivered(message_id="m-0", redelivered=True)) is None  # the oldest: forgotten
    assert redeliveries.arrived(Delivered(message_id="m-2", redelivered=True)) == ACKED


@pytest.mark.parametrize(("running", "waiting", "timeout", "asked", "expected", "absent"), [
    pytest.param([4.04, 2.5], 1, 2.0, None,
                 ["'svc.job'", "consumer_timeout (2 s)", "handler svc.job has run 4.0 s", "1 other handlers",
                  "will not run again in this worker", "1 deliveries not yet started went back",
                  "raise consumer_timeout in rabbitmq.conf", "consumer-timeout policy", "CONSUMER_TIMEOUT"],
                 ["was asked for"], id="a handler running"),
    pytest.param([], 3, None, 60.0,
                 ["no handler of it was running", "PREFETCH_MULTIPLIER", "CONSUMER_TIMEOUT 60 s was asked for, but "
                  "this broker ignores it"], ["consumer_timeout ("], id="only waiting deliveries, timeout unsaid"),
])
def test_the_ack_timeout_line_says_what_happened_and_the_fix(
    running: list[float], waiting: int, timeout: float | None, asked: float | None, expected: list[str],
    absent: list[str],
) -> None:
    note = ack_timeout_note("svc.job", "svc.job", running, waiting, timeout, asked)
    assert note.level == logging.WARNING and "\n" not in note.message
    for text in expected:
        assert text in note.message
    for text in absent:
        assert text not in note.message
