"""``otter dashboard``: serve the live web dashboard (``otter.dashboard``) for the services on one broker."""

from __future__ import annotations

import socket
import sys

import click

from ..config import redact_url
from ..errors import ConfigurationError
from .output import CONTEXT_SETTINGS, EXIT_APP_FAILED, quiet_logging
from .settings import BROKER_OPTION, broker_config

__all__ = ["dashboard"]

EXIT_USAGE = 2


@click.command(context_settings=CONTEXT_SETTINGS)
@BROKER_OPTION
@click.option("--host", default="127.0.0.1", show_default=True,
              help="The address to listen on. Another than loopback needs a token (or --insecure).")
@click.option("--port", "-p", type=click.IntRange(0, 65535), default=8089, show_default=True,
              help="The port (0: any free one).")
@click.option("--token", envvar="OTTER_DASHBOARD_TOKEN", metavar="TOKEN",
              help="Protect every page and endpoint with this token [env OTTER_DASHBOARD_TOKEN, which keeps it out "
                   "of the process list].")
@click.option("--insecure", is_flag=True,
              help="Allow a non-loopback --host without a token (when a proxy in front of it checks who comes in).")
@click.option("--interval", type=click.FloatRange(min=0.2), default=1.0, show_default=True, metavar="SECONDS",
              help="How often the live figures refresh.")
def dashboard(broker_url: str | None, host: str, port: int, token: str | None, insecure: bool,
              interval: float) -> None:
    """Serve a web page that shows the services on the broker and acts on them, until Ctrl-C.

    It shows every running service and replica (through Otter's discovery), each route's rate, error rate and
    p50/p99 latency, live; the dead-letter queue, with replay and purge after a confirmation step; and a form to
    call an RPC. It binds 127.0.0.1 unless told otherwise; --token protects it when exposed. The broker's
    password never reaches the page. Needs pip install 'otter-mq[dashboard]'.
    """
    try:
        import uvicorn

        from ..dashboard import DashboardSettings, create_app
        from ..dashboard.security import check_bind
    except ImportError as exc:
        click.echo(f"Error: otter dashboard needs its extra ({exc.name} is missing): "
                   "pip install 'otter-mq[dashboard]'", err=True)
        sys.exit(EXIT_USAGE)
    quiet_logging()
    config = broker_config(broker_url)
    try:
        check_bind(host, token, insecure)
    except ConfigurationError as exc:
        raise click.UsageError(str(exc)) from None
    url = str(config["BROKER_URL"])
    settings = DashboardSettings(url=url, config=config, host=host, token=token, interval=interval)
    try:
        listener = socket.create_server((host.strip("[]"), port), family=_family(host))
    except OSError as exc:
        click.echo(f"Error: cannot listen on {host}:{port}: {exc.strerror or exc}; choose another with --port "
                   "(--port 0 takes any free one)", err=True)
        sys.exit(EXIT_APP_FAILED)
    shown_host = f"[{host.strip('[]')}]" if ":" in host else host
    protected = "token required" if token else "no token"
    click.echo(f"Otter dashboard on http://{shown_host}:{listener.getsockname()[1]}/ ({protected}; broker "
               f"{redact_url(url)}); Ctrl-C to stop", err=True)
    server = uvicorn.Server(uvicorn.Config(create_app(settings), log_level="warning", access_log=False,
                                           timeout_graceful_shutdown=2, lifespan="on"))
    server.run(sockets=[listener])


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET
