"""``otter run --workers N`` and ``--reload``: real worker processes under the supervisor, real signals, real broker.

Which process served a call is told by the call itself (``cli.pid`` returns the worker's pid), and a worker's
parent is read from ``/proc``, so these tests need Linux.
"""

from __future__ import annotations

import importlib.util
import os
import re
import signal
import sys
import uuid
from collections.abc import Iterator
from concurrent.futures import wait
from pathlib import Path
from typing import Any

import pytest

from conftest import unique_names
from helpers_process import READY, AppProcess, wait_until
from otter import Client, OtterError
from rawbroker import RawBroker

pytestmark = [
    pytest.mark.amqp,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads worker parents from /proc"),
]

SERVICE = "tests/apps/cli_service.py"


@pytest.fixture
def service_env(amqp_url: str) -> Iterator[tuple[dict[str, str], dict[str, Any]]]:
    names = unique_names("supervisor")
    queue = f"supervisor-{uuid.uuid4().hex[:10]}.record"
    env = {f"OTTER_{key}": value for key, value in names.items()}
    env.update(OTTER_BROKER_URL=amqp_url, CLI_TASK_QUEUE=queue)
    yield env, names
    with RawBroker.open(amqp_url, names) as raw:
        raw.delete(queue)


def parent_of(pid: int) -> int | None:
    """The parent pid of a live process; None once it is gone (or a zombie nobody reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    state, parent = stat.rpartition(")")[2].split()[:2]
    return None if state == "Z" else int(parent)


def serving_pids(client: Client, until: Any, what: str) -> set[int]:
    """Call ``cli.pid`` in batches, collecting which processes answer, until ``until(pids of the last batch)``."""
    seen: set[int] = set()

    def batch_answers() -> bool:
        calls = [client.rpc("cli.pid", timeout=5) for _ in range(12)]
        wait(calls, timeout=6)
        pids = {call.result() for call in calls if call.done() and call.exception() is None}
        seen.clear()
        seen.update(pids)
        return bool(until(pids))

    wait_until(batch_answers, timeout=30, what=what)
    return set(seen)


def test_workers_share_calls_and_a_killed_worker_is_replaced(amqp_url: str, service_env: Any) -> None:
    env, names = service_env
    with (
        AppProcess("-m", "otter", "run", SERVICE, "--workers", "2", "--grace", "2", env=env) as supervisor,
        Client(amqp_url, **names) as client,
    ):
        wait_until(lambda: supervisor.output.count(READY) == 2, what="both workers started")
        first = serving_pids(client, lambda pids: len(pids) == 2, "two workers answering")
        assert {parent_of(pid) for pid in first} == {supervisor.pid}
        victim, survivor = sorted(first)
        os.kill(victim, signal.SIGKILL)
        supervisor.wait_for(f"(pid {victim}) was killed by SIGKILL; restarting it")
        wait_until(lambda: supervisor.output.count(READY) == 3, what="the replacement started")
        after = serving_pids(
            client,
            lambda pids: len(pids) == 2 and victim not in pids,
            "a new worker answering in place of the killed one",
        )
        replacement = (after - {survivor}).pop()
        assert survivor in after and replacement != victim, supervisor.output
        assert parent_of(replacement) == supervisor.pid
        assert supervisor.stop(signal.SIGTERM) == 0, supervisor.output
    assert parent_of(survivor) is None and parent_of(replacement) is None
    assert "stopping 2 workers" in supervisor.output


def test_workers_are_named_after_the_app_and_their_number_in_ps_and_in_their_log_lines(
    amqp_url: str, service_env: Any
) -> None:
    env, names = service_env
    with (
        AppProcess("-m", "otter", "run", SERVICE, "--workers", "2", "--grace", "2", env=env) as supervisor,
        Client(amqp_url, **names) as client,
    ):
        wait_until(lambda: supervisor.output.count(READY) == 2, what="both workers started")
        workers = serving_pids(client, lambda pids: len(pids) == 2, "two workers answering")
        if importlib.util.find_spec("setproctitle") is None:  # prctl(PR_SET_NAME): the name top and ps -o comm show
            names_shown = {Path(f"/proc/{pid}/comm").read_text().strip() for pid in workers}
            assert names_shown == {"cli-service/1", "cli-service/2"}
            assert Path(f"/proc/{supervisor.pid}/comm").read_text().strip() == "cli-service/sup"  # 15 bytes kept
        else:  # setproctitle: the whole title, in ps's command column
            titles = {Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ").strip() for pid in workers}
            assert titles == {f"otter worker {n}: cli-service ({SERVICE})" for n in (1, 2)}
        for pid in workers:
            assert re.search(rf"\[{pid} cli-service/[12]\] otter: cli-service is running on", supervisor.output)
        assert re.search(rf"\[{supervisor.pid} cli-service/supervisor\] otter.supervisor: started worker 1/2",
                         supervisor.output)
        assert supervisor.stop(signal.SIGTERM) == 0, supervisor.output


def test_workers_do_not_outlive_a_killed_supervisor(amqp_url: str, service_env: Any) -> None:
    env, names = service_env
    with (
        AppProcess("-m", "otter", "run", SERVICE, "--workers", "2", env=env) as supervisor,
        Client(amqp_url, **names) as client,
    ):
        wait_until(lambda: supervisor.output.count(READY) == 2, what="both workers started")
        workers = serving_pids(client, lambda pids: len(pids) == 2, "two workers answering")
        supervisor.kill()  # SIGKILL: it cannot pass anything on
        wait_until(
            lambda: all(parent_of(pid) is None for pid in workers),
            timeout=20,
            what="the workers gone after their supervisor was killed",
        )


VERSIONED_APP = """
import os
from otter import Otter

app = Otter("reloadable")

@app.add_rpc("reload.version")
def version(comm, data):
    return ["{version}", os.getpid()]
"""


def test_reload_serves_edited_code_and_waits_out_a_broken_edit(amqp_url: str, tmp_path: Path) -> None:
    names = unique_names("reload")
    env = {f"OTTER_{key}": value for key, value in names.items()}
    env["OTTER_BROKER_URL"] = amqp_url
    source = tmp_path / "reloadable.py"
    source.write_text(VERSIONED_APP.format(version="v1"))

    def version(client: Client) -> list[Any] | None:
        try:
            return list(client.rpc("reload.version", timeout=2).result())
        except OtterError:  # nobody serving during a restart
            return None

    try:
        with (
            AppProcess(
                "-m", "otter", "run", "reloadable.py", "--reload", "--grace", "1", env=env, cwd=tmp_path
            ) as supervisor,
            Client(amqp_url, **names) as client,
        ):
            wait_until(lambda: (version(client) or [None])[0] == "v1", what="v1 served")
            first_pid = version(client)[1]  # type: ignore[index]
            source.write_text(VERSIONED_APP.format(version="v2"))  # same size: bytecode must not be reused
            wait_until(lambda: (version(client) or [None])[0] == "v2", what="v2 served after the edit")
            assert version(client)[1] != first_pid  # type: ignore[index]
            assert "detected changes in reloadable.py; restarting" in supervisor.output

            source.write_text("def broken(:\n")
            supervisor.wait_for("waiting for a file change to start it again")
            source.write_text(VERSIONED_APP.format(version="v3"))
            wait_until(lambda: (version(client) or [None])[0] == "v3", what="v3 served after the fix")
            assert supervisor.stop(signal.SIGTERM) == 0
    finally:
        with RawBroker.open(amqp_url, names) as raw:
            raw.delete()
