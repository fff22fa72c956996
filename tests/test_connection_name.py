"""The broker sees Otter's connections by name (``connection_name``), as docs/protocol.md says: aio-pika drops
``client_properties=`` given with a URL, so the name travels as the URL's ``name`` parameter."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import uuid

import pytest

from otter import Client
from otter.transports.amqp.connection import CONNECTION_NAME, named
from otter.transports.amqp.failover import shown


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("amqp://u:p@host:5672/", "amqp://u:p@host:5672/?name=otter"),
        ("amqp://u:p@host/vh?heartbeat=30", "amqp://u:p@host/vh?heartbeat=30&name=otter"),
        ("amqp://u:p@host/?", "amqp://u:p@host/?name=otter"),
        ("amqp://u:p@host/?name=billing", "amqp://u:p@host/?name=billing"),
        ("amqps://u:p%2Fq@host/?cafile=/ca.pem", "amqps://u:p%2Fq@host/?cafile=/ca.pem&name=otter"),
    ],
)
def test_the_url_carries_the_connection_name(url: str, expected: str) -> None:
    assert named(url) == expected


def test_logs_show_the_url_without_the_name() -> None:
    assert shown(named("amqp://u:p@host:5672/")) == "amqp://u:p@host:5672/"
    assert shown(named("amqp://u:p@host/?heartbeat=30")) == "amqp://u:p@host/?heartbeat=30"


def _connection_names() -> dict[int, str | None]:
    """Each connection's ``connection_name`` client property on the shared broker, by the client's port."""
    listed = subprocess.run(
        ["rabbitmqctl", "list_connections", "peer_port", "client_properties", "--quiet", "--formatter", "json"],
        capture_output=True, text=True, timeout=30, check=True,
    )
    return {
        row["peer_port"]: next((value for key, _type, value in row["client_properties"] if key == "connection_name"),
                               None)
        for row in json.loads(listed.stdout)
    }


def _my_ports(broker_port: int) -> set[int]:
    """The local ports of this process's TCP connections to ``broker_port`` (from /proc: no private attributes)."""
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as rows:
            for row in list(rows)[1:]:
                fields = row.split()
                local, remote, inode = fields[1], fields[2], fields[9]
                if inode in inodes and int(remote.rsplit(":", 1)[1], 16) == broker_port:
                    ports.add(int(local.rsplit(":", 1)[1], 16))
    return ports


@pytest.mark.amqp
def test_the_broker_shows_the_connection_name(amqp_url: str) -> None:
    if shutil.which("rabbitmqctl") is None or not amqp_url.startswith("amqp://guest:guest@127.0.0.1"):
        pytest.skip("needs rabbitmqctl for the shared broker on this machine")
    if not os.path.isdir("/proc/self/fd"):
        pytest.skip("finds its own connections through /proc")
    mine = f"otter-test-{uuid.uuid4().hex[:8]}"
    with Client(amqp_url) as default:
        assert default.comm
        default_ports = _my_ports(5672)
        with Client(f"{amqp_url}?name={mine}") as own:
            assert own.comm
            own_ports = _my_ports(5672) - default_ports
            names = _connection_names()
    assert len(default_ports) == 1 and len(own_ports) == 1, (default_ports, own_ports)
    assert names[default_ports.pop()] == CONNECTION_NAME  # before the fix: None, aio-pika dropped it
    assert names[own_ports.pop()] == mine  # a name the URL gives wins
