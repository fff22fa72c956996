"""A broker that cannot be reached, or that says no, gives one line naming the cause and the fix, exit code 4 and no
traceback; ``otter run`` waits for a broker that is not up yet, but not for one that refuses.

Through real ``otter`` processes. (Refused permissions need a user of their own, so they are tested on a private
node in ``tests/faults/test_connection_refusals.py``; TLS failures in ``tests/test_tls.py``.)
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from helpers_process import REPO_ROOT, AppProcess, app_env

AMQP = "amqp://guest:guest@127.0.0.1:5672/"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def not_amqp() -> Iterator[int]:
    """A port where something answers, but not AMQP (an HTTP-ish reply, then close)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    stop = threading.Event()

    def serve() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                connection, _ = server.accept()
            except OSError:
                continue
            with connection:
                connection.recv(64)
                connection.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield int(server.getsockname()[1])
    stop.set()
    thread.join(5)
    server.close()


def otter(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "otter", *args], cwd=REPO_ROOT, env=app_env(env), text=True,
                          capture_output=True, timeout=timeout)


def assert_one_clear_line(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert result.returncode == 4, result.stderr
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert "guest:guest" not in lines[0] and "wrong-password" not in lines[0]


@pytest.mark.parametrize(
    ("url", "fragments"),
    [
        pytest.param(f"{AMQP}no-such-vhost", ["no virtual host 'no-such-vhost'", "rabbitmqctl add_vhost"],
                     id="unknown vhost"),
        pytest.param("amqp://guest:wrong-password@127.0.0.1:5672/", ["refused the login", "user name and password"],
                     id="wrong password"),
        pytest.param("amqp://guest:guest@127.0.0.1:{free}/", ["connection refused", "is RabbitMQ running"],
                     id="refused port"),
        pytest.param("amqp://guest:guest@127.0.0.1:{not_amqp}/", ["did not answer as an AMQP broker", "AMQP port"],
                     id="not an AMQP port"),
    ],
)
def test_a_client_command_says_why_it_cannot_connect_in_one_line(url: str, fragments: list[str], not_amqp: int) -> None:
    url = url.format(free=free_port(), not_amqp=not_amqp)
    assert_one_clear_line(otter("call", "--broker", url, "svc.name", "1"), *fragments)


def test_otter_run_waits_for_an_unreachable_broker_with_a_line_per_attempt_then_exits_4() -> None:
    url = f"amqp://guest:guest@127.0.0.1:{free_port()}/"
    started = time.monotonic()
    result = otter("run", "examples.app:app", env={"OTTER_BROKER_URL": url, "OTTER_STARTUP_WAIT": "2"})
    waited = time.monotonic() - started
    assert result.returncode == 4, result.stderr
    attempts = [line for line in result.stderr.splitlines() if "trying again in" in line]
    assert len(attempts) >= 2 and all("connection refused" in line for line in attempts)
    assert "Traceback" not in result.stderr and "error when creating transport" not in result.stderr
    assert waited >= 2


def test_otter_run_does_not_wait_for_a_broker_that_refuses() -> None:
    result = otter("run", "examples.app:app", env={"OTTER_BROKER_URL": f"{AMQP}no-such-vhost",
                                                   "OTTER_STARTUP_WAIT": "60"}, timeout=30)
    assert result.returncode == 4, result.stderr
    assert "trying again" not in result.stderr and "no virtual host 'no-such-vhost'" in result.stderr


def test_sigterm_while_waiting_for_the_broker_exits_0_at_once() -> None:
    url = f"amqp://guest:guest@127.0.0.1:{free_port()}/"
    with AppProcess("-m", "otter", "run", "examples.app:app",
                    env={"OTTER_BROKER_URL": url, "OTTER_STARTUP_WAIT": "60"}) as process:
        process.wait_for("trying again in")
        started = time.monotonic()
        assert process.stop(signal.SIGTERM, timeout=10) == 0
        assert time.monotonic() - started < 5
        assert "stopped before the broker could be reached" in process.output


def test_a_refused_deprecated_feature_is_named_with_its_fix() -> None:
    from otter.transports.amqp.errors import deprecated_feature

    refusal = Exception("INTERNAL_ERROR - Feature `transient_nonexcl_queues` is deprecated. Its use is not permitted "
                        "per the configuration")
    text = deprecated_feature(refusal)
    assert text is not None and "'transient_nonexcl_queues'" in text
    assert "deprecated_features.permit.transient_nonexcl_queues = true" in text
    assert deprecated_feature(Exception("NOT_FOUND - no queue 'x'")) is None


def test_several_brokers_are_tried_in_order_and_no_password_leaks() -> None:
    from otter import Client, Unroutable

    down = f"amqp://guest:first-secret@127.0.0.1:{free_port()}/"
    with Client(f"{down};{AMQP}") as client:  # the first refuses the connection: the second answers
        assert client.comm, client.error
        with pytest.raises(Unroutable):
            client.rpc("nobody.serves.this", timeout=5).result()
    with Client(f"{AMQP}no-such-vhost;amqp://guest:second-secret@127.0.0.1:{free_port()}/") as client:
        assert not client.comm and client.error is not None
        text = f"{client.error} {client!r}"
        assert "none of the 2 brokers" in text and "no virtual host 'no-such-vhost'" in text
        assert "connection refused" in text
        assert "second-secret" not in text and "guest:guest" not in text


@pytest.mark.parametrize(("read", "refused"), [(0, False), (7, True)])
def test_a_peer_that_closes_having_sent_nothing_is_waited_for_not_refused(read: int, refused: bool) -> None:
    """A broker still starting, or a proxy whose backend is down, closes before saying anything: worth waiting for
    (STARTUP_WAIT). A peer that answered something else is another service's port: a refusal."""
    import aiormq

    from otter.transports.amqp.errors import connect_failure

    closed = aiormq.exceptions.AMQPConnectionError(
        f"Server connection unexpectedly closed. Read {read} bytes but 7 bytes expected")
    why, is_refusal = connect_failure(closed, False, "127.0.0.1:5999")
    assert is_refusal is refused, why
