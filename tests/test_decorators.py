"""``@use_args``: marshmallow validation before the handler, with any kind of schema, sync or async."""

from __future__ import annotations

import asyncio
import inspect
from typing import Any

import marshmallow
import pytest
from marshmallow import fields, validate

from otter import Otter
from otter.decorators import use_args
from otter.errors import ConfigurationError, ValidationError

LOGIN_ARGS = {
    "password": fields.Str(required=True, validate=validate.Length(min=8)),
    "email": fields.Email(required=True),
}
GOOD = {"email": "otter@example.com", "password": "long enough"}
BAD = {"email": "not-an-email", "password": "short"}


class LoginSchema(marshmallow.Schema):
    password = fields.Str(required=True, validate=validate.Length(min=8))
    email = fields.Email(required=True)


@pytest.mark.parametrize("schema", [LOGIN_ARGS, LoginSchema, LoginSchema()], ids=["dict", "class", "instance"])
def test_validates_before_the_handler(schema: Any) -> None:
    calls: list[Any] = []

    @use_args(schema)
    def login(comm: Any, data: dict[str, Any]) -> dict[str, Any]:
        calls.append(data)
        return {"args": data}

    assert login("comm", GOOD) == {"args": GOOD}
    with pytest.raises(ValidationError) as caught:
        login("comm", BAD)
    assert set(caught.value.messages) == {"email", "password"}
    assert calls == [GOOD]  # the invalid call never reached the handler
    assert isinstance(login.__otter_schema__, marshmallow.Schema)  # type: ignore[attr-defined]
    assert login.__name__ == "login"


def test_async_handler_stays_async() -> None:
    @use_args(LOGIN_ARGS)
    async def login(comm: Any, data: dict[str, Any]) -> dict[str, Any]:
        await asyncio.sleep(0)
        return {"args": data}

    assert inspect.iscoroutinefunction(login)
    assert asyncio.run(login(None, GOOD)) == {"args": GOOD}
    with pytest.raises(ValidationError) as caught:
        asyncio.run(login(None, {"email": "otter@example.com"}))
    assert caught.value.messages == {"password": ["Missing data for required field."]}


def test_loads_values_and_passes_other_arguments_through() -> None:
    @use_args({"count": fields.Int(required=True), "when": fields.Date()})
    def handler(comm: Any, data: dict[str, Any], *extra: Any, **named: Any) -> Any:
        return comm, data, extra, named

    comm, data, extra, named = handler("c", {"count": "3", "when": "2024-01-02"}, 1, key=2)
    assert comm == "c" and extra == (1,) and named == {"key": 2}
    assert data["count"] == 3 and data["when"].isoformat() == "2024-01-02"


def test_unknown_fields() -> None:
    strict = use_args({"a": fields.Int()})(lambda comm, data: data)
    with pytest.raises(ValidationError) as caught:
        strict(None, {"a": 1, "b": 2})
    assert set(caught.value.messages) == {"b"}
    lenient = use_args({"a": fields.Int()}, unknown=marshmallow.EXCLUDE)(lambda comm, data: data)
    assert lenient(None, {"a": 1, "b": 2}) == {"a": 1}


def test_non_mapping_data_is_a_validation_error() -> None:
    handler = use_args(LOGIN_ARGS)(lambda comm, data: data)
    with pytest.raises(ValidationError):
        handler(None, "just a string")


@pytest.mark.parametrize("schema", [None, "LoginSchema", [("email", fields.Email())], int])
def test_refuses_what_is_not_a_schema(schema: Any) -> None:
    with pytest.raises(ConfigurationError, match="marshmallow Schema or a dict"):
        use_args(schema)


def test_route_exposes_the_schema() -> None:
    app = Otter()

    @app.add_rpc("auth.login")
    @use_args(LoginSchema)
    def login(comm: Any, data: dict[str, Any]) -> dict[str, Any]:
        return {"args": data}

    [route] = app.routes
    assert isinstance(route.schema, LoginSchema)
    assert route.handler is login
