"""aio-pika and aiormq errors, translated into Otter's tree at the transport boundary, in words that point at the fix.

Nothing here ever puts a broker URL's password into a message.
"""

from __future__ import annotations

import logging
import re
import socket
import ssl
from typing import Any, Literal

import aio_pika
import aiormq

from ...errors import BrokerRefused, BrokerUnavailable, OtterError, Unroutable

__all__ = [
    "REFUSALS",
    "ack_timeout",
    "connect_failure",
    "deprecated_feature",
    "describe",
    "existing_max_priority",
    "queue_mismatch",
    "quiet_outage_noise",
    "translated",
]

# Refusals are answers, not outages: retrying them cannot help. (NOT_FOUND is retried: the robust channel
# re-declares the exchanges and queues it declared when it re-opens.)
REFUSALS = (
    aiormq.exceptions.ChannelAccessRefused,
    aiormq.exceptions.ChannelPreconditionFailed,
    aiormq.exceptions.ChannelLockedResource,
)


def connect_failure(exc: BaseException, tls: bool, where: str = "the broker") -> tuple[str, bool]:
    """Why a connection could not be made, in words that point at the fix, and whether it is a refusal (retrying
    cannot help) rather than an outage; never includes the URL's password. ``where`` is ``host:port``."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ssl.SSLCertVerificationError):
            return (
                f"TLS: the broker's certificate was not accepted ({cause.verify_message}); check TLS_CA_FILE "
                f"(the CA that signed the broker's certificate) and that the URL's host name is on the certificate"
            ), True
        if isinstance(cause, ssl.SSLError):
            return (
                f"TLS handshake failed ({cause.reason or describe(cause)}); check the port is the broker's TLS "
                f"port and, if the broker verifies clients, TLS_CERT_FILE and TLS_KEY_FILE"
            ), True
        if isinstance(cause, aiormq.exceptions.ProbableAuthenticationError):
            return "the broker refused the login: check the user name and password in the URL", True
        refusal = _connection_close(cause)
        if refusal is not None:
            return refusal, True
        if tls and isinstance(cause, (ConnectionResetError, aiormq.exceptions.IncompatibleProtocolError, EOFError)):
            # A TLS listener that verifies clients drops one without a certificate right after the handshake.
            return (
                f"the broker closed the TLS connection ({describe(exc)}); if it verifies clients, set "
                f"TLS_CERT_FILE and TLS_KEY_FILE to a client certificate its CA signed"
            ), True
        if isinstance(cause, ConnectionRefusedError):
            return (f"nothing accepts connections at {where} (connection refused): is RabbitMQ running there, and "
                    f"is that its AMQP port (5672; 5671 for amqps)?"), False
        if isinstance(cause, aiormq.exceptions.IncompatibleProtocolError) or _answered_garbage(cause):
            return (f"{where} did not answer as an AMQP broker ({describe(cause)}): is that RabbitMQ's AMQP port "
                    f"(5672; 5671 for amqps), not its management or another service's port?"), True
        if isinstance(cause, socket.gaierror):
            return f"cannot resolve the host of {where} ({describe(cause)}): check the URL's host name", False
        cause = cause.__cause__ or cause.__context__
    if isinstance(exc, TimeoutError):
        return f"no answer from {where} within CONNECT_TIMEOUT", False
    return describe(exc), False


def _answered_garbage(exc: BaseException) -> bool:
    """The peer sent bytes that are not an AMQP frame and closed: another service's port. A peer that closes
    having sent nothing ("Read 0 bytes") may be a broker still starting or a proxy whose backend is down: not a
    refusal, so it is waited for."""
    read = re.search(r"Read (\d+) bytes but \d+ bytes expected", str(exc))
    return read is not None and int(read.group(1)) > 0


def _connection_close(exc: BaseException) -> str | None:
    """The broker's ``connection.close`` during the handshake (its reason is in pamqp's error arguments)."""
    close = next((arg for arg in getattr(exc, "args", ()) if hasattr(arg, "reply_text")), None)
    if close is None:
        return None
    text = str(close.reply_text)
    vhost = re.search(r"vhost (\S+) not found", text)
    if vhost:
        return (f"the broker has no virtual host {vhost.group(1)!r} ({text}): create it (rabbitmqctl add_vhost "
                f"{vhost.group(1)}) or fix the path at the end of the URL")
    access = re.search(r"access to vhost '([^']*)' refused for user '([^']*)'", text)
    if access:
        vhost_name, user = access.groups()
        return (f"user {user!r} may not use the virtual host {vhost_name!r} ({text}): grant it, e.g. rabbitmqctl "
                f"set_permissions -p {vhost_name} {user} '.*' '.*' '.*', or use another user")
    return f"the broker closed the connection: {text}"


def describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) < 300 else text[:300] + "..."


class translated:
    """Turn aio-pika and aiormq errors into Otter's tree, saying what we were doing.

    A class rather than ``@contextlib.contextmanager``: it wraps every ack and reply, and a generator-based
    context manager costs a few µs per use (a generator and two resumptions), this one a fraction of that."""

    __slots__ = ("action",)

    def __init__(self, action: str) -> None:
        self.action = action

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> Literal[False]:
        if exc is None or isinstance(exc, OtterError):
            return False
        if isinstance(exc, aio_pika.exceptions.DeliveryError):
            raise Unroutable(
                f"could not {self.action}: the broker returned the message ({describe(exc)})"
            ) from None
        if isinstance(exc, CONNECTION_ERRORS):
            refused = deprecated_feature(exc)
            if refused is not None:
                raise BrokerRefused(f"could not {self.action}: {refused}") from None
            raise BrokerUnavailable(
                f"could not {self.action}: the broker connection failed ({describe(exc)})"
            ) from None
        return False


_ACK_TIMEOUT = re.compile(r"delivery acknowledgement on channel \d+ timed out")
_TIMEOUT_USED = re.compile(r"Timeout value used: (\d+) ms")


def ack_timeout(exc: BaseException | None) -> tuple[bool, float | None]:
    """Whether ``exc`` is the broker closing a channel for a delivery left unacked past ``consumer_timeout``
    (``PRECONDITION_FAILED - delivery acknowledgement on channel N timed out``, RabbitMQ 3.8.15 to 4.2, and 4.3+
    for clients without consumer_cancel_notify), and the timeout in seconds when the broker said it."""
    if not isinstance(exc, aiormq.exceptions.ChannelPreconditionFailed) or not _ACK_TIMEOUT.search(str(exc)):
        return False, None
    used = _TIMEOUT_USED.search(str(exc))
    return True, int(used.group(1)) / 1000 if used else None


def deprecated_feature(exc: BaseException) -> str | None:
    """A RabbitMQ 4 refusal of a deprecated feature (541, which closes the whole connection), in words with the fix;
    None for any other error. Reconnecting cannot help, so callers stop rather than retry."""
    found = re.search(r"Feature `?(\w+)`? is deprecated", str(exc))
    if found is None:
        return None
    feature = found.group(1)
    return (f"RabbitMQ refused the deprecated feature {feature!r} ({describe(exc)}). Otter itself uses none, so "
            f"this queue or setting comes from elsewhere (an older Otter, a policy, another client); remove it, or "
            f"allow it with deprecated_features.permit.{feature} = true in rabbitmq.conf")


# The config key behind each task queue argument, for the fix in ``queue_mismatch``'s message.
_ARGUMENT_KEYS = {
    "x-queue-type": "TASK_QUEUE_TYPE (or add_task(queue_type=...))",
    "x-message-ttl": "TASK_MESSAGE_TTL",
    "x-delivery-limit": "TASK_DELIVERY_LIMIT",
    "x-dead-letter-exchange": "TASK_QUEUE_TYPE and TASK_MESSAGE_TTL (only a classic queue with kiwipy's 7-day TTL "
                              "has no dead-letter exchange)",
    "x-dead-letter-routing-key": "DEAD_LETTER_QUEUE",
    "x-max-priority": "TASK_MAX_PRIORITY (or add_task(max_priority=...))",
}
_INEQUIVALENT = re.compile(r"inequivalent arg '([^']+)' for queue '([^']*)' in vhost '[^']*': "
                           r"received (.+?) but current is (.+?)\s*$")
_CURRENT_MAX_PRIORITY = re.compile(r"inequivalent arg 'x-max-priority' .*current is the value '(\d+)'")


def existing_max_priority(exc: BaseException) -> int | None:
    """The queue's ``x-max-priority`` when the broker refused a declaration for it (it names the first argument
    that differs, and its current value: measured on 3.10 and 4.0), else None."""
    found = _CURRENT_MAX_PRIORITY.search(str(exc))
    return int(found.group(1)) if found else None


def queue_mismatch(exc: BaseException, queue: str, queue_type: str, existing_type: str | None) -> str:
    """One line for a worker whose task queue exists with other arguments (the broker's 406, measured on 3.10 and
    4.0: any argument more, less or different): the queue's type and this worker's, or else the argument the broker
    named with both values; and the fix."""
    fix = (f"or move its tasks elsewhere and delete it (rabbitmqctl delete_queue {queue}) so that the worker declares "
           f"it anew")
    if existing_type is not None and existing_type != queue_type:
        return (f"the task queue {queue!r} exists as a {existing_type} queue, but this worker declares it as a "
                f"{queue_type} queue; RabbitMQ refuses a declaration that differs. Fix: set TASK_QUEUE_TYPE (or "
                f"add_task(queue_type=...)) to {existing_type!r}, {fix}")
    found = _INEQUIVALENT.search(str(exc))
    if found is None:
        return (f"the task queue {queue!r} exists with other settings than this worker's ({describe(exc)}); give "
                f"the worker the queue's settings, {fix}")
    argument, _, ours, theirs = found.groups()

    def value(text: str) -> str:
        quoted = re.search(r"'([^']*)'", text)
        return quoted.group(1) if quoted else "none"

    key = _ARGUMENT_KEYS.get(argument, "the task queue settings")
    return (f"the task queue {queue!r} exists with {argument}={value(theirs)}, but this worker declares it with "
            f"{argument}={value(ours)} (a {queue_type} queue); RabbitMQ refuses a declaration that differs. Fix: set "
            f"{key} to match the queue, {fix}")


CONNECTION_ERRORS = (
    aiormq.exceptions.AMQPError,
    aio_pika.exceptions.AMQPException,
    ConnectionError,
    OSError,
    RuntimeError,
)


class _SaidByOtter(logging.Filter):
    """Drop aiormq's and aio-pika's own lines about an outage that Otter reports itself, once, in words with the fix:
    a failed connection attempt (aiormq: ERROR each time, aio-pika: WARNING each time), the broker closing the
    connection (ERROR with a bare ``NoneType: None``), and robust channels failing to re-open while the connection is
    down (ERROR with a traceback each; aio-pika re-opens them once it reconnects)."""

    _OUTAGE_MESSAGES = ("error when creating transport", "Unexpected connection close from remote",
                        "Connection attempt to")
    _REOPEN_ERRORS = (RuntimeError, ConnectionError, aiormq.exceptions.ChannelInvalidStateError,
                      aiormq.exceptions.AMQPConnectionError)

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.CRITICAL:
            return True
        message = str(record.msg)
        if message.startswith(self._OUTAGE_MESSAGES):
            return False
        if message.startswith("Callback") and "RobustChannel._on_close" in record.getMessage():
            failure = record.exc_info[1] if record.exc_info else None
            return not isinstance(failure, self._REOPEN_ERRORS)
        return True


_NOISY_LOGGERS = ("aiormq.connection", "aio_pika.tools", "aio_pika.robust_connection")


def quiet_outage_noise() -> None:
    """Install ``_SaidByOtter`` on the library loggers (once; idempotent), for workers and plain clients alike."""
    for name in _NOISY_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(existing, _SaidByOtter) for existing in logger.filters):
            logger.addFilter(_SaidByOtter())
