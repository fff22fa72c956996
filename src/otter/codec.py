"""Bytes on the wire <-> Python values: JSON (orjson), with a size limit enforced before decoding.

Never YAML or pickle: a message is data, not code. kiwipy programs that use a JSON encoder send no content type,
so a missing content type is read as JSON; any other content type is refused with a clear error.
"""

from __future__ import annotations

import math
import reprlib
from collections.abc import Callable, Mapping
from typing import Any

import orjson

from .errors import MessageError, MessageTooLarge
from .protocol import ACCEPTED_CONTENT_TYPES, CONTENT_TYPE

__all__ = ["CONTENT_TYPE", "DEFAULT_MAX_MESSAGE_SIZE", "JsonCodec"]

DEFAULT_MAX_MESSAGE_SIZE = 4 * 1024 * 1024


_UNSET: Any = object()
_OPTIONS = orjson.OPT_NON_STR_KEYS


class JsonCodec:
    """Encode with orjson; decode after checking size and content type. The size limit holds both ways: a message
    too large for the receiver is refused by its sender, before it is sent.

    ``json_default`` encodes types JSON has no place for (``Decimal``, your own classes), as orjson's ``default``:
    it returns something orjson can encode, or raises ``TypeError``. NaN and infinities are refused (orjson would
    write them as ``null``, a silent change of value).

    >>> codec = JsonCodec(max_size=1024)
    >>> codec.decode(codec.encode({"a": 1}))
    {'a': 1}
    """

    content_type = CONTENT_TYPE

    def __init__(
        self, max_size: int = DEFAULT_MAX_MESSAGE_SIZE, json_default: Callable[[Any], Any] | None = None
    ) -> None:
        self.max_size = max_size
        self.json_default = json_default

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> JsonCodec:
        """The codec of a resolved config (``otter.config.resolve``, which imports a dotted ``JSON_DEFAULT``)."""
        return cls(int(config.get("MAX_MESSAGE_SIZE", DEFAULT_MAX_MESSAGE_SIZE)), config.get("JSON_DEFAULT"))

    def encode(self, value: Any, *, what: str = "message", payload: Any = _UNSET) -> bytes:
        """``value`` as JSON bytes. ``payload`` is the part of ``value`` that is the user's (a task's body inside
        kiwipy's envelope), which an error names; ``what`` says what it is ("task body")."""
        try:
            data = orjson.dumps(value, default=self.json_default, option=_OPTIONS)
        except TypeError:
            raise MessageError(self._unencodable(value if payload is _UNSET else payload, what)) from None
        if b"null" in data and self._may_hold_non_finite(value, payload):
            found = _non_finite(value if payload is _UNSET else payload, "")
            if found is not None:
                path, number = found
                raise MessageError(f"cannot encode the {what} as JSON: {_where(path, what)} is {number}, which JSON "
                                   f"cannot hold (it would arrive as null); send None or a string instead")
        if len(data) > self.max_size:
            raise MessageTooLarge(
                f"the {what} encodes to {len(data)} bytes, over the limit of {self.max_size} bytes "
                f"(MAX_MESSAGE_SIZE, which the receiver enforces too): send a reference to the data instead"
            )
        return data

    def _may_hold_non_finite(self, value: Any, payload: Any) -> bool:
        """orjson writes NaN and infinities as null, so only a null can hide one. An envelope's own nulls (a
        broadcast's unset sender) say nothing of the payload: encoding the payload alone again, in C, is much
        cheaper than walking it in Python."""
        if payload is _UNSET or payload is value:
            return True
        return b"null" in orjson.dumps(payload, default=self.json_default, option=_OPTIONS)

    def _unencodable(self, value: Any, what: str) -> str:
        path, leaf = _first_unencodable(value, "", self.json_default)
        hint = ("JSON_DEFAULT did not handle it" if self.json_default is not None else
                "convert it first, or set JSON_DEFAULT to a function that does (for example Decimal to str)")
        return (f"cannot encode the {what} as JSON: {_where(path, what)} is a {type(leaf).__module__}."
                f"{type(leaf).__qualname__} ({_preview(leaf)}); {hint}")

    def decode(self, body: bytes, content_type: str | None = None) -> Any:
        if len(body) > self.max_size:
            raise MessageTooLarge(f"message of {len(body)} bytes is over the limit of {self.max_size} bytes")
        if content_type is not None and content_type.split(";", 1)[0].strip().lower() not in ACCEPTED_CONTENT_TYPES:
            raise MessageError(f"unsupported content type {content_type!r}: Otter reads only {CONTENT_TYPE}")
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise MessageError(f"body is not valid JSON: {exc}") from None


def _first_unencodable(value: Any, path: str, default: Callable[[Any], Any] | None) -> tuple[str, Any]:
    """The path to the first part of ``value`` orjson cannot encode (the error path only: it encodes piece by piece)."""
    if isinstance(value, Mapping):
        for key, item in value.items():
            try:
                orjson.dumps(item, default=default, option=_OPTIONS)
            except TypeError:
                return _first_unencodable(item, f"{path}[{key!r}]", default)
        return path, value  # a key orjson cannot take
    if isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            try:
                orjson.dumps(item, default=default, option=_OPTIONS)
            except TypeError:
                return _first_unencodable(item, f"{path}[{index}]", default)
    return path, value


def _non_finite(value: Any, path: str) -> tuple[str, float] | None:
    if isinstance(value, float):
        return None if math.isfinite(value) else (path, value)
    if isinstance(value, Mapping):
        items: Any = value.items()
    elif isinstance(value, (list, tuple)):
        items = enumerate(value)
    else:
        return None
    for key, item in items:
        found = _non_finite(item, f"{path}[{key!r}]" if isinstance(value, Mapping) else f"{path}[{key}]")
        if found is not None:
            return found
    return None


def _where(path: str, what: str) -> str:
    return f"the {what}{path}" if path else f"the {what} itself"


_PREVIEW = reprlib.Repr()
_PREVIEW.maxstring, _PREVIEW.maxother = 40, 40


def _preview(value: Any) -> str:
    try:
        return _PREVIEW.repr(value)
    except Exception:
        return "unprintable"
