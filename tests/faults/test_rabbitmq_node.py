"""The switch that makes the README's test command fail, not skip, the tests that need ``rabbitmq-server``."""

from __future__ import annotations

from pathlib import Path

import pytest

from . import rabbitmq_node


@pytest.fixture
def no_rabbitmq_server(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """This process as if rabbitmq-server were not installed: nothing in its script directories or on PATH."""
    monkeypatch.setattr(rabbitmq_node, "_SCRIPT_DIRS", ())
    monkeypatch.setenv("PATH", str(tmp_path))
    assert not rabbitmq_node.rabbitmq_installed()


@pytest.mark.usefixtures("no_rabbitmq_server")
def test_without_rabbitmq_server_the_tests_that_need_it_fail_when_it_is_required(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(rabbitmq_node.REQUIRE_RABBITMQ_SERVER, "1")
    with pytest.raises(pytest.fail.Exception, match=r"apt-get install rabbitmq-server"):
        rabbitmq_node.require_rabbitmq_server()


@pytest.mark.usefixtures("no_rabbitmq_server")
@pytest.mark.parametrize("setting", [None, "", "0"])
def test_without_rabbitmq_server_the_tests_that_need_it_skip_when_it_is_not_required(
    monkeypatch: pytest.MonkeyPatch, setting: str | None
) -> None:
    if setting is None:
        monkeypatch.delenv(rabbitmq_node.REQUIRE_RABBITMQ_SERVER, raising=False)
    else:
        monkeypatch.setenv(rabbitmq_node.REQUIRE_RABBITMQ_SERVER, setting)
    with pytest.raises(pytest.skip.Exception, match="rabbitmq-server is not installed"):
        rabbitmq_node.require_rabbitmq_server()


def test_with_rabbitmq_server_installed_nothing_is_skipped_or_failed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rabbitmq_node, "rabbitmq_installed", lambda: True)
    monkeypatch.setenv(rabbitmq_node.REQUIRE_RABBITMQ_SERVER, "1")
    rabbitmq_node.require_rabbitmq_server()


def test_the_readme_test_command_requires_rabbitmq_server() -> None:
    script = Path(__file__).resolve().parents[2] / "scripts" / "test"
    assert f"export {rabbitmq_node.REQUIRE_RABBITMQ_SERVER}=1" in script.read_text()
