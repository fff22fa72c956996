"""The sync ``Client``'s pipelined sends on the real broker: ``task``/``broadcast`` return once handed over, and
``flush``/``close`` wait for every confirm and name what the broker refused (``otter.outbox``)."""

from __future__ import annotations

import queue
import subprocess
import sys
import threading
from typing import Any

import pytest

from helpers_process import wait_until
from otter import Client, Otter, Undelivered, Unroutable
from otter.errors import BrokerUnavailable
from otter.testing import ServedApp
from rawbroker import RawBroker

pytestmark = pytest.mark.amqp


def test_a_loop_of_tasks_is_all_in_its_queue_when_flush_returns(amqp_url: str, names: dict[str, Any]) -> None:
    job = f"{names['TASK_EXCHANGE']}.job"
    with RawBroker.open(amqp_url, names) as raw, Client(amqp_url, **names) as client:
        for n in range(500):
            client.task(job, n)
        client.flush()
        assert raw.depth(job) == 500


def test_one_client_s_tasks_arrive_in_the_order_they_were_sent(amqp_url: str, names: dict[str, Any]) -> None:
    """Including those sent while the first send still declares the queue."""
    job = f"{names['TASK_EXCHANGE']}.ordered"
    seen: queue.Queue[int] = queue.Queue()
    app = Otter(**names)
    app.add_task(job)(lambda comm, n: seen.put(n))
    with ServedApp(app, amqp_url, CONCURRENCY=1, **names), Client(amqp_url, **names) as client:
        for n in range(300):
            client.task(job, n)
        client.flush()
        assert [seen.get(timeout=10) for _ in range(300)] == list(range(300))


def test_a_refused_task_surfaces_at_flush_naming_it(amqp_url: str, names: dict[str, Any]) -> None:
    job = f"{names['TASK_EXCHANGE']}.refused"
    with RawBroker.open(amqp_url, names) as raw, Client(amqp_url, **names) as client:
        client.task(job, "declares the queue")
        client.flush()
        raw.delete(job)  # the client still believes it declared: the broker returns the next sends
        for n in range(3):
            client.task(job, n)
        with pytest.raises(Undelivered) as caught:
            client.flush()
        failures = caught.value.failures
        assert failures and all(isinstance(f.error, Unroutable) and f.target == job for f in failures), failures
        assert job in str(caught.value) and "Unroutable" in str(caught.value)
        client.flush()  # the failures were reported once
        raw.delete(job)


def test_a_refused_task_surfaces_at_close(amqp_url: str, names: dict[str, Any]) -> None:
    job = f"{names['TASK_EXCHANGE']}.refused-at-close"
    with RawBroker.open(amqp_url, names) as raw:
        client = Client(amqp_url, **names)
        client.task(job, "declares the queue", wait=True)
        raw.delete(job)
        client.task(job, "returned")
        with pytest.raises(Undelivered, match="Unroutable") as caught:
            client.close()
        assert [f.correlation_id for f in caught.value.failures]
        with pytest.raises(BrokerUnavailable, match="closed"):
            client.task(job, "too late")
        raw.delete(job)


def test_wait_true_raises_the_refusal_of_that_send(amqp_url: str, names: dict[str, Any]) -> None:
    job = f"{names['TASK_EXCHANGE']}.wait"
    with RawBroker.open(amqp_url, names) as raw, Client(amqp_url, **names) as client:
        client.task(job, 1, wait=True)
        assert raw.depth(job) == 1  # confirmed when the call returned
        raw.delete(job)
        with pytest.raises(Unroutable, match=job):
            client.task(job, 2, wait=True)
        client.flush()  # reported to the caller who waited, not again


def test_broadcasts_are_confirmed_by_flush_and_reach_a_subscriber(amqp_url: str, names: dict[str, Any]) -> None:
    got: queue.Queue[Any] = queue.Queue()
    app = Otter(**names)
    app.add_broadcast(["bench.*"])(lambda comm, body, sender, subject, correlation_id: got.put(body))
    with ServedApp(app, amqp_url, **names), Client(amqp_url, **names) as client:
        def bound() -> bool:
            client.broadcast("ping", subject="bench.ping")
            client.flush()
            try:
                return got.get(timeout=0.2) == "ping"
            except queue.Empty:
                return False

        wait_until(bound, 10, "the subscriber's binding")
        for n in range(200):
            client.broadcast(n, subject="bench.n")
        client.flush()
        received = set()
        while len(received) < 200:
            body = got.get(timeout=10)
            if body != "ping":
                received.add(body)
        assert received == set(range(200))


def test_a_full_window_blocks_the_sender_until_confirms_come(amqp_url: str, names: dict[str, Any]) -> None:
    """The I/O thread is held, so nothing is confirmed: SEND_WINDOW sends return, the next one blocks."""
    job = f"{names['TASK_EXCHANGE']}.window"
    with RawBroker.open(amqp_url, names) as raw, Client(amqp_url, SEND_WINDOW=3, **names) as client:
        client.task(job, "declares the queue", wait=True)
        gate, returned = threading.Event(), []
        client.comm.loop.call_soon_threadsafe(gate.wait, 10)  # type: ignore[union-attr]

        def send() -> None:
            for n in range(5):
                client.task(job, n)
                returned.append(n)

        sender = threading.Thread(target=send)
        sender.start()
        wait_until(lambda: len(returned) == 3, 5, "three sends to return")
        sender.join(0.5)
        assert sender.is_alive() and returned == [0, 1, 2], "the fourth send should wait for room in the window"
        gate.set()
        sender.join(10)
        assert returned == [0, 1, 2, 3, 4]
        client.flush()
        assert raw.depth(job) == 6


def test_a_failed_comm_send_nobody_waited_for_is_logged(
    amqp_url: str, names: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    """``comm.task`` (what handlers use) returns its future at once; if nobody looks at it, a failure is logged."""
    job = f"{names['TASK_EXCHANGE']}.unwatched"
    with RawBroker.open(amqp_url, names) as raw, Client(amqp_url, **names) as client:
        assert client.comm
        client.comm.task(job, 1).result()
        raw.delete(job)  # both sends below are returned by the broker
        unwatched = client.comm.task(job, 3)
        watched = client.comm.task(job, 2)
        with pytest.raises(Unroutable):
            watched.result()
        wait_until(unwatched.done, 10, "the send to fail")
        errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
        assert len(errors) == 1 and job in errors[0] and "nobody was waiting" in errors[0], errors
        raw.delete(job)


EXIT_SCRIPT = """
import logging, sys
logging.basicConfig(level=logging.WARNING, format="%(name)s %(levelname)s %(message)s")
from otter import Client
url, queue, names = sys.argv[1], sys.argv[2], dict(arg.split("=", 1) for arg in sys.argv[3:])
client = Client(url, **names)
client.task(queue, "declares it", wait=True)
if "refused" in queue:
    import asyncio, aio_pika
    async def delete():
        async with await aio_pika.connect(url) as connection:
            await (await connection.channel()).queue_delete(queue)
    asyncio.run(delete())
for n in range(2000):
    client.task(queue, n)
"""  # and exits without flush() or close()


@pytest.mark.parametrize("case", ["kept", "refused"])
def test_interpreter_exit_waits_for_the_confirms_and_logs_what_failed(
    amqp_url: str, names: dict[str, Any], case: str
) -> None:
    job = f"{names['TASK_EXCHANGE']}.exit-{case}"
    with RawBroker.open(amqp_url, names) as raw:
        try:
            done = subprocess.run(
                [sys.executable, "-c", EXIT_SCRIPT, amqp_url, job, *(f"{k}={v}" for k, v in names.items())],
                capture_output=True, text=True, timeout=60,
            )
            assert done.returncode == 0, done.stderr
            if case == "kept":
                assert raw.depth(job) == 2001, done.stderr
                assert "ERROR" not in done.stderr, done.stderr
            else:
                assert "at exit" in done.stderr and "not delivered" in done.stderr and "Unroutable" in done.stderr
        finally:
            raw.delete(job)


def test_the_io_thread_is_woken_once_per_batch_not_per_message(amqp_url: str, names: dict[str, Any]) -> None:
    job = f"{names['TASK_EXCHANGE']}.batch"
    with RawBroker.open(amqp_url, names) as raw, Client(amqp_url, **names) as client:
        client.task(job, "declares the queue", wait=True)
        outbox = client._outbox
        gate = threading.Event()
        client.comm.loop.call_soon_threadsafe(gate.wait, 10)  # type: ignore[union-attr]  # the loop is busy
        before = outbox.wakeups
        for n in range(100):
            client.task(job, n)
        gate.set()
        client.flush()
        assert outbox.wakeups - before == 1
        assert raw.depth(job) == 101
