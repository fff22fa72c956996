"""``otter.transports.amqp.failover``: each loss or failed attempt sends the next attempt to the next broker of the
list, round robin; the fence falls back to one broker, with one warning, when aio-pika's shape changed. The moves
between real brokers are in ``tests/faults/test_failover.py``."""

from __future__ import annotations

import asyncio
import logging

import pytest
from yarl import URL

from otter.transports.amqp import connection, fence
from otter.transports.amqp.failover import FailoverConnection

BROKERS = [f"amqp://u:secret-{n}@127.0.0.1:{5680 + n}/" for n in range(3)]


def test_each_loss_or_failed_attempt_moves_to_the_next_broker_round_robin() -> None:
    async def main() -> list[str]:
        failover = FailoverConnection(URL(BROKERS[1]), brokers=BROKERS, reconnect_interval=0.1)
        seen = []
        for _ in range(4):
            lost = asyncio.get_running_loop().create_future()
            lost.set_exception(ConnectionResetError("gone"))
            await failover._on_connection_close(lost)
            seen.append(failover.broker)
        return seen

    assert asyncio.run(main()) == [f"amqp://u:***@127.0.0.1:{5680 + n}/" for n in (2, 0, 1, 2)]


def test_a_connection_closed_on_purpose_stays_where_it_is() -> None:
    async def main() -> str:
        failover = FailoverConnection(URL(BROKERS[0]), brokers=BROKERS, reconnect_interval=0.1)
        await failover.close()  # never connected: nothing to close, but it is closed on purpose
        closing = asyncio.get_running_loop().create_future()
        closing.set_result(None)
        await failover._on_connection_close(closing)
        return failover.broker

    assert asyncio.run(main()) == "amqp://u:***@127.0.0.1:5680/"


def test_failover_fits_the_installed_aio_pika() -> None:
    assert fence.failover_problems() == []
    assert fence.attribute_problems(fence._failover_checks()) == []


def test_an_aio_pika_failover_was_not_written_for_keeps_one_broker_and_says_so_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(fence, "installed_versions", lambda: {"aio-pika": "9.6.0", "aiormq": "6.9.4",
                                                               "pamqp": "3.3.0"})
    monkeypatch.setattr(fence, "_warned", set())
    caplog.set_level(logging.WARNING, logger="otter.amqp")
    assert fence.failover_problems() == ["aio-pika 9.6.0 (written for 9.5.x)"]
    assert fence.failover_problems() == ["aio-pika 9.6.0 (written for 9.5.x)"]
    [record] = [r for r in caplog.records if "not moving to another broker" in r.getMessage()]
    assert "comes back to the broker it was on" in record.getMessage()


def test_what_a_connection_is_on_is_named_without_its_password() -> None:
    async def main() -> tuple[str, bool]:
        failover = FailoverConnection(URL(BROKERS[2]), brokers=BROKERS, reconnect_interval=0.1)
        return connection.broker_of(failover), connection.fails_over(failover)

    assert asyncio.run(main()) == ("amqp://u:***@127.0.0.1:5682/", True)
    assert connection.fails_over(None) is False
