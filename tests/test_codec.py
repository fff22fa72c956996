"""The codec: JSON only, a size limit checked before decoding, clear errors for everything else."""

from __future__ import annotations

from typing import Any

import pytest

from otter.codec import CONTENT_TYPE, DEFAULT_MAX_MESSAGE_SIZE, JsonCodec
from otter.config import resolve
from otter.errors import ConfigurationError, MessageError, MessageTooLarge


def test_round_trip() -> None:
    codec = JsonCodec()
    value = {"text": "otter ü", "n": [1, 2.5, None, True], "nested": {"a": {"b": []}}}
    assert codec.decode(codec.encode(value)) == value
    assert codec.content_type == CONTENT_TYPE == "application/json"


def test_default_limit_is_a_few_megabytes() -> None:
    assert 1024 * 1024 <= DEFAULT_MAX_MESSAGE_SIZE <= 16 * 1024 * 1024
    assert JsonCodec().max_size == DEFAULT_MAX_MESSAGE_SIZE


def test_size_limit_applies_before_decoding() -> None:
    codec = JsonCodec(max_size=16)
    assert codec.decode(b'"' + b"x" * 14 + b'"') == "x" * 14  # exactly at the limit
    with pytest.raises(MessageTooLarge, match="17 bytes"):
        codec.decode(b'"' + b"x" * 15 + b'"')
    # Garbage over the limit is refused as too large: the decoder never saw it.
    with pytest.raises(MessageTooLarge):
        codec.decode(b"\xff" * 100, "application/x-yaml")


@pytest.mark.parametrize(
    "content_type", [None, "", "application/json", "application/json; charset=utf-8", "TEXT/JSON", "application/x-json"]
)
def test_accepted_content_types(content_type: str | None) -> None:
    assert JsonCodec().decode(b"[1]", content_type) == [1]


@pytest.mark.parametrize(
    "content_type", ["application/x-yaml", "application/python-pickle", "application/msgpack", "text/plain"]
)
def test_other_content_types_are_refused(content_type: str) -> None:
    with pytest.raises(MessageError, match="unsupported content type"):
        JsonCodec().decode(b"[1]", content_type)


@pytest.mark.parametrize(
    "body",
    [
        b"\xff\xfe",  # not UTF-8
        b'"\xed\xa0\x80"',  # a UTF-8 encoded surrogate
        b"{'single': 'quotes'}",
        b"[1, 2",
        b"!!python/name:os.system",  # what kiwipy's YAML would have turned into a function
        b"",
    ],
)
def test_undecodable_bodies(body: bytes) -> None:
    with pytest.raises(MessageError, match="not valid JSON") as caught:
        JsonCodec().decode(body)
    assert not isinstance(caught.value, MessageTooLarge)


def test_deeply_nested_json_is_refused() -> None:
    depth = 100_000
    with pytest.raises(MessageError):
        JsonCodec(max_size=10 * depth).decode(b"[" * depth + b"]" * depth)


@pytest.mark.parametrize("value", [object(), {1, 2}, 2**70, {(1, 2): "tuple key"}, b"bytes"])
def test_unencodable_values(value: object) -> None:
    with pytest.raises(MessageError, match="cannot encode"):
        JsonCodec().encode(value)


def test_non_string_keys_are_encoded_as_strings() -> None:
    assert JsonCodec().encode({1: "a"}) == b'{"1":"a"}'


def test_a_body_one_byte_over_the_limit_is_refused_before_decoding() -> None:
    codec = JsonCodec(max_size=1000)
    at_limit = b'"' + b"a" * 998 + b'"'
    assert codec.decode(at_limit) == "a" * 998
    with pytest.raises(MessageTooLarge, match="1001 bytes is over the limit of 1000"):
        codec.decode(at_limit + b" ")  # valid JSON: only the size check can refuse it
    with pytest.raises(MessageTooLarge):
        codec.decode(b"[" * 1001)  # refused for its size, not parsed into a depth error
    assert issubclass(MessageTooLarge, MessageError)


# -- errors on the sender's side, before anything is sent ----------------------------------------------------------
def test_a_message_over_the_limit_is_refused_when_encoded() -> None:
    codec = JsonCodec(max_size=100)
    assert codec.encode("x" * 90)
    with pytest.raises(MessageTooLarge, match=r"the task body encodes to 209 bytes, over the limit of 100 .*MAX_MES"):
        codec.encode(["y" * 200, True], what="task body", payload="y" * 200)


class Opaque:
    def __repr__(self) -> str:
        return "<Opaque>"


@pytest.mark.parametrize(
    ("value", "payload", "match"),
    [
        pytest.param({"a": Opaque()}, None, r"the RPC request\['a'\] is a \S*test_codec\.Opaque \(<Opaque>\)",
                     id="a value inside a dict"),
        pytest.param([{"items": [1, Opaque()]}, True], {"items": [1, Opaque()]},
                     r"the RPC request\['items'\]\[1\] is a \S*test_codec\.Opaque", id="inside the envelope"),
        pytest.param(Opaque(), None, r"the RPC request itself is a \S*test_codec\.Opaque", id="the value itself"),
    ],
)
def test_an_unencodable_value_is_named_by_its_path_and_type(value: Any, payload: Any, match: str) -> None:
    kwargs = {} if payload is None else {"payload": payload}
    with pytest.raises(MessageError, match=match) as raised:
        JsonCodec().encode(value, what="RPC request", **kwargs)
    assert "cannot encode dict" not in str(raised.value) and "JSON_DEFAULT" in str(raised.value)


@pytest.mark.parametrize("number", [float("nan"), float("inf"), float("-inf")])
def test_nan_and_infinity_are_refused_not_turned_into_null(number: float) -> None:
    with pytest.raises(MessageError, match=rf"the task body\['price'\]\[0\] is {number}"):
        JsonCodec().encode([{"price": [number], "note": None}, True], what="task body",
                           payload={"price": [number], "note": None})
    assert JsonCodec().encode({"none": None, "fine": 1.5}) == b'{"none":null,"fine":1.5}'


def test_json_default_encodes_custom_types_and_is_read_from_config() -> None:
    from decimal import Decimal

    config = resolve({"MAX_MESSAGE_SIZE": 1000, "JSON_DEFAULT": "tests.test_codec.decimal_as_str"})
    codec = JsonCodec.from_config(config)
    assert codec.decode(codec.encode({"price": Decimal("1.50")})) == {"price": "1.50"}
    with pytest.raises(MessageError, match="JSON_DEFAULT did not handle it"):
        codec.encode({"x": Opaque()})
    for wrong in ("no.such:thing", 5):  # cannot be imported; not a function
        with pytest.raises(ConfigurationError, match=r"JSON_DEFAULT is .* \(from argument\); it must be a function"):
            resolve({"JSON_DEFAULT": wrong})


def decimal_as_str(value: Any) -> Any:
    from decimal import Decimal

    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(type(value).__name__)
