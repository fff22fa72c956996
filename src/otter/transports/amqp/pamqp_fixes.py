"""Make pamqp (aiormq's AMQP codec, 3.3) survive the messages other AMQP clients may send.

Without this, one hostile or merely foreign message hurts a service:

- a short string that is not UTF-8 (a content type, correlation id, routing key or header name: Java and Go clients
  send bytes there) raises ``UnicodeDecodeError`` in aiormq's frame reader, which closes the whole connection; the
  robust connection reconnects, the broker delivers the same message again, and the service crash-loops;
- a long string header that is not UTF-8 decodes to ``bytes``, which pamqp cannot encode, and an integer header in
  -128..-1 is encoded as an *unsigned* octet and raises: so Otter could not dead-letter or retry such a message.

``apply()`` replaces the few pamqp functions involved with versions that differ only where the originals raise:
short strings decode with U+FFFD replacement characters, ``bytes`` encode as a byte array, small negative integers
as a signed octet. It is idempotent and process-wide (pamqp has no per-connection codec to configure).
"""

from __future__ import annotations

import struct
from typing import Any

import pamqp.decode
import pamqp.encode
from pamqp import common

__all__ = ["apply"]

_SIGNED_OCTET = struct.Struct(">b")


def _short_str(value: bytes) -> tuple[int, str]:
    try:
        length = common.Struct.byte.unpack(value[0:1])[0]
    except (TypeError, struct.error):
        raise ValueError("Could not unpack short string value") from None
    return length + 1, value[1:length + 1].decode("utf-8", "replace")


def _field_table(value: bytes) -> tuple[int, dict[str, Any]]:
    try:
        length = common.Struct.integer.unpack(value[0:4])[0]
        offset = 4
        data: dict[str, Any] = {}
        end = offset + length
        while offset < end:
            key_length = common.Struct.byte.unpack_from(value, offset)[0]
            offset += 1
            key = value[offset:offset + key_length].decode("utf-8", "replace")
            offset += key_length
            consumed, result = pamqp.decode.embedded_value(value[offset:])
            offset += consumed
            data[key] = result
        return end, data
    except TypeError:
        raise ValueError("Could not unpack data") from None


_original_table_integer = pamqp.encode.table_integer
_original_encode_table_value = pamqp.encode.encode_table_value


def _table_integer(value: int) -> bytes:
    if -128 <= value < 0:
        return b"b" + _SIGNED_OCTET.pack(value)
    return _original_table_integer(value)


def _encode_table_value(value: Any) -> bytes:
    if isinstance(value, bytes):
        return b"x" + pamqp.encode.byte_array(bytearray(value))
    return _original_encode_table_value(value)


def apply() -> None:
    """Install the fixes (once)."""
    if getattr(pamqp.decode, "_otter_fixed", False):
        return
    pamqp.decode.short_str = _short_str
    pamqp.decode.field_table = _field_table
    pamqp.decode.METHODS["shortstr"] = _short_str
    pamqp.decode.METHODS["table"] = _field_table
    pamqp.decode.TABLE_MAPPING[b"F"] = _field_table
    pamqp.encode.table_integer = _table_integer
    pamqp.encode.encode_table_value = _encode_table_value
    pamqp.decode._otter_fixed = True  # type: ignore[attr-defined]
