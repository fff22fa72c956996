"""The schedule holder (``otter.scheduler``) on the real RabbitMQ: a schedule whose state message is gone while
workers run is seeded again, rather than stopping for good."""

from __future__ import annotations

import asyncio
import queue
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import aio_pika
import pytest

from otter import Otter, scheduler
from otter.protocol import SCHEDULE_QUEUE_ARGUMENTS, schedule_queue_name
from otter.testing import ServedApp
from rawbroker import RawBroker


@pytest.fixture
def foreign_loop() -> Iterator[asyncio.AbstractEventLoop]:
    """An event loop in a thread of its own, for a plain aio-pika consumer beside the app."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield loop
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.close()


@pytest.mark.amqp
@pytest.mark.parametrize("reseed", [0.5, 60.0], ids=["reseeded", "control-without-reseed"])
def test_a_schedule_whose_state_is_lost_under_running_workers_starts_again(
    amqp_url: str, names: dict[str, Any], foreign_loop: asyncio.AbstractEventLoop, monkeypatch: pytest.MonkeyPatch,
    reseed: float,
) -> None:
    """A foreign consumer holds the lease first and swallows the state (here: there is none to swallow, so the app,
    finding the queue in use, sends no seed); when it leaves, the app's worker is active with nothing to hold."""
    monkeypatch.setattr(scheduler, "RESEED_INTERVAL", reseed)
    name = f"lost-{uuid.uuid4().hex[:10]}"
    lease = schedule_queue_name(name)

    def run(coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, foreign_loop).result(10)

    async def swallow(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        await message.ack()

    async def hold_the_lease() -> tuple[aio_pika.abc.AbstractConnection, aio_pika.abc.AbstractQueue, str]:
        connection = await aio_pika.connect(amqp_url)
        channel = await connection.channel()
        thief = await channel.declare_queue(lease, durable=True, arguments=SCHEDULE_QUEUE_ARGUMENTS)
        return connection, thief, await thief.consume(swallow)

    ticks: queue.Queue[Any] = queue.Queue()
    app = Otter(**names)
    app.add_periodic(name, every=0.2)(lambda comm, tick: ticks.put(tick))
    connection, thief, tag = run(hold_the_lease())
    try:
        with ServedApp(app, amqp_url, **names, SHUTDOWN_GRACE=5):
            run(thief.cancel(tag))  # the app's worker is the active consumer now, of an empty queue
            if reseed < 10:
                assert ticks.get(timeout=10)["periodic"] == name
            else:
                with pytest.raises(queue.Empty):
                    ticks.get(timeout=3)
    finally:
        run(connection.close())
        with RawBroker.open(amqp_url, names) as raw:
            raw.delete(name, lease)
