"""The documentation tells the truth: every Python block in README.md and docs/ runs, the configuration reference
is the code's, the API reference covers every public name, and CHANGELOG.md keeps Keep a Changelog's sections.

A block runs with the blocks before it on its page, in one namespace, as a reader would paste them. The line before
a block may say why it cannot run here (``<!-- snippet: skip, REASON -->``) or that it is a file of the repository
verbatim (``<!-- snippet: file examples/app.py -->``), which its own test runs (tests/test_examples.py).
"""

from __future__ import annotations

import ast
import asyncio
import inspect
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from helpers_process import REPO_ROOT, app_env, machine_wide_lock
from otter.config import DEFAULTS, RULES

PAGES = sorted([REPO_ROOT / "README.md", *(REPO_ROOT / "docs").rglob("*.md")])
_BLOCK = re.compile(r"^(?:(?P<marker><!--[^\n]*-->)\n)?```python\n(?P<code>.*?)^```", re.MULTILINE | re.DOTALL)
_MARKER = re.compile(r"<!-- snippet: (?P<kind>skip|file)(?:,? (?P<arg>.+?))? -->")
# Pages whose blocks call the seed's examples/app.py on RabbitMQ under kiwipy's default names (the README's
# AsyncClient, docs/protocol.md's kiwipy programs): it is served for them, as a reader would have it running.
NEEDS_SEED_APP = {"README.md", "protocol.md"}
SEED_URL = "amqp://guest:guest@127.0.0.1/"


@dataclass(frozen=True)
class Block:
    page: Path
    line: int
    code: str
    kind: str  # "run", "skip" or "file"
    arg: str = ""

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(REPO_ROOT)}:{self.line}"


def blocks(page: Path) -> list[Block]:
    text = page.read_text(encoding="utf-8")
    found = []
    for match in _BLOCK.finditer(text):
        line = text.count("\n", 0, match.start("code"))
        marker = match.group("marker")
        if marker is None:
            found.append(Block(page, line, match.group("code"), "run"))
            continue
        parsed = _MARKER.fullmatch(marker)
        assert parsed, f"{page.name}:{line}: unknown marker {marker!r}; use '<!-- snippet: skip, REASON -->' or " \
                       f"'<!-- snippet: file PATH -->'"
        found.append(Block(page, line, match.group("code"), parsed["kind"], (parsed["arg"] or "").strip()))
    return found


PAGES_WITH_CODE = [page for page in PAGES if blocks(page)]


def test_the_pages_have_python_to_check() -> None:
    assert {page.name for page in PAGES_WITH_CODE} >= {"README.md", "tutorial.md", "protocol.md", "configuration.md"}


@pytest.fixture
def seed_app_served(request: pytest.FixtureRequest) -> Iterator[None]:
    if request.node.callspec.params["page"].name not in NEEDS_SEED_APP:
        yield
        return
    sys.path.insert(0, str(REPO_ROOT))
    try:
        from examples.demo import load_seed_app
    finally:
        sys.path.remove(str(REPO_ROOT))
    from otter.testing import ServedApp
    from rawbroker import RawBroker

    with machine_wide_lock("seed-default-names"):  # kiwipy's fixed names: shared with tests/test_examples.py
        with RawBroker.open(SEED_URL) as raw:
            for queue in (DEFAULTS["DEFAULT_TASK_QUEUE"], "example.task"):  # the seed's queues (tests/test_examples.py)
                raw.purge(queue)
        with ServedApp(load_seed_app(), SEED_URL):
            yield


def _prelude(page: Path) -> dict[str, Any]:
    """What a reader of the page already has: the README's blocks build on its first, examples/app.py's ``app``."""
    namespace: dict[str, Any] = {"__name__": f"docs_{page.stem.replace('-', '_')}"}
    if page.name == "README.md":
        sys.path.insert(0, str(REPO_ROOT))
        try:
            from examples.demo import load_seed_app
        finally:
            sys.path.remove(str(REPO_ROOT))
        namespace["app"] = load_seed_app()
    return namespace


def _run(block: Block, namespace: dict[str, Any]) -> None:
    code = compile(block.code, block.where, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT, dont_inherit=True)
    if code.co_flags & inspect.CO_COROUTINE:  # top-level await, as in an asyncio REPL
        asyncio.run(eval(code, namespace))
    else:
        exec(code, namespace)


def run_page(page: Path) -> None:
    """Run the page's blocks in order in one namespace; called in a process of its own (below), so that what a
    snippet leaves behind (threads, sockets, loggers, imported modules) stays out of the test session."""
    namespace = _prelude(page)
    for block in blocks(page):
        if block.kind == "run":
            try:
                _run(block, namespace)
            except Exception as exc:
                raise SystemExit(f"the block at {block.where} raised {type(exc).__name__}: {exc}") from exc


@pytest.mark.usefixtures("seed_app_served")
@pytest.mark.parametrize("page", PAGES_WITH_CODE, ids=lambda page: str(page.relative_to(REPO_ROOT)))
def test_every_python_block_runs(page: Path) -> None:
    for block in blocks(page):
        if block.kind == "skip":
            assert len(block.arg) >= 10, f"{block.where}: say why the block cannot run: <!-- snippet: skip, REASON -->"
        elif block.kind == "file":
            path = REPO_ROOT / block.arg
            assert path.is_file(), f"{block.where}: no file {block.arg}"
            assert block.code == path.read_text(encoding="utf-8"), f"{block.where} differs from {block.arg}"
    ran = subprocess.run([sys.executable, __file__, str(page)], cwd=REPO_ROOT, env=app_env(), capture_output=True,
                         text=True, timeout=90)
    assert ran.returncode == 0, ran.stderr[-3000:]


# -- the configuration reference -------------------------------------------------------------------------------

def _config_rows() -> dict[str, list[str]]:
    rows = {}
    for line in (REPO_ROOT / "docs" / "configuration.md").read_text(encoding="utf-8").splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split(" | ")]
        if line.startswith("| `") and len(cells) == 4 and cells[0].strip("`") in RULES:
            rows[cells[0].strip("`")] = cells[1:]
    return rows


def test_the_configuration_reference_has_every_key_with_its_real_default_and_rule() -> None:
    rows = _config_rows()
    assert list(rows) == list(DEFAULTS), "docs/configuration.md must list every key of DEFAULTS, in its order"
    for key, (default, accepts, meaning) in rows.items():
        assert default == f"`{DEFAULTS[key]!r}`", f"{key}: documented default {default}, real {DEFAULTS[key]!r}"
        rule = RULES[key]
        assert accepts == rule.expects + ("; or unset" if rule.optional else ""), f"{key}: {accepts!r}"
        assert meaning, key


def test_every_config_key_has_a_rule() -> None:
    assert set(RULES) == set(DEFAULTS)


# -- the API reference -----------------------------------------------------------------------------------------

def _hooks() -> Any:
    sys.path.insert(0, str(REPO_ROOT / "docs"))
    try:
        import hooks
    finally:
        sys.path.remove(str(REPO_ROOT / "docs"))
    return hooks


def test_the_api_reference_covers_every_public_name_with_a_docstring() -> None:
    assert _hooks().gaps(REPO_ROOT / "docs") == []


def test_a_gap_in_the_api_reference_is_found(tmp_path: Path) -> None:
    (tmp_path / "api").mkdir()
    (tmp_path / "api" / "otter.md").write_text("::: otter.Otter\n")
    gaps = _hooks().gaps(tmp_path)
    assert "otter.Client is public (in __all__) but has no '::: otter.Client' block in docs/api/" in gaps
    assert not any(gap.startswith("otter.Otter ") for gap in gaps)

    def undocumented() -> None: ...

    assert _hooks()._undocumented("pkg.undocumented", undocumented) == ["pkg.undocumented has no docstring"]


# -- the changelog ---------------------------------------------------------------------------------------------

KEEP_A_CHANGELOG = ("Added", "Changed", "Deprecated", "Removed", "Fixed", "Security")


def test_the_changelog_keeps_keep_a_changelogs_sections() -> None:
    text = (REPO_ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    releases = re.split(r"^## ", text, flags=re.MULTILINE)[1:]
    assert releases and releases[0].startswith("[Unreleased]")
    for release in releases:
        headings = re.findall(r"^### (.+)$", release, flags=re.MULTILINE)
        name = release.splitlines()[0]
        assert all(heading in KEEP_A_CHANGELOG for heading in headings), f"{name}: {headings}"
        assert len(headings) == len(set(headings)), f"{name}: a section appears twice: {headings}"
        assert headings == sorted(headings, key=KEEP_A_CHANGELOG.index), f"{name}: sections out of order: {headings}"


if __name__ == "__main__":
    run_page(Path(sys.argv[1]).resolve())
