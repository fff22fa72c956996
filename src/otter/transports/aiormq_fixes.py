"""Let aiormq (6.9) report a returned message on a channel without publisher confirms.

aiormq matches a ``basic.return`` to the confirm of the publish it belongs to, so on a channel without confirms it
finds none, logs "Unhandled message ... returning" and drops it: the return callbacks never run. Otter sends RPC
requests ``mandatory`` on such a channel (a confirm per call would cost a round trip of broker work) and needs the
return to fail the call with ``Unroutable`` at once. ``apply()`` hands such returns to the channel's return
callbacks; on a confirming channel aiormq's own handling is unchanged.
"""

from __future__ import annotations

from typing import Any

from aiormq.channel import Channel

__all__ = ["apply"]

_original_on_return_frame = Channel._on_return_frame


async def _on_return_frame(self: Channel, frame: Any) -> None:
    if self.publisher_confirms:
        await _original_on_return_frame(self, frame)
        return
    header = await self._Channel__get_content_header()  # type: ignore[attr-defined]
    message = await self._read_content(frame, header)
    for callback in self.on_return_callbacks:
        callback(message)


def apply() -> None:
    """Install the fix (once); channels opened afterwards use it."""
    if Channel._on_return_frame is not _on_return_frame:
        Channel._on_return_frame = _on_return_frame  # type: ignore[method-assign]
