"""The in-memory broker's queue TTL: one pending check per queue, however many messages wait."""

from __future__ import annotations

from helpers_process import wait_until
from otter.transports.memory import MemoryBroker, _Message


def test_a_queue_with_a_ttl_keeps_one_check_pending_and_still_expires_its_messages() -> None:
    broker = MemoryBroker()
    broker.declare("t", arguments={"x-message-ttl": 50, "x-dead-letter-exchange": "",
                                   "x-dead-letter-routing-key": "dead"})
    for _ in range(5000):
        broker.publish("t", _Message(b"x", None, {}, None, None))
    assert len(broker._delayed) == 1  # it was one entry per message, kept for the TTL (kiwipy's: 7 days)
    wait_until(lambda: broker.messages_in("t") == [], 10, "the queue's messages to expire")
    assert len(broker.messages_in("dead")) == 5000
