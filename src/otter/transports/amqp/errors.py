"""aio-pika and aiormq errors, translated into Otter's tree at the transport boundary, in words that point at the fix.

Nothing here ever puts a broker URL's password into a message.
"""

from __future__ import annotations

import ssl
from typing import Any, Literal

import aio_pika
import aiormq

from ...errors import BrokerUnavailable, OtterError, Unroutable

__all__ = ["CONNECTION_ERRORS", "REFUSALS", "connect_failure", "describe", "translated"]

# Refusals are answers, not outages: retrying them cannot help. (NOT_FOUND is retried: the robust channel
# re-declares the exchanges and queues it declared when it re-opens.)
REFUSALS = (
    aiormq.exceptions.ChannelAccessRefused,
    aiormq.exceptions.ChannelPreconditionFailed,
    aiormq.exceptions.ChannelLockedResource,
)


def connect_failure(exc: BaseException, tls: bool) -> str:
    """Why a connection could not be made, in words that point at the fix; never includes the URL's password."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ssl.SSLCertVerificationError):
            return (
                f"TLS: the broker's certificate was not accepted ({cause.verify_message}); check TLS_CA_FILE "
                f"(the CA that signed the broker's certificate) and that the URL's host name is on the certificate"
            )
        if isinstance(cause, ssl.SSLError):
            return (
                f"TLS handshake failed ({cause.reason or describe(cause)}); check the port is the broker's TLS "
                f"port and, if the broker verifies clients, TLS_CERT_FILE and TLS_KEY_FILE"
            )
        if isinstance(cause, aiormq.exceptions.ProbableAuthenticationError):
            return "the broker refused the login: check the user name and password in the URL"
        if tls and isinstance(cause, (ConnectionResetError, aiormq.exceptions.IncompatibleProtocolError, EOFError)):
            # A TLS listener that verifies clients drops one without a certificate right after the handshake.
            return (
                f"the broker closed the TLS connection ({describe(exc)}); if it verifies clients, set "
                f"TLS_CERT_FILE and TLS_KEY_FILE to a client certificate its CA signed"
            )
        cause = cause.__cause__ or cause.__context__
    return describe(exc)


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
            raise BrokerUnavailable(
                f"could not {self.action}: the broker connection failed ({describe(exc)})"
            ) from None
        return False


CONNECTION_ERRORS = (
    aiormq.exceptions.AMQPError,
    aio_pika.exceptions.AMQPException,
    ConnectionError,
    OSError,
    RuntimeError,
)
