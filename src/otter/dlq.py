"""See and act on dead letters: the tasks that failed for good, or could not be read at all.

The API (the ``otter dlq list|show|replay|purge`` commands call these)::

    list_dead_letters(url: str | None, config: Mapping[str, Any] | None = None, limit: int | None = None)
        -> list[DeadLetter]
    replay(url: str | None, config: Mapping[str, Any] | None = None, task: str | None = None,
           limit: int | None = None, ids: Collection[str] | None = None, *,
           where: Callable[[DeadLetter], bool] | None = None) -> int
    purge(url: str | None, config: Mapping[str, Any] | None = None) -> int

    async def list_dead_letters_async(url, config=None, limit=None) -> list[DeadLetter]
    async def replay_async(url, config=None, task=None, limit=None, ids=None, *, where=None) -> int
    async def purge_async(url, config=None) -> int

The broker and the names are resolved as an app resolves them (``otter.config.resolve``): ``url`` is an argument
(``None``: ``OTTER_BROKER_URL``, then ``config``'s ``BROKER_URL``, then ``memory://``), and ``config`` plays the part
of ``app.config`` (pass your app's), so ``OTTER_DEAD_LETTER_QUEUE`` and the other ``OTTER_*`` variables outrank it,
and ``config.DEFAULTS`` fill in what neither gives.
The plain functions run their own event loop, so call the ``_async`` ones from inside a coroutine.

A dead letter keeps the task's original body and headers, plus ``x-otter-reason`` (``bad-message``,
``handler-error``, ``retries-exhausted`` or ``time-limit``; the broker's own, read from its ``x-death`` record:
``expired`` and ``delivery-limit``), ``x-otter-error-type``, ``x-otter-error-message``,
``x-otter-attempts``, ``x-otter-task`` and ``x-otter-queue``. ``DeadLetter.payload`` is the task body as its handler
gets it (kiwipy's ``[body, no_reply]`` envelope taken off), and ``body_preview`` shows that, not the envelope.
``replay`` sends it back to the queue it came from as a fresh task (Otter's headers dropped, so its attempts start
again) and keeps its task id; ``task=`` picks only the dead letters of that task name (or queue), ``ids=`` only
those with these task ids, and ``where=`` only those it returns true for. ``list_dead_letters`` leaves the queue as
it was.

>>> for letter in list_dead_letters("amqp://guest:guest@127.0.0.1/"):
...     print(letter.queue, letter.reason, letter.error_type, letter.attempts)
>>> replay("amqp://guest:guest@127.0.0.1/", task="mail.send")
3
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

import orjson

from . import eventloop, protocol
from .config import resolve
from .errors import MessageError
from .transports import Delivery, Transport, open_transport

__all__ = [
    "DeadLetter",
    "list_dead_letters",
    "list_dead_letters_async",
    "purge",
    "purge_async",
    "replay",
    "replay_async",
]

PREVIEW_CHARS = 200
PREVIEW_DECODE_LIMIT = 1 << 20  # bodies above 1 MiB are previewed as raw text: listing stays fast
T = TypeVar("T")


@dataclass(frozen=True)
class DeadLetter:
    """One dead letter, as ``otter dlq list`` shows it; ``body`` is the original bytes."""

    queue: str | None
    task: str | None
    task_id: str | None  # the id the task was sent with (its message_id), the same on every attempt
    reason: str | None
    error_type: str | None
    error_message: str | None
    attempts: int | None
    correlation_id: str | None
    size: int
    body_preview: str
    body: bytes = field(repr=False)
    headers: Mapping[str, Any] = field(repr=False, default_factory=dict)
    error_traceback: str | None = field(repr=False, default=None)  # the handler's, bounded (see protocol)

    @property
    def error_location(self) -> str | None:
        """Where the handler raised: the last frame of the traceback (``app.py:12 in charge``)."""
        frames = re.findall(r'File "([^"]+)", line (\d+), in (\S+)', self.error_traceback or "")
        if not frames:
            return None
        path, line, function = frames[-1]
        return f"{path.rsplit('/', 1)[-1]}:{line} in {function}"

    @classmethod
    def from_delivery(cls, delivery: Delivery) -> DeadLetter:
        """Otter's own dead letters carry ``x-otter-*`` headers; the ones the broker dead-lettered (a task expired,
        or past a quorum queue's delivery limit) carry RabbitMQ's ``x-death`` record instead, read the same way."""
        headers = delivery.headers
        attempts = headers.get(protocol.ATTEMPTS_HEADER)
        by_broker = _broker_death(headers) if protocol.REASON_HEADER not in headers else None
        if by_broker is not None:
            queue, reason, message = by_broker
            return cls(
                queue=queue, task=None, task_id=delivery.message_id, reason=reason, error_type=None,
                error_message=message, attempts=None,
                correlation_id=delivery.correlation_id, size=len(delivery.body), body_preview=_preview(delivery.body),
                body=delivery.body, headers=dict(headers),
            )
        return cls(
            queue=_text(headers.get(protocol.QUEUE_HEADER)),
            task=_text(headers.get(protocol.TASK_HEADER)),
            task_id=delivery.message_id,
            reason=_text(headers.get(protocol.REASON_HEADER)),
            error_type=_text(headers.get(protocol.ERROR_TYPE_HEADER)),
            error_message=_text(headers.get(protocol.ERROR_MESSAGE_HEADER)),
            attempts=attempts if isinstance(attempts, int) and not isinstance(attempts, bool) else None,
            correlation_id=delivery.correlation_id,
            size=len(delivery.body),
            body_preview=_preview(delivery.body),
            body=delivery.body,
            headers=dict(headers),
            error_traceback=_text(headers.get(protocol.ERROR_TRACEBACK_HEADER)),
        )

    @property
    def payload(self) -> Any:
        """The task body as its handler gets it (kiwipy's ``[body, no_reply]`` envelope taken off);
        ``MessageError`` when the bytes are no readable task (a ``bad-message`` letter, say)."""
        return _payload(self.body)

    def matches(self, task: str) -> bool:
        """Whether this letter belongs to the task ``task``, by task name or by queue name."""
        return task in (self.task, self.queue)


# -- coroutines ------------------------------------------------------------------------------------------------
async def list_dead_letters_async(
    url: str | None, config: Mapping[str, Any] | None = None, limit: int | None = None
) -> list[DeadLetter]:
    """The first ``limit`` dead letters (default: all), oldest first; the queue is left as it was."""
    _check_limit(limit)
    async with _connected(url, config) as transport:
        return [DeadLetter.from_delivery(letter) for letter in await transport.peek_dead_letters(limit)]


async def replay_async(
    url: str | None,
    config: Mapping[str, Any] | None = None,
    task: str | None = None,
    limit: int | None = None,
    ids: Collection[str] | None = None,
    *,
    where: Callable[[DeadLetter], bool] | None = None,
) -> int:
    """Send up to ``limit`` dead letters (only those of ``task``, whose task id is in ``ids`` and that ``where``
    accepts, when given) back to their queues; the count."""
    _check_limit(limit)
    wanted = None if ids is None else frozenset(ids)

    def route(delivery: Delivery) -> tuple[str, Mapping[str, Any]] | None:
        letter = DeadLetter.from_delivery(delivery)
        if letter.queue is None or (task is not None and not letter.matches(task)):
            return None
        if wanted is not None and letter.task_id not in wanted:
            return None
        if where is not None and not where(letter):
            return None
        return letter.queue, protocol.forwarded_headers(delivery.headers)

    async with _connected(url, config) as transport:
        return await transport.replay_dead_letters(route, limit=limit)


async def purge_async(url: str | None, config: Mapping[str, Any] | None = None) -> int:
    """Delete every dead letter; the count."""
    async with _connected(url, config) as transport:
        return await transport.purge_dead_letters()


# -- plain functions ---------------------------------------------------------------------------------------------
def list_dead_letters(
    url: str | None, config: Mapping[str, Any] | None = None, limit: int | None = None
) -> list[DeadLetter]:
    """``list_dead_letters_async`` on a loop of its own."""
    return _run(list_dead_letters_async(url, config, limit))


def replay(
    url: str | None,
    config: Mapping[str, Any] | None = None,
    task: str | None = None,
    limit: int | None = None,
    ids: Collection[str] | None = None,
    *,
    where: Callable[[DeadLetter], bool] | None = None,
) -> int:
    """``replay_async`` on a loop of its own."""
    return _run(replay_async(url, config, task, limit, ids, where=where))


def purge(url: str | None, config: Mapping[str, Any] | None = None) -> int:
    """``purge_async`` on a loop of its own."""
    return _run(purge_async(url, config))


# -- internals ---------------------------------------------------------------------------------------------------
class _connected:
    """A transport opened for one operation and always closed after it."""

    def __init__(self, url: str | None, config: Mapping[str, Any] | None) -> None:
        resolved = resolve({"BROKER_URL": url}, app_config=config)
        self.transport: Transport = open_transport(resolved["BROKER_URL"], resolved)

    async def __aenter__(self) -> Transport:
        await self.transport.connect()
        return self.transport

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.transport.close()


def _run(coro: Awaitable[T]) -> T:
    async def main() -> T:
        return await coro

    return cast(T, eventloop.run(main()))


def _check_limit(limit: int | None) -> None:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise ValueError(f"limit must be a whole number >= 0, or None for all; got {limit!r}")


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _broker_death(headers: Mapping[str, Any]) -> tuple[str | None, str, str] | None:
    """(queue, reason, what happened) from the broker's ``x-death`` record: its first entry is the latest death,
    and for a task that died in a task queue that queue is where a replay sends it."""
    deaths = headers.get("x-death")
    if not isinstance(deaths, list) or not deaths or not isinstance(deaths[0], Mapping):
        return None
    death = deaths[0]
    queue, why = _text(death.get("queue")), _text(death.get("reason")) or "unknown"
    reason = protocol.BROKER_DEAD_LETTER_REASONS.get(why, why)
    count = death.get("count")
    what = {"expired": "waited in the queue past its TASK_MESSAGE_TTL",
            "delivery-limit": "was delivered TASK_DELIVERY_LIMIT times without being acked (its worker died or was "
                              "stopped each time)"}.get(reason, f"was dead-lettered by the broker ({why})")
    times = f"; {count} times" if isinstance(count, int) and count > 1 else ""
    return queue, reason, f"RabbitMQ dead-lettered it: it {what}{times}"


def _payload(body: bytes) -> Any:
    try:
        envelope = orjson.loads(body)  # bounded nesting: a hostile letter raises here, not RecursionError
    except ValueError as exc:
        raise MessageError(f"not JSON: {exc}") from None
    return protocol.read_task(envelope)[0]


def _preview(body: bytes) -> str:
    """The start of the task body as compact JSON; the start of the raw text when it is no readable task (or too
    big to decode just for a preview)."""
    try:
        if len(body) > PREVIEW_DECODE_LIMIT:
            raise MessageError("too big to preview decoded")
        text = json.dumps(_payload(body), separators=(",", ":"), ensure_ascii=False, default=str)
    except (MessageError, ValueError, RecursionError):
        text = body[: PREVIEW_CHARS * 4].decode("utf-8", "replace")
        if len(body) > PREVIEW_CHARS * 4:
            text += "..."
    return text if len(text) <= PREVIEW_CHARS else text[:PREVIEW_CHARS] + "..."
