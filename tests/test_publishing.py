"""``otter.transports.publishing`` writes a publish byte for byte as pamqp (aiormq's codec) would."""

from __future__ import annotations

import asyncio
from typing import Any

import aiormq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pamqp import frame
from pamqp.body import ContentBody
from pamqp.commands import Basic
from pamqp.header import ContentHeader

from otter.transports.amqp import frames as publishing
from otter.transports.amqp import pamqp_fixes

pamqp_fixes.apply()  # as in a running Otter: both encoders then share pamqp's table encoder

short = st.text(max_size=40)
exchange_names = st.from_regex(r"[A-Za-z0-9_:.\-]{0,40}", fullmatch=True)  # what pamqp (and RabbitMQ) accept
header_values = st.one_of(st.integers(-(2**62), 2**62), st.text(max_size=20), st.booleans())


def pamqp_publish(channel: int, max_content: int, exchange: str, key: str, body: bytes, mandatory: bool,
                  properties: dict[str, Any]) -> bytes:
    frames = [Basic.Publish(exchange=exchange, routing_key=key, mandatory=mandatory),
              ContentHeader(0, len(body), Basic.Properties(**properties))]
    frames += [ContentBody(body[i:i + max_content]) for i in range(0, len(body), max_content)]
    return b"".join(frame.marshal(part, channel) for part in frames)


@settings(max_examples=300, deadline=None)
@given(
    channel=st.integers(1, 2047),
    exchange=exchange_names,
    key=short,
    body=st.binary(max_size=300),
    max_content=st.integers(16, 128),
    mandatory=st.booleans(),
    properties=st.fixed_dictionaries({}, optional={
        "content_type": short,
        "headers": st.dictionaries(st.text(min_size=1, max_size=10), header_values, max_size=4),
        "delivery_mode": st.sampled_from([1, 2]),
        "correlation_id": short,
        "reply_to": short,
        "expiration": st.integers(1, 10**9).map(str),
        "message_id": short,
    }),
)
def test_a_publish_is_encoded_exactly_as_pamqp_encodes_it(
    channel: int, exchange: str, key: str, body: bytes, max_content: int, mandatory: bool, properties: dict[str, Any]
) -> None:
    ours = publishing.encode(channel, max_content, exchange, key, body, mandatory=mandatory, **properties)
    assert ours == pamqp_publish(channel, max_content, exchange, key, body, mandatory, properties)


def test_an_empty_body_sends_no_body_frame() -> None:
    encoded = publishing.encode(1, 100, "", "q", b"", message_id="m")
    assert encoded == pamqp_publish(1, 100, "", "q", b"", False, {"message_id": "m"})


def test_a_short_string_over_255_bytes_is_refused_with_its_length() -> None:
    with pytest.raises(ValueError, match="at most 255 bytes, this one has 256"):
        publishing.encode(1, 100, "", "k" * 256, b"{}")


def test_publish_now_queues_at_once_or_leaves_the_publish_to_wait(amqp_url: str, names: dict[str, Any]) -> None:
    """On a real confirming channel: queued at once, the broker confirms it; while another publish holds the
    channel's lock, publish_now declines (None) and the delivery tags stay in step."""

    async def scenario() -> None:
        connection = await aiormq.connect(amqp_url)
        try:
            channel = await connection.channel(publisher_confirms=True)
            queue = f"{names['MESSAGE_EXCHANGE']}.publish-now"
            await channel.queue_declare(queue)
            encoded = publishing.encode(channel.number, channel.max_content_size, "", queue, b"{}", message_id="m1")
            confirmation = publishing.publish_now(channel, encoded, "m1")
            assert confirmation is not None
            assert isinstance(await asyncio.wait_for(confirmation, 5), Basic.Ack)
            async with channel.lock:
                assert publishing.publish_now(channel, encoded, "m2") is None
            assert channel.delivery_tag == 1
            assert isinstance(await asyncio.wait_for(publishing.publish(channel, encoded, "m3"), 5), Basic.Ack)
            assert (await channel.queue_declare(queue, passive=True)).message_count == 2
            await channel.queue_delete(queue)
        finally:
            await connection.close()

    asyncio.run(scenario())
