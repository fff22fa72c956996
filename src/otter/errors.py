"""Every error Otter raises, in one tree.

::

    OtterError
    ├── ConfigurationError       the app or a call is set up wrongly (a setup method after start, a bad URL...)
    ├── BrokerUnavailable        the broker cannot be reached, or the connection was lost
    │   └── BrokerRefused        it answered, and said no: login, vhost, permissions, TLS; retrying cannot help
    ├── DeadlineExceeded         a call got no answer before its deadline (also a builtin ``TimeoutError``)
    ├── TimeLimitExceeded        a task's handler ran past its ``time_limit`` (also a builtin ``TimeoutError``)
    ├── Unroutable               nobody serves this RPC name or task queue (also ``kiwipy.UnroutableError``)
    ├── Undelivered              sends handed over without waiting failed; ``failures`` says which and why
    ├── MessageError             a message that cannot be read: undecodable, wrong content type, malformed
    │   └── MessageTooLarge      bigger than ``MAX_MESSAGE_SIZE``; refused before decoding
    └── RemoteError              the remote handler failed; carries its type, message, details and traceback
        └── ValidationError      the arguments did not validate; ``messages`` maps fields to their errors

Errors from aio-pika, aiormq and kiwipy are translated into this tree at the transport boundary, so user code only
ever catches Otter's errors. ``RemoteError`` also subclasses ``kiwipy.RemoteException`` so code written for kiwipy
keeps working.
"""

from __future__ import annotations

import concurrent.futures
import reprlib
import sys
from typing import Any

import kiwipy

__all__ = [
    "BrokerRefused",
    "BrokerUnavailable",
    "ConfigurationError",
    "DeadlineExceeded",
    "MessageError",
    "MessageTooLarge",
    "OtterError",
    "RemoteError",
    "TimeLimitExceeded",
    "Undelivered",
    "Unroutable",
    "ValidationError",
]


class OtterError(Exception):
    """The root of every error Otter raises."""


class ConfigurationError(OtterError):
    """The app, a route or a call is set up wrongly; the message says how to fix it."""


class BrokerUnavailable(OtterError):
    """The broker cannot be reached, or the connection to it was lost."""


class BrokerRefused(BrokerUnavailable):
    """The broker (or whatever listens at the URL) answered and refused the connection: wrong credentials, an
    unknown vhost, no permissions, a TLS failure, not an AMQP port. Waiting or retrying cannot fix it; the message
    says what will."""


# On Python 3.10 the futures TimeoutError is not yet the builtin one; catch both with one class.
_TIMEOUT_BASES: tuple[type[BaseException], ...] = (
    (TimeoutError,) if sys.version_info >= (3, 11) else (TimeoutError, concurrent.futures.TimeoutError)
)


class DeadlineExceeded(OtterError, *_TIMEOUT_BASES):  # type: ignore[misc]
    """A call got no answer before its deadline."""


class TimeLimitExceeded(OtterError, *_TIMEOUT_BASES):  # type: ignore[misc]
    """A task's handler ran past its ``time_limit``: an ``async def`` one was cancelled; a plain one could not be
    stopped (a thread cannot be killed) and runs on, its result ignored. The task failed, and is retried or
    dead-lettered per its retry policy."""


class Unroutable(OtterError, kiwipy.UnroutableError):  # type: ignore[misc]  # kiwipy is untyped
    """Nobody serves this RPC name or task queue: the broker could not route the message."""


class Undelivered(OtterError):
    """Messages that ``Client.task``/``broadcast`` handed over without waiting were refused by the broker or not
    confirmed; raised by ``flush`` and ``close``. ``failures`` lists them, each with its own error.

    >>> try: client.flush()
    ... except Undelivered as exc: resend([failure.correlation_id for failure in exc.failures])
    """

    def __init__(self, failures: list[Any], *, unconfirmed: int = 0) -> None:
        self.failures = failures
        self.unconfirmed = unconfirmed  # still without a confirm when the wait ended (not in ``failures``)
        shown = "; ".join(str(failure) for failure in failures[:5])
        more = f"; and {len(failures) - 5} more (see .failures)" if len(failures) > 5 else ""
        waiting = f"; {unconfirmed} more still had no confirm when the wait ended" if unconfirmed else ""
        super().__init__(f"{len(failures) + unconfirmed} message(s) not delivered: {shown}{more}{waiting}. Send them "
                         f"again, or check the broker and the names")


class MessageError(OtterError):
    """A message that cannot be read: undecodable bytes, a wrong content type or a malformed body."""


class MessageTooLarge(MessageError):
    """A message bigger than the configured ``MAX_MESSAGE_SIZE``; it is refused before decoding."""


class RemoteError(OtterError, kiwipy.RemoteException):  # type: ignore[misc]  # kiwipy is untyped
    """The remote handler raised; ``remote_type`` names the remote exception class.

    >>> try: client.rpc("svc.divide", 0).result()
    ... except RemoteError as exc: print(exc.remote_type)   # "ZeroDivisionError"
    """

    def __init__(
        self,
        message: str,
        *,
        remote_type: str = "Exception",
        details: Any = None,
        remote_traceback: str | None = None,
    ) -> None:
        super().__init__(f"{remote_type}: {message}" if remote_type else message)
        self.message = message
        self.remote_type = remote_type
        self.details = details
        self.remote_traceback = remote_traceback


class ValidationError(RemoteError):
    """The arguments did not validate; ``messages`` maps each field to its error messages.

    Raised by ``@use_args`` inside a handler and raised again, with the same messages, on the caller's side.
    """

    def __init__(self, messages: Any, *, remote_traceback: str | None = None) -> None:
        self.messages = messages
        super().__init__(
            _describe_messages(messages),
            remote_type="ValidationError",
            details={"messages": messages},
            remote_traceback=remote_traceback,
        )


def _describe_messages(messages: Any) -> str:
    if isinstance(messages, dict):
        parts = [f"{_short(field)}: {' '.join(map(_short, errs)) if isinstance(errs, list) else _short(errs)}"
                 for field, errs in messages.items()]
        return "invalid arguments: " + "; ".join(parts)
    return f"invalid arguments: {_short(messages)}"


def _short(value: Any) -> str:
    """Text as is; anything else as a repr bounded in depth and length (messages may come from a remote peer, and
    ``str`` of deeply nested data raises ``RecursionError``)."""
    return value if isinstance(value, str) else _SHORT.repr(value)


_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxstring, _SHORT.maxother, _SHORT.maxlist, _SHORT.maxdict = 4, 200, 200, 20, 20
