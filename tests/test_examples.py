"""The seed README's snippets, run verbatim as separate processes against the real RabbitMQ.

The seed hard-codes RabbitMQ's default names (kiwipy.messages, kiwipy.tasks), so everything here is one test that
holds a machine-wide lock: the examples never run in parallel with each other, in this session or another.
"""

from __future__ import annotations

import hashlib
import signal
import subprocess
import sys
from collections.abc import Iterator

import pytest

from helpers_process import READY, REPO_ROOT, AppProcess, app_env, machine_wide_lock
from otter import Client, ValidationError
from otter.config import DEFAULTS
from rawbroker import RawBroker

SEED_URL = "amqp://guest:guest@127.0.0.1/"  # what the examples connect to, verbatim
DEFAULT_NAMES = {
    key: DEFAULTS[key]
    for key in ("MESSAGE_EXCHANGE", "TASK_EXCHANGE", "DEFAULT_TASK_QUEUE", "RPC_QUEUE_PREFIX", "DEAD_LETTER_QUEUE")
}


# The queues the seed's tasks wait in: the default one and examples/app.py's own (task queues are named by the app).
SEED_TASK_QUEUES = (DEFAULTS["DEFAULT_TASK_QUEUE"], "example.task")


@pytest.fixture
def seed_names() -> Iterator[None]:
    """The seed's fixed names to ourselves, and no task left from an earlier run (it would be served first)."""
    with machine_wide_lock("seed-default-names"):
        with RawBroker.open(SEED_URL) as raw:
            for queue in SEED_TASK_QUEUES:
                raw.purge(queue)
        yield


@pytest.mark.amqp
@pytest.mark.usefixtures("seed_names")
def test_seed_examples_run_verbatim() -> None:
    with (
        AppProcess("examples/app.py") as app,
        AppProcess("examples/blueprint_app.py") as blueprint_app,
        AppProcess("examples/login.py") as login_app,
    ):
        for served in (app, blueprint_app, login_app):
            served.wait_for(READY)

        client_run = subprocess.run(
            [sys.executable, "examples/client.py"],
            cwd=REPO_ROOT,
            env=app_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert client_run.returncode == 0, client_run.stdout + client_run.stderr
        app.wait_for("Received otter")
        app.wait_for("Done waiting 5 seconds", timeout=20)

        with Client(SEED_URL, **DEFAULT_NAMES) as client:
            assert client.rpc("example.hash", "otter").result(timeout=10) == {
                "result": hashlib.sha256(b"otter").hexdigest()
            }
            assert client.rpc("hello.world", None).result(timeout=10) == {"result": "Hello world from blueprint!"}

            valid = {"email": "otter@example.com", "password": "long enough"}
            assert client.rpc("auth.login", valid).result(timeout=10) == {"args": valid}
            with pytest.raises(ValidationError) as invalid:
                client.rpc("auth.login", {"email": "not-an-email", "password": "short"}).result(timeout=10)
        assert set(invalid.value.messages) == {"email", "password"}
        assert "email" in str(invalid.value) and "password" in str(invalid.value)

        assert app.stop(signal.SIGINT) == 0, app.output  # Ctrl-C, as the seed's user would stop it
        assert blueprint_app.stop(signal.SIGTERM) == 0, blueprint_app.output
        assert login_app.stop(signal.SIGINT) == 0, login_app.output
    assert app.output.count("Done waiting 5 seconds") == 1, app.output  # the whole log: which task ran twice
    for quiet in (app, blueprint_app):  # a happy path logs no errors (a validation failure does, in login_app)
        assert " ERROR " not in quiet.output, quiet.output
