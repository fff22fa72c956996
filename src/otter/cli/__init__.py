"""The ``otter`` command line: serve an app, list its handlers, and call running services from a terminal.

    otter run examples.app:app --broker amqp://guest:guest@127.0.0.1/ --workers 4
    otter routes examples.app:app
    otter docs examples.app:app --serve
    otter call example.hash '"otter"'
    otter services --broker amqp://guest:guest@127.0.0.1/

Every option of ``otter run`` is also a config key and an ``OTTER_<KEY>`` environment variable. Precedence, highest
first: the command-line option, then ``OTTER_<KEY>``, then the app's ``app.config``, then the defaults
(``otter.config.DEFAULTS``). ``otter config APP`` shows the effective values and where each came from.
See docs/cli.md.

This module is the group and its entry point; each command lives in the module of its job: ``serve`` (run),
``describe`` (routes, config), ``docs`` (the AsyncAPI document), ``send`` (call, task, broadcast), ``dlq``,
``services``, ``dashboard`` (the web dashboard);
``settings``, ``loading`` and ``output`` serve them all.
"""

from __future__ import annotations

import os
import sys

import click

from .. import __version__
from ..app import RUN_FROM_CLI_ENV
from .dashboard import dashboard
from .describe import routes, show_config
from .dlq import dlq
from .docs import docs
from .output import (
    CONTEXT_SETTINGS,
    EXIT_APP_FAILED,
    EXIT_BROKER_UNAVAILABLE,
    EXIT_CALL_FAILED,
    EXIT_TIMEOUT,
)
from .send import broadcast, call, task
from .serve import run
from .services import services
from .settings import PRECEDENCE, RUN_SETTINGS

__all__ = [
    "EXIT_APP_FAILED",
    "EXIT_BROKER_UNAVAILABLE",
    "EXIT_CALL_FAILED",
    "EXIT_TIMEOUT",
    "RUN_SETTINGS",
    "cli",
    "main",
]


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
    `otter call`, `otter task` and `otter broadcast`; see them all with `otter services`.
    """


for _command in (run, routes, show_config, docs, call, task, broadcast, dlq, services, dashboard):
    cli.add_command(_command)
