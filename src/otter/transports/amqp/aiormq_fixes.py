"""Four changes to aiormq (6.9): returns on a channel without confirms, one socket write for many frames,
confirms in time proportional to what they confirm, and word of a consumer the broker cancelled.

Returns: aiormq matches a ``basic.return`` to the confirm of the publish it belongs to, so on a channel without
confirms it finds none, logs "Unhandled message ... returning" and drops it: the return callbacks never run. Otter
sends RPC requests ``mandatory`` on such a channel (a confirm per call would cost a round trip of broker work) and
needs the return to fail the call with ``Unroutable`` at once. Such returns go to the channel's return callbacks; on
a confirming channel aiormq's own handling is unchanged.

Writes: aiormq's writer task takes one frame at a time from the connection's write queue and writes it, a ``send``
system call (and a TCP segment: asyncio sets ``TCP_NODELAY``) per ack, reply or publish. Frames queued while the
writer waited are the norm under load (a burst of deliveries ends in a burst of acks), so the writer now takes
every frame already queued, up to ``BATCH_BYTES``, and writes them with one call. Order is kept, a closing frame
ends a batch (nothing after it is written, as before), and every batch is drained: the writer waits while the
socket's buffer is full, so senders that do not wait for their own frame to drain (Otter's publishes and acks)
still meet back-pressure through the bounded write queue instead of growing the buffer without limit.

Confirms: for a ``basic.ack`` with ``multiple`` set, aiormq walks every unconfirmed publish and schedules a callback
for each one covered; with 1,000 publishes in flight that is 1,000 comparisons per confirm frame. The unconfirmed
publishes are kept in the order of their delivery tags, so the walk now stops at the first one not covered, and
each covered one is settled at once. (A returned publish is marked again at the end of that order, with nobody
waiting on it; its entry goes with its own confirm or a later multiple confirm past it.)

Cancels: aiormq handles a ``basic.cancel`` from the broker (the queue was deleted, a consumer timeout on RabbitMQ
4.3+ quorum queues) as it handles the ``cancel-ok`` of our own cancel: it drops the consumer and tells nobody. After
aiormq's own handling, a broker's cancel now goes to ``cancels.notify``, which lets the Otter consumer with that tag
come back.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from aiormq import connection, spec
from aiormq.abc import ChannelFrame
from aiormq.channel import Channel
from aiormq.channel import log as channel_log

from . import cancels

__all__ = ["BATCH_BYTES", "apply"]

BATCH_BYTES = 256 * 1024

_original_on_return_frame = Channel._on_return_frame
_original_on_cancel_frame = Channel._on_cancel_frame


async def _on_return_frame(self: Channel, frame: Any) -> None:
    if self.publisher_confirms:
        await _original_on_return_frame(self, frame)
        return
    header = await self._Channel__get_content_header()  # type: ignore[attr-defined]
    message = await self._read_content(frame, header)
    for callback in self.on_return_callbacks:
        callback(message)


async def _on_cancel_frame(self: Channel, frame: Any) -> None:
    await _original_on_cancel_frame(self, frame)
    if isinstance(frame, spec.Basic.Cancel) and frame.consumer_tag:  # the broker's, not the CancelOk of ours
        cancels.notify(frame.consumer_tag, self)


@dataclasses.dataclass(frozen=True)
class _Batch(ChannelFrame):
    """Queued frames written as one payload, then drained; draining it resolves each frame's drain future."""

    parts: tuple[ChannelFrame, ...] = ()

    def drain(self) -> None:
        for part in self.parts:
            part.drain()

    @property
    def should_drain(self) -> bool:
        return True


async def _next_frames(self: connection.FrameGenerator) -> ChannelFrame:
    if self.close_event.is_set():
        raise StopAsyncIteration
    queue = self.queue
    frame: ChannelFrame = await queue.get()
    queue.task_done()
    if frame.should_close:
        return frame
    parts = [frame]
    size = len(frame.payload)
    while size < BATCH_BYTES and not queue.empty():
        frame = queue.get_nowait()
        queue.task_done()
        parts.append(frame)
        size += len(frame.payload)
        if frame.should_close:
            break
    return _Batch(
        payload=b"".join([part.payload for part in parts]), should_close=frame.should_close, parts=tuple(parts)
    )


async def _on_confirm_frame(self: Channel, frame: Any) -> None:
    if not self.publisher_confirms:
        return
    confirmations, tag = self.confirmations, frame.delivery_tag
    if tag not in confirmations:
        channel_log.error("Unexpected confirmation frame %r from broker", frame)
        return
    if not getattr(frame, "multiple", False):
        self._confirm_delivery(tag, frame)
        return
    covered = []
    for pending in confirmations:
        if pending > tag:
            break
        covered.append(pending)
    for pending in covered:
        self._confirm_delivery(pending, frame)


def apply() -> None:
    """Install the changes (once); channels and connections opened afterwards use them."""
    if Channel._on_return_frame is not _on_return_frame:
        Channel._on_return_frame = _on_return_frame  # type: ignore[method-assign]
    if Channel._on_confirm_frame is not _on_confirm_frame:
        Channel._on_confirm_frame = _on_confirm_frame  # type: ignore[method-assign]
    if Channel._on_cancel_frame is not _on_cancel_frame:
        Channel._on_cancel_frame = _on_cancel_frame  # type: ignore[method-assign]
    if connection.FrameGenerator.__anext__ is not _next_frames:
        connection.FrameGenerator.__anext__ = _next_frames  # type: ignore[method-assign]
