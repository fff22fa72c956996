"""An app for ``otter docs`` and ``otter.asyncapi`` (tests/test_asyncapi.py): RPCs with and without ``@use_args``
(nested, listed and self-nesting schemas, required fields, a dict schema), named tasks, the default task queue, a
quorum task with retries, broadcast filters, and a blueprint registered with a prefix; wire names from its config."""

from __future__ import annotations

from typing import Any

from marshmallow import Schema, fields, validate

from otter import Blueprint, Otter
from otter.decorators import use_args


class AddressSchema(Schema):
    street = fields.Str(required=True)
    city = fields.Str(required=True)
    zip = fields.Str(allow_none=True)


class ItemSchema(Schema):
    sku = fields.Str(required=True, validate=validate.Length(min=1))
    quantity = fields.Int(required=True, validate=validate.Range(min=1, max=100))


class OrderSchema(Schema):
    email = fields.Email(required=True)
    ship_to = fields.Nested(AddressSchema, required=True)
    items = fields.List(fields.Nested(ItemSchema), required=True)
    express = fields.Bool(load_default=False)
    placed_at = fields.DateTime()
    channel = fields.Str(validate=validate.OneOf(["web", "shop"]))


class TreeSchema(Schema):
    label = fields.Str(required=True)
    children = fields.List(fields.Nested(lambda: TreeSchema()))


accounts = Blueprint("accounts")


@accounts.add_rpc("login")
@use_args({"user": fields.Str(required=True), "password": fields.Str(required=True, validate=validate.Length(min=8))})
def login(comm: Any, data: dict[str, Any]) -> dict[str, Any]:
    """Log a user in <and> return a token."""
    return {"token": "t"}


@accounts.add_broadcast("accounts.#")
def on_account_event(comm: Any, body: Any, sender: Any, subject: str, correlation_id: Any) -> None:
    return None


app = Otter("shop", MESSAGE_EXCHANGE="shop.messages", TASK_EXCHANGE="shop.tasks", DEFAULT_TASK_QUEUE="shop.default",
            RPC_QUEUE_PREFIX="shop.rpc.", DEAD_LETTER_QUEUE="shop.dead", TASK_MESSAGE_TTL=3600,
            BROKER_URL="amqp://svc:hunter2@rabbit.internal:5673/shop")


@app.add_rpc("orders.place")
@use_args(OrderSchema)
def place_order(comm: Any, order: dict[str, Any]) -> dict[str, Any]:
    """Place an order.

    The reply holds the order's number.
    """
    return {"number": 1}


@app.add_rpc("orders.tree")
@use_args(TreeSchema)
async def tree(comm: Any, data: dict[str, Any]) -> int:
    return 0


@app.add_rpc("echo")
def echo(comm: Any, data: Any) -> Any:
    return data


@app.add_task("mail.send", default=True)
@use_args({"to": fields.Email(required=True), "subject": fields.Str(load_default="")})
def send_mail(comm: Any, mail: dict[str, Any]) -> None:
    return None


@app.add_task("reports.build", queue_type="quorum", max_retries=3, backoff=2.0)
def build_report(comm: Any, body: Any) -> None:
    return None


@app.add_broadcast(["orders.*", "audit.#"])
def on_order_event(comm: Any, body: Any, sender: Any, subject: str, correlation_id: Any) -> None:
    return None


app.register_blueprint(accounts, name_prefix="accounts")
