"""The Client's own contract: the seed's ``if client.comm:`` pattern, clear connection errors, argument forms."""

from __future__ import annotations

import asyncio
import gc
import socket
import threading
import time

import pytest

from faults.socket_leaks import LEAKED_SOCKET_FILTER
from helpers_process import wait_until
from otter import AsyncClient, BrokerUnavailable, Client
from otter.testing import unique_names
from rawbroker import RawBroker


def closed_port() -> int:
    """A local port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_unreachable_broker_gives_a_falsy_comm_and_a_clear_error() -> None:
    url = f"amqp://guest:s3cret-pw@127.0.0.1:{closed_port()}/"
    started = time.monotonic()
    client = Client(url)
    try:
        assert not client.comm
        assert time.monotonic() - started < 5
        assert isinstance(client.error, BrokerUnavailable)
        assert "cannot connect to RabbitMQ" in str(client.error)
        assert "s3cret-pw" not in str(client.error) and "s3cret-pw" not in repr(client)
        with pytest.raises(BrokerUnavailable, match="cannot connect"):
            client.rpc("example.hash", "otter")
        with pytest.raises(BrokerUnavailable):
            client.task(5)
        with pytest.raises(BrokerUnavailable):
            client.broadcast("otter", subject="message.send")
    finally:
        client.close()


@LEAKED_SOCKET_FILTER  # the refused login leaves aiormq's socket to the collector: collected here, not in another test
def test_wrong_password_is_reported_without_the_password(amqp_url: str) -> None:
    url = amqp_url.replace("guest:guest@", "guest:not-the-password@")
    with Client(url) as client:
        assert not client.comm
        assert "refused the login" in str(client.error) or "ACCESS_REFUSED" in str(client.error)
        assert "not-the-password" not in str(client.error)
    gc.collect()


def test_task_takes_a_body_or_a_name_and_a_body() -> None:
    with Client("memory://client-args") as client:
        client.task({"any": "body"})  # the seed's form: the default queue
        client.task("named.task", [1, 2])
        with pytest.raises(TypeError, match=r"client.task\(name, body\)"):
            client.task(1, 2)
        with pytest.raises(TypeError):
            client.task()


def test_close_is_idempotent_and_the_client_is_a_context_manager() -> None:
    with Client("memory://client-close") as client:
        assert client.comm
    client.close()
    assert "memory://client-close" in repr(client)


def test_async_client_says_how_to_connect() -> None:
    async def main() -> None:
        client = AsyncClient("memory://async-client")
        with pytest.raises(BrokerUnavailable, match="async with AsyncClient"):
            await client.rpc("x", 1)

    asyncio.run(main())


def test_closing_while_tasks_are_being_sent_fails_them_with_broker_unavailable(amqp_url: str) -> None:
    """Never a bare CancelledError: each send either completed or says the connection went away."""
    names = unique_names("close")
    task = f"{names['TASK_EXCHANGE']}.job"
    client = Client(amqp_url, **names)
    outcomes: list[str] = []
    lock = threading.Lock()
    go = threading.Event()

    def send() -> None:
        go.wait(5)
        for n in range(1_000_000):  # until the close refuses one
            try:
                client.task(task, n)
                outcome = "ok"
            except BaseException as exc:
                outcome = type(exc).__name__
            with lock:
                outcomes.append(outcome)
            if outcome != "ok":
                return

    threads = [threading.Thread(target=send) for _ in range(8)]
    for thread in threads:
        thread.start()
    go.set()
    # Sends are under way once one has gone through (each thread keeps sending until one fails).
    wait_until(lambda: "ok" in outcomes, what="the first send")
    client.close()
    for thread in threads:
        thread.join(10)
    assert set(outcomes) <= {"ok", "BrokerUnavailable"}, outcomes
    assert "BrokerUnavailable" in outcomes
    with RawBroker.open(amqp_url, names) as raw:
        raw.delete(task)


def test_keyword_config_is_read_in_any_case_and_a_typo_is_refused() -> None:
    from otter.errors import ConfigurationError

    with Client("memory://client-kwargs", rpc_timeout=5) as client:
        assert client.config["RPC_TIMEOUT"] == 5.0  # not silently dropped, as lowercase keys used to be
    with pytest.raises(ConfigurationError, match="did you mean RPC_TIMEOUT"):
        Client("memory://client-kwargs", rpc_timout=5)
