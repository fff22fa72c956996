"""``@use_args``: validate a handler's data with marshmallow before the handler runs.

>>> @app.add_rpc("auth.login")
... @use_args({"email": fields.Email(required=True)})
... def login(comm, data): ...
A failure raises ``otter.ValidationError`` with marshmallow's field messages; the caller gets the same error.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Literal, TypeVar, cast

from .errors import ConfigurationError, ValidationError

if TYPE_CHECKING:  # imported when use_args is used: ``import otter`` stays fast (marshmallow takes ~30 ms)
    import marshmallow

    SchemaLike = marshmallow.Schema | type[marshmallow.Schema] | Mapping[str, Any]

__all__ = ["use_args"]

F = TypeVar("F", bound=Callable[..., Any])


def use_args(schema: SchemaLike, *, unknown: Literal['exclude', 'include', 'raise'] | None = None) -> Callable[[F], F]:
    """Load the handler's data argument (the one after ``comm``) through ``schema``.

    ``schema`` is a marshmallow ``Schema`` class or instance, or a dict of fields. ``unknown`` is marshmallow's
    policy for unknown fields (``RAISE`` by default).
    """
    import marshmallow

    loader = _as_schema(schema, unknown)

    def decorator(handler: F) -> F:
        def validate(data: Any) -> Any:
            try:
                return loader.load(data)
            except marshmallow.ValidationError as exc:
                raise ValidationError(exc.messages) from None

        if inspect.iscoroutinefunction(handler):

            @functools.wraps(handler)
            async def async_wrapper(comm: Any, data: Any, *args: Any, **kwargs: Any) -> Any:
                return await handler(comm, validate(data), *args, **kwargs)

            wrapper: Any = async_wrapper
        else:

            @functools.wraps(handler)
            def wrapper(comm: Any, data: Any, *args: Any, **kwargs: Any) -> Any:
                return handler(comm, validate(data), *args, **kwargs)

        wrapper.__otter_schema__ = loader
        return cast(F, wrapper)

    return decorator


def _as_schema(schema: SchemaLike, unknown: Literal['exclude', 'include', 'raise'] | None) -> marshmallow.Schema:
    import marshmallow

    if isinstance(schema, marshmallow.Schema):
        instance = schema
    elif isinstance(schema, type) and issubclass(schema, marshmallow.Schema):
        instance = schema()
    elif isinstance(schema, Mapping):
        instance = marshmallow.Schema.from_dict(dict(schema), name="UseArgsSchema")()
    else:
        raise ConfigurationError(f"use_args takes a marshmallow Schema or a dict of fields, got {schema!r}")
    if unknown is not None:
        instance.unknown = unknown
    return instance
