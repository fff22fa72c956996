"""``otter routes`` and ``otter config``: what an app would serve and with which settings, without serving it."""

from __future__ import annotations

import json
import time
from typing import Any

import click

from ..config import ARGUMENT, redacted
from ..errors import ConfigurationError
from ..routing import BroadcastRoute, Route, TaskRoute
from ..schedules import iso_time
from .loading import load_app
from .output import CONTEXT_SETTINGS, console
from .settings import PRECEDENCE, effective_config, resolve_or_exit, run_settings


@click.command(context_settings=CONTEXT_SETTINGS)
@click.argument("app_text", metavar="[APP]", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list instead of a table.")
def routes(app_text: str | None, as_json: bool) -> None:
    """List APP's RPCs, tasks, periodic tasks and broadcast filters with their handler, blueprint and validation
    schema, and each periodic task's schedule and next run.

    Fields marked * are required. The task marked "default queue" also takes nameless tasks (client.task(body)).
    """
    _, app = load_app(app_text)
    config = resolve_or_exit({}, app.config)  # OTTER_DEFAULT_TASK_QUEUE and OTTER_PERIODIC_MISSED outrank app.config
    default_queue = config["DEFAULT_TASK_QUEUE"]
    try:
        default_owner = app.task_queues(default_queue).get(default_queue)
    except ConfigurationError as exc:
        raise click.ClickException(str(exc)) from None
    now = time.time()
    rows = [_describe_route(route, route is default_owner, config["PERIODIC_MISSED"], now) for route in app.routes]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo(f"{app.name!r} has no handlers")
        return
    from rich.markup import escape
    from rich.table import Table

    any_required = any(field["required"] for row in rows for field in row["fields"])
    any_periodic = any(row["periodic"] for row in rows)
    columns = ["Kind", "Name / filters", "Handler", "Blueprint", "Schema"]
    columns += ["Schedule (next run, UTC)"] if any_periodic else []
    table = Table(*columns, title=f"{app!r}", caption="* required field" if any_required else None)
    for row in rows:
        kind = "periodic" if row["periodic"] else row["kind"] + (" (default queue)" if row["default_queue"] else "")
        schema = ", ".join(f"{field['name']}{'*' if field['required'] else ''}" for field in row["fields"])
        if row["schema"]:
            schema = f"{row['schema']}: {schema}"
        cells = [kind, row["name"], row["handler"], row["blueprint"] or "-", schema or "-"]
        if any_periodic:
            periodic = row["periodic"]
            cells.append(f"{periodic['schedule']}, missed={periodic['missed']} ({periodic['next_run']})"
                         if periodic else "-")
        table.add_row(*map(escape, cells))
    console().print(table)


def _describe_route(route: Route, default_queue: bool, missed: str, now: float) -> dict[str, Any]:
    schema = route.schema
    fields = [{"name": name, "required": bool(field.required)} for name, field in getattr(schema, "fields", {}).items()]
    schema_name = type(schema).__name__ if schema is not None else None
    handler = route.handler
    return {
        "kind": route.kind,
        "name": ", ".join(f.pattern for f in route.filters) if isinstance(route, BroadcastRoute) else route.name,
        "handler": f"{getattr(handler, '__module__', '?')}.{getattr(handler, '__qualname__', repr(handler))}",
        "blueprint": route.blueprint,
        "schema": None if schema_name in (None, "UseArgsSchema") else schema_name,
        "fields": fields,
        "default_queue": isinstance(route, TaskRoute) and default_queue,
        "async": route.is_async,
        "periodic": _describe_schedule(route, missed, now),
    }


def _describe_schedule(route: Route, missed: str, now: float) -> dict[str, Any] | None:
    """A periodic task's schedule, its missed-tick policy and its next tick after ``now`` (ISO 8601, UTC)."""
    periodic = route.periodic if isinstance(route, TaskRoute) else None
    if periodic is None:
        return None
    return {"schedule": periodic.schedule.describe(), "missed": periodic.missed or missed,
            "next_run": iso_time(periodic.schedule.next_after(now))}


@click.command("config", context_settings=CONTEXT_SETTINGS, epilog=PRECEDENCE)
@run_settings
@click.option("--json", "as_json", is_flag=True, help="Print JSON: {KEY: {value, source}}.")
def show_config(app_text: str | None, as_json: bool, **options: Any) -> None:
    """Show the config APP would run with, and where each value comes from (option, env, app or default).

    Takes the same options as `otter run`. Passwords in URLs are masked.
    """
    _, app = load_app(app_text, options["debug"])
    config = effective_config(app, options)
    shown = redacted(config)
    rows = {}
    for key in sorted(config):
        source = config.sources[key]
        rows[key] = {"value": shown[key], "source": "option" if source == ARGUMENT else source}
    if as_json:
        click.echo(json.dumps(rows, indent=2, default=str))
        return
    from rich.markup import escape
    from rich.table import Table

    table = Table("Key", "Value", "Source", title=f"config of {app.name!r}")
    for key, row in rows.items():
        table.add_row(key, escape(repr(row["value"])), row["source"])
    console().print(table)
