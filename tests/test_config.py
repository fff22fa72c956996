"""``Config``: Flask's loaders, JSON values from the environment, and no password in any repr."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from otter import Otter
from otter.config import DEFAULTS, Config, redact_url


def test_starts_from_the_defaults_without_sharing_them() -> None:
    config = Config()
    assert config == DEFAULTS
    config["RPC_TIMEOUT"] = 1
    assert DEFAULTS["RPC_TIMEOUT"] != 1
    assert Config({"ONLY": 1}) == {"ONLY": 1}


def test_from_mapping_takes_uppercase_keys_only() -> None:
    config = Config({})
    assert config.from_mapping({"RPC_TIMEOUT": 5, "lower": 1}, DEBUG=True, Mixed=2) is True
    assert config == {"RPC_TIMEOUT": 5, "DEBUG": True}
    config.from_mapping(None, RPC_TIMEOUT=6)
    assert config["RPC_TIMEOUT"] == 6


class Settings:
    RPC_TIMEOUT = 7
    CONCURRENCY = 2
    lower = "ignored"
    _PRIVATE_lower = "ignored"


def test_from_object_takes_uppercase_attributes() -> None:
    config = Config({})
    config.from_object(Settings)
    assert config == {"RPC_TIMEOUT": 7, "CONCURRENCY": 2}


@pytest.fixture
def settings_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    name = f"otter_settings_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(
        "RPC_TIMEOUT = 9\nlowercase = 1\n\nclass Production:\n    DEBUG = False\n    CONCURRENCY = 32\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


def test_from_object_imports_a_dotted_path(settings_module: str) -> None:
    module = Config({})
    module.from_object(settings_module)
    assert module == {"RPC_TIMEOUT": 9}

    for path in (f"{settings_module}.Production", f"{settings_module}:Production"):
        config = Config({})
        config.from_object(path)
        assert config == {"DEBUG": False, "CONCURRENCY": 32}, path


def test_from_object_reports_a_missing_module() -> None:
    with pytest.raises(ImportError):
        Config({}).from_object(f"no_such_module_{uuid.uuid4().hex}")


def test_from_prefixed_env_parses_json() -> None:
    environ = {
        "OTTER_RPC_TIMEOUT": "5",
        "OTTER_SHUTDOWN_GRACE": "2.5",
        "OTTER_DEBUG": "true",
        "OTTER_BROKER_URL": "amqp://guest:guest@rabbit:5672/",
        "OTTER_RPC_QUEUE_PREFIX": '"quoted."',
        "OTTER_TASK_RETRY_ON": '["ValueError"]',
        "OTTER_APP": "service:app",  # the CLI's, not config
        "OTHER_DEBUG": "false",
        "OTTERX_DEBUG": "false",
    }
    config = Config({})
    assert config.from_prefixed_env(environ=environ) is True
    assert config == {
        "RPC_TIMEOUT": 5,
        "SHUTDOWN_GRACE": 2.5,
        "DEBUG": True,
        "BROKER_URL": "amqp://guest:guest@rabbit:5672/",
        "RPC_QUEUE_PREFIX": "quoted.",
        "TASK_RETRY_ON": ["ValueError"],
    }


def test_from_prefixed_env_reads_os_environ_and_other_prefixes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MYSVC_CONCURRENCY", "3")
    config = Config({})
    config.from_prefixed_env("MYSVC")
    assert config == {"CONCURRENCY": 3}


@pytest.mark.parametrize(
    ("url", "redacted"),
    [
        ("amqp://guest:guest@127.0.0.1:5672/", "amqp://guest:***@127.0.0.1:5672/"),
        ("amqps://svc:s3cr%40t@rabbit.example.com/prod", "amqps://svc:***@rabbit.example.com/prod"),
        ("amqp://svc:p@ss@host/", "amqp://svc:***@host/"),
        ("amqp://svc:@host/", "amqp://svc:***@host/"),
        ("amqp://guest@host/", "amqp://guest@host/"),
        ("amqp://host/", "amqp://host/"),
        ("memory://", "memory://"),
        ("", ""),
        (None, None),
    ],
)
def test_redact_url(url: str | None, redacted: str | None) -> None:
    assert redact_url(url) == redacted


def test_repr_hides_secrets() -> None:
    config = Config()
    config.from_mapping(BROKER_URL="amqp://svc:hunter2@rabbit/", TLS_KEY_PASSWORD="hunter3")
    shown = repr(config)
    assert "hunter2" not in shown and "hunter3" not in shown
    assert "amqp://svc:***@rabbit/" in shown
    assert config["BROKER_URL"] == "amqp://svc:hunter2@rabbit/"  # only the repr is redacted


def test_effective_config_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    """Arguments beat ``OTTER_*`` variables, which beat ``app.config``, which beats the defaults."""
    monkeypatch.delenv("OTTER_BROKER_URL", raising=False)
    monkeypatch.setenv("OTTER_CONCURRENCY", "4")
    monkeypatch.setenv("OTTER_RPC_TIMEOUT", "6")
    app = Otter(CONCURRENCY=2, RPC_TIMEOUT=3, SHUTDOWN_GRACE=1)
    config = app.resolve_config(None, rpc_timeout=9)
    assert config["RPC_TIMEOUT"] == 9
    assert config["CONCURRENCY"] == 4
    assert config["SHUTDOWN_GRACE"] == 1
    assert config["CONNECT_TIMEOUT"] == DEFAULTS["CONNECT_TIMEOUT"]
    assert config["BROKER_URL"].startswith("memory://")  # the embedded default
    assert app.resolve_config("amqp://h/")["BROKER_URL"] == "amqp://h/"


def test_the_prefetch_is_concurrency_times_the_multiplier_capped_at_amqps_limit() -> None:
    app = Otter()
    assert app.start_worker(app.resolve_config(CONCURRENCY=3)).prefetch == 12
    assert app.start_worker(app.resolve_config(CONCURRENCY=3, PREFETCH_MULTIPLIER=1)).prefetch == 3
    assert app.start_worker(app.resolve_config(CONCURRENCY=20_000)).prefetch == 65535
