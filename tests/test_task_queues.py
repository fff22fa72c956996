"""Task queue types on RabbitMQ 3.10 (the shared broker) and 4.0 (a private node): what the broker refuses when a
queue is declared again with other arguments, and how Otter's senders and workers live with it; and priorities,
where the brokers differ.

Measured on both (``test_the_broker_refuses_any_other_arguments``): one argument more, one fewer or one different
(type, TTL, dead-letter exchange, delivery limit) is ``406 PRECONDITION_FAILED``, which closes the channel; a passive
declaration is never refused. So a sender looks an existing queue up passively, and a worker names the mismatch.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Iterator
from typing import Any

import aiormq
import pytest

import otter
import otter.dlq
from brokers.rabbitmq4 import opted_in
from helpers_tasks import Backlog
from otter import protocol
from otter.testing import ServedApp
from otter.transports.base import QueueMismatch, Snapshot
from rawbroker import RawBroker

KIWIPY = dict(protocol.TASK_QUEUE_ARGUMENTS)
@pytest.fixture
def url(any_rabbitmq_url: str) -> str:
    return any_rabbitmq_url


@pytest.fixture
def raw(url: str, names: dict[str, Any]) -> Iterator[RawBroker]:
    with RawBroker.open(url, names) as broker:
        yield broker
        broker.delete()


@pytest.fixture
def queue(raw: RawBroker) -> Iterator[str]:
    name = f"{raw.names['MESSAGE_EXCHANGE'].removesuffix('.messages')}.work-{uuid.uuid4().hex[:6]}"
    yield name
    raw.delete(name)


def quorum(names: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    config = {"TASK_MESSAGE_TTL": protocol.KiwipyDefaults.TASK_MESSAGE_TTL / 1000, "TASK_DELIVERY_LIMIT": 20,
              "DEAD_LETTER_QUEUE": names["DEAD_LETTER_QUEUE"], **overrides}
    return protocol.task_queue_arguments("quorum", message_ttl_ms=round(config["TASK_MESSAGE_TTL"] * 1000),
                                         delivery_limit=config["TASK_DELIVERY_LIMIT"],
                                         dead_letter_queue=config["DEAD_LETTER_QUEUE"])


async def _redeclare(url: str, queue: str, first: dict[str, Any], second: dict[str, Any]) -> str:
    connection = await aiormq.connect(url)
    try:
        await (await connection.channel()).queue_declare(queue, durable=True, arguments=first)
        try:
            await (await connection.channel()).queue_declare(queue, durable=True, arguments=second)
            verdict = "ok"
        except aiormq.exceptions.ChannelPreconditionFailed as exc:
            verdict = f"406 {exc}"
        await (await connection.channel()).queue_declare(queue, passive=True)  # never refused
        await (await connection.channel()).queue_delete(queue)
        return verdict
    finally:
        await connection.close()


@pytest.mark.parametrize(("first", "second", "argument"), [
    (KIWIPY, {"x-queue-type": "quorum", **KIWIPY}, "x-queue-type"),
    ({"x-queue-type": "quorum"}, KIWIPY, "x-queue-type"),
    (KIWIPY, {**KIWIPY, "x-dead-letter-exchange": ""}, "x-dead-letter-exchange"),
    (KIWIPY, {}, "x-message-ttl"),
    ({}, KIWIPY, "x-message-ttl"),
    ({"x-queue-type": "quorum", "x-delivery-limit": 5}, {"x-queue-type": "quorum", "x-delivery-limit": 10},
     "x-delivery-limit"),
    ({"x-queue-type": "quorum", "x-delivery-limit": 5}, {"x-queue-type": "quorum"}, "x-delivery-limit"),
], ids=["classic-then-quorum", "quorum-then-kiwipy", "dead-letter-added", "ttl-dropped", "ttl-added",
        "other-delivery-limit", "delivery-limit-dropped"])
def test_the_broker_refuses_any_other_arguments(url: str, queue: str, first: dict[str, Any], second: dict[str, Any],
                                               argument: str) -> None:
    verdict = asyncio.run(_redeclare(url, queue, first, second))
    assert verdict.startswith("406") and f"inequivalent arg '{argument}'" in verdict, verdict
    # ...while kiwipy's own arguments, with or without an explicit classic type, are accepted again.
    assert asyncio.run(_redeclare(url, queue, KIWIPY, {"x-queue-type": "classic", **KIWIPY})) == "ok"


def test_a_quorum_worker_gets_tasks_from_a_client_configured_classic(
    url: str, raw: RawBroker, queue: str, names: dict[str, Any]
) -> None:
    app = otter.Otter("quorum-worker")
    done = []

    @app.add_task(queue, queue_type="quorum")
    def work(comm: Any, body: Any) -> None:
        done.append(body)

    # The client has the default TASK_QUEUE_TYPE, classic.
    with ServedApp(app, url, **names) as served, otter.Client(url, **names) as client:
        assert client.comm, client.error
        client.task(queue, 7)
        served.handled.wait(queue)
    assert done == [7]
    assert raw.declare_queue(queue, quorum(names)) == 0  # the worker's arguments, not the client's


def test_a_client_creates_a_missing_queue_with_its_own_type_and_a_matching_worker_runs_it(
    url: str, raw: RawBroker, queue: str, names: dict[str, Any]
) -> None:
    with otter.Client(url, TASK_QUEUE_TYPE="quorum", **names) as client:
        assert client.comm, client.error
        client.task(queue, 1)
    assert raw.declare_queue(queue, quorum(names)) == 1
    app = otter.Otter("matching-worker")
    app.add_task(queue, queue_type="quorum")(lambda comm, body: None)
    with ServedApp(app, url, **names) as served:
        served.handled.wait(queue)


def test_a_worker_whose_type_differs_from_the_queue_fails_at_once_with_one_line(
    url: str, raw: RawBroker, queue: str, names: dict[str, Any]
) -> None:
    raw.declare_queue(queue, KIWIPY)  # as kiwipy (or an Otter worker of the default type) declared it
    app = otter.Otter("mismatched-worker")
    app.add_task(queue, queue_type="quorum")(lambda comm, body: None)
    started = time.monotonic()
    with pytest.raises(QueueMismatch) as failure:
        ServedApp(app, url, **names).start()
    assert time.monotonic() - started < 10  # refused, not retried
    message = str(failure.value)
    assert "\n" not in message
    assert f"the task queue {queue!r} exists as a classic queue, but this worker declares it as a quorum queue" \
        in message, message
    assert "TASK_QUEUE_TYPE" in message and f"rabbitmqctl delete_queue {queue}" in message
    assert raw.declare_queue(queue, KIWIPY) == 0  # the queue is left as it was


def test_a_worker_whose_delivery_limit_differs_names_the_key(
    url: str, raw: RawBroker, queue: str, names: dict[str, Any]
) -> None:
    raw.declare_queue(queue, quorum(names, TASK_DELIVERY_LIMIT=5))
    app = otter.Otter("other-limit")
    app.add_task(queue, queue_type="quorum")(lambda comm, body: None)
    with pytest.raises(QueueMismatch, match=r"exists with x-delivery-limit=5, but this worker declares it with "
                                            r"x-delivery-limit=20 .*TASK_DELIVERY_LIMIT"):
        ServedApp(app, url, **names).start()


async def _take_and_die(url: str, queue: str) -> bytes:
    """What a worker process that dies mid-task leaves the broker with: a delivery never acked, then the connection
    gone, which returns the task to its queue and counts a delivery."""
    connection = await aiormq.connect(url)
    channel = await connection.channel()
    for _ in range(100):
        got = await channel.basic_get(queue, no_ack=False)
        if got.body:
            break
        await asyncio.sleep(0.05)  # at-least-once dead-lettering: a returned task comes back after a moment
    await connection.close()
    return bytes(got.body)


def test_a_task_that_kills_its_worker_past_the_delivery_limit_is_dead_lettered_and_replayable(
    url: str, raw: RawBroker, queue: str, names: dict[str, Any]
) -> None:
    config = {**names, "TASK_QUEUE_TYPE": "quorum", "TASK_DELIVERY_LIMIT": 2}
    with otter.Client(url, **config) as client:
        assert client.comm, client.error
        client.task(queue, "poison")
    for _ in range(3):  # delivered 3 times, returned 3 times: one more than the limit
        assert b"poison" in asyncio.run(_take_and_die(url, queue))
    deadline = time.monotonic() + 10
    while not (found := otter.dlq.list_dead_letters(url, config)) and time.monotonic() < deadline:
        time.sleep(0.05)
    [letter] = found
    assert (letter.reason, letter.queue, letter.payload) == ("delivery-limit", queue, "poison")
    assert "TASK_DELIVERY_LIMIT" in (letter.error_message or "")
    assert raw.depth(queue) == 0

    app = otter.Otter("after-the-fix")
    seen: list[Any] = []
    app.add_task(queue)(lambda comm, body: seen.append(body))
    with ServedApp(app, url, **config) as served:
        assert otter.dlq.replay(url, config, task=queue) == 1
        served.handled.wait(queue)
    assert seen == ["poison"]


@pytest.mark.rabbitmq4
@pytest.mark.skipif(not opted_in(), reason="RabbitMQ 4 tests are switched off (OTTER_TEST_RABBITMQ4=0)")
def test_a_policy_dead_letters_expired_tasks_of_a_kiwipy_compatible_queue(
    rabbitmq4_node: Any, names: dict[str, Any]
) -> None:
    """docs/protocol.md's way out for classic queues: a policy adds the dead-letter exchange without touching the
    queue's arguments, so kiwipy's declarations still succeed. (Here the policy also shortens the TTL: the lower of
    the policy's and the argument's applies.)"""
    url = rabbitmq4_node.url
    queue = f"{names['MESSAGE_EXCHANGE'].removesuffix('.messages')}.kiwipy-shared"
    policy = f"otter-dl-{uuid.uuid4().hex[:6]}"
    rabbitmq4_node.ctl("set_policy", policy, f"^{queue}$", json.dumps(
        {"dead-letter-exchange": "", "dead-letter-routing-key": names["DEAD_LETTER_QUEUE"], "message-ttl": 200}
    ), "--apply-to", "queues")
    try:
        with RawBroker.open(url, names) as raw:
            try:
                raw.declare_queue(names["DEAD_LETTER_QUEUE"], {})
                with otter.Client(url, **names) as client:  # classic, kiwipy's arguments
                    assert client.comm, client.error
                    client.task(queue, "waited too long")
                [letter] = raw.dead_letters(1, timeout=10)
                read = otter.dlq.DeadLetter.from_delivery(Snapshot(letter.body, queue="dlq", headers=letter.headers))
                assert (read.reason, read.queue, read.payload) == ("expired", queue, "waited too long")
                assert raw.declare_queue(queue, KIWIPY) == 0  # kiwipy's declaration is still accepted
            finally:
                raw.delete(queue)
    finally:
        rabbitmq4_node.ctl("clear_policy", policy)


# -- priorities (docs/task-limits.md) ----------------------------------------------------------------------------------
def test_a_quorum_queue_heeds_priorities_on_rabbitmq_4_and_a_sender_on_3_is_told_it_does_not(
    url: str, amqp_url: str, queue: str, names: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    """Measured: RabbitMQ refuses x-max-priority on a quorum queue; 4.0 delivers priority 5 and up first, 3.10 keeps
    the order they came in."""
    backlog = Backlog()
    app = otter.Otter()
    app.add_task(queue, queue_type="quorum")(backlog.handle)
    with ServedApp(app, url, CONCURRENCY=1, PREFETCH_MULTIPLIER=1, **names), \
            otter.Client(url, **names) as client, caplog.at_level(logging.WARNING):
        assert client.comm, client.error
        backlog.send(client, queue, low=200)
        order = backlog.wait(202)
    assert len(order) == 202
    warnings = [r.getMessage() for r in caplog.records if "ignores priority=" in r.getMessage()]
    if url != amqp_url:  # RabbitMQ 4
        assert "high" in order[:3], order[:5]
        assert warnings == []
    else:
        assert order.index("high") == 201  # in the order they came
        [warning] = warnings
        assert "it is a quorum queue, and quorum queues have priorities only from RabbitMQ 4.0 on" in warning


def test_a_worker_asking_for_priorities_on_a_queue_declared_without_them_names_the_argument(
    url: str, raw: RawBroker, queue: str, names: dict[str, Any]
) -> None:
    raw.declare_queue(queue, KIWIPY)  # as kiwipy (or an Otter worker without max_priority) declared it
    app = otter.Otter()
    app.add_task(queue, max_priority=10)(lambda comm, body: None)
    with pytest.raises(QueueMismatch) as failure:
        ServedApp(app, url, **names).start()
    message = str(failure.value)
    assert f"the task queue {queue!r} exists with x-max-priority=none, but this worker declares it with " \
           f"x-max-priority=10" in message, message
    assert "TASK_MAX_PRIORITY (or add_task(max_priority=...))" in message
    assert f"rabbitmqctl delete_queue {queue}" in message
    assert raw.declare_queue(queue, KIWIPY) == 0  # left as it was


def test_a_sender_with_task_max_priority_creates_the_queue_its_worker_declares(
    url: str, raw: RawBroker, queue: str, names: dict[str, Any]
) -> None:
    with otter.Client(url, TASK_MAX_PRIORITY=10, **names) as client:
        assert client.comm, client.error
        client.task(queue, 1, priority=3)
    assert raw.declare_queue(queue, {**KIWIPY, "x-max-priority": 10}) == 1  # refused if it differed
    app = otter.Otter()
    seen: list[Any] = []
    app.add_task(queue, max_priority=10)(lambda comm, body: seen.append(body))
    with ServedApp(app, url, **names) as served:
        served.handled.wait(queue)
    assert seen == [1]


def test_a_sender_finds_the_priorities_of_a_queue_someone_else_declared(
    url: str, raw: RawBroker, queue: str, names: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    raw.declare_queue(queue, {**KIWIPY, "x-max-priority": 5})  # a kiwipy program's queue, with priorities
    with otter.Client(url, **names) as client, caplog.at_level(logging.WARNING):  # no TASK_MAX_PRIORITY of its own
        assert client.comm, client.error
        client.task(queue, 1, priority=4, wait=True)
    assert not [r for r in caplog.records if "ignores priority=" in r.getMessage()]
    assert raw.depth(queue) == 1
