"""An app for the CLI tests (tests/test_cli.py, tests/test_supervisor.py), served with ``otter run``.

It records the tasks and broadcasts it handled, and ``cli.seen`` returns that record, so a test can ask the running
service what happened. Exchange names come from ``OTTER_*`` variables; ``CLI_TASK_QUEUE`` names the task queue
(task queue names are global on a broker). The ``app.run()`` at the bottom must do nothing under ``otter run``.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

from marshmallow import fields

from otter import Otter
from otter.decorators import use_args

app = Otter("cli-service")
_seen: list[Any] = []
_seen_lock = threading.Lock()


def _record(*entry: Any) -> None:
    with _seen_lock:
        _seen.append(list(entry))


@app.add_rpc("cli.echo")
def echo(comm: Any, data: Any) -> Any:
    return data


@app.add_rpc("cli.pid")
def pid(comm: Any, data: Any) -> int:
    return os.getpid()


@app.add_rpc("cli.fail")
def fail(comm: Any, data: Any) -> None:
    raise ValueError("boom")


@app.add_rpc("cli.sleep")
def sleep(comm: Any, seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@app.add_rpc("cli.login")
@use_args({"email": fields.Email(required=True), "password": fields.Str(required=True)})
def login(comm: Any, data: dict[str, Any]) -> dict[str, Any]:
    return {"email": data["email"]}


@app.add_task(os.environ.get("CLI_TASK_QUEUE", "cli.record"))
def record(comm: Any, body: Any) -> None:
    _record("task", body)


@app.add_broadcast(["cli.news.*"])
def on_news(comm: Any, body: Any, sender: Any, subject: str, correlation_id: Any) -> None:
    _record("broadcast", subject, body, sender)


@app.add_rpc("cli.seen")
def seen(comm: Any, data: Any) -> list[Any]:
    with _seen_lock:
        return list(_seen)


app.run("amqp://guest:guest@127.0.0.1/", debug=True)  # ignored under `otter run`, as flask run does
