"""Every exit code in docs/cli.md's table, through real ``otter`` subprocesses: the paths the other CLI tests do not
already pin (call's 0/1/2/3/4, dlq's 4, invalid config, no broker, the app's startup errors are there)."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import pytest

from helpers_process import REPO_ROOT
from test_cli import SERVICE, otter

UNREACHABLE = "amqp://guest:guest@127.0.0.1:1/"  # nothing listens on port 1: connection refused at once

TWO_DEFAULTS = """from otter import Otter
app = Otter("two-defaults")

@app.add_task("a.one", default=True)
def one(comm, body): ...

@app.add_task("a.two", default=True)
def two(comm, body): ...
"""


def test_the_documented_table_lists_each_code() -> None:
    text = (REPO_ROOT / "docs" / "cli.md").read_text()
    table = text[text.index("## Exit codes"):]
    assert re.findall(r"^\| (\d) \|", table, re.MULTILINE)[:5] == ["0", "1", "2", "3", "4"]


@pytest.mark.parametrize(
    "args", [["--help"], ["--version"], ["dlq", "--help"], ["run", "--help"]], ids=" ".join
)
def test_help_and_version_exit_0(args: list[str]) -> None:
    result = otter(*args)
    assert result.returncode == 0, result.stderr
    assert result.stdout


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["nope"], "No such command 'nope'"),
        (["call", "x", "--nope"], "No such option '--nope'"),
        (["run", SERVICE, "--workers", "0"], "Invalid value for '--workers'"),
        (["dlq", "show", "x", "--broker", UNREACHABLE], "Invalid value for 'N'"),
        (["services", "--timeout", "0", "--broker", UNREACHABLE], "Invalid value for '--timeout'"),
        (["services"], "no broker given"),
    ],
    ids=["unknown-command", "unknown-option", "bad-option-value", "bad-argument", "bad-timeout", "no-broker"],
)
def test_usage_errors_exit_2(args: list[str], says: str) -> None:
    result = otter(*args)
    assert result.returncode == 2, result.stderr
    assert says in result.stderr and "Traceback" not in result.stderr


def test_a_purge_not_confirmed_exits_1_and_deletes_nothing() -> None:
    env = {"OTTER_BROKER_URL": UNREACHABLE, "OTTER_DEAD_LETTER_QUEUE": f"dlq-{uuid.uuid4().hex[:8]}"}
    result = otter("dlq", "purge", env=env, stdin="n\n")
    assert result.returncode == 1, result.stderr
    assert "Aborted!" in result.stderr  # asked first, so it never reached the (unreachable) broker: not 4


def test_an_app_that_cannot_serve_as_written_exits_1(tmp_path: Path) -> None:
    (tmp_path / "two_defaults.py").write_text(TWO_DEFAULTS)
    result = otter("routes", "two_defaults.py", cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    assert "only one task handler may be the default" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "args",
    [["run", SERVICE], ["task", "x.y", "1"], ["broadcast", "x.y", "1"], ["dlq", "show", "1"], ["services"]],
    ids=["run", "task", "broadcast", "dlq-show", "services"],
)
def test_an_unreachable_broker_exits_4(args: list[str]) -> None:
    # STARTUP_WAIT=0: otter run gives up at once (its waiting is tested in tests/test_connection_errors.py).
    result = otter(*args, "--broker", UNREACHABLE, env={"OTTER_CONNECT_TIMEOUT": "3", "OTTER_STARTUP_WAIT": "0"})
    assert result.returncode == 4, result.stderr
    assert "Connection refused" in result.stderr or "cannot connect" in result.stderr
