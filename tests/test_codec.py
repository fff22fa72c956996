"""The codec: JSON only, a size limit checked before decoding, clear errors for everything else."""

from __future__ import annotations

import pytest

from otter.codec import CONTENT_TYPE, DEFAULT_MAX_MESSAGE_SIZE, JsonCodec
from otter.errors import MessageError, MessageTooLarge


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
