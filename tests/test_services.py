"""``otter services`` against real worker processes on the real broker: three services of two replicas each (six
``otter run`` processes), their routes, counts that move after calls, and a SIGKILLed replica gone from the next
discovery (its exclusive control queue went with its connection)."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import aio_pika
import pytest

from conftest import unique_names
from helpers_process import READY, REPO_ROOT, AppProcess, app_env, wait_until
from otter import BrokerUnavailable, Client, ConfigurationError, Otter, RemoteError
from otter.services import discover
from otter.testing import ServedApp
from rawbroker import RawBroker

pytestmark = pytest.mark.amqp

APP = "tests/apps/discovery_app.py"
SERVICES = ("billing", "mail", "search")


class Mesh:
    """Six worker processes, two per service, and what they were started with."""

    def __init__(self, url: str, names: dict[str, Any], tag: str) -> None:
        self.url, self.names, self.tag = url, names, tag
        self.env = {f"OTTER_{key}": value for key, value in names.items()}
        self.env.update(OTTER_BROKER_URL=url, OTTER_SHUTDOWN_GRACE="2", OTTER_SERVICE_VERSION="3.4.5")
        self.workers: dict[str, list[AppProcess]] = {}

    def task(self, service: str) -> str:
        return f"{self.tag}.{service}.work"

    def services(self, *options: str) -> Any:
        """``otter services --json`` as a separate process, parsed."""
        done = subprocess.run(
            [sys.executable, "-m", "otter", "services", "--json", *options], cwd=REPO_ROOT, env=app_env(self.env),
            capture_output=True, text=True, timeout=60,
        )
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)


@pytest.fixture
def mesh(amqp_url: str) -> Iterator[Mesh]:
    names = unique_names("services")
    mesh = Mesh(amqp_url, names, f"services-{uuid.uuid4().hex[:10]}")
    with ExitStack() as stack:
        for service in SERVICES:  # all six start at once; each is awaited by its own ready line
            env = {**mesh.env, "DISCOVERY_SERVICE": service, "DISCOVERY_TASK": mesh.task(service)}
            mesh.workers[service] = [stack.enter_context(AppProcess("-m", "otter", "run", APP, env=env))
                                     for _ in range(2)]
        for process in (p for pair in mesh.workers.values() for p in pair):
            process.wait_for(READY, timeout=60)
        yield mesh
    with RawBroker.open(amqp_url, names) as raw:
        raw.delete(*(mesh.task(service) for service in SERVICES))


def by_pid(instances: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    return {instance["pid"]: instance for instance in instances}


def route(instance: dict[str, Any], kind: str) -> dict[str, Any]:
    [found] = [r for r in instance["routes"] if r["kind"] == kind]
    return found


def test_otter_services_lists_every_replica_with_its_routes_counts_move_and_a_killed_one_is_gone(
    mesh: Mesh,
) -> None:
    listed = mesh.services("--expect", "6", "--timeout", "10")
    pids = {service: {p.pid for p in pair} for service, pair in mesh.workers.items()}
    assert {i["pid"]: i["service"] for i in listed} == {pid: s for s, group in pids.items() for pid in group}
    assert len({i["instance_id"] for i in listed}) == 6
    for instance in listed:
        service = instance["service"]
        assert (instance["version"], instance["state"], instance["handled"], instance["errors"]) == (
            "3.4.5", "serving", 0, 0)
        assert [(r["kind"], r["name"], r["queue"]) for r in instance["routes"]] == [
            ("rpc", f"{service}.echo", f"{mesh.names['RPC_QUEUE_PREFIX']}{service}.echo"),
            ("task", mesh.task(service), mesh.task(service)),
            ("broadcast", f"{service}.#", ""),
        ]

    with Client(mesh.url, **mesh.names) as client:
        for n in range(6):
            assert client.rpc("billing.echo", n).result() == n
        with pytest.raises(RemoteError):
            client.rpc("billing.echo", "fail").result()
        for n in range(4):
            client.task(mesh.task("mail"), n)
        client.flush()

    def mail_tasks_done() -> list[Any] | None:
        found = discover(mesh.url, timeout=5.0, expected=6, **mesh.names)
        done = sum(r.handled for i in found if i.service == "mail" for r in i.routes if r.kind == "task")
        return [i.as_dict() for i in found] if done == 4 else None

    wait_until(mail_tasks_done, timeout=20, what="the four mail tasks handled")
    after = by_pid(mesh.services("--expect", "6", "--timeout", "10"))
    billing = [after[pid] for pid in pids["billing"]]
    assert sum(route(i, "rpc")["handled"] for i in billing) == 7
    assert sum(route(i, "rpc")["errors"] for i in billing) == 1
    assert sum(i["errors"] for i in billing) == 1
    assert all(route(i, "rpc")["p50_ms"] is not None for i in billing if route(i, "rpc")["handled"])
    assert sum(route(i, "task")["handled"] for i in (after[pid] for pid in pids["mail"])) == 4
    assert all(after[pid]["handled"] == 0 for pid in pids["search"])

    victim = mesh.workers["search"][0]
    victim.kill()  # SIGKILL, and reaped: its socket is closed, so the broker drops its connection and queue
    gone = by_pid(mesh.services("--timeout", "1.5"))  # every answer within 1.5 s, not just the first five
    assert victim.pid not in gone and set(gone) == {pid for group in pids.values() for pid in group} - {victim.pid}


def test_otter_services_prints_one_table_per_service_and_sees_each_worker_of_a_supervisor(amqp_url: str) -> None:
    names = unique_names("services")
    env = {f"OTTER_{key}": value for key, value in names.items()}
    env.update(OTTER_BROKER_URL=amqp_url, DISCOVERY_SERVICE="ledger", DISCOVERY_TASK=f"{names['TASK_EXCHANGE']}.w")

    def services(*options: str) -> str:
        done = subprocess.run([sys.executable, "-m", "otter", "services", *options], cwd=REPO_ROOT,
                              env=app_env(env), capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout

    assert "no Otter worker answered within 0.2 s on amqp://guest:***@" in services("--timeout", "0.2")
    with AppProcess("-m", "otter", "run", APP, "--workers", "2", env={**env, "OTTER_SHUTDOWN_GRACE": "2"}) as pod:
        wait_until(lambda: pod.output.count(READY) == 2, timeout=60, what="both workers serving")
        table = services("--expect", "2", "--timeout", "10")
        workers = Path(f"/proc/{pod.pid}/task/{pod.pid}/children").read_text().split()
        pod.stop(signal.SIGTERM)
    assert "1 service, 2 worker processes (answers within 10 s)" in table
    assert "ledger: 2 replicas" in table and len(workers) == 2
    assert all(f" {pid} " in table for pid in workers)  # the supervisor's workers answer, each for itself
    assert "ledger.echo" in table and "ledger.#" in table and "guest" not in table.replace("guest:***", "")
    with RawBroker.open(amqp_url, names) as raw:
        raw.delete(env["DISCOVERY_TASK"])


def test_a_control_exchange_the_worker_cannot_use_leaves_its_routes_serving(
    amqp_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    names = unique_names("services")

    async def declare_a_topic_exchange() -> None:  # not the fanout Otter declares: the broker refuses Otter's
        connection = await aio_pika.connect(amqp_url)
        async with connection:
            channel = await connection.channel()
            await channel.declare_exchange(names["CONTROL_EXCHANGE"], aio_pika.ExchangeType.TOPIC)

    asyncio.run(declare_a_topic_exchange())
    app = Otter("clash", **names)
    app.add_rpc("clash.echo")(lambda comm, data: data)
    with ServedApp(app, amqp_url, **names, SHUTDOWN_GRACE=2), Client(amqp_url, **names) as client:
        assert client.rpc("clash.echo", 5).result() == 5
        with pytest.raises(BrokerUnavailable, match="control exchange"):
            discover(amqp_url, timeout=0.5, **names)
    assert "will not answer `otter services`" in caplog.text and "PRECONDITION_FAILED" in caplog.text


@pytest.mark.parametrize("timeout", [0, -1.0])
def test_a_timeout_that_is_not_positive_is_refused_before_any_connection(timeout: float) -> None:
    """Port 1 answers nothing: a discovery that connected first would raise ``BrokerUnavailable`` instead."""
    with pytest.raises(ConfigurationError, match="timeout must be more than 0 seconds"):
        discover("amqp://guest:guest@127.0.0.1:1/", timeout=timeout)
