"""Shared fixtures: unique names per test so tests run in parallel on the shared broker and leave nothing behind."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from otter.transports.memory import MemoryBroker

AMQP_URL = os.environ.get("OTTER_TEST_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672/")


def unique_names(prefix: str = "t") -> dict[str, Any]:
    """Config keys that put every exchange and queue of one test under its own prefix."""
    tag = f"{prefix}-{uuid.uuid4().hex[:10]}"
    return {
        "MESSAGE_EXCHANGE": f"{tag}.messages",
        "TASK_EXCHANGE": f"{tag}.tasks",
        "DEFAULT_TASK_QUEUE": f"{tag}.tasks.default",
        "RPC_QUEUE_PREFIX": f"{tag}.rpc.",
        "DEAD_LETTER_QUEUE": f"{tag}.dead-letter",
    }


@pytest.fixture
def names() -> dict[str, Any]:
    return unique_names()


@pytest.fixture(params=["memory", "amqp"])
def broker_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """Each contract test runs once per transport: the in-memory broker and the real RabbitMQ."""
    if request.param == "memory":
        name = f"memory://test-{uuid.uuid4().hex}"
        yield name
        MemoryBroker.reset(name.partition("://")[2])
    else:
        yield AMQP_URL


@pytest.fixture
def amqp_url() -> str:
    return AMQP_URL
