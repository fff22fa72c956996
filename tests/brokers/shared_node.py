"""One RabbitMQ 4 node for all the pytest-xdist workers of a run, instead of one per worker.

Four workers booting a node each at the same time starved each other on a 2-core machine: 47-53 s per boot, against
3-6 s for one node alone. Here the first worker that needs the node boots it, under a file lock, and writes what the
others need to reach it (name, ports, password, cookie) to a record next to the lock, named after the run
(``PYTEST_XDIST_TESTRUNUID``, which xdist gives every worker of one run). Each worker that uses the node adds itself to
the record's users and takes itself off at the end of its session; the last one off stops the node. The node's
watchdog watches the run's controller (the workers' parent), not the worker that booted it, so a worker that finishes
early does not take the node with it, and a killed run does not leave it running.

A test on the shared node must not stop, restart or reconfigure it (``stop_app``, a global setting): such a test
starts a node of its own.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from brokers.rabbitmq4 import CACHE_DIR, Rabbitmq4Node
from faults.node_watchdog import alive
from helpers_process import file_lock

__all__ = ["RUN_ENV", "shared_node"]

RUN_ENV = "PYTEST_XDIST_TESTRUNUID"
RECORDS_DIR = CACHE_DIR / "shared-nodes"
# A record or lock this old belongs to a run that is over (the watchdog stopped its node when the run ended).
STALE_AGE = 24 * 3600.0

# The node this worker booted, kept when the worker leaves it to others: dropping it would drop the Popen of its
# watchdog, still running, with a ResourceWarning.
_booted_here: list[Rabbitmq4Node] = []


@contextlib.contextmanager
def shared_node(root: Path, run_id: str) -> Iterator[Rabbitmq4Node]:
    """The run's node: booted here if no other worker of the run has one running, stopped here if this worker is
    the last to use it."""
    RECORDS_DIR.mkdir(parents=True, exist_ok=True)
    record_path = RECORDS_DIR / f"rabbitmq4-{run_id}.json"
    lock_path = RECORDS_DIR / f"rabbitmq4-{run_id}.lock"
    user = f"{os.environ.get('PYTEST_XDIST_WORKER', 'main')}-{os.getpid()}"
    with file_lock(lock_path):
        record = _read(record_path)
        node = _attach(root, record) if record is not None else None
        if node is None or not _serving(node):
            _remove_stale(RECORDS_DIR)
            node = _boot(root)
            record = {"name": node.node.partition("@")[0], "port": node.port, "dist_port": node.dist_port,
                      "password": node.password, "cookie": node.cookie, "users": []}
        assert record is not None
        record["users"].append(user)
        _write(record_path, record)
    try:
        yield node
    finally:
        with file_lock(lock_path):
            record = _read(record_path)
            if record is not None and f"{record['name']}@localhost" == node.node:
                record["users"] = [other for other in record["users"] if other != user]
                if record["users"]:
                    _write(record_path, record)
                    node = None
                else:
                    record_path.unlink()
            if node is not None:
                node.stop()


def _boot(root: Path) -> Rabbitmq4Node:
    node = Rabbitmq4Node(root)
    node.watched_pid = os.getppid()  # the xdist controller: the node lives as long as the run
    try:
        node.start()
    except BaseException:
        node.stop()
        raise
    _booted_here.append(node)
    return node


def _attach(root: Path, record: dict[str, Any]) -> Rabbitmq4Node:
    return Rabbitmq4Node(root, name=record["name"], cookie=record["cookie"], password=record["password"],
                         ports=(record["port"], record["dist_port"]), attach=True)


def _serving(node: Rabbitmq4Node) -> bool:
    pid = node.pid
    if pid is None or not alive(pid):
        return False
    try:
        socket.create_connection(("127.0.0.1", node.port), timeout=1).close()
    except OSError:
        return False
    return True


def _read(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())  # type: ignore[no-any-return]
    except (OSError, ValueError):
        return None


def _write(path: Path, record: dict[str, Any]) -> None:
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(record))
    os.replace(partial, path)


def _remove_stale(folder: Path) -> None:
    for path in folder.iterdir():
        with contextlib.suppress(OSError):
            if time.time() - path.stat().st_mtime > STALE_AGE:
                path.unlink()
