"""How every ``otter`` command looks and ends: the help layout, the exit codes, errors printed with their type,
JSON and tables that stay greppable when piped. One place, so the commands cannot drift apart."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from typing import Any, NoReturn

import click

from ..errors import BrokerUnavailable, DeadlineExceeded, OtterError, RemoteError, ValidationError
from ..logs import configure_logging

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 110}

# Exit codes of otter call/task/broadcast (2 is click's usage error: a bad option or JSON argument).
EXIT_CALL_FAILED = 1  # the handler raised, the arguments did not validate, or nobody serves the name
EXIT_TIMEOUT = 3  # no reply within --timeout
EXIT_BROKER_UNAVAILABLE = 4  # the broker cannot be reached
# otter run/routes/config: the app's code raised while it was imported or built, or the app failed to serve.
EXIT_APP_FAILED = 1


def exit_on_error(action: Callable[[], Any]) -> Any:
    """``action()``, or, when it raises an Otter error, that error printed and the exit code that names its kind."""
    try:
        return action()
    except DeadlineExceeded as exc:
        fail(exc, EXIT_TIMEOUT)
    except BrokerUnavailable as exc:
        fail(exc, EXIT_BROKER_UNAVAILABLE)
    except OtterError as exc:
        fail(exc, EXIT_CALL_FAILED)


def fail(exc: OtterError, code: int) -> NoReturn:
    """Print the error with its type, as ``RemoteError ValueError: boom``, and exit with ``code``."""
    label = type(exc).__name__
    if isinstance(exc, ValidationError):
        click.echo(f"{label}: invalid arguments", err=True)
        for field, messages in _flatten(exc.messages):
            click.echo(f"  {field}: {messages}", err=True)
    else:
        click.echo(f"{label} {exc}" if isinstance(exc, RemoteError) else f"{label}: {exc}", err=True)
    trace = getattr(exc, "remote_traceback", None)
    if trace:
        click.echo("Remote traceback (the service runs with debug):\n" + trace.rstrip(), err=True)
    sys.exit(code)


def _flatten(messages: Any, prefix: str = "") -> list[tuple[str, str]]:
    if isinstance(messages, dict):
        rows = []
        for key, value in messages.items():
            rows.extend(_flatten(value, f"{prefix}{key}."))
        return rows
    text = " ".join(map(str, messages)) if isinstance(messages, list) else str(messages)
    return [(prefix.rstrip(".") or "_schema", text)]


def quiet_logging() -> None:
    """Only warnings, and none from the connection: the commands report a failed connection themselves."""
    configure_logging("WARNING")
    for reported_by_us in ("otter.client", "aio_pika", "aiormq"):
        logging.getLogger(reported_by_us).setLevel(logging.CRITICAL)


def print_json(value: Any) -> None:
    if sys.stdout.isatty():
        console().print_json(data=value, default=str)
    else:
        click.echo(json.dumps(value, indent=2, ensure_ascii=False, default=str))


def console() -> Any:
    from rich.console import Console

    # Piped output keeps whole lines (a table folded at 80 columns cannot be grepped).
    return Console() if sys.stdout.isatty() else Console(width=200, no_color=True)
