"""The command lines in the docs are real: every ``otter ...`` line of a ``bash``/``console`` block in README.md and
docs/ names commands and options that exist, with values they accept (parsed by the CLI itself, not run), and the
``console`` blocks marked ``<!-- console: run APP ... -->`` are run against those apps served on RabbitMQ, their
output compared with the page's (``...`` in the page stands for any text).
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import pytest

from helpers_process import REPO_ROOT, app_env, machine_wide_lock
from otter.cli import cli
from rawbroker import RawBroker
from test_docs import PAGES

_SHELL_BLOCK = re.compile(
    r"^(?:(?P<marker><!--[^\n]*-->)\n)?```(?P<lang>bash|console|sh|shell)\n(?P<code>.*?)^```", re.MULTILINE | re.DOTALL
)
_RUN_MARKER = re.compile(r"<!-- console: run (?P<apps>[\w.: ]+) -->")
_ENV_ASSIGNMENT = re.compile(r"^[A-Z_][A-Z0-9_]*=")


@dataclass(frozen=True)
class Command:
    where: str
    words: tuple[str, ...]  # after the environment assignments, up to a redirection or a pipe
    environ: dict[str, str]
    expected: str  # a console block's output under the command, else ""


@dataclass(frozen=True)
class ShellBlock:
    where: str
    commands: tuple[Command, ...]
    run_with: tuple[str, ...]  # the apps a runnable console block needs served


def _split(page: Path, line: int, text: str) -> Command | None:
    words = shlex.split(text, comments=True)
    environ = {}
    while words and _ENV_ASSIGNMENT.match(words[0]):
        key, _, value = words.pop(0).partition("=")
        environ[key] = value
    if words[:1] == ["export"]:
        return None
    for stop in (">", "|", ";", "&&"):
        if stop in words:
            words = words[:words.index(stop)]
    if words[:1] != ["otter"]:
        return None
    return Command(f"{page.relative_to(REPO_ROOT)}:{line}", tuple(words[1:]), environ, "")


def shell_blocks(page: Path) -> Iterator[ShellBlock]:
    text = page.read_text(encoding="utf-8")
    for match in _SHELL_BLOCK.finditer(text):
        first = text.count("\n", 0, match.start("code")) + 1
        lines = match.group("code").splitlines()
        commands: list[Command] = []
        if match.group("lang") == "console":
            for offset, line in enumerate(lines):
                if line.startswith("$ "):
                    output = []
                    for later in lines[offset + 1:]:
                        if later.startswith("$ "):
                            break
                        output.append(later)
                    command = _split(page, first + offset, line[2:])
                    if command is not None:
                        commands.append(Command(command.where, command.words, command.environ, "\n".join(output)))
        else:
            joined, start = "", 0
            for offset, line in enumerate(lines):
                if not joined:
                    start = offset
                if line.endswith("\\"):
                    joined += line[:-1] + " "
                    continue
                command = _split(page, first + start, joined + line)
                joined = ""
                if command is not None:
                    commands.append(command)
        marker = match.group("marker")
        run = _RUN_MARKER.fullmatch(marker) if marker else None
        yield ShellBlock(f"{page.relative_to(REPO_ROOT)}:{first}", tuple(commands),
                         tuple(run["apps"].split()) if run else ())


BLOCKS = [block for page in PAGES for block in shell_blocks(page)]
COMMANDS = [command for block in BLOCKS for command in block.commands]
RUNNABLE = [block for block in BLOCKS if block.run_with]


def test_the_docs_have_command_lines_to_check() -> None:
    assert len(COMMANDS) >= 30
    assert {word for command in COMMANDS for word in command.words[:1]} >= {
        "run", "routes", "call", "task", "broadcast", "dlq", "docs", "config"}
    assert RUNNABLE, "no console block is marked <!-- console: run APP -->"


def parse(words: tuple[str, ...]) -> click.Command:
    """Parse ``otter WORDS`` as the CLI would, without running the command; return the command it names."""
    context = cli.make_context("otter", list(words))
    command: click.Command = cli
    while isinstance(command, click.Group):
        name, found, rest = command.resolve_command(context, context._protected_args + context.args)
        assert found is not None and name is not None
        command = found
        context = command.make_context(name, rest, parent=context)
    return command


@pytest.mark.parametrize("command", COMMANDS, ids=lambda command: f"{command.where} otter {command.words[0]}")
def test_every_otter_command_line_in_the_docs_parses(command: Command, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTTER_BROKER_URL", "amqp://guest:guest@127.0.0.1/")  # as a reader following the docs has
    for key, value in command.environ.items():
        monkeypatch.setenv(key, value)
    try:
        parse(command.words)
    except click.ClickException as exc:
        pytest.fail(f"{command.where}: `otter {shlex.join(command.words)}` does not parse: {exc.format_message()}")


def test_a_wrong_option_in_the_docs_is_caught() -> None:
    with pytest.raises(click.NoSuchOption):
        parse(("call", "example.hash", "--brokr", "amqp://"))
    with pytest.raises(click.UsageError):
        parse(("dispatch", "example.hash"))


_HEX_ID = re.compile(r"\b[0-9a-f]{32}\b")


def matches(expected: str, actual: str) -> bool:
    """``expected`` with each ``...`` standing for any text (also across lines), and each id of 32 hex digits (a
    task's, a correlation id) for any such id; trailing spaces ignored."""
    parts = []
    for part in _normal(expected).split("..."):
        pieces = [re.escape(piece) for piece in _HEX_ID.split(part)]
        parts.append("[0-9a-f]{32}".join(pieces))
    return re.fullmatch(".*?".join(parts), _normal(actual), re.DOTALL) is not None


def _normal(text: str) -> str:
    return "\n".join(line.rstrip() for line in text.strip().splitlines())


def test_matches_takes_ellipses_and_nothing_else() -> None:
    assert matches('{\n  "result": "914c..."\n}', '{\n  "result": "914cb6"\n}')
    assert not matches('{\n  "result": "914c"\n}', '{\n  "result": "914cb6"\n}')
    assert matches("task 3f9c2a0e5b7d41c8a6e1000000000000 queued", "task 95bbf4c1e7554b4293ed000000000000 queued")
    assert not matches("task 3f9c2a0e5b7d41c8a6e1000000000000 queued", "task nightly-5 queued")


def _load(target: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The app ``target`` names, as ``otter run`` loads it (an ``app.run()`` at the end of the module returns)."""
    from otter.discovery import load_app

    monkeypatch.setenv("OTTER_RUN_FROM_CLI", "true")
    sys.path.insert(0, str(REPO_ROOT))
    try:
        return load_app(target)
    finally:
        sys.path.remove(str(REPO_ROOT))


@pytest.mark.amqp
@pytest.mark.parametrize("block", RUNNABLE, ids=lambda block: block.where)
def test_the_console_blocks_marked_to_run_print_what_the_page_shows(
    block: ShellBlock, amqp_url: str, names: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from otter.testing import ServedApp

    environ = app_env({"OTTER_BROKER_URL": amqp_url, **{f"OTTER_{key}": str(value) for key, value in names.items()}})
    apps = [_load(target, monkeypatch) for target in block.run_with]
    # Task queues are named by the app, not by ``names``: the examples' example.task is the seed's own queue, which
    # tests/test_examples.py serves too (it once ran this block's `otter task example.task 5` in the seed app).
    task_queues = [route.name for app in apps for route in app.routes if route.kind == "task"]
    with ExitStack() as served:
        served.enter_context(machine_wide_lock("seed-default-names"))
        raw = served.enter_context(RawBroker.open(amqp_url, names))
        served.callback(raw.delete, *task_queues)  # and the delay levels: no `--delay 60` task lands a minute later
        for app in apps:
            served.enter_context(ServedApp(app, amqp_url, **names))
        for command in block.commands:
            ran = subprocess.run([sys.executable, "-m", "otter", *command.words], cwd=REPO_ROOT,
                                 env={**environ, **command.environ}, capture_output=True, text=True, timeout=30)
            printed = ran.stdout + ran.stderr
            assert matches(command.expected, printed), (
                f"{command.where}: `otter {shlex.join(command.words)}` printed\n{printed}\nthe page shows\n"
                f"{command.expected}"
            )
