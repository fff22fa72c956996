"""The changes ``otter.transports.aiormq_fixes`` makes to aiormq, on aiormq's own objects without a broker: which
confirms settle which publishes, and how queued frames are written."""

from __future__ import annotations

import asyncio
import functools
from typing import Any

import pytest
from aiormq.abc import ChannelFrame
from aiormq.channel import Channel, Returning
from aiormq.connection import FrameGenerator
from pamqp import commands

from otter.transports.amqp import aiormq_fixes

aiormq_fixes.apply()


def on_a_loop(test: Any) -> Any:
    """Run the coroutine test on a fresh event loop (the suite has no asyncio plugin)."""

    @functools.wraps(test)
    def run(*args: Any, **kwargs: Any) -> None:
        asyncio.run(test(*args, **kwargs))

    return run


class ConfirmingChannel:
    """The attributes of ``aiormq.channel.Channel`` its confirm handling uses, with aiormq's own methods."""

    publisher_confirms = True
    _on_confirm_frame = Channel._on_confirm_frame
    _confirm_delivery = Channel._confirm_delivery

    def __init__(self, loop: asyncio.AbstractEventLoop, tags: list[int]) -> None:
        self.confirmations: dict[int, Any] = {tag: loop.create_future() for tag in tags}


@on_a_loop
async def test_a_multiple_confirm_settles_every_publish_up_to_its_tag_and_no_later_one() -> None:
    loop = asyncio.get_running_loop()
    channel = ConfirmingChannel(loop, [1, 2, 3, 4, 5])
    futures = dict(channel.confirmations)
    await channel._on_confirm_frame(commands.Basic.Ack(delivery_tag=3, multiple=True))
    assert [tag for tag, future in futures.items() if future.done()] == [1, 2, 3]
    assert list(channel.confirmations) == [4, 5]
    await channel._on_confirm_frame(commands.Basic.Ack(delivery_tag=4))
    assert list(channel.confirmations) == [5]


@on_a_loop
async def test_a_nack_fails_the_publishes_it_covers() -> None:
    channel = ConfirmingChannel(asyncio.get_running_loop(), [1, 2, 3])
    futures = dict(channel.confirmations)
    await channel._on_confirm_frame(commands.Basic.Nack(delivery_tag=2, multiple=True))
    assert futures[1].exception() is not None and futures[2].exception() is not None
    assert not futures[3].done()


@on_a_loop
async def test_a_returned_publish_marked_out_of_order_is_cleared_by_a_later_confirm() -> None:
    loop = asyncio.get_running_loop()
    channel = ConfirmingChannel(loop, [1, 2, 3])
    channel.confirmations.pop(1)
    channel.confirmations[1] = Returning()  # what aiormq does when the broker returns publish 1: now last in order
    futures = dict(channel.confirmations)
    await channel._on_confirm_frame(commands.Basic.Ack(delivery_tag=2, multiple=True))
    assert futures[2].done() and not futures[3].done()
    await channel._on_confirm_frame(commands.Basic.Ack(delivery_tag=3, multiple=True))
    assert channel.confirmations == {}


def frame(payload: bytes, *, close: bool = False, drain: asyncio.Future[Any] | None = None) -> ChannelFrame:
    return ChannelFrame(payload=payload, should_close=close, drain_future=drain)


@on_a_loop
async def test_frames_queued_while_the_writer_waited_are_written_as_one_payload_in_order() -> None:
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[ChannelFrame] = asyncio.Queue()
    drained = loop.create_future()
    for part in (frame(b"a"), frame(b"b", drain=drained), frame(b"c")):
        queue.put_nowait(part)
    batch = await FrameGenerator(queue).__anext__()
    assert batch.payload == b"abc" and not batch.should_close
    assert batch.should_drain
    batch.drain()
    assert drained.done()
    assert queue.empty()


@on_a_loop
async def test_a_closing_frame_ends_a_batch() -> None:
    queue: asyncio.Queue[ChannelFrame] = asyncio.Queue()
    for part in (frame(b"a"), frame(b"close", close=True), frame(b"after")):
        queue.put_nowait(part)
    batch = await FrameGenerator(queue).__anext__()
    assert batch.payload == b"aclose" and batch.should_close
    assert queue.qsize() == 1


@on_a_loop
async def test_a_batch_stops_growing_at_its_size_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(aiormq_fixes, "BATCH_BYTES", 4)
    queue: asyncio.Queue[ChannelFrame] = asyncio.Queue()
    for part in (b"ab", b"cd", b"ef"):
        queue.put_nowait(frame(part))
    assert (await FrameGenerator(queue).__anext__()).payload == b"abcd"
    assert (await FrameGenerator(queue).__anext__()).payload == b"ef"


@on_a_loop
async def test_a_frame_whose_sender_does_not_wait_is_still_drained_so_senders_meet_back_pressure() -> None:
    queue: asyncio.Queue[ChannelFrame] = asyncio.Queue()
    queue.put_nowait(frame(b"ack"))  # no drain future: the sender did not wait
    batch = await FrameGenerator(queue).__anext__()
    assert batch.payload == b"ack" and batch.should_drain
