"""Bytes on the wire <-> Python values: JSON (orjson), with a size limit enforced before decoding.

Never YAML or pickle: a message is data, not code. kiwipy programs that use a JSON encoder send no content type,
so a missing content type is read as JSON; any other content type is refused with a clear error.
"""

from __future__ import annotations

from typing import Any

import orjson

from .errors import MessageError, MessageTooLarge
from .protocol import ACCEPTED_CONTENT_TYPES, CONTENT_TYPE

__all__ = ["CONTENT_TYPE", "DEFAULT_MAX_MESSAGE_SIZE", "JsonCodec"]

DEFAULT_MAX_MESSAGE_SIZE = 4 * 1024 * 1024


class JsonCodec:
    """Encode with orjson; decode after checking size and content type.

    >>> codec = JsonCodec(max_size=1024)
    >>> codec.decode(codec.encode({"a": 1}))
    {'a': 1}
    """

    content_type = CONTENT_TYPE

    def __init__(self, max_size: int = DEFAULT_MAX_MESSAGE_SIZE) -> None:
        self.max_size = max_size

    def encode(self, value: Any) -> bytes:
        try:
            return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS)
        except TypeError as exc:
            raise MessageError(f"cannot encode {type(value).__name__} as JSON: {exc}") from None

    def decode(self, body: bytes, content_type: str | None = None) -> Any:
        if len(body) > self.max_size:
            raise MessageTooLarge(f"message of {len(body)} bytes is over the limit of {self.max_size} bytes")
        if content_type is not None and content_type.split(";", 1)[0].strip().lower() not in ACCEPTED_CONTENT_TYPES:
            raise MessageError(f"unsupported content type {content_type!r}: Otter reads only {CONTENT_TYPE}")
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise MessageError(f"body is not valid JSON: {exc}") from None
