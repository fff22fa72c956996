"""The ``otter`` command line: serve an app, list its handlers, and call running services from a terminal.

    otter run examples.app:app --broker amqp://guest:guest@127.0.0.1/ --workers 4
    otter routes examples.app:app
    otter call example.hash '"otter"'

Every option of ``otter run`` is also a config key and an ``OTTER_<KEY>`` environment variable. Precedence, highest
first: the command-line option, then ``OTTER_<KEY>``, then the app's ``app.config``, then the defaults
(``otter.config.DEFAULTS``). ``otter config APP`` shows the effective values and where each came from.
See docs/cli.md.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

from .. import __version__, protocol
from ..app import RUN_FROM_CLI_ENV, Otter, configure_logging, run_loop
from ..config import ARGUMENT, DEFAULT, DEFAULTS, LOG_LEVELS, ResolvedConfig, redacted, resolve
from ..discovery import APP_ENV, AppTarget, NoAppFound, load_target, parse_target
from ..errors import (
    BrokerUnavailable,
    ConfigurationError,
    DeadlineExceeded,
    OtterError,
    RemoteError,
    ValidationError,
)
from ..routing import BroadcastRoute, Route, TaskRoute
from ..transports import MEMORY_URL

if TYPE_CHECKING:
    from ..dlq import DeadLetter

__all__ = ["cli", "main"]

log = logging.getLogger("otter.cli")

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 110}

# Exit codes of otter call/task/broadcast (2 is click's usage error: a bad option or JSON argument).
EXIT_CALL_FAILED = 1  # the handler raised, the arguments did not validate, or nobody serves the name
EXIT_TIMEOUT = 3  # no reply within --timeout
EXIT_BROKER_UNAVAILABLE = 4  # the broker cannot be reached
# otter run/routes/config: the app's code raised while it was imported or built, or the app failed to serve.
EXIT_APP_FAILED = 1

PRECEDENCE = (
    "Each option is also a config key and an OTTER_<KEY> environment variable. Precedence, highest first: "
    "the option, then OTTER_<KEY>, then app.config, then the default."
)

# The option of `otter run` -> the config key it sets.
RUN_SETTINGS = {
    "broker_url": "BROKER_URL",
    "workers": "WORKERS",
    "concurrency": "CONCURRENCY",
    "prefetch_multiplier": "PREFETCH_MULTIPLIER",
    "grace": "SHUTDOWN_GRACE",
    "reload": "RELOAD",
    "log_level": "LOG_LEVEL",
    "debug": "DEBUG",
}


def main(argv: list[str] | None = None) -> None:
    """The console script: ``otter``; ``python -m otter`` too."""
    # Set before any app module is imported, so a module-level app.run() returns at once (as with flask run).
    os.environ[RUN_FROM_CLI_ENV] = "true"
    cli.main(args=argv, prog_name="otter")


def _print_version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    from importlib.metadata import version

    versions = ", ".join(f"{name} {version(name)}" for name in ("kiwipy", "aio-pika"))
    click.echo(f"otter {__version__} (Python {sys.version.split()[0]}, {versions})")
    ctx.exit()


@click.group(context_settings=CONTEXT_SETTINGS, epilog=PRECEDENCE + " See docs/cli.md.")
@click.option(
    "--version",
    "-V",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_print_version,
    help="Show the versions of otter, Python, kiwipy and aio-pika, and exit.",
)
def cli() -> None:
    """Otter: Flask-style microservices over RabbitMQ.

    Serve an app with `otter run`, list its handlers with `otter routes`, and talk to running services with
    `otter call`, `otter task` and `otter broadcast`.
    """


# -- the settings shared by run and config ---------------------------------------------------------------------
def _setting(*decls: str, key: str, help: str, **kwargs: Any) -> Callable[[Any], Any]:
    default = DEFAULTS.get(key)
    shown = "memory://" if key == "BROKER_URL" else default
    return click.option(*decls, default=None, help=f"{help} [{key}, env OTTER_{key}; default: {shown}]", **kwargs)


def _run_settings(command: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        _setting(
            "--broker",
            "broker_url",
            key="BROKER_URL",
            metavar="URL",
            help="The broker, e.g. amqp://user:password@host:5672/vhost.",
        ),
        _setting(
            "--workers",
            "-w",
            key="WORKERS",
            type=click.IntRange(min=1),
            help="Worker processes under one supervisor that restarts any that dies. Each worker receives "
            "every broadcast.",
        ),
        _setting(
            "--concurrency",
            "-c",
            key="CONCURRENCY",
            type=click.IntRange(min=1),
            help="Handlers running at once per message kind in each worker (the prefetch is this times "
            "PREFETCH_MULTIPLIER).",
        ),
        _setting(
            "--prefetch-multiplier",
            key="PREFETCH_MULTIPLIER",
            type=click.IntRange(min=1),
            help="Each consumer's prefetch is the concurrency times this (default 4); 1 for long-running handlers "
            "with several replicas.",
        ),
        _setting(
            "--grace",
            key="SHUTDOWN_GRACE",
            type=click.FloatRange(min=0),
            metavar="SECONDS",
            help="On SIGTERM/Ctrl-C, how long running handlers get to finish; unfinished tasks go back to the queue.",
        ),
        _setting(
            "--startup-wait",
            key="STARTUP_WAIT",
            type=click.FloatRange(min=0),
            metavar="SECONDS",
            help="How long a starting worker waits for an unreachable broker, trying again with a log line each "
            "time (0: give up at once). A broker that refuses the login, vhost or TLS is not waited for.",
        ),
        _setting("--reload/--no-reload", key="RELOAD", help="Restart when a .py file changes (development)."),
        _setting(
            "--log-level",
            key="LOG_LEVEL",
            type=click.Choice(LOG_LEVELS, case_sensitive=False),
            help="How much to log; DEBUG also shows aio-pika's own logs.",
        ),
        _setting(
            "--debug/--no-debug",
            key="DEBUG",
            help="Log one line per message handled and send tracebacks in error replies.",
        ),
        click.argument("app_text", metavar="[APP]", required=False),
    ]
    for option in reversed(options):
        command = option(command)
    return command


@cli.command(context_settings=CONTEXT_SETTINGS, epilog=PRECEDENCE)
@_run_settings
def run(app_text: str | None, **options: Any) -> None:
    """Serve APP until SIGTERM or Ctrl-C, then stop gracefully and exit 0.

    APP is module:name, module, path/to/file.py or module:create_app('arg'); default: $OTTER_APP, else app.py
    here. In a module otter takes `app`, the only Otter instance, or what create_app() returns.

    On SIGTERM or Ctrl-C the worker stops taking messages, lets running handlers finish within the grace period,
    acks what finished and returns the rest to the queue. With --workers N, N processes share the RPC and task
    queues, and each of them receives every broadcast.
    """
    if _resolve({"RELOAD": options["reload"]})["RELOAD"]:  # before the app (and its config) is imported
        # No .pyc from this import: an edit of the same size within the same second would look unchanged to the
        # restarted worker, which would then run the old bytecode.
        sys.dont_write_bytecode = True
    target, app = _load(app_text, options["debug"])
    config = _effective_config(app, options)
    workers, reload = int(config["WORKERS"]), bool(config["RELOAD"])
    configure_logging(str(config["LOG_LEVEL"]), _name_process(app, target, workers, reload))
    url = str(config["BROKER_URL"])
    if url.startswith(MEMORY_URL):
        if workers > 1:
            raise click.UsageError(
                f"--workers {workers} needs a real broker: {MEMORY_URL} lives inside one process. "
                f"Add --broker amqp://... or set OTTER_BROKER_URL."
            )
        log.warning(
            "serving on the in-process %s broker: no other process can reach it; "
            "use --broker amqp://... or OTTER_BROKER_URL",
            MEMORY_URL,
        )
    if workers > 1 or reload:
        sys.exit(_supervise(target, options, config, workers, reload))
    _serve_here(app, config)


def _name_process(app: Otter, target: AppTarget, workers: int, reload: bool) -> str | None:
    """Under a supervisor, name the process (``ps``/``top``) after the app and the worker's number; the label for its
    log lines (``billing/2``, ``billing/supervisor``), or None for a lone process."""
    from ..supervisor import WORKER_NUMBER_ENV, set_process_title

    number = os.environ.get(WORKER_NUMBER_ENV)
    if number:
        label = f"{app.name}/{number}"
        set_process_title(f"otter worker {number}: {app.name} ({target.text})", label)
    elif workers > 1 or reload:
        label = f"{app.name}/supervisor"
        set_process_title(f"otter supervisor: {app.name} ({target.text})", label)
    else:
        return None
    return label


def _serve_here(app: Otter, config: dict[str, Any]) -> NoReturn:
    # Handler threads are daemons: one still running after the grace period (its message is back on the queue)
    # does not hold the exit up.
    try:
        run_loop(app.serve(config))
    except BrokerUnavailable as exc:
        log.error("%s", exc)
        sys.exit(EXIT_BROKER_UNAVAILABLE)
    except OtterError as exc:
        log.error("%s", exc)
        sys.exit(EXIT_APP_FAILED)
    sys.exit(0)


def _supervise(target: AppTarget, options: dict[str, Any], config: dict[str, Any], workers: int, reload: bool) -> int:
    from ..supervisor import Supervisor

    # Workers resolve their config themselves (the app's own config may change on reload); what the user gave on
    # the command line reaches them as OTTER_* variables, which outrank app.config as the option did.
    env = dict(os.environ)
    env[APP_ENV] = target.text
    for param, key in RUN_SETTINGS.items():
        if options.get(param) is not None:
            value = options[param]
            env[f"OTTER_{key}"] = value if isinstance(value, str) else json.dumps(value)
    env["OTTER_WORKERS"], env["OTTER_RELOAD"] = "1", "false"
    watch = []
    if reload:
        watch = _watched_dirs(target)
        env["PYTHONDONTWRITEBYTECODE"] = "1"  # see run(): stale bytecode would survive a reload
    supervisor = Supervisor(
        [sys.executable, "-m", "otter", "run"],
        workers=workers,
        grace=float(config["SHUTDOWN_GRACE"]),
        env=env,
        watch=watch,
    )
    return supervisor.run()


def _watched_dirs(target: AppTarget) -> list[Path]:
    dirs = {target.source_dir.resolve()}
    module = sys.modules.get(target.module.partition(".")[0])
    module_file = getattr(module, "__file__", None)
    if module_file:
        dirs.add(Path(module_file).resolve().parent)
    # A directory inside another watched one is watched already.
    return sorted(d for d in dirs if not any(d != other and d.is_relative_to(other) for other in dirs))


@cli.command("config", context_settings=CONTEXT_SETTINGS, epilog=PRECEDENCE)
@_run_settings
@click.option("--json", "as_json", is_flag=True, help="Print JSON: {KEY: {value, source}}.")
def show_config(app_text: str | None, as_json: bool, **options: Any) -> None:
    """Show the config APP would run with, and where each value comes from (option, env, app or default).

    Takes the same options as `otter run`. Passwords in URLs are masked.
    """
    _, app = _load(app_text, options["debug"])
    config = _effective_config(app, options)
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
    _console().print(table)


def _effective_config(app: Otter, options: dict[str, Any]) -> ResolvedConfig:
    """The options are the arguments of ``otter.config.resolve``, ``app.config`` its app config."""
    overrides = {key: options.get(param) for param, key in RUN_SETTINGS.items()}
    return _resolve(overrides, app_config=app.config)


def _resolve(arguments: dict[str, Any], app_config: dict[str, Any] | None = None) -> ResolvedConfig:
    """``otter.config.resolve``; an invalid value (from an option, ``OTTER_*`` or ``app.config``) exits 2."""
    try:
        return resolve(arguments, app_config=app_config)
    except ConfigurationError as exc:
        raise InvalidConfig(str(exc)) from None


class InvalidConfig(click.ClickException):
    """A config value that is not valid, wherever it came from: exit 2 (usage), without the usage line, which
    would point at the options when the value may come from ``OTTER_*`` or ``app.config``."""

    exit_code = 2


def _load(app_text: str | None, debug: bool | None = None) -> tuple[AppTarget, Otter]:
    """Find and import the app. When the app's own code raises, print its traceback with the user's frames only
    (as ``flask run`` does: no click, importlib or otter frames) and exit 1; all of it with ``--debug``."""
    try:
        target = parse_target(app_text)
    except NoAppFound as exc:
        raise click.UsageError(str(exc)) from None
    try:
        return target, load_target(target)
    except NoAppFound as exc:
        raise click.UsageError(str(exc)) from None
    except Exception as exc:
        if _resolve({"DEBUG": debug})["DEBUG"]:
            raise
        click.echo(
            f"Error: the app {target.text!r} raised {type(exc).__name__} while loading "
            f"(your code's frames only; --debug or OTTER_DEBUG=true shows every frame):\n",
            err=True,
        )
        click.echo("".join(_user_traceback(exc).format()).rstrip(), err=True)
        sys.exit(EXIT_APP_FAILED)


# Frames of these never show in a startup traceback: the error is in the user's code. The first is the otter
# package itself (this file is otter/cli/__init__.py), so no frame of any otter module shows.
_OUR_DIRS = tuple(
    str(directory) + os.sep
    for directory in (Path(__file__).parent.parent, Path(str(click.__file__)).parent, Path(importlib.__file__).parent)
)


def _user_traceback(exc: BaseException) -> traceback.TracebackException:
    """``exc``'s traceback (and those of its causes) without otter's, click's and importlib's frames."""
    shown = traceback.TracebackException.from_exception(exc)
    seen: set[int] = set()
    pending = [shown]
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        current.stack = traceback.StackSummary.from_list(
            [frame for frame in current.stack if not _is_machinery(frame.filename)]
        )
        pending.extend(chained for chained in (current.__cause__, current.__context__) if chained is not None)
    return shown


def _is_machinery(filename: str) -> bool:
    return filename.startswith(_OUR_DIRS) or filename.startswith("<frozen importlib")


# -- routes ----------------------------------------------------------------------------------------------------------
@cli.command(context_settings=CONTEXT_SETTINGS)
@click.argument("app_text", metavar="[APP]", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list instead of a table.")
def routes(app_text: str | None, as_json: bool) -> None:
    """List APP's RPCs, tasks and broadcast filters with their handler, blueprint and validation schema.

    Fields marked * are required. The task marked "default queue" also takes nameless tasks (client.task(body)).
    """
    _, app = _load(app_text)
    default_queue = _resolve({}, app.config)["DEFAULT_TASK_QUEUE"]  # OTTER_DEFAULT_TASK_QUEUE outranks app.config
    try:
        default_owner = app.task_queues(default_queue).get(default_queue)
    except ConfigurationError as exc:
        raise click.ClickException(str(exc)) from None
    rows = [_describe_route(route, route is default_owner) for route in app.routes]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo(f"{app.name!r} has no handlers")
        return
    from rich.markup import escape
    from rich.table import Table

    any_required = any(field["required"] for row in rows for field in row["fields"])
    table = Table(
        "Kind", "Name / filters", "Handler", "Blueprint", "Schema", title=f"{app!r}",
        caption="* required field" if any_required else None,
    )
    for row in rows:
        kind = row["kind"] + (" (default queue)" if row["default_queue"] else "")
        schema = ", ".join(f"{field['name']}{'*' if field['required'] else ''}" for field in row["fields"])
        if row["schema"]:
            schema = f"{row['schema']}: {schema}"
        cells = (kind, row["name"], row["handler"], row["blueprint"] or "-", schema or "-")
        table.add_row(*map(escape, cells))
    _console().print(table)


def _describe_route(route: Route, default_queue: bool) -> dict[str, Any]:
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
    }


# -- talking to running services -------------------------------------------------------------------------------------
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


BROKER_OPTION = click.option(
    "--broker",
    "broker_url",
    metavar="URL",
    help="The broker, e.g. amqp://user:password@host:5672/vhost [env OTTER_BROKER_URL; required]. Exchange and "
    "queue names come from OTTER_* too.",
)


@cli.command(context_settings=CONTEXT_SETTINGS)
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
        _print_json(_outcome(lambda: client.rpc(name, data).result()))


@cli.command(context_settings=CONTEXT_SETTINGS)
@click.argument("name", required=False)
@click.argument("body", metavar="[JSON]", type=JsonArgument(), required=False)
@BROKER_OPTION
@click.option(
    "--default-queue",
    is_flag=True,
    help="Send to the default task queue (client.task(body)); then the only argument is the JSON body.",
)
def task(name: str | None, body: Any, broker_url: str | None, default_queue: bool) -> None:
    """Queue a task with JSON body (default null) on the task queue NAME; returns once the broker has it."""
    if default_queue:
        if body is not None:
            raise click.UsageError("with --default-queue give only the JSON body, not a NAME")
        body = JsonArgument().convert(name, None, None) if name is not None else None
        name = None
    elif name is None:
        raise click.UsageError("give the task queue NAME, or --default-queue")
    with _client(broker_url, None) as client:
        _outcome(lambda: client.task(body=body) if name is None else client.task(name, body))
    click.echo(f"task queued on {name or 'the default queue'}")


@cli.command(context_settings=CONTEXT_SETTINGS)
@click.argument("subject")
@click.argument("body", metavar="[JSON]", type=JsonArgument(), required=False)
@BROKER_OPTION
@click.option("--sender", help="The sender to put in the broadcast.")
@click.option("--correlation-id", help="The correlation id to put in the broadcast.")
def broadcast(subject: str, body: Any, broker_url: str | None, sender: str | None, correlation_id: str | None) -> None:
    """Broadcast JSON body (default null) with SUBJECT to every service whose filter matches it."""
    with _client(broker_url, None) as client:
        _outcome(lambda: client.broadcast(body, subject=subject, sender=sender, correlation_id=correlation_id))
    click.echo(f"broadcast sent with subject {subject!r}")


# -- dead letters ----------------------------------------------------------------------------------------------------
DLQ_EPILOG = (
    "The broker is --broker, else OTTER_BROKER_URL; the queue is the config key DEAD_LETTER_QUEUE, set with "
    "OTTER_DEAD_LETTER_QUEUE (default: otter.dead-letter). See docs/cli.md."
)


@cli.group(context_settings=CONTEXT_SETTINGS, epilog=DLQ_EPILOG)
def dlq() -> None:
    """See, replay and delete dead letters: the tasks that failed for good.

    A task goes to the dead-letter queue when its handler raised and it has no retries left (TASK_MAX_RETRIES,
    default 0: no retries), or when its message cannot be read at all (not JSON, say). Each dead letter keeps
    the task's body and says why it is there: the reason (handler-error, retries-exhausted or bad-message), the
    error's type and message, the attempts made, and the task queue it came from.

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
    """Show the dead letters, oldest first: task queue, reason, error, attempts and the start of the body.

    Listing changes nothing: every dead letter stays in the queue, in its place.
    """
    from ..dlq import list_dead_letters

    url, config = _dlq_target(broker_url)
    letters = _outcome(lambda: list_dead_letters(url, config, limit))
    if as_json:
        _print_json([_describe_dead_letter(letter) for letter in letters])
        return
    queue, count = config["DEAD_LETTER_QUEUE"], len(letters)
    if letters:
        from rich.markup import escape
        from rich.table import Table

        table = Table("#", "Queue / task", "Reason", "Error", "Attempts", "Body", "Raised at",
                      title=f"dead letters in {queue!r}")
        for number, letter in enumerate(letters, 1):
            row = _describe_dead_letter(letter)
            where = row["queue"] or "?"
            if row["task"] not in (None, row["queue"]):
                where = f"{where} / {row['task']}"
            error = ": ".join(part for part in (row["error_type"], row["error_message"]) if part)
            attempts = "-" if row["attempts"] is None else str(row["attempts"])
            cells = (str(number), where, row["reason"] or "-", error or "-", attempts, row["body_preview"],
                     row["error_location"] or "-")
            table.add_row(*map(escape, cells))
        _console().print(table)
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
    letters = _outcome(lambda: list_dead_letters(url, config, number))
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
        _print_json({**row, "body": body, "readable": readable, "headers": dict(letter.headers)})
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
@click.option("--limit", "-n", type=click.IntRange(min=0), metavar="N", help="Replay at most N, oldest first.")
def dlq_replay(broker_url: str | None, task_name: str | None, limit: int | None) -> None:
    """Send dead letters back to the task queues they came from, to run again (after you fixed the cause).

    Each goes back as a fresh task with its original body, so its attempts and retries start again. The dead
    letters not chosen stay in the queue, in their order.
    """
    from ..dlq import replay

    url, config = _dlq_target(broker_url)
    count = _outcome(lambda: replay(url, config, task=task_name, limit=limit))
    noun = "dead letter" if count == 1 else "dead letters"
    of_task = f" of {task_name!r}" if task_name is not None else ""
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
    count = _outcome(lambda: purge(url, config))
    click.echo(f"removed {count} {'dead letter' if count == 1 else 'dead letters'} from {queue!r}")


def _dlq_target(broker_url: str | None) -> tuple[str, dict[str, Any]]:
    _quiet_logging()
    config = _broker_config(broker_url)
    url = str(config["BROKER_URL"])  # memory:// only when asked for by name
    if url.startswith(MEMORY_URL):
        click.echo(
            f"warning: {url} is a broker inside this process, so it holds no dead letters of running services; "
            "use --broker amqp://... or OTTER_BROKER_URL",
            err=True,
        )
    return url, config


def _describe_dead_letter(letter: DeadLetter) -> dict[str, Any]:
    fields = ("queue", "task", "reason", "error_type", "error_message", "error_location", "attempts",
              "correlation_id", "size")
    return {**{name: getattr(letter, name) for name in fields}, "body_preview": letter.body_preview,
            "error_traceback": letter.error_traceback}


def _client(broker_url: str | None, timeout: float | None) -> Any:
    from ..client import Client

    _quiet_logging()
    client = Client(str(_broker_config(broker_url)["BROKER_URL"]), timeout=timeout)
    if not client.comm:
        error = client.error or BrokerUnavailable(f"cannot connect to {client.url}")
        client.close()
        _fail(error, EXIT_BROKER_UNAVAILABLE)
    return client


def _quiet_logging() -> None:
    """Only warnings, and none from the connection: the commands report a failed connection themselves."""
    configure_logging("WARNING")
    for reported_by_us in ("otter.client", "aio_pika", "aiormq"):
        logging.getLogger(reported_by_us).setLevel(logging.CRITICAL)


def _broker_config(broker_url: str | None) -> ResolvedConfig:
    """The config a ``Client`` would use: ``--broker``, else ``OTTER_BROKER_URL``; names from ``OTTER_*``.

    A client command never falls back to the in-process ``memory://`` broker: nothing else could receive what it
    sends, so the message would vanish while the command reported success. Naming ``memory://`` is allowed.
    """
    config = _resolve({"BROKER_URL": broker_url})
    if config.sources["BROKER_URL"] == DEFAULT:
        raise click.UsageError(
            "no broker given: name it with --broker amqp://user:password@host:5672/vhost or set OTTER_BROKER_URL "
            f"(without one, what this command sends would go to an in-process {MEMORY_URL} broker and vanish)"
        )
    return config


def _outcome(action: Callable[[], Any]) -> Any:
    try:
        return action()
    except DeadlineExceeded as exc:
        _fail(exc, EXIT_TIMEOUT)
    except BrokerUnavailable as exc:
        _fail(exc, EXIT_BROKER_UNAVAILABLE)
    except OtterError as exc:
        _fail(exc, EXIT_CALL_FAILED)


def _fail(exc: OtterError, code: int) -> NoReturn:
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


def _print_json(value: Any) -> None:
    if sys.stdout.isatty():
        _console().print_json(data=value, default=str)
    else:
        click.echo(json.dumps(value, indent=2, ensure_ascii=False, default=str))


def _console() -> Any:
    from rich.console import Console

    # Piped output keeps whole lines (a table folded at 80 columns cannot be grepped).
    return Console() if sys.stdout.isatty() else Console(width=200, no_color=True)
