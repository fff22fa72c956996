"""Delayed tasks outlive a broker crash: ``kill -9`` of the node right after two delayed sends were confirmed, then a
restart on the same data, and both tasks still run, on RabbitMQ 3.10 and on 4.0.

The sends create the delay levels they go through (fresh names), as an app's first delayed send on a new broker
does, and the node is killed within a second of the confirms: the window in which RabbitMQ has not yet written a new
quorum queue's member to disk. Without Otter's wait after creating levels (``NEW_QUORUM_QUEUE_SETTLE``), the task in
the newest level was lost in every such run (docs/protocol.md, "Delayed tasks").
"""

from __future__ import annotations

import queue
import re
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from brokers.rabbitmq4 import Rabbitmq4Node, opted_in, root_or_skip
from otter import Client, Otter, Undelivered
from otter.delays import DelayLevels
from otter.testing import ServedApp
from otter.transports.amqp.connection import NEW_QUORUM_QUEUE_SETTLE
from rawbroker import RawBroker

from .delayed_recorder import DelayedRecorder
from .rabbitmq_node import PrivateRabbitMQ, require_rabbitmq_server
from .socket_leaks import LEAKED_SOCKET_FILTER

pytestmark = [pytest.mark.faults, LEAKED_SOCKET_FILTER]

# seconds; the longer one is sent first, so its send creates every level both go through and the second is
# confirmed at once, just before the kill
DELAYS = {"due after": 20, "due while down": 3}
DOWN_FOR = 3.0  # seconds the node stays dead
# A dead letter the broker could not forward is retried after this long (see test_delayed_restart.py): the most a
# task due while the broker was down may wait once it is back.
RETRY_AFTER = 180.0

_BROKERS = [pytest.param("3.10", id="rabbitmq-3.10")]
if opted_in():
    _BROKERS.append(pytest.param("4", id="rabbitmq-4", marks=pytest.mark.rabbitmq4))


@pytest.fixture(scope="module")
def own_rabbitmq310(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateRabbitMQ]:
    """A RabbitMQ 3.10 node of this module's own, not the session's private one: a crash can leave a delay level
    without a leader, and on 3.10.8 deleting such a queue afterwards crash-loops its dead-letter worker until the
    node's dead-letter supervisor gives up, which breaks every later at-least-once dead-lettering queue on the
    node (seen: the next delayed test's send nacked with INTERNAL_ERROR). That state goes with this node."""
    require_rabbitmq_server()
    node = PrivateRabbitMQ(tmp_path_factory.mktemp("crashable"))
    try:
        node.start()
        yield node
    finally:
        node.stop()


@pytest.fixture(scope="module")
def own_rabbitmq4() -> Iterator[Rabbitmq4Node]:
    """A RabbitMQ 4 node of this module's own: the session's is shared with tests that do not expect a crash."""
    node = Rabbitmq4Node(root_or_skip())
    try:
        node.start()
        yield node
    finally:
        node.stop()


@pytest.fixture(params=_BROKERS)
def crashable(request: pytest.FixtureRequest) -> PrivateRabbitMQ:
    fixture = "own_rabbitmq310" if request.param == "3.10" else "own_rabbitmq4"
    node: PrivateRabbitMQ = request.getfixturevalue(fixture)
    return node


@pytest.mark.timeout(2 * RETRY_AFTER + 120)
def test_confirmed_delayed_tasks_survive_kill_9_of_the_broker(
    crashable: PrivateRabbitMQ, names: dict[str, Any], record_property: Any
) -> None:
    node = crashable
    url = node.url
    recorder = DelayedRecorder(names, "delayed-crash")
    work, ran, done = recorder.work, recorder.ran, recorder.done

    with RawBroker.open(url, names) as raw:
        try:
            with ServedApp(recorder.app, url, **names, SHUTDOWN_GRACE=5.0), Client(url, **names) as client:
                sent = recorder.send(client, DELAYS)  # each confirmed: the broker answered for it before the crash
                confirmed = time.monotonic() - sent
                killed = time.monotonic() - sent
                node.kill()
                time.sleep(DOWN_FOR)  # the scenario itself: the node stays dead past the second task's time
                node.restart()
                back = time.monotonic() - sent
                for _ in DELAYS:
                    try:
                        done.get(timeout=max(DELAYS.values()) + RETRY_AFTER)
                    except queue.Empty:
                        missing = sorted(set(DELAYS) - set(ran))
                        pytest.fail(f"{missing} never ran after kill -9 (confirmed {confirmed:.1f} s after the "
                                    f"first send, killed at {killed:.1f} s, back at {back:.1f} s); "
                                    f"{_where_they_are(node, names, work)}")
            record_property("confirmed after (s)", round(confirmed, 2))
            record_property("killed after (s)", round(killed, 2))
            print(f"\nconfirmed {confirmed:.1f} s after the first send, killed at {killed:.1f} s, back at "
                  f"{back:.1f} s; ran at " + ", ".join(f"{b} {ran[b] - sent:.1f} s" for b in DELAYS))
            # the first send created the delay levels, so it waited for the broker to have them on disk
            assert confirmed >= NEW_QUORUM_QUEUE_SETTLE
            assert killed - confirmed < DELAYS["due while down"]  # killed before the second task was due
            assert all(ran[body] - sent >= delay - 0.01 for body, delay in DELAYS.items())  # not early (but for ms)
            assert done.empty()  # each ran once
        finally:
            raw.delete(work)


@pytest.mark.timeout(180)
def test_a_crash_right_after_creating_delay_levels_fails_the_send_or_keeps_the_task(
    own_rabbitmq310: PrivateRabbitMQ, names: dict[str, Any]
) -> None:
    """Killed a second after the send, which is confirmed by then but into a level RabbitMQ has not written down
    yet, the broker may come back without that level's messages: then the send, sent again, is not confirmed and
    the sender is told so. Either the sender hears of a failure or the task runs; never a silent loss."""
    node = own_rabbitmq310
    url = node.url
    work = f"delayed-crash-{uuid.uuid4().hex[:8]}.run"
    ran: queue.Queue[str] = queue.Queue()
    app = Otter(**names)
    app.add_task(work)(lambda comm, body: ran.put(body))
    delay = DELAYS["due after"]
    with RawBroker.open(url, names) as raw:
        try:
            with ServedApp(app, url, **names, SHUTDOWN_GRACE=5.0), Client(url, **names, PUBLISH_TIMEOUT=5.0) as client:
                sent = time.monotonic()
                client.task(work, "in the newest level", delay=delay)
                time.sleep(1.0)  # the scenario itself: confirmed by now (on an idle machine), and not yet safe
                node.kill()
                time.sleep(DOWN_FOR)
                node.restart()
                try:
                    client.flush()
                except Undelivered as failed:
                    assert "BrokerUnavailable" in str(failed)
                    print(f"\nthe send failed after the crash ({failed})")
                    assert ran.empty()
                else:
                    assert ran.get(timeout=delay + 30) == "in the newest level"
                    assert time.monotonic() - sent >= delay
                    print("\nthe send was kept through the crash, and the task ran")
        finally:
            raw.delete(work)


def _where_they_are(node: PrivateRabbitMQ, names: dict[str, Any], work: str) -> str:
    """The test's queues with their message counts, the Raft role of each level queue's member (a ``follower`` on a
    single node has no leader: it was started anew), and what the node logged of members it started anew."""
    prefix = DelayLevels(names["TASK_EXCHANGE"]).prefix
    listed = node.ctl("list_queues", "name", "type", "messages", "messages_ready", "messages_unacknowledged",
                      "--no-table-headers", "--quiet")
    mine = [line for line in listed.splitlines() if line.startswith((prefix, work))]
    roles = node.ctl("eval", "[{N, maps:get(state, M)} || "
                             "{N, M} <- maps:to_list(ra_directory:overview(quorum_queues))].")
    levels = sorted(re.findall(rf"'%2F_({re.escape(prefix)}\.\d+)',\s*(\w+)", roles))
    anew = [line for line in node.log_text().splitlines() if "name_not_registered" in line]
    return f"queues: {mine}; members: {levels}; log: {anew[-5:]}"
