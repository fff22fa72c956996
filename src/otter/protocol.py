"""The shapes of messages on the wire, kiwipy-compatible (see docs/protocol.md).

- RPC request: the body is the argument; routing key ``[rpc].<name>`` on the message exchange.
- RPC reply: ``{"result": value}`` or ``{"exception": "Type: message", "error": {...}}``; kiwipy reads the first
  two keys, Otter also reads ``error`` to raise a typed error.
- Task: the body is ``[task, no_reply]``, as kiwipy sends it; a reply, when asked for, is an RPC-style reply.
- Broadcast: ``{"body", "sender", "subject", "correlation_id"}`` with routing key ``[broadcast]``.
"""

from __future__ import annotations

import reprlib
import traceback as tb
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .errors import MessageError, RemoteError, ValidationError

__all__ = [
    "BROADCAST_ROUTING_KEY",
    "DEADLINE_HEADER",
    "RPC_PREFIX",
    "Broadcast",
    "error_reply",
    "raise_for_reply",
    "read_broadcast",
    "read_task",
    "result_reply",
]

RPC_PREFIX = "[rpc]"
BROADCAST_ROUTING_KEY = "[broadcast]"
DEADLINE_HEADER = "x-otter-deadline"  # integer milliseconds since the epoch; see deadline_ms
RESULT_KEY = "result"
EXCEPTION_KEY = "exception"
ERROR_KEY = "error"


def rpc_routing_key(name: str) -> str:
    return f"{RPC_PREFIX}.{name}"


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
