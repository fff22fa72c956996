"""Whether the fast path fits the aio-pika, aiormq and pamqp installed; decided at each connect, never at import.

The fast path (``fast``, ``frames``, ``aiormq_fixes``) writes aiormq's channel bookkeeping and replaces aiormq
functions (one of them, on both paths, tells a consumer the broker cancelled, so that it comes back: ``cancels``);
``pamqp_fixes`` replaces pamqp functions. Both were written against one release series each (``SERIES``), and
a patch release may rename what they touch. So before applying anything, the fence checks the
installed versions and every private attribute the patches replace or use (its presence and, for functions, its
parameters). On a mismatch that part is not applied: aiormq's falls back to aio-pika's public path (``public``),
pamqp's is simply left out, and one warning line says which version was found and what is slower. Slower, never
broken: ``.ci/newest-deps`` runs the contract suite on the newest versions the pins allow.

``failover`` (moving to the next broker of a ``;``-list on a lost connection) overrides one aio-pika method and
relies on aio-pika reporting failed attempts to it: ``failover_problems`` checks both, and on a mismatch the
connection stays with one broker (as before), with one warning.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import importlib.metadata
import inspect
import logging
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["SERIES", "Check", "apply", "attribute_problems", "choose", "failover_problems", "installed_versions",
           "version_problems"]

log = logging.getLogger("otter.amqp")

# The release series each part was written for (pyproject.toml pins the same).
SERIES: Mapping[str, str] = {"aio-pika": "9.5", "aiormq": "6.9", "pamqp": "3.3"}
AIORMQ_PART, PAMQP_PART = ("aio-pika", "aiormq"), ("pamqp",)


@dataclasses.dataclass(frozen=True)
class Check:
    """``owner.name`` must exist; if ``params`` is given it must be a function with exactly these parameters."""

    owner: Any
    name: str
    params: tuple[str, ...] | None = None


@functools.lru_cache(maxsize=1)
def installed_versions() -> dict[str, str]:
    found = {}
    for name in SERIES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def version_problems(versions: Mapping[str, str], names: Iterable[str]) -> list[str]:
    """``"aiormq 7.0.1 (written for 6.9.x)"`` for each of ``names`` whose version is not in its ``SERIES``."""
    problems = []
    for name in names:
        found = versions.get(name, "not installed")
        if found.split(".")[:2] != SERIES[name].split("."):
            problems.append(f"{name} {found} (written for {SERIES[name]}.x)")
    return problems


def attribute_problems(checks: Iterable[Check]) -> list[str]:
    """What is missing or has changed shape, e.g. ``"aiormq Channel._read_content(self, frame, header)"``."""
    problems = []
    for check in checks:
        owner_name = getattr(check.owner, "__qualname__", getattr(check.owner, "__name__", repr(check.owner)))
        where = f"{owner_name}.{check.name}"
        if not hasattr(check.owner, check.name):
            problems.append(f"{where} is missing")
            continue
        if check.params is None:
            continue
        try:
            found = tuple(inspect.signature(getattr(check.owner, check.name)).parameters)
        except (TypeError, ValueError):
            found = ()
        if found[:len(check.params)] != check.params or found[len(check.params):]:
            problems.append(f"{where}({', '.join(found)}) is not ({', '.join(check.params)})")
    return problems


def apply() -> bool:
    """At connect, before any channel is opened (aiormq binds a channel's frame handlers when it opens): apply
    each part whose versions and module-level attributes fit, once per process. True if aiormq's part is applied.
    Warns once per process per mismatch."""
    versions = installed_versions()
    pamqp_problems = version_problems(versions, PAMQP_PART) or _static_problems("pamqp")
    if not pamqp_problems:
        from . import pamqp_fixes

        pamqp_fixes.apply()
    aiormq_problems = version_problems(versions, AIORMQ_PART) or _static_problems("aiormq")
    if not aiormq_problems:
        from . import aiormq_fixes

        aiormq_fixes.apply()
    _warn_once(aiormq_problems, pamqp_problems)
    return not aiormq_problems


def choose(robust_channel: Any, underlay: Any) -> bool:
    """After ``apply``, with an open robust channel and the aiormq channel under it: whether this connection may
    take the fast path (also the channel attributes it reads and writes must be there)."""
    if not apply():
        return False
    problems = attribute_problems(_live_checks(robust_channel, underlay))
    _warn_once(problems, [])
    return not problems


def failover_problems() -> list[str]:
    """What stops ``failover`` from working with the aio-pika installed (empty: nothing); warns once if anything."""
    problems = version_problems(installed_versions(), ("aio-pika",)) or _static_problems("failover")
    if problems:
        line = (f"not moving to another broker of BROKER_URL when the connection is lost, for {', '.join(problems)}: "
                f"the connection comes back to the broker it was on")
        if line not in _warned:
            _warned.add(line)
            log.warning("%s; pyproject.toml pins the aio-pika version failover was written for", line)
    return problems


_warned: set[str] = set()


def _warn_once(aiormq_problems: list[str], pamqp_problems: list[str]) -> None:
    parts = []
    if aiormq_problems:
        parts.append(
            f"not using Otter's fast path for {', '.join(aiormq_problems)}: messages go through aio-pika's public "
            f"API (publishes wait their turn in a task and are not batched, RPC requests wait for a confirm, "
            f"deliveries are wrapped by aio-pika), so each message costs more CPU, and a consumer the broker cancels "
            f"(its queue deleted, a consumer timeout on RabbitMQ 4.3+) is not consumed again until a reconnection"
        )
    if pamqp_problems:
        parts.append(
            f"not applying Otter's pamqp fix for {', '.join(pamqp_problems)}: a message with a non-UTF-8 short "
            f"string from another client closes the connection"
        )
    line = "; ".join(parts)
    if line and line not in _warned:
        _warned.add(line)
        log.warning("%s; pyproject.toml pins the versions the fast path was written for", line)


_static: dict[str, list[str]] = {}


def _static_problems(part: str) -> list[str]:
    """The module-level checks of ``part``, made once, before its patches are applied (they replace some of
    what is checked)."""
    if part not in _static:
        checks = {"pamqp": _pamqp_checks, "aiormq": _aiormq_checks, "failover": _failover_checks}[part]
        _static[part] = attribute_problems(checks())
    return _static[part]


def _aiormq_checks() -> list[Check]:
    import aio_pika
    from aiormq import abc, channel, connection

    frame_fields = {field.name for field in dataclasses.fields(abc.ChannelFrame)}
    checks = [
        Check(channel.Channel, "_on_return_frame", ("self", "frame")),
        Check(channel.Channel, "_on_confirm_frame", ("self", "frame")),
        Check(channel.Channel, "_on_cancel_frame", ("self", "frame")),
        Check(channel.Channel, "_confirm_delivery", ("self", "delivery_tag", "frame")),
        Check(channel.Channel, "_Channel__get_content_header", ("self",)),
        Check(channel.Channel, "_read_content", ("self", "frame", "header")),
        Check(channel.Channel, "create_future", ("self",)),
        Check(channel, "log"),
        Check(connection.FrameGenerator, "__anext__", ("self",)),
        Check(connection.FrameGenerator, "__init__", ("self", "queue")),
        Check(abc.ChannelFrame, "drain", ("self",)),
        Check(abc.ChannelFrame, "should_drain"),
        Check(aio_pika.abc.AbstractRobustChannel, "get_underlay_channel", ("self",)),
    ]
    generator = connection.FrameGenerator(asyncio.Queue())
    checks += [Check(generator, "queue"), Check(generator, "close_event")]
    if not {"payload", "should_close", "drain_future"} <= frame_fields:
        checks.append(Check(abc.ChannelFrame, "payload, should_close and drain_future fields"))
    return checks


def _failover_checks() -> list[Check]:
    import aio_pika
    from aio_pika.abc import UnderlayConnection

    return [
        # Overridden by FailoverConnection: called on every loss and every failed attempt, before the next one.
        Check(aio_pika.RobustConnection, "_on_connection_close", ("self", "closing")),
        Check(aio_pika.RobustConnection, "__init__", ("self", "url", "loop", "kwargs")),
        # What calls it on a failed attempt, with the URL the attempt used (read from ``self.url`` each time).
        Check(UnderlayConnection, "connect", ("url", "close_callback", "timeout", "kwargs")),
    ]


def _live_checks(robust_channel: Any, underlay: Any) -> list[Check]:
    """Instance attributes the fast path reads or writes on an open channel."""
    names = ("lock", "delivery_tag", "confirmations", "message_id_delivery_tag", "write_queue", "publisher_confirms",
             "number", "max_content_size", "connection", "on_return_callbacks", "is_closed")
    checks = [Check(underlay, name) for name in names]
    checks += [Check(underlay.connection, "channels"), Check(robust_channel, "reopen_callbacks")]
    checks.append(Check(type(underlay), "basic_ack", ("self", "delivery_tag", "multiple", "wait")))
    return checks


def _pamqp_checks() -> list[Check]:
    import pamqp.decode
    import pamqp.encode
    from pamqp import common

    checks = [
        Check(pamqp.decode, "short_str", ("value",)),
        Check(pamqp.decode, "field_table", ("value",)),
        Check(pamqp.decode, "embedded_value", ("value",)),
        Check(pamqp.encode, "table_integer", ("value",)),
        Check(pamqp.encode, "encode_table_value", ("value",)),
        Check(pamqp.encode, "field_table", ("value",)),
        Check(pamqp.encode, "byte_array", ("value",)),
        Check(common.Struct, "byte"),
        Check(common.Struct, "integer"),
    ]
    methods, mapping = getattr(pamqp.decode, "METHODS", {}), getattr(pamqp.decode, "TABLE_MAPPING", {})
    if methods.get("shortstr") is not getattr(pamqp.decode, "short_str", None) or "table" not in methods:
        checks.append(Check(pamqp.decode, "METHODS['shortstr'] and METHODS['table']"))
    if b"F" not in mapping:
        checks.append(Check(pamqp.decode, "TABLE_MAPPING[b'F']"))
    return checks
