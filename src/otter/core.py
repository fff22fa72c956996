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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from . import protocol
from .codec import JsonCodec
from .errors import BrokerUnavailable, MessageError, RemoteError, ValidationError
from .retry import RetryPolicy
from .routing import BroadcastRoute

__all__ = [
    "Ack",
    "BroadcastRules",
    "DeadLetter",
    "Decision",
    "Drop",
    "Note",
    "Received",
    "Reply",
    "Requeue",
    "RetryLater",
    "RpcRules",
    "Run",
    "TaskRules",
    "deadline_passed",
    "encode_error",
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
    then goes to the dead-letter queue with the reason; a task that cannot be read goes there at once."""

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
            return DeadLetter("bad message", (note,), headers)
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
