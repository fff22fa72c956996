"""``otter run``: serve the app in this process, or under a supervisor for several workers or ``--reload``."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, NoReturn

import click

from ..app import Otter, run_loop
from ..discovery import APP_ENV, AppTarget
from ..errors import BrokerUnavailable, OtterError
from ..logs import configure_logging
from ..operations import PodOperations
from ..transports import MEMORY_URL
from .loading import load_app
from .output import CONTEXT_SETTINGS, EXIT_APP_FAILED, EXIT_BROKER_UNAVAILABLE
from .settings import PRECEDENCE, RUN_SETTINGS, effective_config, resolve_or_exit, run_settings

log = logging.getLogger("otter.cli")


@click.command(context_settings=CONTEXT_SETTINGS, epilog=PRECEDENCE)
@run_settings
def run(app_text: str | None, **options: Any) -> None:
    """Serve APP until SIGTERM or Ctrl-C, then stop gracefully and exit 0.

    APP is module:name, module, path/to/file.py or module:create_app('arg'); default: $OTTER_APP, else app.py
    here. In a module otter takes `app`, the only Otter instance, or what create_app() returns.

    On SIGTERM or Ctrl-C the worker stops taking messages, lets running handlers finish within the grace period,
    acks what finished and returns the rest to the queue. With --workers N, N processes share the RPC and task
    queues, and each of them receives every broadcast.
    """
    if resolve_or_exit({"RELOAD": options["reload"]})["RELOAD"]:  # before the app (and its config) is imported
        # No .pyc from this import: an edit of the same size within the same second would look unchanged to the
        # restarted worker, which would then run the old bytecode.
        sys.dont_write_bytecode = True
    target, app = load_app(app_text, options["debug"])
    config = effective_config(app, options)
    workers, reload = int(config["WORKERS"]), bool(config["RELOAD"])
    try:
        configure_logging(str(config["LOG_LEVEL"]), _name_process(app, target, workers, reload),
                          log_format=str(config["LOG_FORMAT"]), log_config=config["LOG_CONFIG"], service=app.name)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="'--log-config'") from None
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
    try:
        operations = PodOperations(config, workers)
    except OtterError as exc:
        log.error("%s", exc)
        return EXIT_APP_FAILED
    env.update(operations.env)
    supervisor = Supervisor(
        [sys.executable, "-m", "otter", "run"],
        workers=workers,
        grace=float(config["SHUTDOWN_GRACE"]),
        env=env,
        watch=watch,
        services=[operations.serving()] if operations.directory is not None else [],
        on_exit=operations.worker_exited,
    )
    try:
        return supervisor.run()
    except OtterError as exc:  # a port the supervisor could not serve
        log.error("%s", exc)
        return EXIT_APP_FAILED
    finally:
        operations.cleanup()


def _watched_dirs(target: AppTarget) -> list[Path]:
    dirs = {target.source_dir.resolve()}
    module = sys.modules.get(target.module.partition(".")[0])
    module_file = getattr(module, "__file__", None)
    if module_file:
        dirs.add(Path(module_file).resolve().parent)
    # A directory inside another watched one is watched already.
    return sorted(d for d in dirs if not any(d != other and d.is_relative_to(other) for other in dirs))
