"""One AMQP publish encoded straight to bytes and queued on an aiormq channel: the fast path's sending half.

aiormq's ``basic_publish`` builds pamqp objects for the method frame, the content header and each body frame,
validates them and marshals them field by field, which is most of the cost of a publish. Otter's hot paths (RPC
requests and replies, tasks, broadcasts) send the same few properties every time, so ``encode`` writes the frames
with ``struct`` (header tables with pamqp's own encoder), byte for byte what pamqp would write, and ``publish``
queues them with ``basic_publish``'s bookkeeping: the delivery tag taken and the frames queued under the channel's
lock, and on a confirming channel the publish registered for the broker's confirm (and for a return, by message
id). Unlike ``basic_publish``, it does not hold the lock until the frames have drained to the socket.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Mapping
from typing import Any

import pamqp.encode
from aiormq.abc import ChannelFrame
from aiormq.channel import Channel

__all__ = ["encode", "enqueue", "publish", "publish_now", "queue_now"]

_FRAME_HEAD = struct.Struct(">BHI")  # frame type, channel number, payload size
_PUBLISH_HEAD = struct.Struct(">HHH").pack(60, 40, 0)  # Basic.Publish, then the reserved ticket
_CONTENT_HEAD = struct.Struct(">HHQH")  # class (Basic), weight, body size, property flags
_FRAME_END = b"\xce"
_METHOD, _HEADER, _BODY = 1, 2, 3

# Property flags, in the order AMQP encodes the properties.
_CONTENT_TYPE, _HEADERS, _DELIVERY_MODE, _PRIORITY = 0x8000, 0x2000, 0x1000, 0x0800
_CORRELATION_ID, _REPLY_TO, _EXPIRATION, _MESSAGE_ID = 0x0400, 0x0200, 0x0100, 0x0080


def encode(
    channel_number: int,
    max_content: int,
    exchange: str,
    routing_key: str,
    body: bytes,
    *,
    mandatory: bool = False,
    content_type: str | None = None,
    headers: Mapping[str, Any] | None = None,
    delivery_mode: int | None = None,
    priority: int | None = None,
    correlation_id: str | None = None,
    reply_to: str | None = None,
    expiration: str | None = None,
    message_id: str | None = None,
) -> bytes:
    """The method, content header and body frames of a ``basic.publish``; bodies longer than ``max_content`` (the
    connection's frame size less the frame overhead) are split over several body frames."""
    method = b"".join((_PUBLISH_HEAD, _short_str(exchange), _short_str(routing_key), b"\x01" if mandatory else b"\x00"))
    flags = 0
    properties = []
    if content_type:
        flags |= _CONTENT_TYPE
        properties.append(_short_str(content_type))
    if headers is not None:
        flags |= _HEADERS
        properties.append(pamqp.encode.field_table(dict(headers)))
    if delivery_mode is not None:
        flags |= _DELIVERY_MODE
        properties.append(bytes((delivery_mode,)))
    if priority is not None:
        flags |= _PRIORITY
        properties.append(bytes((priority,)))
    for flag, value in ((_CORRELATION_ID, correlation_id), (_REPLY_TO, reply_to), (_EXPIRATION, expiration),
                        (_MESSAGE_ID, message_id)):
        if value:
            flags |= flag
            properties.append(_short_str(value))
    header = _CONTENT_HEAD.pack(60, 0, len(body), flags) + b"".join(properties)
    frames = [_frame(_METHOD, channel_number, method), _frame(_HEADER, channel_number, header)]
    for start in range(0, len(body), max_content):
        frames.append(_frame(_BODY, channel_number, body[start:start + max_content]))
    return b"".join(frames)


async def publish(channel: Channel, payload: bytes, message_id: str) -> Any:
    """Queue the frames ``encode`` made on ``channel``; on a confirming channel, wait for the broker's confirm and
    return it (a ``basic.nack`` raises aiormq's ``DeliveryError``, a return of a ``mandatory`` publish its
    ``PublishError``). ``message_id`` must be the one encoded: aiormq matches a return to its publish by it."""
    confirmation = await enqueue(channel, payload, message_id)
    if confirmation is None:
        return None
    return await confirmation


async def enqueue(channel: Channel, payload: bytes, message_id: str) -> asyncio.Future[Any] | None:
    """``publish`` without waiting for the confirm: the frames queued once the write queue has room, and the
    confirm's future returned (None on a channel without confirms)."""
    confirmation = None
    async with channel.lock:  # one delivery tag per publish, in the order the frames reach the broker
        channel.delivery_tag += 1
        if channel.publisher_confirms:
            confirmation = _expect_confirm(channel, message_id)
        await channel.write_queue.put(ChannelFrame(payload=payload, should_close=False))
    return confirmation


def queue_now(channel: Channel, payload: bytes) -> bool:
    """``publish`` without waiting: if nobody holds the channel's lock (so no publish is between taking its
    delivery tag and queueing its frames) and the write queue has room, take the next delivery tag and queue the
    frames now (True); otherwise False, and the caller uses ``publish``. (A publish woken to take the lock but not
    yet running may be overtaken; it takes its tag when it runs, so tags still follow the order of the frames.)"""
    if channel.lock.locked() or channel.write_queue.full():
        return False
    channel.delivery_tag += 1
    channel.write_queue.put_nowait(ChannelFrame(payload=payload, should_close=False))
    return True


def publish_now(channel: Channel, payload: bytes, message_id: str) -> asyncio.Future[Any] | None:
    """``queue_now`` on a confirming channel: the future of the broker's confirm, or None if not queued."""
    assert channel.publisher_confirms, "publish_now is for confirming channels; use queue_now"
    if not queue_now(channel, payload):
        return None
    return _expect_confirm(channel, message_id)  # before any confirm can arrive: nothing was awaited


def _expect_confirm(channel: Channel, message_id: str) -> asyncio.Future[Any]:
    """Register the publish numbered ``channel.delivery_tag`` for its confirm, and for a return by message id."""
    tag = channel.delivery_tag
    confirmation = channel.create_future()  # failed by aiormq if the channel closes first
    channel.confirmations[tag] = confirmation
    by_message_id = channel.message_id_delivery_tag
    by_message_id[message_id] = tag
    confirmation.add_done_callback(lambda _: by_message_id.pop(message_id, None))
    return confirmation


def _short_str(value: str) -> bytes:
    data = value.encode("utf-8")
    if len(data) > 255:
        raise ValueError(f"AMQP short strings hold at most 255 bytes, this one has {len(data)}: {value[:60]!r}...")
    return bytes((len(data),)) + data


def _frame(kind: int, channel_number: int, payload: bytes) -> bytes:
    return _FRAME_HEAD.pack(kind, channel_number, len(payload)) + payload + _FRAME_END
