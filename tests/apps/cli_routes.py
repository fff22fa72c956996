"""An app for ``otter routes`` (tests/test_cli.py): a blueprint with a prefix, a schema class, a dict schema, a
default task, an async handler, periodic tasks and broadcast filters. Its config also feeds ``otter config``'s
precedence test."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from marshmallow import Schema, fields

from otter import Blueprint, Otter
from otter.decorators import use_args


class LoginSchema(Schema):
    email = fields.Email(required=True)
    password = fields.Str(required=True)
    remember = fields.Bool()


accounts = Blueprint("accounts")


@accounts.add_rpc("login")
@use_args(LoginSchema)
def login(comm: Any, data: dict[str, Any]) -> dict[str, Any]:
    return {"email": data["email"]}


@accounts.add_task("cleanup")
async def cleanup(comm: Any, body: Any) -> None:
    return None


@accounts.add_periodic("purge", cron="30 3 * * mon-fri", tz="Europe/Paris")
def purge(comm: Any, tick: Any) -> None:
    return None


def create_app() -> Otter:
    app = Otter("routes-demo")
    app.config.from_mapping(CONCURRENCY=3, SHUTDOWN_GRACE=7.5, BROKER_URL="amqp://svc:hunter2@broker.invalid/")

    @app.add_rpc("math.add")
    @use_args({"a": fields.Int(required=True), "b": fields.Int(load_default=0)})
    def add(comm: Any, data: dict[str, int]) -> int:
        return data["a"] + data["b"]

    @app.add_task("mail.send", default=True)
    def send_mail(comm: Any, body: Any) -> None:
        return None

    @app.add_periodic("stats.flush", every=timedelta(minutes=5), missed="all")
    def flush_stats(comm: Any, tick: Any) -> None:
        return None

    @app.add_broadcast(["orders.*", "audit.#"])
    def on_event(comm: Any, body: Any, sender: Any, subject: str, correlation_id: Any) -> None:
        return None

    app.register_blueprint(accounts, name_prefix="accounts")
    return app
