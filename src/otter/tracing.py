"""OpenTelemetry spans for sending and processing messages, with W3C trace context in the AMQP headers.

Installed with ``pip install otter-mq[otel]``. When ``opentelemetry`` is not installed (or ``TRACING`` is false)
``tracing_for`` returns None, nothing here is imported, and the senders and the worker do what they always did.

Span shapes, after OpenTelemetry's messaging conventions:

- ``call <name>`` (CLIENT): an RPC from send to reply, so its duration is the caller's latency;
- ``publish <queue or subject>`` (PRODUCER): a task or a broadcast, until the broker has it;
- ``process <name>`` (CONSUMER): one handled message, a child of the sender's span (read from ``traceparent``).

Inside ``process`` the span is the current one, in the handler's thread too, so nested ``comm`` calls are its
children and a whole chain (client → RPC → nested RPC → task) is one trace.
"""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Awaitable, Callable, Iterator, Mapping, MutableMapping
from typing import Any

__all__ = ["Tracing", "tracing_for"]

SYSTEM = "rabbitmq"


def tracing_for(config: Mapping[str, Any]) -> Tracing | None:
    """``Tracing`` when ``TRACING`` asks for it: ``"auto"`` (the default) if ``opentelemetry`` is installed; True
    insists (an error saying what to install if it is not); False never."""
    wanted = config.get("TRACING", "auto")
    if wanted is False:
        return None
    if importlib.util.find_spec("opentelemetry") is None:
        if wanted is True:
            from .errors import ConfigurationError

            raise ConfigurationError("TRACING is true but OpenTelemetry is not installed: pip install 'otter-mq[otel]'")
        return None
    return Tracing()


class _HeaderGetter:
    """Reads trace context from AMQP headers, whose strings may arrive as bytes."""

    def get(self, carrier: Mapping[str, Any], key: str) -> list[str] | None:
        value = carrier.get(key)
        if isinstance(value, bytes):
            value = value.decode("latin-1")
        return [value] if isinstance(value, str) else None

    def keys(self, carrier: Mapping[str, Any]) -> list[str]:
        return list(carrier)


class Tracing:
    """Starts Otter's spans on the global tracer provider (whatever the program set up, else OpenTelemetry's no-op)."""

    def __init__(self) -> None:
        from opentelemetry import context, propagate, trace
        from opentelemetry.trace import SpanKind, Status, StatusCode

        from . import __version__

        self._trace, self._context, self._propagate = trace, context, propagate
        self._kinds = {"call": SpanKind.CLIENT, "publish": SpanKind.PRODUCER, "process": SpanKind.CONSUMER}
        self._status, self._error_code = Status, StatusCode.ERROR
        self._tracer = trace.get_tracer("otter", __version__)
        self._getter: Any = _HeaderGetter()  # duck-typed: opentelemetry's Getter cannot be imported at module level

    @contextlib.contextmanager
    def sending(
        self, operation: str, destination: str, routing_key: str, correlation_id: str, headers: MutableMapping[str, Any]
    ) -> Iterator[None]:
        """A ``call`` or ``publish`` span around a send; its trace context goes into ``headers``. An exception
        (a refused send, an error reply, a deadline) marks the span as failed and goes on. A ``traceparent`` the
        caller put in ``headers`` is the span's parent, rather than the current span."""
        parent = self._propagate.extract(headers, getter=self._getter) if "traceparent" in headers else None
        span = self._tracer.start_span(
            f"{operation} {destination}",
            context=parent,
            kind=self._kinds[operation],
            attributes={
                "messaging.system": SYSTEM,
                "messaging.operation.type": "send" if operation == "call" else "publish",
                "messaging.operation.name": operation,
                "messaging.destination.name": destination,
                "messaging.rabbitmq.destination.routing_key": routing_key,
                "messaging.message.conversation_id": correlation_id,
            },
        )
        self._propagate.inject(headers, context=self._trace.set_span_in_context(span))
        with self._trace.use_span(span, end_on_exit=True, record_exception=True, set_status_on_exception=True):
            yield

    def processing(
        self, kind: str, destination: str, handle: Callable[[Any], Awaitable[None]]
    ) -> Callable[[Any], Awaitable[None]]:
        """``handle`` (a worker's consumer of ``kind``) inside a ``process`` span, the current span while it runs."""
        tracer, trace, context, getter = self._tracer, self._trace, self._context, self._getter
        extract = self._propagate.extract
        consumer = self._kinds["process"]

        async def traced(delivery: Any) -> None:
            parent = extract(delivery.headers, getter=getter)
            span = tracer.start_span(
                f"process {destination}",
                context=parent,
                kind=consumer,
                attributes={
                    "messaging.system": SYSTEM,
                    "messaging.operation.type": "process",
                    "messaging.operation.name": "process",
                    "messaging.destination.name": destination,
                    "messaging.message.conversation_id": delivery.correlation_id or "",
                    "messaging.message.body.size": len(delivery.body),
                    "otter.kind": kind,
                },
            )
            token = context.attach(trace.set_span_in_context(span, parent))
            try:
                await handle(delivery)
            finally:
                context.detach(token)
                span.end()

        return traced

    def failed(self, error: BaseException) -> None:
        """The current ``process`` span's handler raised ``error`` (the worker handles it; the span records it)."""
        span = self._trace.get_current_span()
        span.record_exception(error)
        span.set_status(self._status(self._error_code, f"{type(error).__name__}: {error}"))
