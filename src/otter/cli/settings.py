"""The config the commands act on: the options ``run`` and ``config`` share (each one a config key), the broker
option of the client commands, and ``otter.config.resolve`` with its errors turned into usage errors.

The precedence itself lives in ``otter.config``; this module only maps options to its keys.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from ..app import Otter
from ..config import DEFAULT, DEFAULTS, LOG_LEVELS, ResolvedConfig, resolve
from ..errors import ConfigurationError
from ..logs import LOG_FORMATS
from ..protocol import RPC_QUEUE_TYPES, TASK_QUEUE_TYPES
from ..transports import MEMORY_URL

PRECEDENCE = (
    "Each option is also a config key and an OTTER_<KEY> environment variable. Precedence, highest first: "
    "the option, then OTTER_<KEY>, then app.config, then the default."
)

# The option of `otter run` -> the config key it sets; filled by ``_setting`` from the options themselves, so an
# option can never be parsed and then left out of the config.
RUN_SETTINGS: dict[str, str] = {}

BROKER_OPTION = click.option(
    "--broker",
    "broker_url",
    metavar="URL",
    help="The broker, e.g. amqp://user:password@host:5672/vhost [env OTTER_BROKER_URL; required]. Exchange and "
    "queue names come from OTTER_* too.",
)


def _setting(*decls: str, key: str, help: str, **kwargs: Any) -> Callable[[Any], Any]:
    RUN_SETTINGS[click.Option(list(decls)).name or key.lower()] = key
    shown = MEMORY_URL if key == "BROKER_URL" else DEFAULTS.get(key)
    return click.option(*decls, default=None, help=f"{help} [{key}, env OTTER_{key}; default: {shown}]", **kwargs)


def run_settings(command: Callable[..., Any]) -> Callable[..., Any]:
    """The options of ``otter run`` and the APP argument, for ``run`` and ``config`` alike."""
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
            help="Handlers running at once in each worker: per RPC name, for all tasks, for all broadcasts (the "
            "prefetch is this times PREFETCH_MULTIPLIER).",
        ),
        _setting(
            "--prefetch-multiplier",
            key="PREFETCH_MULTIPLIER",
            type=click.IntRange(min=1),
            help="Each consumer's prefetch is the concurrency times this; 1 for long-running handlers "
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
        _setting(
            "--task-queue-type",
            key="TASK_QUEUE_TYPE",
            type=click.Choice(TASK_QUEUE_TYPES, case_sensitive=False),
            help="How the worker declares its task queues: classic (kiwipy's, shared with kiwipy programs) or "
            "quorum (replicated, with a delivery limit); an existing queue must match.",
        ),
        _setting(
            "--rpc-queue-type",
            key="RPC_QUEUE_TYPE",
            type=click.Choice(RPC_QUEUE_TYPES, case_sensitive=False),
            help="How the worker declares its RPC queues: classic (auto-delete, on one node of a cluster) or quorum "
            "(survives the loss of a cluster node; lingers a minute after its last worker).",
        ),
        _setting("--reload/--no-reload", key="RELOAD", help="Restart when a .py file changes (development)."),
        _setting(
            "--metrics-port",
            key="METRICS_PORT",
            type=click.IntRange(1, 65535),
            metavar="PORT",
            help="Serve Prometheus metrics at http://HOST:PORT/metrics (pip install 'otter-mq[metrics]'); with "
            "--workers N, the sum of all workers.",
        ),
        _setting(
            "--health-port",
            key="HEALTH_PORT",
            type=click.IntRange(1, 65535),
            metavar="PORT",
            help="Serve /livez (200 while the process runs, also during a broker outage) and /readyz (200 only "
            "while connected with every consumer active) for Kubernetes probes.",
        ),
        _setting(
            "--log-level",
            key="LOG_LEVEL",
            type=click.Choice(LOG_LEVELS, case_sensitive=False),
            help="How much to log; DEBUG also shows aio-pika's own logs.",
        ),
        _setting(
            "--log-format",
            key="LOG_FORMAT",
            type=click.Choice(LOG_FORMATS, case_sensitive=False),
            help="text, or json: one JSON object per line with the service, route, correlation id, trace id, "
            "duration and outcome of the message a line is about.",
        ),
        _setting(
            "--log-config",
            key="LOG_CONFIG",
            type=click.Path(dir_okay=False),
            metavar="FILE",
            help="A logging dictConfig file (JSON or YAML) used instead of Otter's own log handler.",
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


def effective_config(app: Otter, options: dict[str, Any]) -> ResolvedConfig:
    """The options are the arguments of ``otter.config.resolve``, ``app.config`` its app config."""
    overrides = {key: options.get(param) for param, key in RUN_SETTINGS.items()}
    return resolve_or_exit(overrides, app_config=app.config)


def broker_config(broker_url: str | None) -> ResolvedConfig:
    """The config a ``Client`` would use: ``--broker``, else ``OTTER_BROKER_URL``; names from ``OTTER_*``.

    A client command never falls back to the in-process ``memory://`` broker: nothing else could receive what it
    sends, so the message would vanish while the command reported success. Naming ``memory://`` is allowed.
    """
    config = resolve_or_exit({"BROKER_URL": broker_url})
    if config.sources["BROKER_URL"] == DEFAULT:
        raise click.UsageError(
            "no broker given: name it with --broker amqp://user:password@host:5672/vhost or set OTTER_BROKER_URL "
            f"(without one, what this command sends would go to an in-process {MEMORY_URL} broker and vanish)"
        )
    return config


def resolve_or_exit(arguments: dict[str, Any], app_config: dict[str, Any] | None = None) -> ResolvedConfig:
    """``otter.config.resolve``; an invalid value (from an option, ``OTTER_*`` or ``app.config``) exits 2."""
    try:
        return resolve(arguments, app_config=app_config)
    except ConfigurationError as exc:
        raise InvalidConfig(str(exc)) from None


class InvalidConfig(click.ClickException):
    """A config value that is not valid, wherever it came from: exit 2 (usage), without the usage line, which
    would point at the options when the value may come from ``OTTER_*`` or ``app.config``."""

    exit_code = 2
