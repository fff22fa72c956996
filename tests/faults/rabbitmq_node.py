"""A private RabbitMQ node for tests that restart or break the broker.

The shared broker on 5672 is never touched: the node has its own name, ports, data directory, Erlang cookie (its own
``HOME``), env file and config, and ``stop()`` kills it by its pid file. It serves plain AMQP on ``port`` and
TLS on ``tls_port`` (peer verification required), with a user whose password is unique, so a test can assert that the
password shows up nowhere. A watchdog process (``node_watchdog.py``) stops the node if pytest dies without doing so.

One node per pytest session, which under pytest-xdist means one per worker process that runs such a test, started
on first use (about 4 s, more on a busy machine): the tests on one node run one at a time, so a broker restart never
hits another test. (Grouping them on one worker with ``xdist_group`` would start a single node, but ``--dist
loadgroup`` does not group anything with pytest 9: it renames ``item._nodeid``, which pytest 9 no longer reads.)
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Self

import pytest

from .certificates import CertificateSet, generate_certificates
from .node_watchdog import alive

__all__ = ["REQUIRE_RABBITMQ_SERVER", "PrivateRabbitMQ", "advanced_config", "consumer_timeout_line",
           "private_broker_fixture", "rabbitmq_installed", "require_rabbitmq_server"]

# Set (to 1) by scripts/test, the README's test command: there a missing rabbitmq-server fails the tests that need
# it instead of skipping them, so a run that skipped the fault and TLS tests cannot pass for a full one.
REQUIRE_RABBITMQ_SERVER = "OTTER_TEST_REQUIRE_RABBITMQ_SERVER"

# The Debian package's /usr/sbin wrappers switch to the rabbitmq user and that user's cookie; the scripts behind them
# run as whoever calls them, with the HOME (and so the cookie) we give them.
_SCRIPT_DIRS = ("/usr/lib/rabbitmq/bin", "/usr/local/lib/rabbitmq/bin")


def _script(name: str) -> str | None:
    for directory in _SCRIPT_DIRS:
        candidate = Path(directory, name)
        if candidate.exists():
            return str(candidate)
    return shutil.which(name)


def rabbitmq_installed() -> bool:
    return _script("rabbitmq-server") is not None and _script("rabbitmqctl") is not None


def require_rabbitmq_server() -> None:
    """Return if rabbitmq-server and rabbitmqctl are here; else fail the test when ``REQUIRE_RABBITMQ_SERVER`` is
    set, and skip it when not (plain ``pytest`` on a developer's machine)."""
    if rabbitmq_installed():
        return
    why = "rabbitmq-server is not installed here, so no private RabbitMQ node can be started"
    if os.environ.get(REQUIRE_RABBITMQ_SERVER, "") not in ("", "0"):
        pytest.fail(f"{why}: install it (apt-get install rabbitmq-server), or run plain pytest to skip the tests "
                    f"that need it ({REQUIRE_RABBITMQ_SERVER} is set)", pytrace=False)
    pytest.skip(why)


class PrivateRabbitMQ:
    """A RabbitMQ node of our own. ``url``/``tls_url`` carry the credentials; ``restart_app()`` restarts the broker
    application (connections drop, durable queues and persistent messages survive) without restarting Erlang.

    ``consumer_timeout`` (seconds) sets the broker's delivery acknowledgement timeout; a channel checks it on each
    tick, once a minute by default, so the node then ticks every ``TICK_FOR_TIMEOUT`` of it (``advanced.config``'s
    ``channel_tick_interval``), which makes a timeout of a few seconds fire within a fraction of a second of it."""

    def __init__(self, base: Path, *, consumer_timeout: float | None = None) -> None:
        self.base = base
        self.consumer_timeout = consumer_timeout
        self.node = f"otter-fault-{uuid.uuid4().hex[:8]}@localhost"
        self.port, self.tls_port, self.dist_port = _free_ports(3)
        self.user = "otter"
        self.password = f"otter-secret-{uuid.uuid4().hex}"
        self.certs: CertificateSet = generate_certificates(base / "certs")
        self.pid_file = base / "node.pid"
        self._env = self._environment()
        self._watchdog: subprocess.Popen[bytes] | None = None
        self.watched_pid = os.getpid()  # the process whose end stops the node (see node_watchdog.py)

    def __repr__(self) -> str:
        return f"<PrivateRabbitMQ {self.node} amqp:{self.port} amqps:{self.tls_port}>"

    @property
    def url(self) -> str:
        return f"amqp://{self.user}:{self.password}@127.0.0.1:{self.port}/"

    @property
    def tls_url(self) -> str:
        return f"amqps://{self.user}:{self.password}@localhost:{self.tls_port}/"

    # -- lifecycle ----------------------------------------------------------------------------------------------
    def start(self, timeout: float = 60.0) -> PrivateRabbitMQ:
        subprocess.run(
            [*self._command("rabbitmq-server"), "-detached"],
            env=self._env,
            cwd=self.base,
            check=True,
            timeout=timeout,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self._watchdog = self._start_watchdog(timeout)
        # The listeners open at the very end of the boot, so an open port means the broker is ready.
        self._wait_for_port(self.port, timeout)
        if self.tls_port is not None:
            self._wait_for_port(self.tls_port, timeout)
        return self

    def stop(self) -> None:
        """Kill this node (by its pid file) and remove its data. Its data is thrown away, so there is nothing a clean
        shutdown would save: ``rabbitmqctl stop`` boots an Erlang VM of its own to ask for one, which cost 5-10 s of
        a loaded 2-core machine per node at the end of every session."""
        pid = self._pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 10
            while alive(pid) and time.monotonic() < deadline:
                time.sleep(0.02)
        shutil.rmtree(self.base / "mnesia", ignore_errors=True)
        if self._watchdog is not None:
            self._watchdog.kill()
            self._watchdog.wait(10)

    def shut_down(self) -> None:
        """Stop the node cleanly (``rabbitmqctl stop``), keeping its data: ``restart()`` brings it back as an
        operator's restart of the broker would."""
        pid = self._pid()
        assert pid is not None and alive(pid), f"{self.node} is not running"
        self.ctl("stop", timeout=180)  # slow on a loaded machine
        deadline = time.monotonic() + 30
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        self._forget_watchdog()

    def kill(self) -> None:
        """SIGKILL the node's Erlang VM (no clean shutdown: a crash or a lost machine). ``restart()`` brings it back
        with its data, so a cluster member rejoins its cluster."""
        pid = self._pid()
        assert pid is not None and alive(pid), f"{self.node} is not running"
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        self._forget_watchdog()
        self.pid_file.unlink(missing_ok=True)

    def _forget_watchdog(self) -> None:
        if self._watchdog is not None:  # it watched the node's pid; restart() starts a new one
            self._watchdog.kill()
            self._watchdog.wait(10)
            self._watchdog = None

    def restart(self, timeout: float = 60.0) -> Self:
        self.pid_file.unlink(missing_ok=True)
        return self.start(timeout)

    def stop_app(self) -> None:
        self.ctl("stop_app")

    def start_app(self, timeout: float = 60.0) -> None:
        self.ctl("start_app", timeout=timeout)
        self._wait_for_port(self.port, timeout)

    def restart_app(self) -> None:
        self.stop_app()
        self.start_app()

    def serving(self) -> bool:
        """Whether the broker application runs: its AMQP listener opens at the end of its boot and closes first
        when it stops (cheaper to ask than ``rabbitmqctl await_startup``, which boots an Erlang VM of its own)."""
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
        except OSError:
            return False
        return True

    def ensure_serving(self) -> None:
        """Start the broker application again if a test left it stopped."""
        if not self.serving():
            self.start_app()

    # -- inspection ---------------------------------------------------------------------------------------------
    def ctl(self, *args: str, timeout: float = 60.0) -> str:
        done = subprocess.run(
            [*self._command("rabbitmqctl"), "-n", self.node, *args],
            env=self._env, cwd=self.base, capture_output=True, text=True, timeout=timeout,
        )
        if done.returncode != 0:
            raise subprocess.SubprocessError(f"rabbitmqctl {' '.join(args)} failed: {done.stdout}{done.stderr}")
        return done.stdout

    def queue_depth(self, queue: str) -> tuple[int, int]:
        """(ready, unacknowledged) messages in ``queue``; (0, 0) if it does not exist."""
        out = self.ctl(
            "list_queues", "name", "messages_ready", "messages_unacknowledged", "--no-table-headers", "--quiet"
        )
        for line in out.splitlines():
            fields = line.split("\t")
            if len(fields) == 3 and fields[0] == queue:
                return int(fields[1]), int(fields[2])
        return 0, 0

    def log_text(self) -> str:
        return "\n".join(path.read_text(errors="replace") for path in (self.base / "log").glob("*.log"))

    # -- internals ----------------------------------------------------------------------------------------------
    def _command(self, script: str) -> list[str]:
        """The argv that runs one of RabbitMQ's scripts (a subclass may run another installation's, e.g. chrooted)."""
        path = _script(script)
        assert path is not None, f"{script} is not installed"
        return [path]

    def _environment(self) -> dict[str, str]:
        home = self.base / "home"
        home.mkdir(parents=True, exist_ok=True)
        cookie = home / ".erlang.cookie"
        cookie.write_text(uuid.uuid4().hex.upper())
        cookie.chmod(0o400)
        (self.base / "rabbitmq-env.conf").write_text("")
        (self.base / "enabled_plugins").write_text("[].\n")
        certs = self.certs
        (self.base / "advanced.config").write_text(advanced_config(self.consumer_timeout))
        (self.base / "rabbitmq.conf").write_text(
            consumer_timeout_line(self.consumer_timeout) +
            f"listeners.tcp.default = 127.0.0.1:{self.port}\n"
            f"listeners.ssl.default = 127.0.0.1:{self.tls_port}\n"
            f"ssl_options.cacertfile = {certs.ca_file}\n"
            f"ssl_options.certfile = {certs.server_cert_file}\n"
            f"ssl_options.keyfile = {certs.server_key_file}\n"
            "ssl_options.verify = verify_peer\n"
            "ssl_options.fail_if_no_peer_cert = true\n"
            f"default_user = {self.user}\n"
            f"default_pass = {self.password}\n"
            "loopback_users = none\n"
            "log.console = false\n"
        )
        env = {key: value for key, value in os.environ.items() if not key.startswith(("RABBITMQ_", "ERL_"))}
        env.update(
            HOME=str(home),
            RABBITMQ_NODENAME=self.node,
            RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
            RABBITMQ_NODE_PORT=str(self.port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            RABBITMQ_CONFIG_FILE=str(self.base / "rabbitmq.conf"),
            RABBITMQ_ADVANCED_CONFIG_FILE=str(self.base / "advanced.config"),
            RABBITMQ_CONF_ENV_FILE=str(self.base / "rabbitmq-env.conf"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(self.base / "enabled_plugins"),
            RABBITMQ_MNESIA_BASE=str(self.base / "mnesia"),
            RABBITMQ_LOG_BASE=str(self.base / "log"),
            RABBITMQ_PID_FILE=str(self.pid_file),
            ERL_EPMD_ADDRESS="127.0.0.1",
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}",
        )
        return env

    def _start_watchdog(self, timeout: float) -> subprocess.Popen[bytes]:
        """A process of its own that stops the node should this test process die without stopping it."""
        deadline = time.monotonic() + timeout
        while (pid := self._pid()) is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.node} wrote no pid file within {timeout:g} s:\n{self.log_text()[-3000:]}")
            time.sleep(0.05)
        script = Path(__file__).with_name("node_watchdog.py")
        return subprocess.Popen(
            [sys.executable, str(script), str(self.watched_pid), str(pid), str(self.base / "mnesia")],
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def _pid(self) -> int | None:
        try:
            return int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None

    @staticmethod
    def _wait_for_port(port: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout:g} s") from None
                time.sleep(0.05)


TICK_FOR_TIMEOUT = 0.1  # of a consumer_timeout: how often a channel checks it


def consumer_timeout_line(consumer_timeout: float | None) -> str:
    """The rabbitmq.conf line of a ``consumer_timeout`` in seconds (none: the broker's default, 30 min)."""
    return "" if consumer_timeout is None else f"consumer_timeout = {round(consumer_timeout * 1000)}\n"


def advanced_config(consumer_timeout: float | None) -> str:
    """advanced.config: with a consumer timeout, channels tick often enough to enforce it within 10% of it."""
    if consumer_timeout is None:
        return "[].\n"
    tick = max(100, round(consumer_timeout * 1000 * TICK_FOR_TIMEOUT))
    return f"[{{rabbit, [{{channel_tick_interval, {tick}}}]}}].\n"


def _free_ports(count: int) -> list[int]:
    """Free ports below 30000: the node's CLI tools take ports at the distribution port + 10000."""
    chosen: list[int] = []
    while len(chosen) < count:
        port = random.randrange(20000, 30000)
        if port in chosen:
            continue
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        chosen.append(port)
    return chosen


@pytest.fixture(scope="session", name="private_broker")
def private_broker_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateRabbitMQ]:
    """This session's private RabbitMQ node, started on first use and stopped at the end of the session."""
    require_rabbitmq_server()
    node = PrivateRabbitMQ(tmp_path_factory.mktemp("rabbitmq"))
    try:
        node.start()
    except BaseException:
        node.stop()
        raise
    try:
        yield node
    finally:
        node.stop()
