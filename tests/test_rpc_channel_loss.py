"""RPCs whose request or return is lost with the channel that carried it fail at once, not at their deadline.

The broker closes the channel of RPC requests when a request names an exchange that is gone (deleted under a
running service); it drops whatever comes after on that channel, and aio-pika re-opens it. Before: the call waited
its whole deadline, and every later call to an unserved name too (aio-pika stops forwarding a re-opened channel's
returns). Driven by the broker, not by timing: the exchange is deleted, then the calls are made.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from otter import BrokerUnavailable, Client, Otter, Unroutable
from otter.testing import ServedApp
from rawbroker import RawBroker

pytestmark = pytest.mark.amqp


@pytest.fixture
def served(amqp_url: str, names: dict[str, Any]) -> Iterator[ServedApp]:
    app = Otter("channel-loss")

    @app.add_rpc("loss.echo")
    def echo(comm: Any, data: Any) -> Any:
        return data

    with ServedApp(app, amqp_url, **names) as running:
        yield running


def test_a_call_on_a_channel_the_broker_closed_fails_at_once_and_returns_are_reported_after_it_reopens(
    amqp_url: str, names: dict[str, Any], served: ServedApp
) -> None:
    with Client(amqp_url, **names) as client:
        assert client.rpc("loss.echo", 1).result(timeout=5) == 1
        with RawBroker.open(amqp_url, names) as raw:
            raw.delete()  # the exchanges (and with them the service's binding) are gone

        started = time.monotonic()
        with pytest.raises(BrokerUnavailable, match="closed the channel carrying RPC requests"):
            client.rpc("loss.echo", 2, timeout=10).result()
        assert time.monotonic() - started < 3.0, "the call waited for its deadline"

        # The channel re-opened and declared the exchange again; the service's binding went with the old one.
        started = time.monotonic()
        with pytest.raises(Unroutable, match=r"nobody serves the RPC 'loss\.echo'"):
            client.rpc("loss.echo", 3, timeout=10).result()
        assert time.monotonic() - started < 3.0, "the return of a re-opened channel was not reported"
