"""Fixtures of the fault tests: the session's private RabbitMQ node and a rig of worker processes per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .processes import FaultRig, rig_for
from .rabbitmq_node import PrivateRabbitMQ, private_broker_fixture
from .socket_leaks import collect_leaked_sockets

__all__ = ["collect_leaked_sockets", "private_broker_fixture", "rig"]


@pytest.fixture
def rig(private_broker: PrivateRabbitMQ, tmp_path: Path, names: dict[str, Any]) -> Iterator[FaultRig]:
    yield from rig_for(private_broker, tmp_path, names)
