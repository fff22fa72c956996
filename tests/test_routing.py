"""Subject filters follow AMQP topic bindings exactly, and routes describe their handlers."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from otter.errors import ConfigurationError
from otter.routing import BroadcastRoute, RpcRoute, SubjectFilter, TaskRoute, make_filters


def topic_matches(pattern: list[str], words: list[str]) -> bool:
    """A reference for RabbitMQ's topic matching, word by word: '*' is one word, '#' zero or more."""
    if not pattern:
        return not words
    head, rest = pattern[0], pattern[1:]
    if head == "#":
        return any(topic_matches(rest, words[skip:]) for skip in range(len(words) + 1))
    if not words:
        return False
    return (head == "*" or head == words[0]) and topic_matches(rest, words[1:])


@pytest.mark.parametrize(
    ("pattern", "subject", "expected"),
    [
        ("message.*", "message.send", True),
        ("message.*", "message.a.b", False),
        ("message.*", "messages.x", False),
        ("message.*", "message", False),
        ("message.*", "xmessage.send", False),
        ("message.send", "message.send", True),
        ("message.send", "message.sender", False),
        ("*", "one", True),
        ("*", "one.two", False),
        ("*.*", "one.two", True),
        ("#", "anything.at.all", True),
        ("#", "one", True),
        ("#.end", "end", True),
        ("#.end", "a.b.end", True),
        ("#.end", "end.x", False),
        ("#.end", "theend", False),
        ("a.#.z", "a.z", True),
        ("a.#.z", "a.b.z", True),
        ("a.#.z", "a.b.c.z", True),
        ("a.#.z", "a.b", False),
        ("a.#.z", "a.zz", False),
        ("a.#", "a", True),
        ("a.#", "a.b.c", True),
        ("a.#", "ab", False),
        ("a.#", "b.a", False),
        ("#.b.#", "b", True),
        ("#.b.#", "a.b.c", True),
        ("#.b.#", "a.c", False),
        ("a.*.#", "a", False),
        ("a.*.#", "a.b", True),
        ("a.*.#", "a.b.c.d", True),
    ],
)
def test_topic_semantics(pattern: str, subject: str, expected: bool) -> None:
    assert SubjectFilter(pattern).matches(subject) is expected
    assert topic_matches(pattern.split("."), subject.split(".")) is expected  # the reference agrees


@pytest.mark.parametrize(
    ("pattern", "subject", "expected"),
    [
        ("a+b.c", "a+b.c", True),
        ("a+b.c", "aab.c", False),
        ("(x|y).z", "(x|y).z", True),
        ("(x|y).z", "x.z", False),
        ("price.$", "price.$", True),
        ("v[12].*", "v1.get", False),
        ("v[12].*", "v[12].get", True),
        ("a\\d", "a\\d", True),
        ("a\\d", "a1", False),
        ("^a", "^a", True),
    ],
)
def test_regex_metacharacters_are_literal(pattern: str, subject: str, expected: bool) -> None:
    assert SubjectFilter(pattern).matches(subject) is expected


@pytest.mark.parametrize("pattern", ["#", "*", "a.*", "a", "#.a"])
def test_no_subject_matches_no_filter(pattern: str) -> None:
    assert SubjectFilter(pattern).matches(None) is False


words = st.sampled_from(["a", "b", "c", ""])


@given(
    pattern=st.lists(st.sampled_from(["a", "b", "*", "#"]), min_size=1, max_size=5),
    subject=st.lists(words, min_size=1, max_size=6),
)
def test_filter_agrees_with_the_reference(pattern: list[str], subject: list[str]) -> None:
    assert SubjectFilter(".".join(pattern)).matches(".".join(subject)) is topic_matches(pattern, subject)


@pytest.mark.parametrize("pattern", ["", None, 5])
def test_invalid_filters_are_refused(pattern: object) -> None:
    with pytest.raises(ConfigurationError):
        SubjectFilter(pattern)  # type: ignore[arg-type]


def test_make_filters() -> None:
    assert [f.pattern for f in make_filters("a.*")] == ["a.*"]
    assert [f.pattern for f in make_filters(["a.*", "b.#"])] == ["a.*", "b.#"]
    with pytest.raises(ConfigurationError, match="at least one"):
        make_filters([])
    assert repr(SubjectFilter("a.*")) == "SubjectFilter('a.*')"


def handler(comm: object, data: object) -> object:
    return data


async def async_handler(comm: object, data: object) -> object:
    return data


def test_routes_describe_their_handlers() -> None:
    rpc = RpcRoute("svc.echo", handler)
    assert (rpc.kind, rpc.name, rpc.is_async, rpc.schema, rpc.blueprint) == ("rpc", "svc.echo", False, None, None)
    assert RpcRoute("svc.echo", async_handler).is_async
    assert TaskRoute("t", handler, options={"default": True}).is_default
    assert not TaskRoute("t", handler).is_default
    route = BroadcastRoute("a.*,b.#", handler, filters=make_filters(["a.*", "b.#"]))
    assert route.kind == "broadcast"
    assert route.matches("a.x") and route.matches("b") and not route.matches("c") and not route.matches(None)
