"""What a delivery means, decided with no I/O: the rules for RPCs, tasks and broadcasts in one place.

The worker shows the rules a received message, and later its handler's outcome; the rules answer with a decision:
run the handler with these arguments, reply with these bytes, ack, retry after a delay, dead-letter with a reason,
return to the queue, or drop, each with the log lines that say why. The worker carries decisions out and decides
nothing, so this module is the one to read to know what Otter does with a message, and it is tested without a broker
(``tests/test_core.py``).

>>> rules = RpcRules("example.hash", JsonCodec(), debug=False)
>>> run = rules.receive(message, now=time.time())      # Run((data,)), or a Reply/Drop for a request not to run
>>> rules.succeeded(message, run, {"result": "..."})    # Reply(body=b'{"result": ...}')
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar, Protocol

from . import protocol
from .codec import JsonCodec
from .errors import BrokerUnavailable, MessageError, RemoteError, TimeLimitExceeded, ValidationError
from .retry import RetryPolicy
from .routing import BroadcastRoute

__all__ = [
    "FOLLOWING",
    "Ack",
    "BroadcastRules",
    "DeadLetter",
    "Decision",
    "Drop",
    "Note",
    "Received",
    "Redelivered",
    "Redeliveries",
    "Reply",
    "Requeue",
    "RetryLater",
    "RpcRules",
    "Run",
    "TaskRules",
    "ack_timeout_note",
    "deadline_passed",
    "encode_error",
    "message_key",
]

class Received(Protocol):
    """What the rules read of a received message (a transport's ``Delivery`` is one)."""

    @property
    def body(self) -> bytes: ...
    @property
    def content_type(self) -> str | None: ...
    @property
    def headers(self) -> Mapping[str, Any]: ...
    @property
    def correlation_id(self) -> str | None: ...
    @property
    def reply_to(self) -> str | None: ...


@dataclass(frozen=True, slots=True)
class Note:
    """A log line that goes with a decision; ``exc`` is logged with its traceback."""

    level: int
    message: str
    exc: BaseException | None = None


NO_NOTES: tuple[Note, ...] = ()


@dataclass(frozen=True, slots=True)
class Run:
    """Run the handler with ``args`` (for a broadcast, each of ``routes``); then tell the rules how it went."""

    args: tuple[Any, ...]
    attempts: int = 0  # a task's failed runs before this one
    wants_reply: bool = False  # a kiwipy task sender waits for the outcome
    subject: str | None = None
    routes: tuple[BroadcastRoute, ...] = ()


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do with a message that is done; ``outcome`` is a short word for logs and metrics."""

    outcome: str
    notes: tuple[Note, ...] = NO_NOTES


@dataclass(frozen=True, slots=True)
class Reply(Decision):
    """Send ``body`` to the caller's ``reply_to`` (the message itself was settled on receipt)."""

    body: bytes = b""


@dataclass(frozen=True, slots=True)
class Ack(Decision):
    """Settle a task as done, then send ``reply`` to its sender if there is one."""

    reply: bytes | None = None


@dataclass(frozen=True, slots=True)
class RetryLater(Decision):
    """Park a copy of the task for ``delay`` seconds with ``headers``, then ack the original."""

    delay: float = 0.0
    headers: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class DeadLetter(Decision):
    """Move the task to the dead-letter queue with ``headers`` saying why, then send ``reply`` if there is one."""

    headers: Mapping[str, Any] | None = None
    reply: bytes | None = None


@dataclass(frozen=True, slots=True)
class Requeue(Decision):
    """Give the message back to its queue, for this or another worker to run."""


@dataclass(frozen=True, slots=True)
class Drop(Decision):
    """Nothing to send: the notes are all that is left of the message."""


OK = "ok"
ACKED = Ack(OK)
NOT_STARTED = Requeue("not started")  # delivered, but the worker stopped before its handler could start


def _unsent_reply(message: Received, body: bytes, outcome: str, notes: tuple[Note, ...]) -> Reply | Drop:
    """A reply goes only to a caller who gave a ``reply_to``."""
    return Reply(outcome, notes, body) if message.reply_to else Drop(outcome, notes)


def _handler_failed(kind: str, name: str, message: Received, exc: Exception) -> Note:
    """A handler's failure is the service's error: ERROR, with its traceback. A ``ValidationError`` is the caller's
    bad input, not the service's fault: WARNING, without one."""
    # str(RemoteError) repeats the type; str() of a hostile exception may raise.
    text = exc.message if isinstance(exc, RemoteError) else protocol.describe_error(exc)
    prefix = f"{kind} {name} {message.correlation_id}"
    if isinstance(exc, ValidationError):
        return Note(logging.WARNING, f"{prefix}: the caller's input was rejected: {text}")
    return Note(logging.ERROR, f"{prefix}: handler raised {type(exc).__name__}: {text}", exc)


class RpcRules:
    """At-most-once calls: settled on receipt (a worker that dies mid-call does not run it twice), never run past
    the caller's deadline, and always answered (a result, or a typed error) when the caller gave a ``reply_to``."""

    settle_on_receipt: ClassVar[bool] = True

    def __init__(self, name: str, codec: JsonCodec, *, debug: bool) -> None:
        self.name, self.codec, self.debug = name, codec, debug

    def receive(self, message: Received, now: float) -> Run | Reply | Drop:
        try:
            if deadline_passed(message.headers, now):
                return Drop("expired", (Note(logging.WARNING, f"rpc {self.name} {message.correlation_id}: "
                                                              f"deadline passed before it started; not run"),))
            data = self.codec.decode(message.body, message.content_type)
        except MessageError as exc:
            note = Note(logging.WARNING, f"rpc {self.name} {message.correlation_id}: bad request: {exc}")
            return _unsent_reply(message, encode_error(self.codec, exc, debug=self.debug), "bad request", (note,))
        return Run((data,))

    def succeeded(self, message: Received, run: Run, result: Any) -> Reply | Drop:
        body, outcome, notes = _result_reply(self.codec, result, self.debug)
        return _unsent_reply(message, body, outcome, notes)

    def failed(self, message: Received, run: Run, exc: Exception) -> Reply | Drop:
        note = _handler_failed("rpc", self.name, message, exc)
        body = encode_error(self.codec, exc, debug=self.debug)
        return _unsent_reply(message, body, f"error {type(exc).__name__}", (note,))

    def abandoned(self, message: Received, grace: float) -> Reply | Drop:
        """Still running when the worker's grace period ended: tell the caller rather than let it wait."""
        note = Note(logging.WARNING, f"rpc {message.correlation_id} did not finish within {grace:g}s; "
                                     f"replying with an error")
        stopped = BrokerUnavailable("the service stopped before the call finished; it may have partly run")
        return _unsent_reply(message, encode_error(self.codec, stopped, debug=False), "abandoned", (note,))


class TaskRules:
    """At-least-once tasks: settled only when their handler returns. A failed task runs again per its retry policy,
    then goes to the dead-letter queue with the reason; a task that cannot be read goes there at once (and its sender,
    if it gave a ``reply_to``, gets the ``MessageError``)."""

    settle_on_receipt: ClassVar[bool] = False

    def __init__(self, name: str, codec: JsonCodec, policy: RetryPolicy, *, debug: bool) -> None:
        self.name, self.codec, self.policy, self.debug = name, codec, policy, debug

    def receive(self, message: Received, now: float) -> Run | DeadLetter:
        attempts = 0
        try:
            attempts = protocol.read_attempts(message.headers)
            task, no_reply = protocol.read_task(self.codec.decode(message.body, message.content_type))
        except MessageError as exc:
            note = Note(logging.WARNING,
                        f"task {self.name} {message.correlation_id}: bad message, dead-lettered: {exc}")
            headers = protocol.dead_letter_headers("bad-message", exc, self.name, attempts)
            # Whether the sender waits for the outcome is in the unreadable body; one who gave a reply_to may be,
            # so it hears why now instead of waiting out its timeout (a sender not waiting ignores the reply).
            reply = encode_error(self.codec, exc, debug=False) if message.reply_to else None
            return DeadLetter("bad message", (note,), headers, reply)
        return Run((task,), attempts=attempts, wants_reply=not no_reply and bool(message.reply_to))

    def succeeded(self, message: Received, run: Run, result: Any) -> Ack:
        if not run.wants_reply:
            return ACKED
        body, outcome, notes = _result_reply(self.codec, result, self.debug)
        return Ack(outcome, notes, body)

    def failed(self, message: Received, run: Run, exc: Exception) -> RetryLater | DeadLetter:
        attempts = run.attempts + 1
        failure = _handler_failed("task", self.name, message, exc)
        error = f"error {type(exc).__name__}"
        policy = self.policy
        if policy.should_retry(exc, attempts):
            delay = policy.delay(attempts)
            note = Note(logging.WARNING, f"task {self.name} {message.correlation_id}: attempt {attempts} failed; "
                                         f"retrying in {delay:g}s")
            # A kiwipy sender waiting for the outcome hears about the last attempt only.
            return RetryLater(f"{error}, retry {attempts}/{policy.max_retries}", (failure, note), delay,
                              {protocol.ATTEMPTS_HEADER: attempts})
        if isinstance(exc, TimeLimitExceeded):  # the last run's reason, whatever the retries before it
            reason = "time-limit"
        else:
            reason = "retries-exhausted" if policy.max_retries > 0 and policy.retryable(exc) else "handler-error"
        note = Note(logging.WARNING, f"task {self.name} {message.correlation_id}: dead-lettered after {attempts} "
                                     f"attempt{'' if attempts == 1 else 's'}: {reason}")
        reply = encode_error(self.codec, exc, debug=self.debug) if run.wants_reply else None
        headers = protocol.dead_letter_headers(reason, exc, self.name, attempts)
        return DeadLetter(f"{error}, dead-lettered", (failure, note), headers, reply)

    def abandoned(self, message: Received, grace: float) -> Requeue:
        """Still running when the worker's grace period ended: back to the queue, to run again elsewhere."""
        return Requeue("abandoned", (Note(logging.WARNING, f"a task from {self.name!r} did not finish within "
                                                           f"{grace:g}s; returning it to the queue"),))

    def not_moved(self, message: Received, why: Exception) -> Requeue:
        """The broker refused the retry or the dead letter: the task goes back to its queue instead of being lost."""
        return Requeue("not moved", (Note(logging.ERROR, f"task {self.name} {message.correlation_id}: could not "
                                                         f"retry or dead-letter it ({why}); returning it to the "
                                                         f"queue"),))


class BroadcastRules:
    """At-most-once fan-out: settled on receipt, run by every route whose filter matches the subject; a failure is
    logged and the other routes still run; a broadcast that cannot be read is logged and dropped."""

    settle_on_receipt: ClassVar[bool] = True

    def __init__(self, routes: Sequence[BroadcastRoute], codec: JsonCodec, *, debug: bool) -> None:
        self.routes, self.codec, self.debug = tuple(routes), codec, debug

    def receive(self, message: Received, now: float) -> Run | Drop:
        try:
            broadcast = protocol.read_broadcast(self.codec.decode(message.body, message.content_type))
        except MessageError as exc:
            return Drop("bad message", (Note(logging.WARNING, f"broadcast: bad message dropped: {exc}"),))
        routes = tuple(route for route in self.routes if route.matches(broadcast.subject))
        if not routes:
            return Drop("no match")
        args = (broadcast.body, broadcast.sender, broadcast.subject, broadcast.correlation_id)
        return Run(args, subject=broadcast.subject, routes=routes)

    def finished(self, message: Received, route: BroadcastRoute, exc: Exception | None = None) -> Drop:
        if exc is None:
            return Drop(OK)
        note = _handler_failed("broadcast", route.name, message, exc)
        return Drop(f"error {type(exc).__name__}", (note,))

    def abandoned(self, message: Received, grace: float) -> Drop:
        return Drop("abandoned")


# -- redeliveries of tasks still running ----------------------------------------------------------------------------
class Redelivered(Received, Protocol):
    """What ``Redeliveries`` reads of a task delivery (a transport's ``Delivery`` is one)."""

    @property
    def queue(self) -> str: ...
    @property
    def message_id(self) -> str | None: ...
    @property
    def redelivered(self) -> bool: ...
    @property
    def orphaned(self) -> bool: ...


MessageKey = tuple[str, "str | None", "str | None", bytes]


def message_key(message: Redelivered) -> MessageKey:
    """What a message is across its redeliveries: the broker hands back the same id, correlation id and body."""
    return message.queue, message.message_id, message.correlation_id, message.body


FOLLOWING = Drop("following its first run")  # a redelivery that waits for the run still going on
SETTLED = Ack("settled by its first run")  # a redelivery of a task already handled here


class Redeliveries:
    """Tasks whose channel closed under them, so that their redelivery is settled by their first run here rather
    than run a second time.

    When RabbitMQ closes a consumer's channel (a delivery left unacked past its consumer timeout), every unacked
    delivery on it goes back to the queue and comes back marked redelivered, while their handlers may still run. A
    redelivery of a task still running here *follows* that run: it waits, unsettled, and the run's decision is
    carried out on it when the run ends. A redelivery of a task whose run ended after its channel closed (or just
    before: the ack may have been lost with the channel) is settled as that run decided. Memory is bounded by
    ``keep`` entries (the oldest are forgotten: their redelivery, if it ever comes, runs again, at-least-once).

    >>> redeliveries.orphaned(running=[first], settled=[])
    >>> redeliveries.arrived(again)        # FOLLOWING: do not run it
    >>> redeliveries.ended(first, ACKED)   # (again, ACKED): carry it out on the redelivery
    """

    def __init__(self, keep: int = 1024) -> None:
        self.keep = keep
        self._running: dict[MessageKey, Redelivered | None] = {}  # running tasks, and their redelivery once here
        self._done: OrderedDict[MessageKey, Decision] = OrderedDict()  # runs ended; their redelivery not yet here

    def __bool__(self) -> bool:
        return bool(self._running or self._done)

    def orphaned(self, running: Iterable[Redelivered], settled: Iterable[Redelivered]) -> None:
        """The broker closed the channel of these deliveries: ``running`` ones are in their handler; ``settled``
        ones were settled shortly before, perhaps too late (an ack written after the broker closed the channel is
        lost, and the task comes back)."""
        for message in running:
            self._running.setdefault(message_key(message), None)
        for message in settled:
            self._remember(message_key(message), SETTLED)

    def arrived(self, message: Redelivered) -> Decision | None:
        """None: run it as usual. ``FOLLOWING``: its first run still goes on; leave it unsettled. Any other
        decision: carry it out on this delivery (its first run decided it)."""
        if not message.redelivered or not self:
            return None
        key = message_key(message)
        if key in self._running:
            self._running[key] = message
            return FOLLOWING
        return self._done.pop(key, None)

    def ended(self, message: Redelivered, decision: Decision) -> tuple[Redelivered, Decision] | None:
        """The run of ``message``, whose channel closed, ended with ``decision``: the redelivery to carry it out on
        (without its notes: they were logged with the run), or None when none is here yet (kept for when it
        comes)."""
        key = message_key(message)
        follower = self._running.pop(key, None)
        quiet = replace(decision, notes=NO_NOTES)
        if follower is None or follower.orphaned:
            self._remember(key, quiet)
            return None
        return follower, quiet

    def _remember(self, key: MessageKey, decision: Decision) -> None:
        self._done[key] = decision
        self._done.move_to_end(key)
        while len(self._done) > self.keep:
            self._done.popitem(last=False)


def ack_timeout_note(
    queue: str, name: str, running: Sequence[float], waiting: int, timeout: float | None,
    asked: float | None,
) -> Note:
    """The one log line when the broker closed a task consumer's channel for an acknowledgement timeout: what
    happened, what Otter does about it, and which setting to change. ``running``: how long each handler of that
    channel has run; ``waiting``: deliveries that had not started; ``timeout``: the broker's, when it said;
    ``asked``: the consumer timeout Otter asked for (CONSUMER_TIMEOUT or the task's ``consumer_timeout``)."""
    limit = f" ({timeout:g} s)" if timeout is not None else ""
    if running:
        longest = max(running)
        others = f", {len(running) - 1} other handlers of it too" if len(running) > 1 else ""
        what = (f"handler {name} has run {longest:.1f} s and goes on{others}; it will not run again in this "
                f"worker: its redelivery is settled when it ends")
    else:
        what = ("no handler of it was running: deliveries waited longer than that for a free slot (lower "
                "PREFETCH_MULTIPLIER, or raise CONCURRENCY)")
    requeued = f"; {waiting} deliveries not yet started went back to the queue" if waiting else ""
    ignored = (f"; CONSUMER_TIMEOUT {asked:g} s was asked for, but this broker ignores it (only RabbitMQ 4.3+ with "
               f"quorum queues takes it per consumer)") if asked is not None else ""
    return Note(logging.WARNING,
                f"task queue {queue!r}: RabbitMQ closed the consumer's channel because a delivery stayed "
                f"unacknowledged longer than its consumer_timeout{limit}; {what}{requeued}{ignored}. Fix: raise "
                f"consumer_timeout in rabbitmq.conf above the longest task (or, on RabbitMQ 3.12+, a "
                f"consumer-timeout policy on the queue; on 4.3+ with quorum queues, CONSUMER_TIMEOUT or "
                f"add_task(consumer_timeout=...))")


# -- the message envelope ------------------------------------------------------------------------------------------
def deadline_passed(headers: Mapping[str, Any], now: float) -> bool:
    """Whether the caller's deadline (``now`` in epoch seconds) is behind us; no header means no deadline (kiwipy).

    A header that is not integer milliseconds makes the request unreadable: ``MessageError``.
    """
    deadline = headers.get(protocol.DEADLINE_HEADER)
    if deadline is None:
        return False
    if isinstance(deadline, bool) or not isinstance(deadline, int):
        raise MessageError(
            f"header {protocol.DEADLINE_HEADER} must be integer milliseconds since the epoch, "
            f"got {type(deadline).__name__}"
        )
    return deadline / 1000 < now


def _result_reply(codec: JsonCodec, value: Any, debug: bool) -> tuple[bytes, str, tuple[Note, ...]]:
    """The reply for a result; a result that cannot be encoded becomes an error reply (and a log line), never a hang."""
    try:
        return codec.encode(protocol.result_reply(value), what="reply", payload=value), OK, NO_NOTES
    except MessageError as exc:
        error = MessageError(f"the handler's reply could not be encoded: {exc}")
        note = Note(logging.ERROR, f"reply is not serialisable: {exc}")
        return encode_error(codec, error, debug=debug), "unencodable reply", (note,)


def encode_error(codec: JsonCodec, exc: BaseException, *, debug: bool) -> bytes:
    try:
        return codec.encode(protocol.error_reply(exc, include_traceback=debug))
    except MessageError:  # details that do not encode: send the type and message only
        return codec.encode(protocol.error_reply(MessageError(f"{type(exc).__name__}: {exc}")))
