"""A plain kiwipy program talks to an Otter app over the real RabbitMQ: the wire protocol is kiwipy's.

The kiwipy side is kiwipy's own ``RmqThreadCommunicator`` with a JSON codec (Otter never speaks YAML), pointed at
the same exchanges and default task queue as the app.
"""

from __future__ import annotations

import json
import queue
import uuid
from collections.abc import Iterator
from typing import Any

import kiwipy
import kiwipy.rmq
import pytest

import otter
from otter import Client, Otter
from otter.testing import ServedApp
from rawbroker import RawBroker


def json_encoder(value: Any) -> bytes:
    return json.dumps(value).encode("utf-8")


def json_decoder(raw: bytes) -> Any:
    return json.loads(raw)


@pytest.fixture
def kiwipy_world(amqp_url: str, names: dict[str, Any]) -> Iterator[tuple[kiwipy.rmq.RmqThreadCommunicator, Any]]:
    """An Otter app served in a thread and a kiwipy communicator on the same names; yields (kiwi, broadcasts)."""
    task_name = f"interop-{uuid.uuid4().hex[:10]}.double"
    broadcasts: queue.Queue[tuple[Any, ...]] = queue.Queue()
    app = Otter("interop")

    @app.add_rpc("interop.echo")
    def echo(comm: Any, data: Any) -> Any:
        return {"echo": data}

    @app.add_rpc("interop.fail")
    def fail(comm: Any, data: Any) -> Any:
        raise ValueError(f"cannot handle {data!r}")

    @app.add_broadcast(["interop.*"])
    def on_broadcast(comm: Any, body: Any, sender: Any, subject: Any, correlation_id: Any) -> None:
        broadcasts.put((body, sender, subject, correlation_id))

    @app.add_task(task_name)  # the app's only task handler, so it also serves the default task queue
    def double(comm: Any, number: int) -> int:
        return number * 2

    try:
        with ServedApp(app, amqp_url, **names):
            kiwi = kiwipy.rmq.RmqThreadCommunicator.connect(
                connection_params={"url": amqp_url},
                encoder=json_encoder,
                decoder=json_decoder,
                message_exchange=names["MESSAGE_EXCHANGE"],
                task_exchange=names["TASK_EXCHANGE"],
                task_queue=names["DEFAULT_TASK_QUEUE"],
            )
            try:
                yield kiwi, broadcasts
            finally:
                kiwi.close()
    finally:
        with RawBroker.open(amqp_url, names) as raw:
            raw.delete(task_name)


@pytest.mark.amqp
def test_kiwipy_rpc_gets_the_result(kiwipy_world: tuple[Any, Any]) -> None:
    kiwi, _ = kiwipy_world
    assert kiwi.rpc_send("interop.echo", {"otter": [1, 2]}).result(timeout=10) == {"echo": {"otter": [1, 2]}}


@pytest.mark.amqp
def test_kiwipy_rpc_gets_a_remote_exception_for_a_handler_error(kiwipy_world: tuple[Any, Any]) -> None:
    kiwi, _ = kiwipy_world
    with pytest.raises(kiwipy.RemoteException, match=r"ValueError: cannot handle 'boom'"):
        kiwi.rpc_send("interop.fail", "boom").result(timeout=10)


@pytest.mark.amqp
def test_kiwipy_broadcast_reaches_the_otter_handler(kiwipy_world: tuple[Any, Any]) -> None:
    kiwi, broadcasts = kiwipy_world
    assert kiwi.broadcast_send({"n": 1}, sender="kiwi", subject="interop.hello", correlation_id="c-1")
    assert broadcasts.get(timeout=10) == ({"n": 1}, "kiwi", "interop.hello", "c-1")


@pytest.mark.amqp
def test_kiwipy_task_on_the_default_queue_gets_its_result(kiwipy_world: tuple[Any, Any]) -> None:
    kiwi, _ = kiwipy_world
    assert kiwi.task_send(21).result(timeout=10) == 42


@pytest.mark.amqp
def test_an_otter_client_calls_a_kiwipy_rpc_subscriber(kiwipy_world: tuple[Any, Any], amqp_url: str,
                                                       names: dict[str, Any]) -> None:
    """kiwipy replies on its message exchange, not the default one: Otter's reply queue is bound there too."""
    kiwi, _ = kiwipy_world
    kiwi.add_rpc_subscriber(lambda comm, msg: {"kiwi": msg}, "kiwi.echo")
    with Client(amqp_url, **names) as client:
        assert client.rpc("kiwi.echo", [1, "two"], timeout=10).result() == {"kiwi": [1, "two"]}


@pytest.mark.amqp
def test_an_otter_broadcast_reaches_a_kiwipy_subscriber(kiwipy_world: tuple[Any, Any], amqp_url: str,
                                                        names: dict[str, Any]) -> None:
    kiwi, _ = kiwipy_world
    heard: queue.Queue[tuple[Any, ...]] = queue.Queue()
    kiwi.add_broadcast_subscriber(lambda comm, body, sender, subject, cid: heard.put((body, sender, subject, cid)))
    with Client(amqp_url, **names) as client:
        client.broadcast({"n": 2}, subject="kiwi.hello", sender="otter", correlation_id="c-2")
    assert heard.get(timeout=10) == ({"n": 2}, "otter", "kiwi.hello", "c-2")


@pytest.mark.amqp
def test_a_kiwipy_task_sender_hears_only_the_final_outcome_of_a_retried_task(amqp_url: str,
                                                                          names: dict[str, Any]) -> None:
    """kiwipy's ``task_send(body, no_reply=False)`` future resolves once: a retry keeps the sender's reply_to, and
    only the last attempt replies (with the result, or with the error kiwipy raises as a ``RemoteException``)."""
    task_name = f"interop-{uuid.uuid4().hex[:10]}.flaky"
    attempts: queue.Queue[tuple[Any, int]] = queue.Queue()
    app = Otter("interop-retries")

    @app.add_task(task_name, max_retries=1, backoff=0.05, jitter=False)  # its only task: the default queue's
    def flaky(comm: Any, body: Any) -> Any:
        context = otter.current_context()
        assert context is not None
        attempts.put((body, context.attempt))
        if body == "never" or context.attempt == 1:
            raise ValueError(f"attempt {context.attempt} of {body} failed")
        return f"{body} done"

    try:
        with ServedApp(app, amqp_url, **names):
            kiwi = kiwipy.rmq.RmqThreadCommunicator.connect(
                connection_params={"url": amqp_url}, encoder=json_encoder, decoder=json_decoder,
                message_exchange=names["MESSAGE_EXCHANGE"], task_exchange=names["TASK_EXCHANGE"],
                task_queue=names["DEFAULT_TASK_QUEUE"],
            )
            try:
                assert kiwi.task_send("job", no_reply=False).result(timeout=10) == "job done"
                assert [attempts.get(timeout=1) for _ in range(2)] == [("job", 1), ("job", 2)]
                with pytest.raises(kiwipy.RemoteException, match="attempt 2 of never failed"):
                    kiwi.task_send("never", no_reply=False).result(timeout=10)
            finally:
                kiwi.close()
    finally:
        with RawBroker.open(amqp_url, names) as raw:
            raw.delete(task_name)
