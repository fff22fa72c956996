"""``otter call``, ``otter task`` and ``otter broadcast``: send a message to running services from a terminal and
report the outcome as an exit code (see ``output``)."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from ..errors import BrokerUnavailable
from .output import CONTEXT_SETTINGS, EXIT_BROKER_UNAVAILABLE, exit_on_error, fail, print_json, quiet_logging
from .settings import BROKER_OPTION, broker_config


class JsonArgument(click.ParamType):  # type: ignore[type-arg]
    """A JSON value on the command line; ``-`` reads it from stdin."""

    name = "JSON"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if not isinstance(value, str):
            return value
        text = sys.stdin.read() if value == "-" else value
        try:
            return json.loads(text)
        except ValueError as exc:
            self.fail(
                f"{text!r:.60} is not JSON ({exc}). Quote strings twice, e.g. '\"otter\"'; "
                f"objects look like '{{\"key\": 1}}'",
                param,
                ctx,
            )


@click.command(context_settings=CONTEXT_SETTINGS)
@click.argument("name")
@click.argument("data", metavar="[JSON]", type=JsonArgument(), required=False)
@BROKER_OPTION
@click.option(
    "--timeout",
    "-t",
    type=click.FloatRange(min=0, min_open=True),
    metavar="SECONDS",
    help="How long to wait for the reply [env OTTER_RPC_TIMEOUT; default 30].",
)
def call(name: str, data: Any, broker_url: str | None, timeout: float | None) -> None:
    """Call the RPC NAME with JSON (default null) and print the reply as JSON.

    Exit codes: 0 the reply, 1 the handler raised / invalid arguments / nobody serves NAME, 3 no reply within
    --timeout, 4 the broker cannot be reached.
    """
    with _client(broker_url, timeout) as client:
        print_json(exit_on_error(lambda: client.rpc(name, data).result()))


@click.command(context_settings=CONTEXT_SETTINGS)
@click.argument("name", required=False)
@click.argument("body", metavar="[JSON]", type=JsonArgument(), required=False)
@BROKER_OPTION
@click.option(
    "--default-queue",
    is_flag=True,
    help="Send to the default task queue (client.task(body)); then the only argument is the JSON body.",
)
@click.option("--delay", type=click.FloatRange(min=0), metavar="SECONDS",
              help="Hold the task in the broker this long before it runs (rounded up to whole seconds).")
@click.option("--id", "task_id", metavar="ID", help="The task's id (default: a new one, printed).")
@click.option("--priority", type=click.IntRange(0, 255), default=None,
              help="The task's priority, 0-255 (client.task(..., priority=N)); it orders only queues declared for it.")
def task(name: str | None, body: Any, broker_url: str | None, default_queue: bool, delay: float | None,
         task_id: str | None, priority: int | None) -> None:
    """Queue a task with JSON body (default null) on the task queue NAME; returns once the broker has it, and
    prints its id."""
    if default_queue:
        if body is not None:
            raise click.UsageError("with --default-queue give only the JSON body, not a NAME")
        body = JsonArgument().convert(name, None, None) if name is not None else None
        name = None
    elif name is None:
        raise click.UsageError("give the task queue NAME, or --default-queue")
    with _client(broker_url, None) as client:
        sent = exit_on_error(lambda: client.task(name, body=body, task_id=task_id, delay=delay,
                                                     priority=priority, wait=True))
    later = f", to run in {delay:g} s" if delay else ""
    click.echo(f"task {sent} queued on {name or 'the default queue'}{later}")


@click.command(context_settings=CONTEXT_SETTINGS)
@click.argument("subject")
@click.argument("body", metavar="[JSON]", type=JsonArgument(), required=False)
@BROKER_OPTION
@click.option("--sender", help="The sender to put in the broadcast.")
@click.option("--correlation-id", help="The correlation id to put in the broadcast.")
def broadcast(subject: str, body: Any, broker_url: str | None, sender: str | None, correlation_id: str | None) -> None:
    """Broadcast JSON body (default null) with SUBJECT to every service whose filter matches it."""
    with _client(broker_url, None) as client:
        exit_on_error(lambda: client.broadcast(body, subject=subject, sender=sender, correlation_id=correlation_id))
    click.echo(f"broadcast sent with subject {subject!r}")


def _client(broker_url: str | None, timeout: float | None) -> Any:
    from ..client import Client

    quiet_logging()
    client = Client(str(broker_config(broker_url)["BROKER_URL"]), timeout=timeout)
    if not client.comm:
        error = client.error or BrokerUnavailable(f"cannot connect to {client.url}")
        client.close()
        fail(error, EXIT_BROKER_UNAVAILABLE)
    return client
