"""Logging: text or JSON lines, a user's dictConfig, and the message each line was written for.

While a handler runs, every log line written in its task or its thread (Otter's and the handler's own) knows the
message it is about: the worker puts a ``MessageContext`` in a context variable, and the formatters read it only
when a line is written, so a message nobody logs about costs one context-variable set.
"""

from __future__ import annotations

import contextvars
import json
import logging
import logging.config
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .protocol import DEADLINE_HEADER

__all__ = [
    "LOG_FORMATS",
    "JsonFormatter",
    "MessageContext",
    "RedactingFormatter",
    "configure_logging",
    "current_context",
    "current_message",
    "load_log_config",
    "message_fields",
]

LOG_FORMATS = ("text", "json")

_CREDENTIALS = re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://[^/\s:@]*):[^/\s@]*@")


def redact(text: str) -> str:
    """``text`` with the password of every URL in it masked."""
    return _CREDENTIALS.sub(r"\1:***@", text)


@dataclass(slots=True)
class MessageContext:
    """The message a handler is running for: what its log lines say they are about, and what
    ``otter.current_context()`` tells the handler. ``task_id`` is a task's id (None for RPCs and broadcasts), the
    same on every attempt; ``attempt`` counts a task's runs, 1 for the first."""

    kind: str
    route: str
    correlation_id: str | None
    headers: Mapping[str, Any] | None = None
    started: float = field(default_factory=time.perf_counter)
    task_id: str | None = None
    attempt: int = 1

    def time_left(self) -> float | None:
        """Seconds until the caller's deadline (``x-otter-deadline``, RPCs only), or None when it set none; nested
        calls made by the handler are given no more than this (``Communicator.call``)."""
        deadline = self.headers.get(DEADLINE_HEADER) if self.headers else None
        if isinstance(deadline, int) and not isinstance(deadline, bool):
            return deadline / 1000 - time.time()
        return None

    @property
    def trace_id(self) -> str | None:
        """The W3C trace id of the caller's ``traceparent`` header (``00-<trace id>-<span id>-<flags>``), if any."""
        parent = self.headers.get("traceparent") if self.headers else None
        if isinstance(parent, bytes):
            parent = parent.decode("ascii", "replace")
        if isinstance(parent, str):
            parts = parent.split("-")
            if len(parts) >= 4 and len(parts[1]) == 32:
                return parts[1]
        return None


current_message: contextvars.ContextVar[MessageContext | None] = contextvars.ContextVar(
    "otter_current_message", default=None
)


def current_context() -> MessageContext | None:
    """The message the calling handler runs for (its kind, route, correlation id, headers, and for a task its
    ``task_id`` and ``attempt``), from any handler, plain or ``async def``, and the hooks; None outside a handler.

    >>> @app.add_task("mail.send")
    ... def send(comm, body):
    ...     log.info("sending %s, attempt %d", otter.current_context().task_id, otter.current_context().attempt)
    """
    return current_message.get()


def message_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The fields a line about a message carries: kind, route, correlation id, a task's ``task_id`` and
    ``attempt``, trace id, and the time since the handler started (``duration_ms``; on the line that ends a
    message, its duration). ``outcome`` is set by the line that says how the message ended. Empty outside a
    handler."""
    message = current_message.get()
    fields: dict[str, Any] = {}
    if message is not None:
        fields["kind"] = message.kind
        fields["route"] = message.route
        fields["correlation_id"] = message.correlation_id
        if message.task_id is not None:
            fields["task_id"] = message.task_id
            fields["attempt"] = message.attempt
        fields["trace_id"] = message.trace_id
        fields["duration_ms"] = round((time.perf_counter() - message.started) * 1000, 3)
    outcome = getattr(record, "outcome", None)
    if outcome is not None:
        fields["outcome"] = outcome
    return fields


class RedactingFormatter(logging.Formatter):
    """Masks the password of any URL in a log line, whoever logged it (ours are redacted already; a library's
    message or traceback may not be)."""

    def format(self, record: logging.LogRecord) -> str:
        """The line as the base formatter writes it, with passwords in URLs masked."""
        return redact(super().format(record))


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, service, process, the message fields (see
    ``message_fields``), the traceback if any, and whatever ``extra=`` a caller gave. Passwords in URLs are masked.

    Built on python-json-logger, which handles the ``extra`` fields, non-JSON values and exceptions; usable from
    a dictConfig as ``{"()": "otter.logs.JsonFormatter", "service": "billing"}``.
    """

    def __init__(self, service: str | None = None, process_label: str | None = None) -> None:
        super().__init__()
        from pythonjsonlogger.json import JsonFormatter as _Base

        static = {"service": service} if service else {}
        if process_label:
            static["worker"] = process_label
        self._json = _Base(
            "{asctime}{levelname}{name}{message}{process}",
            style="{",
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger", "exc_info": "traceback"},
            static_fields=static,
            timestamp=False,
            json_ensure_ascii=False,
        )
        self._json.formatTime = self._iso_time  # type: ignore[method-assign]

    @staticmethod
    def _iso_time(record: logging.LogRecord, datefmt: str | None = None) -> str:
        seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        return f"{seconds}.{int(record.msecs):03d}Z"

    def format(self, record: logging.LogRecord) -> str:
        """One JSON object: the record's fields and the message it is about (``message_fields``)."""
        fields = message_fields(record)
        saved = {key: record.__dict__[key] for key in fields if key in record.__dict__}
        record.__dict__.update(fields)
        try:
            return redact(self._json.format(record))
        finally:
            for key in fields:
                record.__dict__.pop(key, None)
            record.__dict__.update(saved)


def load_log_config(path: str | Path) -> dict[str, Any]:
    """A ``logging.config.dictConfig`` dictionary from a JSON or YAML file; ``ValueError`` saying what is wrong.

    Unless the file says otherwise, loggers that exist already (Otter's, your app's) stay enabled."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"cannot read the log config {str(path)!r}: {exc.strerror or exc}") from None
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml  # kiwipy's dependency, so always installed

            loaded = yaml.safe_load(text)
        else:
            loaded = json.loads(text)
    except ValueError as exc:  # json.JSONDecodeError and yaml.YAMLError (whose base is not ValueError) below
        raise ValueError(f"the log config {str(path)!r} is not valid JSON: {exc}") from None
    except Exception as exc:
        raise ValueError(f"the log config {str(path)!r} is not valid YAML: {exc}") from None
    if not isinstance(loaded, dict) or "version" not in loaded:
        raise ValueError(
            f"the log config {str(path)!r} must be a logging dictConfig mapping with a 'version' key (version: 1); "
            "see https://docs.python.org/3/library/logging.config.html#logging-config-dictschema"
        )
    # Otter's loggers exist before the file is read; dictConfig would silence them unless told otherwise.
    loaded.setdefault("disable_existing_loggers", False)
    return loaded


def configure_logging(
    level: str | int = "INFO",
    process_label: str | None = None,
    *,
    log_format: str = "text",
    log_config: str | Path | None = None,
    service: str | None = None,
) -> None:
    """Log to stderr at ``level`` unless the program configured logging itself; aio-pika's chatter only at DEBUG.

    ``log_format="json"`` writes one JSON object per line (``JsonFormatter``). ``log_config`` names a JSON or YAML
    dictConfig file that replaces Otter's handler altogether. ``process_label`` follows the pid on every text line
    (``[4711 billing/2]``), so the lines of several worker processes say which app and which worker wrote them.
    """
    level = logging.getLevelName(level.upper()) if isinstance(level, str) else level
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log_format must be one of {', '.join(LOG_FORMATS)}, not {log_format!r}")
    root = logging.getLogger()
    if log_config is not None:
        try:
            logging.config.dictConfig(load_log_config(log_config))
        except (ValueError, TypeError, AttributeError, ImportError) as exc:
            raise ValueError(f"the log config {str(log_config)!r} was refused by logging.config: {exc}") from None
    elif not root.handlers:
        handler = logging.StreamHandler()
        formatter: logging.Formatter
        if log_format == "json":
            formatter = JsonFormatter(service, process_label)
        else:
            label = f" {process_label.replace('%', '%%')}" if process_label else ""
            formatter = RedactingFormatter(f"%(asctime)s %(levelname)s [%(process)d{label}] %(name)s: %(message)s")
        handler.setFormatter(formatter)
        root.addHandler(handler)
        root.setLevel(level)
    if log_config is None:
        logging.getLogger("otter").setLevel(level)
        for noisy in ("aio_pika", "aiormq"):
            logging.getLogger(noisy).setLevel(logging.DEBUG if level <= logging.DEBUG else max(level, logging.WARNING))
