"""Shared fixtures: unique names per test so tests run in parallel on the shared broker and leave nothing behind."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from brokers.rabbitmq4 import opted_in, rabbitmq4_cluster_fixture, rabbitmq4_node_fixture, rabbitmq4_url_fixture
from otter.testing import unique_names as _unique_names
from otter.transports.memory import MemoryBroker

__all__ = ["rabbitmq4_cluster_fixture", "rabbitmq4_node_fixture", "rabbitmq4_url_fixture"]

AMQP_URL = os.environ.get("OTTER_TEST_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672/")


# Every set of names handed out in this process, so the session can delete what their tests left on the shared
# broker (a test's default task queue, dead-letter queue and exchanges) in one connection at the end.
_ISSUED: list[dict[str, Any]] = []


def unique_names(prefix: str = "t") -> dict[str, Any]:
    """Config keys that put every exchange and queue of one test under its own prefix (the plugin's helper)."""
    names = dict(_unique_names(prefix))
    _ISSUED.append(names)
    return names


@pytest.fixture
def names() -> dict[str, Any]:
    return unique_names()


@pytest.fixture(scope="session", autouse=True)
def _leave_nothing_behind() -> Iterator[None]:
    """At the end of the session, delete the queues and exchanges named by every ``unique_names`` it handed out
    (those already gone are skipped quietly): the shared broker keeps no test's leftovers."""
    yield
    if not _ISSUED:
        return
    from rawbroker import RawBroker

    with RawBroker.open(AMQP_URL) as raw:
        raw.delete_issued(_ISSUED)


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


_RABBITMQ_URLS: list[Any] = ["amqp"]
if opted_in():
    _RABBITMQ_URLS.append(pytest.param("rabbitmq4", marks=pytest.mark.rabbitmq4))


@pytest.fixture(params=_RABBITMQ_URLS)
def any_rabbitmq_url(request: pytest.FixtureRequest, amqp_url: str) -> str:
    """The shared RabbitMQ 3.10 and a RabbitMQ 4 node (unless ``OTTER_TEST_RABBITMQ4=0``): for tests of what
    the brokers themselves accept or refuse."""
    return str(request.getfixturevalue("rabbitmq4_url")) if request.param == "rabbitmq4" else amqp_url
