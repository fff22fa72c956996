"""``otter docs``: the app's AsyncAPI 3.0 document, printed, written to a file, or served as an HTML page.

The server is the standard library's: the page is rendered once at start, from the document, and needs nothing
else, so it works without a network. It listens on 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import http.server
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import click

from ..errors import ConfigurationError
from .loading import load_app
from .output import CONTEXT_SETTINGS, EXIT_APP_FAILED
from .settings import BROKER_OPTION, resolve_or_exit

__all__ = ["docs"]


@click.command(context_settings=CONTEXT_SETTINGS)
@click.argument("app_text", metavar="[APP]", required=False)
@click.option("--format", "-f", "fmt", type=click.Choice(["yaml", "json", "html"]), default="yaml", show_default=True,
              help="The document as YAML or JSON, or the HTML page --serve shows.")
@click.option("--output", "-o", type=click.Path(dir_okay=False, writable=True, path_type=Path),
              help="Write to this file instead of standard output.")
@BROKER_OPTION
@click.option("--app-version", default="0.0.0", show_default=True, help="The document's info.version.")
@click.option("--serve", is_flag=True, help="Serve the HTML page (and the document as /asyncapi.json and "
              "/asyncapi.yaml) until Ctrl-C.")
@click.option("--host", default="127.0.0.1", show_default=True, help="With --serve: the address to listen on.")
@click.option("--port", "-p", type=click.IntRange(0, 65535), default=8000, show_default=True,
              help="With --serve: the port (0: any free one).")
def docs(app_text: str | None, fmt: str, output: Path | None, broker_url: str | None, app_version: str,
         serve: bool, host: str, port: int) -> None:
    """Print APP's AsyncAPI 3.0 document: every RPC (request and reply), task queue and broadcast filter, with
    AMQP bindings and the payload schemas of its @use_args handlers.

    Names on the wire (exchanges, queues, RPC_QUEUE_PREFIX, TASK_QUEUE_TYPE...) are APP's effective config, as
    `otter run` would use it; the servers come from --broker or BROKER_URL (credentials are never shown).
    Payload schemas need apispec: pip install 'otter-mq[docs]'.
    """
    from ..asyncapi import document, dumps, render_html

    _, app = load_app(app_text)
    config = resolve_or_exit({"BROKER_URL": broker_url}, app.config)
    try:
        doc = document(app, config, version=app_version)
        if serve:
            texts = {"yaml": dumps(doc, "yaml"), "json": dumps(doc, "json")}
            page = render_html(doc, downloads=True)
        else:
            text = render_html(doc) if fmt == "html" else dumps(doc, fmt)
    except ConfigurationError as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(EXIT_APP_FAILED)
    if serve:
        _serve(page, texts, host, port)
    elif output is not None:
        output.write_text(text, encoding="utf-8")
        click.echo(f"wrote the AsyncAPI document of {app.name!r} to {output}", err=True)
    else:
        click.echo(text, nl=False)


def _serve(page: str, texts: dict[str, str], host: str, port: int) -> None:
    files = {
        "/": (page, "text/html; charset=utf-8"),
        "/index.html": (page, "text/html; charset=utf-8"),
        "/asyncapi.json": (texts["json"], "application/json"),
        "/asyncapi.yaml": (texts["yaml"], "application/yaml; charset=utf-8"),
    }

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            found = files.get(self.path.split("?", 1)[0])
            body, content_type = (found[0].encode("utf-8"), found[1]) if found else (b"not found\n", "text/plain")
            self.send_response(200 if found else 404)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            return None  # one line per request would bury the address line

    try:
        server = http.server.ThreadingHTTPServer((host, port), Handler)
    except OSError as exc:
        click.echo(f"Error: cannot listen on {host}:{port}: {exc.strerror or exc}; choose another with --port "
                   f"(--port 0 takes any free one)", err=True)
        sys.exit(EXIT_APP_FAILED)
    shown_host = f"[{host}]" if ":" in host else host
    click.echo(f"Serving the AsyncAPI page on http://{shown_host}:{server.server_address[1]}/ (Ctrl-C to stop)",
               err=True)
    stopping = threading.Event()

    def stop(*_: Any) -> None:
        if not stopping.is_set():
            stopping.set()
            threading.Thread(target=server.shutdown, daemon=True).start()

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        server.server_close()
