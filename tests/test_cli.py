"""The ``otter`` command line, run as a real subprocess against the real RabbitMQ.

Finding the app (``discovery``) is also tested in-process, case by case, because its error messages are the point.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import click
import pytest
from click.testing import CliRunner

from conftest import unique_names
from helpers_process import READY, REPO_ROOT, AppProcess, app_env, wait_until
from otter import Client, __version__
from otter.cli import RUN_SETTINGS, cli
from otter.config import DEFAULTS
from otter.discovery import NoAppFound, load_app, parse_target
from rawbroker import RawBroker

SERVICE = "tests/apps/cli_service.py"
ROUTES_APP = "tests/apps/cli_routes.py"


def otter(
    *args: str, env: dict[str, str] | None = None, cwd: Path = REPO_ROOT, stdin: str | None = None, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m otter ARGS`` with no ``OTTER_*`` variables but ``env``'s."""
    return subprocess.run(
        [sys.executable, "-m", "otter", *args],
        env=app_env(env),
        cwd=cwd,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@dataclass
class Served:
    """An ``otter run`` process and the environment that reaches it (broker URL and unique names)."""

    process: AppProcess
    env: dict[str, str]
    names: dict[str, Any]
    task_queue: str

    def client(self) -> Client:
        return Client(self.env["OTTER_BROKER_URL"], **self.names)


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    """``tests/apps/cli_service.py`` under ``otter run --debug --log-level DEBUG`` on the real broker."""
    amqp_url = os.environ.get("OTTER_TEST_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672/")
    names = unique_names("cli")
    task_queue = f"cli-{uuid.uuid4().hex[:10]}.record"
    env = {f"OTTER_{key}": value for key, value in names.items()}
    env.update(OTTER_BROKER_URL=amqp_url, CLI_TASK_QUEUE=task_queue)
    process = AppProcess(
        "-m",
        "otter",
        "run",
        SERVICE,
        "--broker",
        amqp_url,
        "--debug",
        "--log-level",
        "debug",
        env={**env, "OTTER_BROKER_URL": "memory://overridden-by-the-option"},
    )
    with process:
        process.wait_for(READY)
        yield Served(process, env, names, task_queue)
        process.stop()
    with RawBroker.open(amqp_url, names) as raw:
        raw.delete(task_queue)


# -- help and version -------------------------------------------------------------------------------------------
def test_console_script_and_every_subcommand_have_help() -> None:
    script = shutil.which("otter", path=str(Path(sys.executable).parent))
    assert script is not None, "the otter console script is not installed next to this Python"
    top = subprocess.run([script, "--help"], capture_output=True, text=True, env=app_env(), timeout=30)
    assert top.returncode == 0, top.stderr
    commands = ["broadcast", "call", "config", "routes", "run", "task"]
    for command in commands:
        assert command in top.stdout
    assert "OTTER_<KEY>" in top.stdout  # the precedence note
    runner = CliRunner()  # in-process: `otter run --help` below goes through python -m otter
    for command in commands:
        result = runner.invoke(cli, [command, "--help"], prog_name="otter")
        assert result.exit_code == 0, result.output
        assert result.output.startswith(f"Usage: otter {command}")


def test_run_help_names_every_option_its_config_key_and_env_var() -> None:
    result = otter("run", "--help")
    text = " ".join(result.stdout.split())  # help wraps lines
    for key in RUN_SETTINGS.values():
        assert key in DEFAULTS, f"{key} has no default in otter.config.DEFAULTS"
        assert f"OTTER_{key}" in text
    for option in ("--broker", "--workers", "--concurrency", "--prefetch-multiplier", "--grace", "--reload",
                   "--log-level", "--debug"):
        assert option in text
    assert "each of them receives every broadcast" in text


def test_version() -> None:
    result = otter("--version")
    assert result.returncode == 0
    assert result.stdout.startswith(f"otter {__version__} (Python ")


# -- finding the app --------------------------------------------------------------------------------------------
@pytest.fixture
def app_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A directory to write app modules in; sys.path and the working directory are restored afterwards."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OTTER_RUN_FROM_CLI", "true")
    monkeypatch.delenv("OTTER_APP", raising=False)
    return tmp_path


def _module(directory: Path, source: str, package: str | None = None) -> str:
    """Write a module with a unique name (optionally inside a new package) and return its dotted name."""
    name = f"svc_{uuid.uuid4().hex[:8]}"
    if package:
        (directory / package).mkdir()
        (directory / package / "__init__.py").write_text("")
        (directory / package / f"{name}.py").write_text(source)
        return f"{package}.{name}"
    (directory / f"{name}.py").write_text(source)
    return name


def test_finds_the_variable_named_app(app_dir: Path) -> None:
    module = _module(app_dir, "from otter import Otter\nother = Otter('other')\napp = Otter('main')\n")
    assert load_app(module).name == "main"
    assert load_app(f"{module}:other").name == "other"


def test_finds_the_only_otter_instance_under_any_name(app_dir: Path) -> None:
    module = _module(app_dir, "from otter import Otter\nservice = Otter('only')\nalias = service\n")
    assert load_app(module).name == "only"


def test_calls_create_app_and_factories_with_arguments(app_dir: Path) -> None:
    module = _module(app_dir, "from otter import Otter\ndef create_app(name='made'):\n    return Otter(name)\n")
    assert load_app(module).name == "made"
    assert load_app(f"{module}:create_app('given:with colon')").name == "given:with colon"
    assert load_app(f"{module}:create_app(name='kw')").name == "kw"
    with pytest.raises(NoAppFound, match="cannot call"):
        load_app(f"{module}:create_app(1, 2)")
    with pytest.raises(NoAppFound, match="must be literals"):
        load_app(f"{module}:create_app(os.environ)")


def test_file_paths_map_to_modules_inside_their_packages(app_dir: Path) -> None:
    source = "from otter import Otter\napp = Otter('in-package')\n"
    module = _module(app_dir, source, package="pkg_" + uuid.uuid4().hex[:6])
    package, name = module.split(".")
    target = parse_target(f"{package}/{name}.py")
    assert (target.module, target.search_path) == (module, str(app_dir.resolve()))
    assert load_app(f"{package}/{name}.py").name == "in-package"
    assert load_app(str(app_dir / package / f"{name}.py") + ":app").name == "in-package"


def test_otter_app_env_then_app_py_are_the_defaults(app_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(NoAppFound, match=re.escape("otter run myservice.app:app")):
        load_app(None)
    module = _module(app_dir, "from otter import Otter\napp = Otter('from-env')\n")
    monkeypatch.setenv("OTTER_APP", module)
    assert load_app(None).name == "from-env"
    monkeypatch.delenv("OTTER_APP")
    (app_dir / "app.py").write_text("from otter import Otter\nsomething = Otter('app-py')\n")
    monkeypatch.delitem(sys.modules, "app", raising=False)
    assert parse_target(None).module == "app"


def test_says_what_to_type_when_it_cannot_find_the_app(app_dir: Path) -> None:
    several = _module(app_dir, "from otter import Otter\nfirst = Otter()\nsecond = Otter()\n")
    with pytest.raises(NoAppFound, match=rf"several Otter apps \(first, second\).*otter run {several}:first"):
        load_app(several)
    empty = _module(app_dir, "x = 1\n")
    with pytest.raises(NoAppFound, match=rf"no Otter app in '{empty}'.*otter run {empty}:my_app"):
        load_app(empty)
    with pytest.raises(NoAppFound, match="has no attribute 'nope'; it has: first, second"):
        load_app(f"{several}:nope")
    with pytest.raises(NoAppFound, match="is int 1, not an Otter app"):
        load_app(f"{empty}:x")
    with pytest.raises(NoAppFound, match="no module named 'no_such_module_here'"):
        load_app("no_such_module_here:app")
    with pytest.raises(NoAppFound, match="no such file"):
        load_app("missing/service.py")


def test_an_import_error_inside_the_app_is_not_hidden(app_dir: Path) -> None:
    broken = _module(app_dir, "import a_dependency_that_is_not_installed\n")
    with pytest.raises(ModuleNotFoundError, match="a_dependency_that_is_not_installed"):
        load_app(broken)


def test_cli_exits_2_with_what_to_type(tmp_path: Path) -> None:
    nothing_here = otter("routes", cwd=tmp_path)
    assert nothing_here.returncode == 2
    assert "otter run myservice.app:app" in nothing_here.stderr
    assert "OTTER_APP=" in nothing_here.stderr
    missing = otter("run", "no_such_module_here:app")
    assert missing.returncode == 2
    assert "cannot import 'no_such_module_here'" in missing.stderr
    assert "Traceback" not in missing.stderr


def _raising_app(directory: Path) -> None:
    (directory / "failing_app.py").write_text("import failing_helper\nfrom otter import Otter\napp = Otter()\n")
    (directory / "failing_helper.py").write_text("def boom():\n    return 1 / 0\n\nboom()\n")


@pytest.mark.parametrize("command", ["run", "routes", "config"])
def test_an_app_that_raises_at_import_shows_only_the_users_frames_and_exits_1(tmp_path: Path, command: str) -> None:
    _raising_app(tmp_path)
    result = otter(command, "failing_app.py", cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    lines = result.stderr.splitlines()
    assert lines[0].startswith("Error: the app 'failing_app.py' raised ZeroDivisionError while loading")
    frames = [line.strip() for line in lines if line.strip().startswith("File ")]
    assert frames == [
        f'File "{tmp_path / "failing_app.py"}", line 1, in <module>',
        f'File "{tmp_path / "failing_helper.py"}", line 4, in <module>',
        f'File "{tmp_path / "failing_helper.py"}", line 2, in boom',
    ]
    assert lines[-1] == "ZeroDivisionError: division by zero"


def test_debug_shows_every_frame_of_a_startup_error(tmp_path: Path) -> None:
    _raising_app(tmp_path)
    for result in (otter("run", "--debug", "failing_app.py", cwd=tmp_path),
                   otter("routes", "failing_app.py", cwd=tmp_path, env={"OTTER_DEBUG": "true"})):
        assert result.returncode == 1
        assert "/click/" in result.stderr and "importlib" in result.stderr and "otter/cli/" in result.stderr
        assert result.stderr.rstrip().endswith("ZeroDivisionError: division by zero")


def test_a_registration_mistake_points_at_the_users_decorator_line(tmp_path: Path) -> None:
    (tmp_path / "bad_handler.py").write_text(
        "from otter import Otter\napp = Otter()\n\n@app.add_rpc('svc.hash')\ndef hash_(comm):\n    pass\n"
    )
    result = otter("routes", "bad_handler.py", cwd=tmp_path)
    assert result.returncode == 1
    frames = [line.strip() for line in result.stderr.splitlines() if line.strip().startswith("File ")]
    assert frames == [f'File "{tmp_path / "bad_handler.py"}", line 4, in <module>']
    assert "cannot be called with (comm, data)" in result.stderr.splitlines()[-1]


# -- routes and config ------------------------------------------------------------------------------------------
def test_routes_ignores_a_module_level_app_run_and_prints_a_table() -> None:
    # cli_service.py ends with app.run("amqp://..."): without OTTER_RUN_FROM_CLI this would serve forever.
    result = otter("routes", SERVICE, timeout=20)
    assert result.returncode == 0, result.stderr
    lines = {line.split("│")[2].strip(): line for line in result.stdout.splitlines() if line.count("│") >= 6}
    assert set(lines) >= {"cli.echo", "cli.login", "cli.record", "cli.news.*"}
    assert "cli_service.echo" in lines["cli.echo"]
    assert "email*, password*" in lines["cli.login"]
    assert "task (default queue)" in lines["cli.record"]


def test_routes_json_lists_handler_blueprint_schema_and_default_queue() -> None:
    result = otter("routes", ROUTES_APP, "--json")
    assert result.returncode == 0, result.stderr
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert rows["math.add"]["fields"] == [{"name": "a", "required": True}, {"name": "b", "required": False}]
    assert rows["math.add"]["handler"] == "cli_routes.create_app.<locals>.add"
    assert rows["mail.send"]["default_queue"] is True and rows["mail.send"]["kind"] == "task"
    assert rows["orders.*, audit.#"]["kind"] == "broadcast"
    login = rows["accounts.login"]
    assert (login["blueprint"], login["schema"], login["handler"]) == ("accounts", "LoginSchema", "cli_routes.login")
    assert [f["name"] for f in login["fields"]] == ["email", "password", "remember"]
    assert rows["accounts.cleanup"]["async"] is True and rows["accounts.cleanup"]["default_queue"] is False
    table = otter("routes", ROUTES_APP)
    assert "LoginSchema: email*, password*, remember" in table.stdout
    assert "* required field" in table.stdout


def test_routes_lists_periodic_tasks_with_their_schedule_and_next_run() -> None:
    before = time.time()
    result = otter("routes", ROUTES_APP, "--json", env={"OTTER_PERIODIC_MISSED": "skip"})
    assert result.returncode == 0, result.stderr
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    flush, purge = rows["stats.flush"], rows["accounts.purge"]
    assert flush["kind"] == "task" and flush["default_queue"] is False  # mail.send keeps the default queue
    assert (flush["periodic"]["schedule"], flush["periodic"]["missed"]) == ("every 300s", "all")
    assert (purge["periodic"]["schedule"], purge["periodic"]["missed"]) == ("cron 30 3 * * mon-fri (Europe/Paris)",
                                                                            "skip")  # OTTER_PERIODIC_MISSED
    next_flush = datetime.fromisoformat(flush["periodic"]["next_run"].replace("Z", "+00:00")).timestamp()
    assert next_flush % 300 == 0 and before < next_flush <= time.time() + 300
    next_purge = datetime.fromisoformat(purge["periodic"]["next_run"].replace("Z", "+00:00"))
    paris = next_purge.astimezone(ZoneInfo("Europe/Paris"))
    assert (paris.hour, paris.minute) == (3, 30) and paris.weekday() < 5
    assert rows["mail.send"]["periodic"] is None
    table = otter("routes", ROUTES_APP).stdout
    assert "periodic" in table and "every 300s, missed=all" in table


def test_config_precedence_is_option_then_env_then_app_config_then_default() -> None:
    def effective(*args: str, env: dict[str, str] | None = None) -> dict[str, Any]:
        result = otter("config", ROUTES_APP, "--json", *args, env=env)
        assert result.returncode == 0, result.stderr
        assert "hunter2" not in result.stdout  # the app's broker password
        return json.loads(result.stdout)

    from_app = effective()
    assert from_app["CONCURRENCY"] == {"value": 3, "source": "app.config"}
    assert from_app["BROKER_URL"] == {"value": "amqp://svc:***@broker.invalid/", "source": "app.config"}
    assert from_app["WORKERS"] == {"value": 1, "source": "default"}
    assert "RUN_FROM_CLI" not in from_app
    from_env = effective(env={"OTTER_CONCURRENCY": "5"})
    assert from_env["CONCURRENCY"] == {"value": 5, "source": "env OTTER_CONCURRENCY"}
    from_option = effective("--concurrency", "9", "--prefetch-multiplier", "1", env={"OTTER_CONCURRENCY": "5"})
    assert from_option["CONCURRENCY"] == {"value": 9, "source": "option"}
    assert from_option["PREFETCH_MULTIPLIER"] == {"value": 1, "source": "option"}


def test_config_names_the_key_a_mistyped_variable_was_meant_to_be() -> None:
    result = otter("config", ROUTES_APP, "--json", env={"OTTER_CONCURRENCEY": "5"})
    assert result.returncode == 0, result.stderr
    assert "OTTER_CONCURRENCEY is not a known config key; did you mean OTTER_CONCURRENCY?" in result.stderr
    assert json.loads(result.stdout)["CONCURRENCY"] == {"value": 3, "source": "app.config"}

def test_every_option_of_run_reaches_the_config_as_an_option() -> None:
    """The options are read from the command itself, not from a list kept beside it: an option added to ``otter run``
    and forgotten in the config mapping would be parsed and then ignored (``--startup-wait`` once was)."""
    run_options = {param.name for param in cli.commands["run"].params if isinstance(param, click.Option)}
    assert run_options - {"help"} == set(RUN_SETTINGS)
    args = ["--broker", "amqp://u:pw@h/", "--workers", "2", "--concurrency", "4", "--prefetch-multiplier", "2",
            "--grace", "1.5", "--startup-wait", "5", "--task-queue-type", "QUORUM", "--rpc-queue-type", "quorum",
            "--reload", "--log-level", "warning", "--log-format", "json", "--log-config", "logging.yaml", "--debug",
            "--metrics-port", "9100", "--health-port", "8081"]
    result = otter("config", ROUTES_APP, *args, "--json")
    assert result.returncode == 0, result.stderr
    config = json.loads(result.stdout)
    assert {key: config[key]["source"] for key in RUN_SETTINGS.values()} == dict.fromkeys(RUN_SETTINGS.values(),
                                                                                            "option")
    assert config["STARTUP_WAIT"]["value"] == 5.0
    assert config["TASK_QUEUE_TYPE"]["value"] == "quorum"
    assert config["RPC_QUEUE_TYPE"]["value"] == "quorum"


def test_every_run_option_has_an_env_var() -> None:
    env = {
        "OTTER_BROKER_URL": "amqp://u:pw@h/",
        "OTTER_WORKERS": "2",
        "OTTER_CONCURRENCY": "4",
        "OTTER_PREFETCH_MULTIPLIER": "2",
        "OTTER_SHUTDOWN_GRACE": "1.5",
        "OTTER_STARTUP_WAIT": "5",
        "OTTER_TASK_QUEUE_TYPE": "quorum",
        "OTTER_RPC_QUEUE_TYPE": "quorum",
        "OTTER_RELOAD": "true",
        "OTTER_LOG_LEVEL": "warning",
        "OTTER_LOG_FORMAT": "JSON",
        "OTTER_LOG_CONFIG": "logging.yaml",
        "OTTER_DEBUG": "true",
        "OTTER_METRICS_PORT": "9100",
        "OTTER_HEALTH_PORT": "8081",
    }
    assert {f"OTTER_{key}" for key in RUN_SETTINGS.values()} == set(env)
    result = otter("config", ROUTES_APP, "--json", env=env)
    config = json.loads(result.stdout)
    assert {key: config[key]["source"] for key in RUN_SETTINGS.values()} == {
        key: f"env OTTER_{key}" for key in RUN_SETTINGS.values()
    }
    assert [config[key]["value"] for key in ("BROKER_URL", "WORKERS", "SHUTDOWN_GRACE", "RELOAD", "LOG_LEVEL",
                                             "LOG_FORMAT")] == ["amqp://u:***@h/", 2, 1.5, True, "WARNING", "json"]


@pytest.mark.parametrize(
    ("command", "env", "line"),
    [
        (["run", SERVICE], {"OTTER_CONCURRENCY": "abc"},
         "CONCURRENCY is 'abc' (from env OTTER_CONCURRENCY); it must be a whole number of at least 1"),
        (["config", ROUTES_APP], {"OTTER_PREFETCH_MULTIPLIER": "-3"},
         "PREFETCH_MULTIPLIER is -3 (from env OTTER_PREFETCH_MULTIPLIER); it must be a whole number of at least 1"),
        (["routes", ROUTES_APP], {"OTTER_DEFAULT_TASK_QUEUE": '""'},
         "DEFAULT_TASK_QUEUE is '' (from env OTTER_DEFAULT_TASK_QUEUE); it must be a non-empty string"),
        (["call", "x", "--broker", "amqp://guest:guest@127.0.0.1:1/"], {"OTTER_RPC_TIMEOUT": "soon"},
         "RPC_TIMEOUT is 'soon' (from env OTTER_RPC_TIMEOUT); it must be a number of seconds, more than 0"),
    ],
    ids=["run", "config", "routes", "call"],
)
def test_an_invalid_config_value_exits_2_naming_key_source_and_range(
    command: list[str], env: dict[str, str], line: str
) -> None:
    result = otter(*command, env=env)
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == ["Error: invalid configuration:", f"  {line}"]


def test_a_typo_in_app_config_exits_2_with_the_key_it_resembles(tmp_path: Path) -> None:
    (tmp_path / "typo_app.py").write_text("from otter import Otter\napp = Otter('typo', CONCURENCY=2)\n")
    result = otter("config", "typo_app.py", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "CONCURENCY (from app.config) is not a config key; did you mean CONCURRENCY?" in result.stderr
    assert "Traceback" not in result.stderr


def test_workers_need_a_real_broker() -> None:
    result = otter("run", SERVICE, "--workers", "2", "--broker", "memory://")
    assert result.returncode == 2
    assert "needs a real broker" in result.stderr


# -- call, task, broadcast against a running service ------------------------------------------------------------
@pytest.mark.amqp
def test_call_prints_the_reply_as_json(served: Served) -> None:
    data = {"text": "otter é", "items": [1, 2.5, None, True]}
    result = otter("call", "cli.echo", json.dumps(data), env=served.env)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == data
    from_stdin = otter("call", "cli.echo", "-", env=served.env, stdin='"from stdin"')
    assert json.loads(from_stdin.stdout) == "from stdin"
    no_argument = otter("call", "cli.echo", env=served.env)
    assert json.loads(no_argument.stdout) is None


@pytest.mark.amqp
def test_call_shows_a_remote_error_with_its_type_and_the_debug_traceback(served: Served) -> None:
    result = otter("call", "cli.fail", env=served.env)
    assert result.returncode == 1
    assert result.stderr.startswith("RemoteError ValueError: boom\n")
    assert "Remote traceback" in result.stderr and 'raise ValueError("boom")' in result.stderr
    assert result.stdout == ""


@pytest.mark.amqp
def test_call_shows_validation_errors_field_by_field(served: Served) -> None:
    result = otter("call", "cli.login", '{"email": "not-an-email"}', env=served.env)
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert lines[:3] == [
        "ValidationError: invalid arguments",
        "  email: Not a valid email address.",
        "  password: Missing data for required field.",
    ]
    ok = otter("call", "cli.login", '{"email": "a@example.com", "password": "x"}', env=served.env)
    assert json.loads(ok.stdout) == {"email": "a@example.com"}


@pytest.mark.amqp
def test_call_exit_codes_for_timeout_nobody_serving_and_bad_json(served: Served) -> None:
    timeout = otter("call", "cli.sleep", "2", "--timeout", "0.3", env=served.env)
    assert timeout.returncode == 3
    assert timeout.stderr.startswith("DeadlineExceeded: ")
    nobody = otter("call", "cli.nobody-serves-this", env=served.env)
    assert nobody.returncode == 1
    assert nobody.stderr.startswith("Unroutable: ")
    bad_json = otter("call", "cli.echo", "{'single': 'quotes'}", env=served.env)
    assert bad_json.returncode == 2
    assert "is not JSON" in bad_json.stderr and "Quote strings twice" in bad_json.stderr


@pytest.mark.parametrize(
    "command",
    [["call", "example.hash", '"otter"'], ["task", "example.task", "5"], ["task", "--default-queue", "5"],
     ["broadcast", "message.send", '"otter"']],
    ids=["call", "task", "default-queue-task", "broadcast"],
)
@pytest.mark.parametrize("env", [{}, {"OTTER_BROKER_URL": ""}], ids=["unset", "empty"])
def test_client_commands_without_a_broker_exit_2_instead_of_sending_into_memory(
    command: list[str], env: dict[str, str]
) -> None:
    result = otter(*command, env=env)
    assert result.returncode == 2, result.stderr
    assert "no broker given: name it with --broker amqp://" in result.stderr
    assert "or set OTTER_BROKER_URL" in result.stderr
    assert result.stdout == ""  # not "task queued ..." / "broadcast sent ..."


def test_client_commands_may_still_name_memory_on_purpose() -> None:
    result = otter("broadcast", "message.send", '"otter"', "--broker", "memory://")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "broadcast sent with subject 'message.send'"


def test_task_sends_its_priority_and_refuses_one_out_of_range() -> None:
    sent = otter("task", "cli.unprioritised", "1", "--priority", "5", "--broker", "memory://")
    assert sent.returncode == 0, sent.stderr
    assert "task queue 'cli.unprioritised' ignores priority=" in sent.stderr  # it reached the transport
    refused = otter("task", "cli.unprioritised", "1", "--priority", "256", "--broker", "memory://")
    assert refused.returncode == 2 and "256 is not in the range 0<=x<=255" in refused.stderr


def test_call_exits_4_when_the_broker_cannot_be_reached() -> None:
    result = otter("call", "cli.echo", "--broker", "amqp://guest:guest@127.0.0.1:1/")
    assert result.returncode == 4
    assert result.stderr.startswith("BrokerUnavailable: ")
    assert "Traceback" not in result.stderr
    assert "guest:guest@" not in result.stderr and "guest:***@" in result.stderr


@pytest.mark.amqp
def test_task_and_broadcast_reach_the_service(served: Served) -> None:
    task = otter("task", served.task_queue, '{"order": 7}', env=served.env)
    assert task.returncode == 0, task.stderr
    assert re.fullmatch(rf"task [0-9a-f]{{32}} queued on {re.escape(served.task_queue)}\n", task.stdout)
    later = otter("task", served.task_queue, '{"order": 8}', "--delay", "1", "--id", "order-8", env=served.env)
    assert later.stdout == f"task order-8 queued on {served.task_queue}, to run in 1 s\n", later.stderr
    default_queue = otter("task", "--default-queue", '"nameless"', env=served.env)
    assert default_queue.returncode == 0, default_queue.stderr
    news = otter("broadcast", "cli.news.today", '"hello"', "--sender", "tester", env=served.env)
    assert news.returncode == 0, news.stderr
    ignored = otter("broadcast", "cli.weather.today", '"not for us"', env=served.env)
    assert ignored.returncode == 0, ignored.stderr
    expected = [["task", {"order": 7}], ["task", "nameless"], ["broadcast", "cli.news.today", "hello", "tester"],
                ["task", {"order": 8}]]
    with served.client() as client:
        wait_until(
            lambda: all(entry in client.rpc("cli.seen").result(5) for entry in expected),
            what="the task, the default-queue task and the broadcast recorded",
        )
        assert not any(entry[1] == "cli.weather.today" for entry in client.rpc("cli.seen").result(5))


# -- what the service logs --------------------------------------------------------------------------------------
HANDLED = re.compile(r"INFO \[\d+\] otter\.worker: (rpc|task|broadcast) (\S+) (\S+) (\d+\.\d)ms (.+)$", re.M)


@pytest.mark.amqp
def test_debug_logs_one_line_per_message_with_kind_name_id_duration_outcome(served: Served) -> None:
    with served.client() as client:
        assert client.rpc("cli.echo", "traced").result(5) == "traced"
        with pytest.raises(Exception, match="boom"):
            client.rpc("cli.fail").result(5)
        client.task(served.task_queue, "logged")

        def handled() -> list[tuple[str, ...]]:
            return HANDLED.findall(served.process.output)

        wait_until(lambda: any(kind == "task" for kind, *_ in handled()), what="the task's log line")
    lines = handled()
    assert ("rpc", "cli.echo") in {(kind, name) for kind, name, *_ in lines}
    outcomes = {name: outcome for kind, name, _, _, outcome in lines if kind == "rpc"}
    assert outcomes["cli.echo"] == "ok"
    assert outcomes["cli.fail"] == "error ValueError"
    ids = [cid for kind, name, cid, _, _ in lines if name == "cli.echo"]
    assert all(re.fullmatch(r"[0-9a-f]{32}", cid) for cid in ids)


@pytest.mark.amqp
def test_logs_never_show_the_broker_password(served: Served) -> None:
    output = served.process.output
    assert re.search(r"DEBUG \[\d+\] (aiormq|aio_pika)", output)  # the most talkative level, libraries too
    assert "guest:***@" in output
    assert "guest:guest@" not in output


@pytest.mark.amqp
def test_a_refused_password_is_not_printed(amqp_url: str) -> None:
    bad = amqp_url.replace("guest:guest@", "guest:wrong-secret-42@")
    assert bad != amqp_url, "this test needs the broker URL to carry guest:guest credentials"
    result = otter("run", SERVICE, "--broker", bad, "--log-level", "debug", env={"OTTER_CONNECT_TIMEOUT": "5"})
    assert result.returncode == 4  # the broker cannot be reached (docs/cli.md's exit codes)
    assert "wrong-secret-42" not in result.stdout + result.stderr
    assert "guest:***@" in result.stderr


@pytest.mark.amqp
def test_without_debug_no_traceback_is_sent_but_the_log_has_it_and_ctrl_c_exits_0(amqp_url: str) -> None:
    names = unique_names("cli")
    env = {f"OTTER_{key}": value for key, value in names.items()}
    env.update(OTTER_BROKER_URL=amqp_url, CLI_TASK_QUEUE=f"cli-{uuid.uuid4().hex[:10]}.record")
    try:
        with AppProcess("-m", "otter", "run", SERVICE, env=env) as process:
            process.wait_for(READY)
            result = otter("call", "cli.fail", env=env)
            assert result.returncode == 1
            assert result.stderr == "RemoteError ValueError: boom\n"
            process.wait_for("handler raised ValueError: boom")
            assert process.stop(signal.SIGINT) == 0
            assert not HANDLED.search(process.output)
            # The caller got the type and message only; the operator's log has the whole story.
            assert "Traceback" in process.output and 'raise ValueError("boom")' in process.output
            assert "stopping" in process.output
    finally:
        with RawBroker.open(amqp_url, names) as raw:
            raw.delete(env["CLI_TASK_QUEUE"])
