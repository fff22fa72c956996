"""The metrics watcher hears of every publish a worker makes, the pipelined sends of ``comm`` included."""

from __future__ import annotations

import asyncio
import os

import pytest

from conftest import unique_names
from otter.codec import JsonCodec
from otter.comm import Communicator
from otter.config import resolve
from otter.transports import open_transport
from otter.transports.amqp import fence

AMQP_URL = os.environ.get("OTTER_TEST_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672/")


class Recorder:
    """A ``TransportWatcher`` that keeps what it is told."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def published(self, what: str, seconds: float) -> None:
        assert seconds >= 0
        self.seen.append(what)

    def connection_changed(self, up: bool, reconnected: bool) -> None:
        pass


@pytest.fixture(params=["fast", "public"])
def path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The fast path pipelines sends; the public path (an aiormq the fence was not written for) awaits each."""
    if request.param == "public":
        monkeypatch.setattr(fence, "installed_versions", lambda: {"aio-pika": "9.5.8", "aiormq": "7.0.0",
                                                                   "pamqp": "3.3.0"})
    return str(request.param)


def test_task_and_broadcast_sends_are_reported_once_each(path: str) -> None:
    names = unique_names("watch")
    config = resolve({"BROKER_URL": AMQP_URL, **names})
    queue = f"{names['RPC_QUEUE_PREFIX']}watched"

    async def run() -> list[str]:
        transport = open_transport(AMQP_URL, config)
        recorder = Recorder()
        transport.watcher = recorder
        await transport.connect()
        try:
            comm = Communicator(transport, JsonCodec.from_config(config), asyncio.get_running_loop(), rpc_timeout=5)
            assert transport.pipelines == (path == "fast")
            for n in range(3):  # the first declares the queue, the others go the pipelined way
                await comm.task(queue, n)
            await comm.broadcast_send({"n": 1}, subject="watch.me")
        finally:
            await transport.close()
        return recorder.seen

    try:
        assert sorted(asyncio.run(run())) == ["broadcast", "task", "task", "task"]
    finally:
        from rawbroker import RawBroker

        with RawBroker.open(AMQP_URL, names) as raw:
            raw.delete(queue)
