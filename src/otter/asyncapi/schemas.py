"""Payload schemas: a ``@use_args`` marshmallow schema as JSON Schema, and an example value of any JSON Schema.

The conversion is apispec's marshmallow plugin (``otter-mq[docs]``), asked for OpenAPI 3.1, whose Schema Objects
are JSON Schema: ``type: [string, "null"]`` rather than 3.0's ``nullable``, so they are valid AsyncAPI Schema Objects
(a superset of JSON Schema draft 7). Nested schemas become shared components, referenced as
``#/components/schemas/<Name>``, which is the same path in an AsyncAPI document; that also keeps a schema that
nests itself finite.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from ..errors import ConfigurationError

__all__ = ["ANY_JSON", "SchemaConverter", "example_of"]

# A handler without @use_args takes whatever JSON it is sent.
ANY_JSON: dict[str, Any] = {"description": "any JSON value (the handler has no @use_args schema)"}

# What component keys may not hold (^[\w\d.\-_]+$); channel keys appear in $ref paths, so they follow it too.
COMPONENT_KEY = re.compile(r"[^\w.\-]")
DOCS_EXTRA = "pip install 'otter-mq[docs]'"


class SchemaConverter:
    """Converts the marshmallow schemas of one document; ``components()`` holds the nested schemas they refer to."""

    def __init__(self) -> None:
        self._spec: Any = None
        self._converter: Any = None

    def convert(self, schema: Any, where: str) -> dict[str, Any]:
        """``schema`` (a marshmallow ``Schema`` instance, as ``@use_args`` keeps it) as JSON Schema; ``where`` names
        the route in an error."""
        converter = self._converter or self._start(where)
        try:
            converted: dict[str, Any] = converter.schema2jsonschema(schema)
        except Exception as exc:
            raise ConfigurationError(
                f"cannot describe the @use_args schema {type(schema).__name__} of {where}: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        if getattr(schema, "many", False):
            return {"type": "array", "items": converted}
        return converted

    def components(self) -> dict[str, Any]:
        if self._spec is None:
            return {}
        schemas: dict[str, Any] = self._spec.to_dict().get("components", {}).get("schemas", {})
        return schemas

    def _start(self, where: str) -> Any:
        try:
            from apispec import APISpec
            from apispec.ext.marshmallow import MarshmallowPlugin
        except ImportError:
            raise ConfigurationError(
                f"describing the @use_args schema of {where} needs apispec, which is not installed; {DOCS_EXTRA}"
            ) from None
        plugin = MarshmallowPlugin(schema_name_resolver=self._name)
        self._spec = APISpec("otter", "0", "3.1.0", plugins=[plugin])
        self._converter = plugin.converter
        return self._converter

    def _name(self, schema: Any) -> str:
        """A component name for a nested schema, unique in this document (apispec would warn and number it)."""
        cls = schema if isinstance(schema, type) else type(schema)
        base = cls.__name__
        if base.endswith("Schema") and len(base) > len("Schema"):
            base = base[: -len("Schema")]
        if base in ("Generated", "UseArgs"):  # Schema.from_dict's classes: a dict nested in a dict
            base = "Nested"
        base = COMPONENT_KEY.sub("_", base)
        taken = self._spec.components.schemas
        name, number = base, 1
        while name in taken:
            number += 1
            name = f"{base}{number}"
        return name


_FORMAT_EXAMPLES = {
    "email": "user@example.com",
    "date-time": "2026-01-01T12:00:00Z",
    "date": "2026-01-01",
    "time": "12:00:00",
    "uuid": "3fa85f64-5717-4562-b3fc-2c963f66afa6",
    "uri": "https://example.com/",
    "url": "https://example.com/",
    "ipv4": "192.0.2.1",
    "ipv6": "2001:db8::1",
}
_MAX_DEPTH = 6


def example_of(schema: Any, components: Mapping[str, Any], depth: int = 0,
               path: frozenset[str] = frozenset()) -> Any:
    """A plausible value for ``schema`` (its ``default``, first ``enum`` value, or one built from its type), to show
    next to it. ``$ref`` s are looked up in ``components``; a schema that nests itself ends where it may (an empty
    list, an optional property left out), and any recursion at a fixed depth."""
    if not isinstance(schema, Mapping) or depth > _MAX_DEPTH:
        return None
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/components/schemas/"):
        return example_of(components.get(ref.rsplit("/", 1)[1]), components, depth + 1, path | {ref})
    for key in ("const", "default"):
        if key in schema:
            return schema[key]
    if schema.get("examples"):
        return schema["examples"][0]
    if schema.get("enum"):
        return schema["enum"][0]
    for key in ("oneOf", "anyOf", "allOf"):
        if schema.get(key):
            return example_of(schema[key][0], components, depth + 1, path)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), None)
    if kind == "object" or "properties" in schema:
        required = set(schema.get("required", ()))
        return {name: example_of(sub, components, depth + 1, path) for name, sub in schema.get("properties", {}).items()
                if name in required or not _loops(sub, path)}
    if kind == "array":
        items = schema.get("items", {})
        if isinstance(items, list):
            return [example_of(item, components, depth + 1, path) for item in items]
        return [] if _loops(items, path) else [example_of(items, components, depth + 1, path)]
    if kind == "string":
        return _FORMAT_EXAMPLES.get(str(schema.get("format"))) or _text(schema)
    if kind in ("integer", "number"):
        return _number(schema, kind)
    if kind == "boolean":
        return True
    return None


def _loops(schema: Any, path: frozenset[str]) -> bool:
    """Whether ``schema`` (or the items of it, an array) refers back to a schema being built."""
    if not isinstance(schema, Mapping):
        return False
    if schema.get("$ref") in path:
        return True
    return schema.get("type") == "array" and _loops(schema.get("items"), path)


def _text(schema: Mapping[str, Any]) -> str:
    low, high = schema.get("minLength"), schema.get("maxLength")
    text = "string"
    if isinstance(low, int) and len(text) < low:
        text += "x" * (low - len(text))
    return text[:high] if isinstance(high, int) else text


def _number(schema: Mapping[str, Any], kind: str) -> int | float:
    low = schema.get("minimum", schema.get("exclusiveMinimum"))
    value = low if isinstance(low, (int, float)) else 0
    if "exclusiveMinimum" in schema and "minimum" not in schema:
        value += 1
    high = schema.get("maximum")
    if isinstance(high, (int, float)) and value > high:
        value = high
    return int(value) if kind == "integer" else value
