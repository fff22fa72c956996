"""Closing a client while its calls are in flight: every call ends with ``BrokerUnavailable``, none with a bare
``CancelledError`` (which ``except OtterError`` would not catch) and none hangs until its deadline."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import pytest

import otter
from otter import AsyncClient, BrokerUnavailable, Client

from .conftest import Serve

HOLD_AT_MOST = 10.0


def blocking_app(names: dict[str, Any], entered: threading.Event, release: threading.Event) -> otter.Otter:
    app = otter.Otter(**names)

    @app.add_rpc("svc.block")
    def block(comm: Any, data: Any) -> str:
        entered.set()
        release.wait(HOLD_AT_MOST)
        return "too late"

    return app


def test_closing_an_async_client_fails_its_calls_in_flight_with_broker_unavailable(
    serve: Serve, broker_url: str, names: dict[str, Any], queue_name: Callable[[str], str]
) -> None:
    entered, release = threading.Event(), threading.Event()
    serve(blocking_app(names, entered, release))
    work = queue_name("work")

    async def close_while_calling() -> tuple[list[Any], bool]:
        client = await AsyncClient(broker_url, **names).connect()
        rpc = asyncio.ensure_future(client.rpc("svc.block", None, timeout=30))
        assert await asyncio.to_thread(entered.wait, HOLD_AT_MOST), "the RPC never reached its handler"
        send = asyncio.ensure_future(client.task(work, "sent while closing"))
        await asyncio.sleep(0)  # the send starts: on RabbitMQ it now waits for the broker's confirm
        send_in_flight = not send.done()
        await client.close()
        outcomes = await asyncio.wait_for(asyncio.gather(rpc, send, return_exceptions=True), 5)
        return outcomes, send_in_flight

    try:
        (rpc_outcome, send_outcome), send_in_flight = asyncio.run(close_while_calling())
    finally:
        release.set()
    assert isinstance(rpc_outcome, BrokerUnavailable), repr(rpc_outcome)
    if broker_url.startswith("amqp"):
        assert send_in_flight, "the task send was over before the client closed: this test proves nothing"
        assert isinstance(send_outcome, BrokerUnavailable), repr(send_outcome)
    else:  # in process, a send completes without waiting for anything: its outcome is the task's id
        assert isinstance(send_outcome, (str, BrokerUnavailable)), repr(send_outcome)


def test_closing_a_client_fails_its_calls_in_flight_with_broker_unavailable(
    serve: Serve, broker_url: str, names: dict[str, Any], queue_name: Callable[[str], str]
) -> None:
    entered, release = threading.Event(), threading.Event()
    serve(blocking_app(names, entered, release))
    work = queue_name("work")
    client = Client(broker_url, **names)
    assert client.comm, client.error
    try:
        rpc = client.rpc("svc.block", None, timeout=30)
        assert entered.wait(HOLD_AT_MOST), "the RPC never reached its handler"
        send = client.comm.task_send("sent while closing", name=work)
        client.close()
        with pytest.raises(BrokerUnavailable):
            rpc.result(timeout=5)
        # The send raced the close: it got through (None) or failed the same typed way, never cancelled (a bare
        # CancelledError would raise from .exception() here).
        assert send.exception(timeout=5) is None or isinstance(send.exception(), BrokerUnavailable)
    finally:
        release.set()
        client.close()
