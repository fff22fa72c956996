"""The shapes of messages on the wire, kiwipy-compatible (see docs/protocol.md).

- RPC request: the body is the argument; routing key ``[rpc].<name>`` on the message exchange.
- RPC reply: ``{"result": value}`` or ``{"exception": "Type: message", "error": {...}}``; kiwipy reads the first
  two keys, Otter also reads ``error`` to raise a typed error.
- Task: the body is ``[task, no_reply]``, as kiwipy sends it; a reply, when asked for, is an RPC-style reply.
- Broadcast: ``{"body", "sender", "subject", "correlation_id"}`` with routing key ``[broadcast]``.

Every name that travels on the wire is defined here and nowhere else: routing keys, ``x-otter-*`` headers, the
content type, and the rules that name reply, retry and dead-letter queues.
"""

from __future__ import annotations

import reprlib
import traceback as tb
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from .errors import MessageError, RemoteError, ValidationError

__all__ = [
    "ACCEPTED_CONTENT_TYPES",
    "ATTEMPTS_HEADER",
    "BROADCAST_QUEUE_ARGUMENTS",
    "BROADCAST_ROUTING_KEY",
    "BROKER_DEAD_LETTER_REASONS",
    "CONSUMER_TIMEOUT_ARGUMENT",
    "CONTENT_TYPE",
    "CONTROL_ROUTING_KEY",
    "CONTROL_VERSION",
    "DEADLINE_HEADER",
    "DEAD_LETTER_REASONS",
    "ERROR_MESSAGE_HEADER",
    "ERROR_TRACEBACK_HEADER",
    "ERROR_TYPE_HEADER",
    "MAX_PRIORITY_ARGUMENT",
    "QUEUE_HEADER",
    "REASON_HEADER",
    "RETRY_QUEUE_SPARE_MS",
    "RPC_PREFIX",
    "RPC_QUEUE_ARGUMENTS",
    "RPC_QUEUE_TYPES",
    "SCHEDULE_HOLD",
    "SCHEDULE_QUEUE_ARGUMENTS",
    "TASK_HEADER",
    "TASK_QUEUE_ARGUMENTS",
    "TASK_QUEUE_TYPES",
    "Broadcast",
    "KiwipyDefaults",
    "caller_headers",
    "consumer_arguments",
    "dead_letter_headers",
    "describe_error",
    "error_reply",
    "forwarded_headers",
    "raise_for_reply",
    "read_attempts",
    "read_broadcast",
    "read_schedule_state",
    "read_task",
    "reply_queue_name",
    "result_reply",
    "retry_queue_arguments",
    "retry_queue_name",
    "rpc_queue_arguments",
    "rpc_routing_key",
    "schedule_queue_name",
    "schedule_state",
    "task_body",
    "task_id_of",
    "task_queue_arguments",
    "tick_body",
]



class KiwipyDefaults:
    """kiwipy's default names and TTLs, as ``kiwipy.rmq.defaults`` (kiwipy 0.9) spells them. Copied because that
    module imports kiwipy's whole RabbitMQ stack (aio-pika, pytray): Otter depends on plain ``kiwipy`` and picks its
    AMQP client versions itself. A kiwipy program must see the same values (queue arguments that differ make the
    broker refuse the second declaration), which ``tests/test_dependencies.py`` checks against kiwipy's own."""

    MESSAGE_EXCHANGE: Final = "kiwipy.messages"
    TASK_EXCHANGE: Final = "kiwipy.tasks"
    TASK_QUEUE: Final = "kiwipy.tasks"
    MESSAGE_TTL: Final = 66_000  # ms; the x-message-ttl of broadcast queues
    TASK_MESSAGE_TTL: Final = 7 * 24 * 3600 * 1000  # ms; the x-message-ttl of task queues


# RabbitMQ queue arguments. A queue declared again with any other arguments is refused (PRECONDITION_FAILED, on
# 3.10 and 4.0 alike: one more, one fewer or one different), so a task queue kiwipy also declares must carry exactly
# kiwipy's: a classic queue with its 7-day TTL and no dead-letter exchange (its own sender and subscriber declare it).
TASK_QUEUE_ARGUMENTS: Final[dict[str, Any]] = {"x-message-ttl": KiwipyDefaults.TASK_MESSAGE_TTL}
TASK_QUEUE_TYPES = ("classic", "quorum")
MAX_PRIORITY_ARGUMENT = "x-max-priority"  # a classic queue's priority levels (0 to its value); see otter.limits


def task_queue_arguments(
    queue_type: str, *, message_ttl_ms: int | None, delivery_limit: int, dead_letter_queue: str,
    max_priority: int | None = None,
) -> dict[str, Any]:
    """The arguments of a task queue of ``queue_type`` (see docs/protocol.md, "Task queues").

    A classic queue whose TTL is kiwipy's gets kiwipy's arguments and nothing else, so kiwipy programs can declare
    it too; the broker then drops a task that waited that long without dead-lettering it (the price of sharing the
    queue with kiwipy). Any other task queue dead-letters what the broker drops (expired; past the delivery limit)
    into ``dead_letter_queue`` through the default exchange. A quorum queue does it at-least-once (kept until the
    dead-letter queue has it, which needs ``x-overflow: reject-publish``) because tasks are at-least-once, and
    ``x-delivery-limit`` stops a task that kills its worker every time (so Otter's own attempt count never moves)
    from going round for ever. ``message_ttl_ms=None``: tasks never expire.

    ``max_priority`` gives a classic queue ``x-max-priority`` (and nothing else changes); a quorum queue takes none
    (RabbitMQ refuses it: PRECONDITION_FAILED "invalid arg", 3.10 and 4.0 alike) and ignores it here: from RabbitMQ
    4.0 on a quorum queue has two priorities of its own, on 3.x none (see ``otter.limits``).
    """
    if queue_type not in TASK_QUEUE_TYPES:
        raise ValueError(f"queue type must be one of {', '.join(TASK_QUEUE_TYPES)}, got {queue_type!r}")
    priority = {MAX_PRIORITY_ARGUMENT: max_priority} if max_priority and queue_type == "classic" else {}
    if queue_type == "classic" and message_ttl_ms == KiwipyDefaults.TASK_MESSAGE_TTL:
        return {**TASK_QUEUE_ARGUMENTS, **priority}
    arguments: dict[str, Any] = dict(priority)
    if queue_type == "quorum":
        arguments.update({"x-queue-type": "quorum", "x-delivery-limit": delivery_limit,
                          "x-dead-letter-strategy": "at-least-once", "x-overflow": "reject-publish"})
    if message_ttl_ms is not None:
        arguments["x-message-ttl"] = message_ttl_ms
    arguments.update({"x-dead-letter-exchange": "", "x-dead-letter-routing-key": dead_letter_queue})
    return arguments
BROADCAST_QUEUE_ARGUMENTS: Final[dict[str, Any]] = {"x-message-ttl": KiwipyDefaults.MESSAGE_TTL}
# Control messages (otter.control; docs/protocol.md, "Control messages"): requests go to CONTROL_EXCHANGE, a fanout
# exchange, so the routing key is only said for the binding; every request and reply carries the version.
CONTROL_ROUTING_KEY: Final = "otter.control"
CONTROL_VERSION: Final = 1
RETRY_QUEUE_SPARE_MS = 60_000  # a retry delay queue outlives its longest wait by this much, then goes when unused
# An RPC queue is shared by the replicas serving a name, so it cannot be exclusive, and RabbitMQ 4.3 refuses
# transient (non-durable) queues that are not exclusive: it is durable, deleted when its last consumer leaves
# (auto-delete), and, should a broker restart recover it with no consumer at all, deleted after a minute unused, so
# that calls to a name nobody serves fail fast (unroutable) again.
RPC_QUEUE_ARGUMENTS: Final[dict[str, Any]] = {"x-expires": 60_000}
RPC_QUEUE_TYPES = ("classic", "quorum")


def rpc_queue_arguments(queue_type: str) -> tuple[bool, dict[str, Any]]:
    """(auto-delete, arguments) of an RPC queue of ``queue_type`` (see docs/protocol.md, "RPC queues").

    A classic queue lives on the cluster node that declared it: while that node is down no other node can declare,
    consume or deliver to it (RabbitMQ 4.0.5 leaves the declaration unanswered). A quorum queue is replicated and
    survives the loss of a node, but RabbitMQ refuses it auto-delete (PRECONDITION_FAILED "invalid property
    'auto-delete'"), so only ``x-expires`` removes it, a minute after its last consumer left: until then calls to
    the name wait for their deadlines instead of failing with ``Unroutable``.
    """
    if queue_type not in RPC_QUEUE_TYPES:
        raise ValueError(f"queue type must be one of {', '.join(RPC_QUEUE_TYPES)}, got {queue_type!r}")
    if queue_type == "quorum":
        return False, {"x-queue-type": "quorum", **RPC_QUEUE_ARGUMENTS}
    return True, dict(RPC_QUEUE_ARGUMENTS)


# basic.consume's argument for how long (ms) this consumer may hold a delivery unacked. A consumer argument, not a
# queue argument, so the queue's declaration stays kiwipy's. RabbitMQ 4.3+ honours it (on quorum queues, the only
# ones with a consumer timeout there); 3.10 to 4.2 ignore it (3.12-4.2 take x-consumer-timeout only as a queue
# argument or a consumer-timeout policy; measured on 3.10.8 and 4.0.5, see docs/protocol.md).
CONSUMER_TIMEOUT_ARGUMENT = "x-consumer-timeout"


# A periodic task's schedule queue (docs/protocol.md, "Schedule queues"): every replica consumes it, the broker lets one
# consumer at a time receive (the lease), and it holds one message, the schedule's state (the last tick sent). Durable
# and classic: legal on RabbitMQ 4.x, and single-active-consumer works on 3.8+.
SCHEDULE_QUEUE_ARGUMENTS: Final[dict[str, Any]] = {"x-single-active-consumer": True}
# Seconds the replica holding a schedule keeps its state message unacked at most before it sends the state again and
# acks the old one: far below RabbitMQ's consumer_timeout (30 min by default), which would close the channel.
SCHEDULE_HOLD: Final = 30.0


def schedule_queue_name(name: str) -> str:
    """The schedule (lease) queue of the periodic task ``name``, whose ticks go to the task queue ``name``."""
    return f"{name}.schedule"


def schedule_state(name: str, last: float | None) -> dict[str, Any]:
    """The body of a schedule queue's state message: the last tick sent, in milliseconds since the epoch (None: no
    record yet)."""
    return {"periodic": name, "last": None if last is None else round(last * 1000)}


def read_schedule_state(payload: Any) -> float | None:
    """The last tick time (seconds since the epoch) a state message records; ``MessageError`` if it is no state."""
    if not isinstance(payload, Mapping) or "last" not in payload:
        raise MessageError(f"a schedule state must be a mapping with 'last', got {_preview(payload)}")
    last = payload["last"]
    if last is None:
        return None
    if isinstance(last, bool) or not isinstance(last, int) or last < 0:
        raise MessageError(f"a schedule state's 'last' must be milliseconds since the epoch, got {_preview(last)}")
    return last / 1000


def tick_body(name: str, tick_id: str, scheduled_at: str, missed: int) -> dict[str, Any]:
    """What a periodic task's handler receives as ``body``: which tick this is (``id``: the same whichever replica
    sent it), its scheduled time (ISO 8601, UTC), and how many missed ticks it stands for (``missed="once"``)."""
    return {"periodic": name, "id": tick_id, "scheduled_at": scheduled_at, "missed": missed}


def consumer_arguments(consumer_timeout: float | None) -> dict[str, Any]:
    """basic.consume's arguments for a task consumer; ``consumer_timeout`` in seconds (None: the broker's)."""
    if consumer_timeout is None:
        return {}
    return {CONSUMER_TIMEOUT_ARGUMENT: max(1, round(consumer_timeout * 1000))}


def retry_queue_arguments(queue: str, delay_ms: int) -> dict[str, Any]:
    """A retry delay queue: its messages wait ``delay_ms``, then dead-letter back into ``queue`` through the default
    exchange; the queue itself expires once no retry has used it for a while (each declare renews the lease)."""
    return {
        "x-message-ttl": delay_ms,
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": queue,
        "x-expires": delay_ms + RETRY_QUEUE_SPARE_MS,
    }


CONTENT_TYPE = "application/json"  # set on every message Otter sends
# What Otter reads as JSON; kiwipy programs with a JSON encoder send no content type at all.
ACCEPTED_CONTENT_TYPES = frozenset({CONTENT_TYPE, "text/json", "application/x-json", ""})
RPC_PREFIX = "[rpc]"
BROADCAST_ROUTING_KEY = "[broadcast]"
RESULT_KEY = "result"
EXCEPTION_KEY = "exception"
ERROR_KEY = "error"

# Headers. Otter's own start with ``x-otter-``; a copy of a message (retry, dead letter, replay) drops them and the
# broker's dead-lettering history, and whoever copies sets them afresh.
DEADLINE_HEADER = "x-otter-deadline"  # integer milliseconds since the epoch; see deadline_ms
ATTEMPTS_HEADER = "x-otter-attempts"  # how many runs of this task failed so far
REASON_HEADER = "x-otter-reason"  # why a task was dead-lettered: one of DEAD_LETTER_REASONS
ERROR_TYPE_HEADER = "x-otter-error-type"
ERROR_MESSAGE_HEADER = "x-otter-error-message"
ERROR_TRACEBACK_HEADER = "x-otter-error-traceback"  # its last TRACEBACK_LIMIT characters: the frames nearest the raise
TASK_HEADER = "x-otter-task"  # the task name whose handler failed
QUEUE_HEADER = "x-otter-queue"  # the queue a dead letter came from, where a replay sends it back
DEAD_LETTER_REASONS = ("bad-message", "handler-error", "retries-exhausted", "time-limit")
# Why the broker itself dead-lettered a task (its x-death reason) -> the reason ``otter dlq`` shows.
BROKER_DEAD_LETTER_REASONS = {"expired": "expired", "delivery_limit": "delivery-limit", "rejected": "rejected",
                              "maxlen": "queue-full"}
_NOT_FORWARDED_PREFIXES = ("x-otter-", "x-death", "x-first-death-", "x-last-death-", "x-delivery-count")
# The most attempts a header may claim; beyond it the header is garbage, not a count.
MAX_ATTEMPTS = 2**31 - 1
ERROR_MESSAGE_LIMIT = 1000  # characters of an error message kept in a dead letter's header
TRACEBACK_LIMIT = 4000  # characters of a traceback kept in a dead letter's header


def rpc_routing_key(name: str) -> str:
    return f"{RPC_PREFIX}.{name}"


def reply_queue_name(message_exchange: str, unique: str) -> str:
    """A connection's exclusive reply queue, bound to the message exchange under this name as kiwipy binds its own."""
    return f"{message_exchange}.reply.{unique}"


def retry_queue_name(queue: str, delay_ms: int) -> str:
    """The delay queue where retries of ``queue`` wait ``delay_ms`` before going back to it."""
    return f"{queue}.retry.{delay_ms}"


def forwarded_headers(headers: Mapping[str, Any]) -> dict[str, Any]:
    """The headers a copy of a message keeps: the sender's own, without Otter's or the broker's bookkeeping."""
    return {key: value for key, value in headers.items()
            if not (isinstance(key, str) and key.startswith(_NOT_FORWARDED_PREFIXES))}


_HEADER_SCALARS = (str, bytes, bool, int, float, type(None))
_RESERVED_PREFIXES = _NOT_FORWARDED_PREFIXES  # what a caller may not set is what a copy drops


def caller_headers(headers: Mapping[str, Any] | None) -> dict[str, Any]:
    """A caller's own headers (``client.rpc(..., headers={"tenant": "acme"})``), checked before anything is sent:
    string keys that are not Otter's or the broker's, and values an AMQP header table holds. Handlers see them as
    ``ctx.headers``; retries and dead letters keep them."""
    if headers is None:
        return {}
    if not isinstance(headers, Mapping):
        raise TypeError(f"headers must be a mapping of names to values, got {type(headers).__name__}")
    for key, value in headers.items():
        if not isinstance(key, str) or not key or len(key.encode("utf-8")) > 255:
            raise ValueError(f"a header name must be a non-empty string of at most 255 bytes, got {key!r:.60}")
        if key.lower().startswith(_RESERVED_PREFIXES):
            raise ValueError(f"header {key!r} is reserved: names starting with x-otter-, x-death or x-delivery-count "
                             f"are Otter's or the broker's")
        _check_header_value(key, value)
    return dict(headers)


def _check_header_value(key: str, value: Any, depth: int = 0) -> None:
    if depth > 8:
        raise ValueError(f"header {key!r} is nested too deeply")
    if isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**63:
        raise ValueError(f"header {key!r}: {value} does not fit AMQP's 64-bit integers")
    if isinstance(value, _HEADER_SCALARS):
        return
    if isinstance(value, (list, tuple)):
        for item in value:
            _check_header_value(key, item, depth + 1)
        return
    if isinstance(value, Mapping) and all(isinstance(k, str) for k in value):
        for item in value.values():
            _check_header_value(key, item, depth + 1)
        return
    raise ValueError(f"header {key!r}: a {type(value).__name__} cannot travel in AMQP headers; send strings, "
                     f"numbers, booleans, None, or lists and mappings of them")


def read_attempts(headers: Mapping[str, Any]) -> int:
    """How many times this task already ran and failed (``x-otter-attempts``; absent means none).

    A header that is not a small non-negative integer makes the message unreadable: its history is unknown.
    """
    value = headers.get(ATTEMPTS_HEADER)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_ATTEMPTS:
        raise MessageError(
            f"header {ATTEMPTS_HEADER} must be a non-negative integer, got {type(value).__name__} {_preview(value)}"
        )
    return value


def dead_letter_headers(reason: str, exc: BaseException, task: str, attempts: int) -> dict[str, Any]:
    """The headers that tell a dead letter's story; text is made valid UTF-8, which AMQP header tables require."""
    assert reason in DEAD_LETTER_REASONS, reason
    headers: dict[str, Any] = {
        REASON_HEADER: reason,
        ERROR_TYPE_HEADER: type(exc).__name__,
        ERROR_MESSAGE_HEADER: _wire_text(describe_error(exc), ERROR_MESSAGE_LIMIT),
        TASK_HEADER: task,
        ATTEMPTS_HEADER: attempts,
    }
    if exc.__traceback__ is not None:
        trace = "".join(tb.format_exception(type(exc), exc, exc.__traceback__))
        if len(trace) > TRACEBACK_LIMIT:
            trace = "...\n" + trace[-TRACEBACK_LIMIT:]
        headers[ERROR_TRACEBACK_HEADER] = _wire_text(trace, TRACEBACK_LIMIT + 4)
    return headers


def describe_error(exc: BaseException) -> str:
    """``str(exc)``, even for an exception whose ``__str__`` raises."""
    try:
        return str(exc)
    except Exception:  # an exception whose __str__ fails still gets dead-lettered
        return f"<{type(exc).__name__} with an unprintable message>"


def _wire_text(text: str, limit: int) -> str:
    return text[:limit].encode("utf-8", "replace").decode("utf-8")


def result_reply(value: Any) -> dict[str, Any]:
    return {RESULT_KEY: value}


def error_reply(exc: BaseException, *, include_traceback: bool = False) -> dict[str, Any]:
    """The reply for a failed call: kiwipy's ``exception`` string plus Otter's structured ``error``."""
    remote_type = exc.remote_type if isinstance(exc, RemoteError) else type(exc).__name__
    message = exc.message if isinstance(exc, RemoteError) else str(exc)
    details = exc.details if isinstance(exc, RemoteError) else None
    trace = "".join(tb.format_exception(type(exc), exc, exc.__traceback__)) if include_traceback else None
    return {
        EXCEPTION_KEY: f"{remote_type}: {message}",
        ERROR_KEY: {"type": remote_type, "message": message, "details": details, "traceback": trace},
    }


def raise_for_reply(reply: Any) -> Any:
    """Return the result of a decoded reply, or raise the typed error it carries."""
    if not isinstance(reply, Mapping):
        raise MessageError(f"reply is not a mapping: {_preview(reply)}")
    if RESULT_KEY in reply:
        return reply[RESULT_KEY]
    error = reply.get(ERROR_KEY)
    if isinstance(error, Mapping):
        remote_type = str(error.get("type") or "Exception")
        details = error.get("details")
        trace = error.get("traceback")
        if remote_type == "ValidationError" and isinstance(details, Mapping) and "messages" in details:
            raise ValidationError(details["messages"], remote_traceback=trace)
        raise RemoteError(
            str(error.get("message", "")), remote_type=remote_type, details=details, remote_traceback=trace
        )
    if EXCEPTION_KEY in reply:  # a plain kiwipy server
        raise RemoteError(str(reply[EXCEPTION_KEY]), remote_type="")
    raise MessageError(f"reply has neither a result nor an error: {_preview(reply)}")


def deadline_ms(deadline: float) -> int:
    """A deadline (seconds since the epoch) as the header value: whole milliseconds, because AMQP tables carry a
    Python float as a 32-bit float (pamqp), which rounds today's epoch seconds by up to two minutes."""
    return int(deadline * 1000)


def _preview(value: Any) -> str:
    """A short repr for an error message; bounded in depth, because a plain repr of deeply nested JSON (which the
    decoder accepts up to 1024 levels) raises ``RecursionError``."""
    return _PREVIEW.repr(value)[:200]


_PREVIEW = reprlib.Repr()
_PREVIEW.maxlevel, _PREVIEW.maxstring, _PREVIEW.maxother = 4, 80, 80


def task_body(task: Any, no_reply: bool = True) -> list[Any]:
    return [task, no_reply]


def task_id_of(message_id: str | None, correlation_id: str | None) -> str | None:
    """A task's id: its AMQP ``message_id``, which Otter sets on every task it sends and keeps on every copy
    (retries, dead letters, replays); a kiwipy sender sets none, so its task's correlation id (a uuid) stands in,
    and the copies Otter makes carry that as their ``message_id``."""
    return message_id or correlation_id


def read_task(payload: Any) -> tuple[Any, bool]:
    """Split kiwipy's ``[task, no_reply]`` task body."""
    if not isinstance(payload, list) or len(payload) != 2 or not isinstance(payload[1], bool):
        raise MessageError("task body must be a two-item list [task, no_reply], as kiwipy sends it")
    return payload[0], payload[1]


@dataclass(frozen=True, slots=True)
class Broadcast:
    body: Any
    sender: Any = None
    subject: str | None = None
    correlation_id: Any = None

    def to_wire(self) -> dict[str, Any]:
        return {"body": self.body, "sender": self.sender, "subject": self.subject,
                "correlation_id": self.correlation_id}


def read_broadcast(payload: Any) -> Broadcast:
    if not isinstance(payload, Mapping) or "body" not in payload:
        raise MessageError("broadcast body must be a mapping with body, sender, subject and correlation_id")
    subject = payload.get("subject")
    if subject is not None and not isinstance(subject, str):
        raise MessageError(f"broadcast subject must be a string, got {type(subject).__name__}")
    return Broadcast(payload["body"], payload.get("sender"), subject, payload.get("correlation_id"))
