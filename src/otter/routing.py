"""Routes (what handles which name) and broadcast subject filters.

Subject filters follow AMQP topic bindings: words are separated by dots, ``*`` matches exactly one word, ``#`` zero
or more, and the pattern is anchored at both ends. A broadcast without a subject matches no filter.

>>> SubjectFilter("message.*").matches("message.send"), SubjectFilter("message.*").matches("message.a.b")
(True, False)
"""

from __future__ import annotations

import difflib
import inspect
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, ClassVar, Literal

from .errors import ConfigurationError
from .retry import RETRY_OPTIONS
from .schedules import Periodic

__all__ = [
    "DERIVED_OPTIONS",
    "HANDLER_ARGUMENTS",
    "HOOK_ARGUMENTS",
    "ROUTE_OPTIONS",
    "BroadcastRoute",
    "Route",
    "RpcRoute",
    "SubjectFilter",
    "TaskRoute",
    "check_handler",
    "check_name",
    "check_options",
]

Handler = Callable[..., Any]
Kind = Literal["rpc", "task", "broadcast"]


class SubjectFilter:
    """One AMQP-topic style pattern, compiled once to an anchored regular expression."""

    __slots__ = ("_regex", "pattern")

    def __init__(self, pattern: str) -> None:
        if not isinstance(pattern, str) or not pattern:
            raise ConfigurationError(f"a broadcast filter must be a non-empty string, got {pattern!r}")
        self.pattern = pattern
        self._regex = _compile(pattern)

    def matches(self, subject: str | None) -> bool:
        return subject is not None and self._regex.fullmatch(subject) is not None

    @property
    def regex(self) -> str:
        """The pattern as a regular expression over the whole subject, valid in Python and in ECMA 262 (JSON Schema's
        ``pattern``, which is how ``otter.asyncapi`` documents the filter): one rule for matching and documenting."""
        return subject_regex(self.pattern)

    def __repr__(self) -> str:
        return f"SubjectFilter({self.pattern!r})"


def subject_regex(pattern: str) -> str:
    """The regular expression a subject must match in full for ``pattern`` (unanchored source)."""
    words = pattern.split(".")
    lead = 0
    while lead < len(words) and words[lead] == "#":
        lead += 1
    if lead == len(words):  # only '#': any subject, the empty one included
        return r"(?:[^.]*\.)*[^.]*"
    # Leading '#'s: zero or more whole words, each with its dot; every later word brings its own leading dot.
    parts = [r"(?:[^.]*\.)*" if lead else "", _word(words[lead])]
    for word in words[lead + 1 :]:
        parts.append(r"(?:\.[^.]*)*" if word == "#" else r"\." + _word(word))
    return "".join(parts)


def _word(word: str) -> str:
    return "[^.]*" if word == "*" else "".join("\\" + char if char in _SYNTAX else char for char in word)


# ECMA 262's syntax characters and '/': escaping them means the same in Python's re and in JSON Schema's regexes
# (re.escape would also escape '-', which an ECMA regex in unicode mode refuses).
_SYNTAX = frozenset("\\^$.|?*+()[]{}/")


@lru_cache(maxsize=256)
def _compile(pattern: str) -> re.Pattern[str]:
    return re.compile(subject_regex(pattern))


@dataclass(frozen=True)
class Route:
    """A registered handler; ``blueprint`` names the blueprint it came from, if any."""

    kind: ClassVar[Kind]
    name: str
    handler: Handler
    blueprint: str | None = None
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def is_async(self) -> bool:
        """An ``async def`` function, or an object whose ``__call__`` is one (a class-based handler)."""
        handler = self.handler
        return inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(type(handler).__call__)

    @property
    def schema(self) -> Any:
        return getattr(self.handler, "__otter_schema__", None)


@dataclass(frozen=True)
class RpcRoute(Route):
    kind: ClassVar[Kind] = "rpc"


@dataclass(frozen=True)
class TaskRoute(Route):
    kind: ClassVar[Kind] = "task"

    @property
    def is_default(self) -> bool:
        """Asked to share the default (nameless) task queue: ``add_task(..., default=True)``."""
        return self.options.get("default") is True

    @property
    def queue_type(self) -> str | None:
        """``add_task(..., queue_type="quorum")``; None: the app's ``TASK_QUEUE_TYPE``."""
        value = self.options.get("queue_type")
        return None if value is None else str(value)

    @property
    def opts_out_of_default(self) -> bool:
        """``add_task(..., default=False)``: never the default queue's owner, even as the app's only task."""
        return self.options.get("default") is False

    @property
    def periodic(self) -> Periodic | None:
        """Its schedule, for a task registered with ``add_periodic``; None for an ordinary task."""
        value = self.options.get("periodic")
        return value if isinstance(value, Periodic) else None


@dataclass(frozen=True)
class BroadcastRoute(Route):
    kind: ClassVar[Kind] = "broadcast"
    filters: tuple[SubjectFilter, ...] = ()

    def matches(self, subject: str | None) -> bool:
        return any(f.matches(subject) for f in self.filters)


# What an AMQP queue name may hold (pamqp's rule, less ' ' and '#', which mean something to topic bindings), with
# room left within AMQP's 255 bytes for the RPC queue prefix.
_NAME = re.compile(r"[A-Za-z0-9_.:@,/-]+")
MAX_NAME_LENGTH = 200


def check_name(name: Any, what: str) -> None:
    """Refuse an RPC or task name the broker could not use, before it gets there (same on every transport)."""
    if not isinstance(name, str) or not _NAME.fullmatch(name) or len(name) > MAX_NAME_LENGTH:
        raise ConfigurationError(
            f"{what} name must be 1 to {MAX_NAME_LENGTH} letters, digits or '-_.:@,/' "
            f"(it names an AMQP queue; no spaces, '*' or '#'): {name!r:.80}"
        )


def make_filters(patterns: str | Iterable[str]) -> tuple[SubjectFilter, ...]:
    if isinstance(patterns, str):
        patterns = [patterns]
    filters = tuple(SubjectFilter(p) for p in patterns)
    if not filters:
        raise ConfigurationError("add_broadcast needs at least one subject filter, for example ['message.*']")
    return filters


# The options each kind of route takes (add_rpc/add_task/add_broadcast's keyword arguments, add_route's options).
# add_route also takes the ones the decorators derive from their own arguments (DERIVED_OPTIONS): a broadcast's
# "filters", a periodic task's "periodic" (its schedule).
DERIVED_OPTIONS = frozenset({"filters", "periodic"})
ROUTE_OPTIONS: dict[str, frozenset[str]] = {
    "rpc": frozenset(),
    "task": frozenset({"default", "queue_type", "consumer_timeout", "max_priority", "rate_limit", "time_limit",
                       *RETRY_OPTIONS}),
    "broadcast": frozenset(),  # its filters are add_broadcast's argument (add_route's "filters" option)
}
# What the worker passes each kind of handler, positionally; and each hook.
HANDLER_ARGUMENTS: dict[str, tuple[str, ...]] = {
    "rpc": ("comm", "data"),
    "task": ("comm", "body"),
    "broadcast": ("comm", "body", "sender", "subject", "correlation_id"),
}
HOOK_ARGUMENTS: dict[str, tuple[str, ...]] = {
    "before_handler": ("ctx",),
    "after_handler": ("ctx", "result"),
    "errorhandler": ("ctx", "exc"),
}


def check_options(kind: str, name: str, options: Mapping[str, Any]) -> None:
    """Refuse an option the ``kind`` of route does not take (``max_retry=3``), naming the nearest one it does."""
    valid = ROUTE_OPTIONS[kind]
    for option in options:
        if option in valid:
            continue
        where = f"add_{kind}({name!r})"
        if not valid:
            raise ConfigurationError(f"{where} got the option {option!r}, but add_{kind} takes no options")
        nearest = difflib.get_close_matches(option, valid, n=1, cutoff=0.6)
        hint = f"did you mean {nearest[0]!r}? " if nearest else ""
        raise ConfigurationError(
            f"{where} got an unknown option {option!r}; {hint}(it takes: {', '.join(sorted(valid))})"
        )


def check_handler(role: str, handler: Any, arguments: tuple[str, ...], where: str = "") -> None:
    """Refuse a handler (or hook) that could not be called with ``arguments``, now rather than at the first message.

    Functions, ``async def`` functions, objects with ``__call__``, ``functools.partial`` and ``@use_args``-wrapped
    handlers (whose ``__wrapped__`` signature counts) are inspected; a callable with no signature to read (a builtin)
    is let through. ``role`` and ``where`` name it in the error: "the rpc handler" "for 'svc.echo'".
    """
    if not callable(handler):
        raise ConfigurationError(f"the {role}{where} is not callable: {handler!r}")
    try:
        signature = inspect.signature(handler)
    except (TypeError, ValueError):
        return
    try:
        signature.bind(*arguments)
    except TypeError as exc:
        wanted = ", ".join(arguments)
        label = getattr(handler, "__qualname__", None) or type(handler).__qualname__
        raise ConfigurationError(
            f"the {role} {label}{signature}{where} cannot be called with ({wanted}): {exc}; "
            f"define it as def {getattr(handler, '__name__', 'handler')}({wanted}): ..."
        ) from None
