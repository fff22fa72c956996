"""RabbitMQ 4.x nodes and clusters for tests, run from a Debian trixie root built once per machine.

This machine's Debian (bookworm) ships RabbitMQ 3.10; trixie ships 4.0.x. ``ensure_root()`` builds a minimal trixie
root with ``rabbitmq-server`` in it (``debootstrap --variant=minbase --include=rabbitmq-server trixie``, about 75-90 s,
installing ``debootstrap`` with apt-get first if it is missing) into ``/var/cache/otter-tests/rabbitmq4-trixie``
(``OTTER_TEST_CACHE_DIR`` moves it), and every later run reuses it. The build happens under a file lock, in a
``.building-<pid>`` folder that is renamed into place only once complete, so parallel pytest-xdist workers wait for
one build and a build killed halfway is thrown away and redone.

``Rabbitmq4Node`` is ``faults.rabbitmq_node.PrivateRabbitMQ`` (same lifecycle, watchdog, ``ctl``, ``queue_depth``)
with its scripts run through ``chroot`` into that root, plain AMQP only, and a config that denies the deprecated
features RabbitMQ 4.3 denies by default and more (``DENIED_FEATURES``); ``consumer_timeout`` is settable.
``Rabbitmq4Cluster`` is three such nodes with one Erlang cookie, joined with ``rabbitmqctl join_cluster``; one node
can be SIGKILLed and restarted; ``url`` is the ``;``-separated list of the three.

Fixtures (session-scoped, started on first use): ``rabbitmq4_node`` and ``rabbitmq4_url``, one node for the whole
run even under pytest-xdist (``brokers.shared_node``), and ``rabbitmq4_cluster``, one per worker. When no root can be
built here (not root, no debootstrap and apt-get fails, no network) they skip, or fail when
``OTTER_TEST_REQUIRE_RABBITMQ_SERVER=1``.

By hand: ``PYTHONPATH=tests .venv/bin/python -m brokers.rabbitmq4 build`` builds the root now, with progress;
``... node`` or ``... cluster`` starts one, prints its URL and stops it on Enter.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath

import pytest

from faults.node_watchdog import alive
from faults.rabbitmq_node import PrivateRabbitMQ, _free_ports, advanced_config, consumer_timeout_line

__all__ = [
    "DENIED_FEATURES",
    "OPT_IN_ENV",
    "Rabbitmq4Cluster",
    "Rabbitmq4Node",
    "Rabbitmq4Unavailable",
    "ensure_root",
    "opted_in",
    "rabbitmq4_cluster_fixture",
    "rabbitmq4_node_fixture",
    "rabbitmq4_url_fixture",
]

CACHE_DIR = Path(os.environ.get("OTTER_TEST_CACHE_DIR", "/var/cache/otter-tests"))
ROOT_NAME = "rabbitmq4-trixie"
SUITE = "trixie"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
REQUIRE_ENV = "OTTER_TEST_REQUIRE_RABBITMQ_SERVER"
# Opts in to the RabbitMQ 4 tests beyond the node smoke test: the contract suite's third transport, the cluster.
OPT_IN_ENV = "OTTER_TEST_RABBITMQ4"
COMPLETE_MARKER = ".otter-root-complete"
# Where the nodes' own folders live inside the root (each node: config, cookie, data, logs, pid file).
NODES_DIR = PurePosixPath("/otter-nodes")
SCRIPTS_DIR = PurePosixPath("/usr/lib/rabbitmq/bin")
# A node folder this old whose node is not running is left over from a killed run.
STALE_NODE_DIR_AGE = 3600.0

# Denied with ``deprecated_features.permit.<name> = false``. RabbitMQ 4.3 denies the first three by default;
# classic_queue_mirroring is already removed in 4.0 (ha-* policy keys are "not recognised"), ram_node_type refuses
# ``join_cluster --ram`` and ``change_cluster_node_type ram``.
DENIED_FEATURES = (
    "transient_nonexcl_queues",
    "global_qos",
    "queue_master_locator",
    "classic_queue_mirroring",
    "ram_node_type",
)


# RabbitMQ 4.0.5 sometimes fails a cluster member's boot (after join_cluster, or a restart) with this: its "is
# transient_nonexcl_queues used?" check (rabbit_amqqueue:are_transient_nonexcl_used) reads the queue table before
# Mnesia has loaded it (no_exists), counts that as "used", and a denied feature that is used stops the boot. A second
# boot finds the table. Retried by Rabbitmq4Node.start and .start_app.
DENY_RACE = "failed_to_deny_deprecated_features"


class Rabbitmq4Unavailable(RuntimeError):
    """No RabbitMQ 4 root can be built on this machine (the reason says why)."""


def _progress(message: str) -> None:
    print(f"[rabbitmq4] {message}", file=sys.stderr, flush=True)


# -- the trixie root ----------------------------------------------------------------------------------------------
def root_dir() -> Path:
    return CACHE_DIR / ROOT_NAME


def root_info(root: Path | None = None) -> dict[str, object] | None:
    """What the completed root's marker records (RabbitMQ version, build time), or None if the root is not built."""
    try:
        return json.loads(((root or root_dir()) / COMPLETE_MARKER).read_text())  # type: ignore[no-any-return]
    except (OSError, ValueError):
        return None


_unavailable: Rabbitmq4Unavailable | None = None


def ensure_root(progress: Callable[[str], None] = _progress) -> Path:
    """The built root, building it first if this machine has none (once per machine, under a file lock)."""
    global _unavailable
    root = root_dir()
    if root_info(root) is not None:
        return root
    if _unavailable is not None:  # this process tried already
        raise _unavailable
    try:
        return _build_root(root, progress)
    except Rabbitmq4Unavailable as error:
        _unavailable = error
        raise


def _build_root(root: Path, progress: Callable[[str], None]) -> Path:
    if sys.platform != "linux" or os.geteuid() != 0:
        raise Rabbitmq4Unavailable("building and chrooting into a RabbitMQ 4 root needs root on Linux")
    try:
        CACHE_DIR.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise Rabbitmq4Unavailable(f"cannot create {CACHE_DIR}: {error}") from error
    with _file_lock(CACHE_DIR / f"{ROOT_NAME}.lock", progress):
        if root_info(root) is not None:  # another process built it while we waited
            return root
        for leftover in [root, *CACHE_DIR.glob(f"{ROOT_NAME}.building-*")]:
            if leftover.exists():
                progress(f"removing the incomplete {leftover} of an earlier, interrupted build")
                _discard(leftover)
        debootstrap, script = _ensure_debootstrap(progress)
        mirror = _mirror()
        building = CACHE_DIR / f"{ROOT_NAME}.building-{os.getpid()}"
        log = CACHE_DIR / f"{ROOT_NAME}.build.log"
        command = [debootstrap, "--variant=minbase", "--include=rabbitmq-server", SUITE, str(building), mirror]
        if script:
            command.append(script)
        progress(f"building a Debian {SUITE} root with rabbitmq-server into {building} from {mirror} "
                 f"(about 75-90 s; log: {log})")
        started = time.monotonic()
        with log.open("w") as out:
            done = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, check=False)
        seconds = time.monotonic() - started
        if done.returncode != 0:
            tail = log.read_text(errors="replace")[-2000:]
            _discard(building)
            raise Rabbitmq4Unavailable(f"debootstrap failed (exit {done.returncode}) after {seconds:.0f} s:\n{tail}")
        version = subprocess.run(
            ["chroot", str(building), "dpkg-query", "-W", "-f", "${Version}", "rabbitmq-server"],
            capture_output=True, text=True, check=False,
        ).stdout.strip()
        if not version or not (building / SCRIPTS_DIR.relative_to("/") / "rabbitmq-server").exists():
            _discard(building)
            raise Rabbitmq4Unavailable(f"debootstrap finished, but {building} has no rabbitmq-server")
        (building / NODES_DIR.relative_to("/")).mkdir(exist_ok=True)
        info = {"rabbitmq_server": version, "suite": SUITE, "mirror": mirror, "build_seconds": round(seconds, 1),
                "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        (building / COMPLETE_MARKER).write_text(json.dumps(info) + "\n")
        os.rename(building, root)
        progress(f"built rabbitmq-server {version} in {seconds:.0f} s: {root}")
        return root


@contextlib.contextmanager
def _file_lock(path: Path, progress: Callable[[str], None]) -> Iterator[None]:
    with path.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            progress(f"waiting for another process to finish building the RabbitMQ 4 root ({path})")
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _discard(path: Path) -> None:
    """Remove a (partial) root: first unmount whatever debootstrap left mounted in it (/proc, /sys), or rmtree would
    walk into the host's."""
    resolved = str(path.resolve())
    mounts = []
    with contextlib.suppress(OSError), open("/proc/self/mountinfo") as info:
        for line in info:
            point = line.split()[4].replace("\\040", " ")
            if point == resolved or point.startswith(resolved + "/"):
                mounts.append(point)
    for point in sorted(mounts, key=len, reverse=True):
        subprocess.run(["umount", "-l", point], check=False, capture_output=True)
    shutil.rmtree(path, ignore_errors=True)


def _ensure_debootstrap(progress: Callable[[str], None]) -> tuple[str, str | None]:
    """(debootstrap's path, the suite script to pass when this debootstrap does not know trixie yet)."""
    found = shutil.which("debootstrap") or next(
        (p for p in ("/usr/sbin/debootstrap", "/sbin/debootstrap") if os.path.exists(p)), None
    )
    if found is None:
        progress("debootstrap is missing; installing it with apt-get")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "debootstrap"]
        for attempt in ([install], [["apt-get", "update", "-q"], install]):
            for command in attempt:
                try:
                    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False, timeout=600)
                except (OSError, subprocess.TimeoutExpired) as error:
                    raise Rabbitmq4Unavailable(f"{' '.join(command)}: {error}") from error
                if done.returncode != 0:
                    break
            found = shutil.which("debootstrap") or (
                "/usr/sbin/debootstrap" if os.path.exists("/usr/sbin/debootstrap") else None
            )
            if found is not None:
                break
        if found is None:
            raise Rabbitmq4Unavailable(f"no debootstrap, and apt-get could not install it: {done.stderr[-1500:]}")
    scripts = Path("/usr/share/debootstrap/scripts")
    script = None if (scripts / SUITE).exists() else str(scripts / "sid")
    return found, script


def _mirror() -> str:
    """The Debian mirror of this machine's apt sources (deb822 or one-line format), OTTER_TEST_DEBIAN_MIRROR first."""
    if os.environ.get("OTTER_TEST_DEBIAN_MIRROR"):
        return os.environ["OTTER_TEST_DEBIAN_MIRROR"]
    candidates: list[str] = []
    sources = Path("/etc/apt/sources.list.d")
    for path in sorted(sources.glob("*.sources")) if sources.is_dir() else []:
        for stanza in path.read_text(errors="replace").split("\n\n"):
            uris = re.search(r"^URIs:\s*(.+)$", stanza, re.MULTILINE)
            suites = re.search(r"^Suites:\s*(.+)$", stanza, re.MULTILINE)
            if uris and suites and "security" not in suites.group(1):
                candidates += uris.group(1).split()
    for path in [Path("/etc/apt/sources.list"), *sorted(sources.glob("*.list"))]:
        with contextlib.suppress(OSError):
            for line in path.read_text(errors="replace").splitlines():
                fields = re.sub(r"\[[^]]*\]", "", line).split()
                if len(fields) >= 3 and fields[0] == "deb" and "security" not in fields[2]:
                    candidates.append(fields[1])
    debian = [uri for uri in candidates if "debian" in uri and "security" not in uri]
    return (debian or [DEFAULT_MIRROR])[0].rstrip("/")


# -- nodes --------------------------------------------------------------------------------------------------------
class Rabbitmq4Node(PrivateRabbitMQ):
    """A RabbitMQ 4 node chrooted into ``root``, on its own ports, name, data dir and cookie; plain AMQP only.

    ``base`` is the node's folder seen from here (``<root>/otter-nodes/<id>``), ``inner`` the same folder seen from
    inside the chroot. ``consumer_timeout`` is in seconds (and makes channels tick often enough to enforce it, as
    ``PrivateRabbitMQ``'s does); ``extra_config`` lines are appended to rabbitmq.conf.
    """

    def __init__(
        self,
        root: Path,
        *,
        name: str | None = None,
        cookie: str | None = None,
        password: str | None = None,
        ports: tuple[int, int] | None = None,
        consumer_timeout: float | None = None,
        extra_config: str = "",
        attach: bool = False,
    ) -> None:
        # PrivateRabbitMQ.__init__ is not called: it makes TLS certificates and a TLS listener this node has not.
        self.root = root
        node_id = name or f"otter-rmq4-{uuid.uuid4().hex[:8]}"
        self.node = f"{node_id}@localhost"
        self.inner = NODES_DIR / node_id
        self.base = root / self.inner.relative_to("/")
        if not attach:
            _remove_stale_node_dirs(self.base.parent)
        self.port, self.dist_port = ports or tuple(_free_ports(2))
        self.tls_port = None  # type: ignore[assignment]
        self.certs = None  # type: ignore[assignment]
        self.user = "otter"
        self.password = password or f"otter-secret-{uuid.uuid4().hex}"
        self.cookie = cookie or uuid.uuid4().hex.upper()
        self.consumer_timeout = consumer_timeout
        self.extra_config = extra_config
        self.pid_file = self.base / "node.pid"
        self._watchdog: subprocess.Popen[bytes] | None = None
        self.watched_pid = os.getpid()
        if attach:  # a running node's files are in place, and its other users read its cookie
            self._env = self._environment()
            return
        self.base.mkdir(parents=True, exist_ok=True)
        self._write_files()
        self._env = self._environment()

    def __repr__(self) -> str:
        return f"<Rabbitmq4Node {self.node} amqp:{self.port}>"

    @property
    def tls_url(self) -> str:
        raise AttributeError("Rabbitmq4Node serves plain AMQP only")

    @property
    def pid(self) -> int | None:
        return self._pid()

    def start(self, timeout: float = 60.0) -> Rabbitmq4Node:
        """Boot the node and wait for its AMQP port. A boot that fails on RabbitMQ 4.0.5's deprecated-feature check
        race (see ``DENY_RACE``; seen when a cluster member restarts) is retried."""
        deadline = time.monotonic() + timeout
        for attempt in range(1, 4):
            log_before = len(self.log_text())
            self.pid_file.unlink(missing_ok=True)
            subprocess.run([*self._command("rabbitmq-server"), "-detached"], env=self._env, cwd=self.base,
                           check=True, timeout=timeout, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            self._watchdog = self._start_watchdog(max(deadline - time.monotonic(), 5))
            pid = self._pid()
            while True:
                with contextlib.suppress(OSError):
                    socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                    return self  # the listeners open at the very end of the boot
                if pid is None or not alive(pid):
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{self.node}: nothing listens on 127.0.0.1:{self.port} after {timeout:g} s; "
                                       f"its log ends with:\n{self.log_text()[-4000:]}")
                time.sleep(0.05)
            self._watchdog.kill()
            self._watchdog.wait(10)
            self._watchdog = None
            log = self.log_text()[log_before:]
            if DENY_RACE not in log or attempt == 3:
                raise RuntimeError(f"{self.node} stopped while booting; its log ends with:\n{log[-4000:]}")
            _progress(f"{self.node}: boot hit RabbitMQ 4.0.5's deprecated-feature check race; booting again")
        raise AssertionError("unreachable")

    def stop(self) -> None:
        super().stop()
        shutil.rmtree(self.base, ignore_errors=True)

    def start_app(self, timeout: float = 60.0) -> None:
        """``rabbitmqctl start_app``, retried on ``DENY_RACE`` (seen right after join_cluster and after stop_app)."""
        deadline = time.monotonic() + timeout
        for attempt in range(1, 6):
            try:
                super().start_app(max(deadline - time.monotonic(), 10))
                return
            except subprocess.SubprocessError as error:
                if attempt == 5 or DENY_RACE not in str(error):
                    raise
                _progress(f"{self.node}: start_app hit RabbitMQ 4.0.5's deprecated-feature check race; retrying")
                time.sleep(attempt)

    def permitted(self, features: tuple[str, ...] | list[str]) -> dict[str, bool]:
        """What the running node says of each deprecated feature (``rabbit_deprecated_features:is_permitted``), in
        one rabbitmqctl call (each one costs a second or two of CPU)."""
        listed = ",".join(features)
        out = self.ctl("eval", f"[{{F, rabbit_deprecated_features:is_permitted(F)}} || F <- [{listed}]].")
        # The node also logs each denied feature's long message to the CLI's output; the answer is the last term.
        answers = dict(re.findall(r"\{(\w+),\s*(true|false)\}", out))
        return {feature: answers[feature] == "true" for feature in features}

    def _command(self, script: str) -> list[str]:
        # A mount namespace of the node's own gets a /proc (RabbitMQ's memory monitor reads /proc/self/status and
        # /proc/meminfo, its disk monitor runs df), which goes away with the node: nothing stays mounted in the root.
        return ["unshare", "--mount", "--propagation", "private", f"--mount-proc={self.root / 'proc'}",
                "chroot", str(self.root), str(SCRIPTS_DIR / script)]

    def _write_files(self) -> None:
        """The node's cookie, env file, plugins and config, in its folder."""
        home = self.base / "home"
        home.mkdir(parents=True, exist_ok=True)
        cookie = home / ".erlang.cookie"
        if cookie.exists():
            cookie.chmod(0o600)
        cookie.write_text(self.cookie)
        cookie.chmod(0o400)
        (self.base / "rabbitmq-env.conf").write_text("")
        (self.base / "enabled_plugins").write_text("[].\n")
        lines = [
            f"listeners.tcp.default = 127.0.0.1:{self.port}",
            f"default_user = {self.user}",
            f"default_pass = {self.password}",
            "loopback_users = none",
            "log.console = false",
            *(f"deprecated_features.permit.{feature} = false" for feature in DENIED_FEATURES),
        ]
        (self.base / "advanced.config").write_text(advanced_config(self.consumer_timeout))
        (self.base / "rabbitmq.conf").write_text(
            "\n".join(lines) + "\n" + consumer_timeout_line(self.consumer_timeout) + self.extra_config)

    def _environment(self) -> dict[str, str]:
        inner = self.inner
        env = {key: value for key, value in os.environ.items() if not key.startswith(("RABBITMQ_", "ERL_"))}
        env.update(
            PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            LANG="C.UTF-8",
            LC_ALL="C.UTF-8",
            HOME=str(inner / "home"),
            RABBITMQ_NODENAME=self.node,
            RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
            RABBITMQ_NODE_PORT=str(self.port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            RABBITMQ_CONFIG_FILE=str(inner / "rabbitmq.conf"),
            RABBITMQ_ADVANCED_CONFIG_FILE=str(inner / "advanced.config"),
            RABBITMQ_CONF_ENV_FILE=str(inner / "rabbitmq-env.conf"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(inner / "enabled_plugins"),
            RABBITMQ_MNESIA_BASE=str(inner / "mnesia"),
            RABBITMQ_LOG_BASE=str(inner / "log"),
            RABBITMQ_PID_FILE=str(inner / "node.pid"),
            ERL_EPMD_ADDRESS="127.0.0.1",
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}",
        )
        for drop in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME"):
            env.pop(drop, None)
        return env


def _remove_stale_node_dirs(nodes_dir: Path) -> None:
    """Node folders of runs that were killed before their watchdog could clean up (the watchdog removes only the
    data dir): old, and without a running node."""
    with contextlib.suppress(OSError):
        for folder in nodes_dir.iterdir():
            try:
                if time.time() - folder.stat().st_mtime < STALE_NODE_DIR_AGE:
                    continue
                pid = int((folder / "node.pid").read_text().strip())
            except (OSError, ValueError):
                pid = None
            if pid is None or not alive(pid):
                shutil.rmtree(folder, ignore_errors=True)


# -- clusters -----------------------------------------------------------------------------------------------------
class Rabbitmq4Cluster:
    """``size`` nodes from one root with one cookie and one user, joined into a cluster by ``start()``."""

    def __init__(self, root: Path, size: int = 3, *, consumer_timeout: float | None = None) -> None:
        tag = uuid.uuid4().hex[:6]
        cookie = uuid.uuid4().hex.upper()
        password = f"otter-secret-{uuid.uuid4().hex}"
        ports = _free_ports(2 * size)
        self.nodes = [
            Rabbitmq4Node(root, name=f"otter-rmq4c-{tag}-{i + 1}", cookie=cookie, password=password,
                          ports=(ports[2 * i], ports[2 * i + 1]), consumer_timeout=consumer_timeout)
            for i in range(size)
        ]

    def __repr__(self) -> str:
        return f"<Rabbitmq4Cluster {' '.join(f'{n.node}:{n.port}' for n in self.nodes)}>"

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    @property
    def url(self) -> str:
        """``amqp://u:p@127.0.0.1:P1/;amqp://u:p@127.0.0.1:P2/;...``, the form ``BROKER_URL`` takes a list in."""
        return ";".join(self.urls)

    def start(self, timeout: float = 120.0) -> Rabbitmq4Cluster:
        deadline = time.monotonic() + timeout
        errors: list[BaseException] = []

        def boot(node: Rabbitmq4Node) -> None:
            try:
                node.start(timeout)
            except BaseException as error:  # re-raised below, in the calling thread
                errors.append(error)

        threads = [threading.Thread(target=boot, args=(node,)) for node in self.nodes]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if errors:
            raise errors[0]
        first = self.nodes[0]
        for node in self.nodes[1:]:
            node.ctl("stop_app")
            node.ctl("join_cluster", first.node)
            node.start_app(max(deadline - time.monotonic(), 10))
        self.wait_running(len(self.nodes), max(deadline - time.monotonic(), 10))
        return self

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def running_nodes(self) -> list[str]:
        """The cluster's running nodes, as the first node still alive reports them."""
        for node in self.nodes:
            pid = node.pid
            if pid is None or not alive(pid):
                continue
            try:
                status = json.loads(node.ctl("cluster_status", "--formatter", "json", timeout=30))
            except (subprocess.SubprocessError, ValueError):
                continue
            return sorted(status.get("running_nodes", []))
        return []

    def wait_running(self, count: int, timeout: float = 60.0) -> list[str]:
        deadline = time.monotonic() + timeout
        while True:
            running = self.running_nodes()
            if len(running) == count:
                return running
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self}: {len(running)} running nodes after {timeout:g} s, not {count}: {running}")
            time.sleep(0.5)

    def kill(self, index: int) -> Rabbitmq4Node:
        """SIGKILL node ``index`` (0-based)."""
        node = self.nodes[index]
        node.kill()
        return node

    def restart(self, index: int, timeout: float = 60.0) -> Rabbitmq4Node:
        """Start node ``index`` again after ``kill``; it rejoins with its data. Waits until all nodes run."""
        node = self.nodes[index].restart(timeout)
        self.wait_running(len(self.nodes), timeout)
        return node


# -- fixtures -----------------------------------------------------------------------------------------------------
def opted_in() -> bool:
    """The contract suite runs on RabbitMQ 4 too unless ``OTTER_TEST_RABBITMQ4=0`` (a quick local run)."""
    return os.environ.get(OPT_IN_ENV, "1") != "0"


def root_or_skip() -> Path:
    """The root, or skip the test (fail it under ``OTTER_TEST_REQUIRE_RABBITMQ_SERVER=1``) if none can be built."""
    try:
        return ensure_root()
    except Rabbitmq4Unavailable as error:
        if os.environ.get(REQUIRE_ENV, "") not in ("", "0"):
            pytest.fail(f"RabbitMQ 4 is required here ({REQUIRE_ENV}=1) but unavailable: {error}", pytrace=False)
        pytest.skip(f"no RabbitMQ 4 root on this machine: {error}")


@pytest.fixture(scope="session", name="rabbitmq4_node")
def rabbitmq4_node_fixture() -> Iterator[Rabbitmq4Node]:
    """The run's RabbitMQ 4 node with the deprecated features denied, started on first use; under pytest-xdist one
    node serves every worker (``brokers.shared_node``)."""
    from brokers.shared_node import RUN_ENV, shared_node

    root = root_or_skip()
    if os.environ.get(RUN_ENV):
        with shared_node(root, os.environ[RUN_ENV]) as shared:
            yield shared
        return
    node = Rabbitmq4Node(root)
    try:
        node.start()
    except BaseException:
        node.stop()
        raise
    try:
        yield node
    finally:
        node.stop()


@pytest.fixture(scope="session", name="rabbitmq4_url")
def rabbitmq4_url_fixture(rabbitmq4_node: Rabbitmq4Node) -> str:
    return rabbitmq4_node.url


@pytest.fixture(scope="session", name="rabbitmq4_cluster")
def rabbitmq4_cluster_fixture() -> Iterator[Rabbitmq4Cluster]:
    """This session's three-node RabbitMQ 4 cluster, started on first use. A test that kills a node restarts it."""
    cluster = Rabbitmq4Cluster(root_or_skip())
    try:
        cluster.start()
    except BaseException:
        cluster.stop()
        raise
    try:
        yield cluster
    finally:
        cluster.stop()


def _main(argv: list[str]) -> int:
    what = argv[1] if len(argv) > 1 else "build"
    started = time.monotonic()
    root = ensure_root()
    print(f"root: {root} {root_info(root)} ({time.monotonic() - started:.1f} s)")
    if what == "build":
        return 0
    broker: Rabbitmq4Node | Rabbitmq4Cluster = Rabbitmq4Node(root) if what == "node" else Rabbitmq4Cluster(root)
    started = time.monotonic()
    try:
        broker.start()
        print(f"{broker} up in {time.monotonic() - started:.1f} s\nurl: {broker.url}\nEnter stops it.")
        with contextlib.suppress(EOFError, KeyboardInterrupt):
            input()
    finally:
        broker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv))
