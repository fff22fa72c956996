"""Two processes serving the same app on the real RabbitMQ: RPCs and tasks are shared, broadcasts reach both.

This is the scale-out promise (DESIGN.md section 4): more copies of an app share its work with no configuration,
unlike kiwipy, where every RPC subscriber has its own queue and every replica runs every call.
"""

from __future__ import annotations

import signal
import uuid
from collections import Counter
from pathlib import Path

import pytest

from conftest import unique_names
from helpers_process import READY, AppProcess, wait_until
from otter import Client
from rawbroker import RawBroker

CALLS = 40
TASKS = 30


def _lines(directory: Path, pattern: str) -> dict[str, list[str]]:
    """Complete lines of each matching record file, by file name."""
    found = {}
    for path in directory.glob(pattern):
        text = path.read_text()
        found[path.name] = text[: text.rfind("\n") + 1].splitlines()
    return found


@pytest.mark.amqp
def test_replicas_share_rpcs_and_tasks_and_each_receives_broadcasts(amqp_url: str, tmp_path: Path) -> None:
    names = unique_names("replica")
    task_queue = f"replica-{uuid.uuid4().hex[:10]}.record"
    env = {f"OTTER_{key}": value for key, value in names.items()}
    env.update(OTTER_BROKER_URL=amqp_url, REPLICA_TASK_QUEUE=task_queue, REPLICA_RECORD_DIR=str(tmp_path))
    try:
        with (
            AppProcess("tests/apps/replica_app.py", env=env) as first,
            AppProcess("tests/apps/replica_app.py", env=env) as second,
        ):
            first.wait_for(READY)
            second.wait_for(READY)
            with Client(amqp_url, **names) as client:
                # RPC: each call runs in exactly one copy, and the calls spread over both.
                calls = [client.rpc("replica.pid", n) for n in range(CALLS)]
                served_by = Counter(call.result(timeout=10) for call in calls)
                assert set(served_by) == {first.pid, second.pid}, served_by
                assert sum(served_by.values()) == CALLS

                # Tasks: each runs exactly once, in one copy or the other.
                for n in range(TASKS):
                    client.task(task_queue, n)
                wait_until(
                    lambda: sum(map(len, _lines(tmp_path, "task-*").values())) >= TASKS, what=f"{TASKS} tasks recorded"
                )
                ran = [int(line) for lines in _lines(tmp_path, "task-*").values() for line in lines]
                assert sorted(ran) == list(range(TASKS))
                assert set(_lines(tmp_path, "task-*")) <= {f"task-{first.pid}.txt", f"task-{second.pid}.txt"}

                # Broadcasts: every copy gets every matching one; a subject the filter refuses reaches neither.
                client.broadcast("ignored", subject="replica.too.deep")
                for n in range(3):
                    client.broadcast(n, subject="replica.ping")
                expected = [f"replica.ping {n}" for n in range(3)]
                per_copy = [f"broadcast-{first.pid}.txt", f"broadcast-{second.pid}.txt"]

                def both_copies_have_all() -> bool:
                    record = _lines(tmp_path, "broadcast-*")
                    return all(len(record.get(name, [])) >= len(expected) for name in per_copy)

                wait_until(both_copies_have_all, what="every broadcast recorded by both copies")
                record = _lines(tmp_path, "broadcast-*")
                assert {name: sorted(lines) for name, lines in record.items()} == {name: expected for name in per_copy}

                # Checked last, so a duplicate run of some call would have had time to show up by now.
                rpc_runs = [int(line) for lines in _lines(tmp_path, "rpc-*").values() for line in lines]
                assert sorted(rpc_runs) == list(range(CALLS))
            assert first.stop(signal.SIGTERM) == 0, first.output
            assert second.stop(signal.SIGINT) == 0, second.output
    finally:
        with RawBroker.open(amqp_url, names) as raw:
            raw.delete(task_queue)
