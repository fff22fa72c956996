"""``otter dlq``: list, show, replay and purge the dead letters (tasks that failed for good) on a broker."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Any

import click

from .. import protocol
from ..errors import OtterError
from ..transports import MEMORY_URL
from .output import CONTEXT_SETTINGS, EXIT_CALL_FAILED, console, exit_on_error, print_json, quiet_logging
from .settings import BROKER_OPTION, broker_config

if TYPE_CHECKING:
    from ..dlq import DeadLetter

DLQ_EPILOG = (
    "The broker is --broker, else OTTER_BROKER_URL; the queue is the config key DEAD_LETTER_QUEUE, set with "
    "OTTER_DEAD_LETTER_QUEUE (default: otter.dead-letter). See docs/cli.md."
)


@click.group(context_settings=CONTEXT_SETTINGS, epilog=DLQ_EPILOG)
def dlq() -> None:
    """See, replay and delete dead letters: the tasks that failed for good.

    A task goes to the dead-letter queue when its handler raised and it has no retries left (TASK_MAX_RETRIES,
    default 0: no retries), or when its message cannot be read at all (not JSON, say); the broker puts tasks there
    too, when they wait past TASK_MESSAGE_TTL or a quorum queue's delivery limit is reached. Each dead letter keeps
    the task's body and says why it is there: the reason (Otter's handler-error, retries-exhausted, time-limit or
    bad-message; the broker's expired, delivery-limit, rejected or queue-full), the error's type and message, the
    attempts made, and the task queue it came from.

    The queue is named by the config key DEAD_LETTER_QUEUE (env OTTER_DEAD_LETTER_QUEUE, default
    otter.dead-letter); every service on a broker with the same setting shares it. After fixing the cause,
    `otter dlq replay` sends the dead letters back to their task queues to run again.
    """


@dlq.command(
    "list",
    context_settings=CONTEXT_SETTINGS,
    epilog=DLQ_EPILOG,
    short_help="Show the dead letters and why each failed.",
)
@BROKER_OPTION
@click.option("--limit", "-n", type=click.IntRange(min=0), metavar="N", help="Show only the first (oldest) N.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list instead of a table.")
def dlq_list(broker_url: str | None, limit: int | None, as_json: bool) -> None:
    """Show the dead letters, oldest first: task queue, reason, error, attempts, the start of the body, where the
    handler raised, and the task id (what `otter dlq replay --id` takes).

    Listing changes nothing: every dead letter stays in the queue, in its place.
    """
    from ..dlq import list_dead_letters

    url, config = _dlq_target(broker_url)
    letters = exit_on_error(lambda: list_dead_letters(url, config, limit))
    if as_json:
        print_json([_describe_dead_letter(letter) for letter in letters])
        return
    queue, count = config["DEAD_LETTER_QUEUE"], len(letters)
    if letters:
        from rich.markup import escape
        from rich.table import Table

        table = Table("#", "Queue / task", "Reason", "Error", "Attempts", "Body", "Raised at", "Task id",
                      title=f"dead letters in {queue!r}")
        for number, letter in enumerate(letters, 1):
            row = _describe_dead_letter(letter)
            where = row["queue"] or "?"
            if row["task"] not in (None, row["queue"]):
                where = f"{where} / {row['task']}"
            error = ": ".join(part for part in (row["error_type"], row["error_message"]) if part)
            attempts = "-" if row["attempts"] is None else str(row["attempts"])
            cells = (str(number), where, row["reason"] or "-", error or "-", attempts, row["body_preview"],
                     row["error_location"] or "-", row["task_id"] or "-")
            table.add_row(*map(escape, cells))
        console().print(table)
    noun = "dead letter" if count == 1 else "dead letters"
    more = f" shown (--limit {limit}: there may be more)" if limit is not None and count == limit else ""
    click.echo(f"{count} {noun} in {queue!r}{more}")


@dlq.command(
    "show",
    context_settings=CONTEXT_SETTINGS,
    epilog=DLQ_EPILOG,
    short_help="Print one dead letter whole.",
)
@click.argument("number", type=click.IntRange(min=1), metavar="N")
@BROKER_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object, with the body and headers.")
def dlq_show(number: int, broker_url: str | None, as_json: bool) -> None:
    """Print dead letter N (numbered as `otter dlq list` numbers them, 1 the oldest) whole: where it came from,
    why it failed, its headers and its whole task body. Exit 1 when there is no dead letter N.

    Showing changes nothing: the dead letter stays in the queue, in its place.
    """
    from ..dlq import list_dead_letters

    url, config = _dlq_target(broker_url)
    letters = exit_on_error(lambda: list_dead_letters(url, config, number))
    queue = config["DEAD_LETTER_QUEUE"]
    if len(letters) < number:
        noun = "dead letter" if len(letters) == 1 else "dead letters"
        click.echo(f"no dead letter {number}: there are {len(letters)} {noun} in {queue!r}", err=True)
        sys.exit(EXIT_CALL_FAILED)
    letter = letters[number - 1]
    row = _describe_dead_letter(letter)
    del row["body_preview"]
    try:
        body, readable = letter.payload, True
    except OtterError as exc:
        body, readable = letter.body.decode("utf-8", "replace"), False
        row["body_error"] = str(exc)
    if as_json:
        print_json({**row, "body": body, "readable": readable, "headers": dict(letter.headers)})
        return
    click.echo(f"dead letter {number} in {queue!r}")
    for field, value in row.items():
        if field not in ("body_error", "error_traceback"):
            click.echo(f"  {field + ':':<16}{'-' if value is None else value}")
    if letter.error_traceback:
        click.echo("  traceback (where the handler raised):")
        click.echo("\n".join(f"    {line}" for line in letter.error_traceback.rstrip().splitlines()))
    click.echo("  headers:")
    for key, value in sorted(letter.headers.items()):
        if key != protocol.ERROR_TRACEBACK_HEADER:
            click.echo(f"    {key}: {value.decode('utf-8', 'replace') if isinstance(value, bytes) else value}")
    if readable:
        click.echo("  body (the task, as its handler gets it):")
        text = json.dumps(body, indent=2, ensure_ascii=False, default=str)
    else:
        click.echo(f"  body (no readable task: {row['body_error']}; the raw bytes as text):")
        text = body
    click.echo("\n".join(f"    {line}" for line in str(text).splitlines() or [""]))


@dlq.command(
    "replay",
    context_settings=CONTEXT_SETTINGS,
    epilog=DLQ_EPILOG,
    short_help="Send dead letters back to their task queues.",
)
@BROKER_OPTION
@click.option("--task", "task_name", metavar="NAME", help="Replay only the dead letters of this task (or task queue).")
@click.option("--id", "task_ids", metavar="ID", multiple=True,
              help="Replay only the dead letter of this task id (as `otter dlq list` shows it); repeatable.")
@click.option("--limit", "-n", type=click.IntRange(min=0), metavar="N", help="Replay at most N, oldest first.")
def dlq_replay(broker_url: str | None, task_name: str | None, task_ids: tuple[str, ...], limit: int | None) -> None:
    """Send dead letters back to the task queues they came from, to run again (after you fixed the cause).

    Each goes back as a fresh task with its original body and task id, so its attempts and retries start again.
    The dead letters not chosen stay in the queue, in their order.
    """
    from ..dlq import replay

    url, config = _dlq_target(broker_url)
    ids = task_ids or None
    count = exit_on_error(lambda: replay(url, config, task=task_name, limit=limit, ids=ids))
    noun = "dead letter" if count == 1 else "dead letters"
    of_task = f" of {task_name!r}" if task_name is not None else ""
    if ids is not None:
        of_task += f" with {'id' if len(ids) == 1 else 'ids'} {', '.join(ids)}"
    click.echo(f"replayed {count} {noun}{of_task} from {config['DEAD_LETTER_QUEUE']!r}")


@dlq.command("purge", context_settings=CONTEXT_SETTINGS, epilog=DLQ_EPILOG)
@BROKER_OPTION
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
def dlq_purge(broker_url: str | None, yes: bool) -> None:
    """Delete every dead letter for good (asks first, unless --yes)."""
    from ..config import redact_url
    from ..dlq import purge

    url, config = _dlq_target(broker_url)
    queue = config["DEAD_LETTER_QUEUE"]
    if not yes:
        click.confirm(f"Delete every dead letter in {queue!r} on {redact_url(url)}?", abort=True, err=True)
    count = exit_on_error(lambda: purge(url, config))
    click.echo(f"removed {count} {'dead letter' if count == 1 else 'dead letters'} from {queue!r}")


def _dlq_target(broker_url: str | None) -> tuple[str, dict[str, Any]]:
    quiet_logging()
    config = broker_config(broker_url)
    url = str(config["BROKER_URL"])  # memory:// only when asked for by name
    if url.startswith(MEMORY_URL):
        click.echo(
            f"warning: {url} is a broker inside this process, so it holds no dead letters of running services; "
            "use --broker amqp://... or OTTER_BROKER_URL",
            err=True,
        )
    return url, config


def _describe_dead_letter(letter: DeadLetter) -> dict[str, Any]:
    fields = ("queue", "task", "task_id", "reason", "error_type", "error_message", "error_location", "attempts",
              "correlation_id", "size")
    return {**{name: getattr(letter, name) for name in fields}, "body_preview": letter.body_preview,
            "error_traceback": letter.error_traceback}
