"""``Config``: Flask's loaders, JSON values from the environment, and no password in any repr."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import uuid
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import otter.config
from helpers_process import wait_until
from otter import AsyncClient, Client, Otter
from otter.cli import cli
from otter.config import (
    APP_CONFIG,
    ARGUMENT,
    DEFAULT,
    DEFAULTS,
    EMBEDDED_BROKER_URL,
    NOT_CONFIG,
    Config,
    ResolvedConfig,
    redact_url,
    resolve,
)
from otter.dlq import list_dead_letters
from otter.testing import ServedApp
from otter.transports import MEMORY_URL
from otter.transports.memory import MemoryBroker


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
        # Several brokers, as Celery writes them: every password goes, not only the first.
        ("amqp://a:pw1@h1:5681/;amqp://b:pw2@h2:5682/", "amqp://a:***@h1:5681/;amqp://b:***@h2:5682/"),
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


# -- otter.config.resolve: the one precedence table ----------------------------------------------------------------
LAYERS = ("argument", "env", "app.config")  # above the defaults, highest first


@pytest.fixture
def no_otter_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No ``OTTER_*`` variable of the shell running the tests reaches the code under test."""
    for name in list(os.environ):
        if name.startswith("OTTER_"):
            monkeypatch.delenv(name)


@pytest.mark.parametrize(
    "present",
    [frozenset(layers) for size in range(len(LAYERS) + 1) for layers in itertools.combinations(LAYERS, size)],
    ids=lambda present: "+".join(sorted(present)) or "nothing",
)
def test_the_highest_layer_that_gives_a_value_wins(present: frozenset[str]) -> None:
    """Every subset of the layers: argument > ``OTTER_<KEY>`` > app.config > default, for any key."""
    arguments = {"RPC_TIMEOUT": 1.5} if "argument" in present else {"RPC_TIMEOUT": None}
    environ = {"OTTER_RPC_TIMEOUT": "2.5"} if "env" in present else {}
    app_config = {"RPC_TIMEOUT": 3.5} if "app.config" in present else {}
    winner = next((layer for layer in LAYERS if layer in present), "default")
    expected = {"argument": 1.5, "env": 2.5, "app.config": 3.5, "default": DEFAULTS["RPC_TIMEOUT"]}[winner]
    source = {"argument": ARGUMENT, "env": "env OTTER_RPC_TIMEOUT", "app.config": APP_CONFIG, "default": DEFAULT}

    config = resolve(arguments, app_config=app_config, environ=environ)

    assert (config["RPC_TIMEOUT"], config.sources["RPC_TIMEOUT"]) == (expected, source[winner])
    assert isinstance(config, dict) and set(config) == set(config.sources) >= set(DEFAULTS)


def test_every_key_gets_a_value_and_a_source_and_unknown_keys_pass_through() -> None:
    config = resolve(
        {"SERVICE_TOKEN_TTL": 60, "DEBUG": None},
        app_config={**DEFAULTS, "GREETING": "hi", "CONCURRENCY": 2},
        environ={"OTTER_FEATURE_FLAGS": '["a"]', "OTTER_APP": "svc:app", "OTTER_TEST_BROKER_URL": "amqp://h/"},
    )
    assert config["SERVICE_TOKEN_TTL"] == 60 and config.sources["SERVICE_TOKEN_TTL"] == ARGUMENT
    assert config["GREETING"] == "hi" and config.sources["GREETING"] == APP_CONFIG
    assert config["FEATURE_FLAGS"] == ["a"] and config.sources["FEATURE_FLAGS"] == "env OTTER_FEATURE_FLAGS"
    assert config.sources["CONCURRENCY"] == APP_CONFIG
    # an argument of None was not given; an app.config value equal to the default reads as the default
    assert (config["DEBUG"], config.sources["DEBUG"]) == (False, DEFAULT)
    assert config.sources["WORKERS"] == DEFAULT
    for not_config in NOT_CONFIG:
        assert not_config not in config


def test_environment_values_are_json_when_they_can_be() -> None:
    environ = {"OTTER_DEBUG": "true", "OTTER_CONCURRENCY": "4", "OTTER_TASK_RETRY_ON": '["ValueError"]',
               "OTTER_MESSAGE_EXCHANGE": "plain.text", "OTTER_RPC_QUEUE_PREFIX": '"quoted."'}
    config = resolve(environ=environ)
    assert (config["DEBUG"], config["CONCURRENCY"], config["TASK_RETRY_ON"]) == (True, 4, ["ValueError"])
    assert (config["MESSAGE_EXCHANGE"], config["RPC_QUEUE_PREFIX"]) == ("plain.text", "quoted.")


@pytest.mark.parametrize(
    ("argument", "env", "app_url", "expected", "source"),
    [
        ("amqp://arg/", "amqp://env/", "amqp://app/", "amqp://arg/", ARGUMENT),
        (None, "amqp://env/", "amqp://app/", "amqp://env/", "env OTTER_BROKER_URL"),
        ("", "amqp://env/", "amqp://app/", "amqp://env/", "env OTTER_BROKER_URL"),  # empty is not given
        (None, "", "amqp://app/", "amqp://app/", APP_CONFIG),  # OTTER_BROKER_URL= is as good as unset
        (None, None, "amqp://app/", "amqp://app/", APP_CONFIG),
        (None, None, None, "memory://", DEFAULT),  # the embedded broker when nothing names one
        ("", "", "", "memory://", DEFAULT),
    ],
)
def test_broker_url_falls_through_empty_values_to_the_embedded_broker(
    argument: str | None, env: str | None, app_url: str | None, expected: str, source: str
) -> None:
    environ = {} if env is None else {"OTTER_BROKER_URL": env}
    config = resolve({"BROKER_URL": argument}, app_config={"BROKER_URL": app_url}, environ=environ)
    assert (config["BROKER_URL"], config.sources["BROKER_URL"]) == (expected, source)


def test_the_embedded_broker_is_the_in_memory_transport() -> None:
    assert EMBEDDED_BROKER_URL == MEMORY_URL


def test_a_mistyped_variable_is_named_with_the_nearest_key_once(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(otter.config, "_typos_reported", set())  # once per process: start this test's process afresh
    environ = {"OTTER_BROKER_ULR": "amqp://h/", "OTTER_MY_OWN_SETTING": "1", "OTTER_APP": "svc:app"}
    with caplog.at_level(logging.WARNING, logger="otter.config"):
        config = resolve(environ=environ)
        resolve(environ=environ)
    warnings = [record.getMessage() for record in caplog.records if record.name == "otter.config"]
    assert warnings == ["OTTER_BROKER_ULR is not a known config key; did you mean OTTER_BROKER_URL?"]
    assert config["BROKER_URL"] == "memory://"  # the typo configures nothing Otter reads


def test_a_variable_for_a_key_of_the_app_is_no_typo(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="otter.config"):
        config = resolve(app_config={"BROKER_URL_BACKUP": "amqp://b/"}, environ={"OTTER_BROKER_URL_BACKUP": "x"})
    assert config["BROKER_URL_BACKUP"] == "x"
    assert not [record for record in caplog.records if record.name == "otter.config"]


# -- every caller resolves through it --------------------------------------------------------------------------------
def test_the_app_resolves_through_the_resolver(monkeypatch: pytest.MonkeyPatch, no_otter_env: None) -> None:
    monkeypatch.setenv("OTTER_CONCURRENCY", "5")
    app = Otter(SHUTDOWN_GRACE=2)
    config = app.resolve_config("amqp://h/", rpc_timeout=4)
    assert config == resolve({"BROKER_URL": "amqp://h/", "RPC_TIMEOUT": 4}, app_config=app.config)
    assert isinstance(config, ResolvedConfig)
    assert {key: config.sources[key] for key in ("BROKER_URL", "RPC_TIMEOUT", "CONCURRENCY", "SHUTDOWN_GRACE",
                                                  "WORKERS")} == {
        "BROKER_URL": ARGUMENT, "RPC_TIMEOUT": ARGUMENT, "CONCURRENCY": "env OTTER_CONCURRENCY",
        "SHUTDOWN_GRACE": APP_CONFIG, "WORKERS": DEFAULT,
    }


def test_client_takes_broker_names_and_timeouts_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, no_otter_env: None
) -> None:
    broker = f"memory://config-{uuid.uuid4().hex}"
    monkeypatch.setenv("OTTER_BROKER_URL", broker)
    monkeypatch.setenv("OTTER_MESSAGE_EXCHANGE", "from-env.messages")
    monkeypatch.setenv("OTTER_CONNECT_TIMEOUT", "2")
    monkeypatch.setenv("OTTER_RPC_TIMEOUT", "7")
    app = Otter(MESSAGE_EXCHANGE="from-env.messages")
    app.add_rpc("config.echo")(lambda comm, data: data)
    with ServedApp(app, broker), Client(timeout=3, DEAD_LETTER_QUEUE="from-arg.dlq") as client:
        assert client.rpc("config.echo", "hi").result(5) == "hi"  # found the app's exchange through OTTER_*
    assert (client.config["BROKER_URL"], client.config.sources["BROKER_URL"]) == (broker, "env OTTER_BROKER_URL")
    assert client.config["CONNECT_TIMEOUT"] == 2 and client.config.sources["MESSAGE_EXCHANGE"].startswith("env ")
    assert (client.config["RPC_TIMEOUT"], client.config.sources["RPC_TIMEOUT"]) == (3.0, ARGUMENT)
    assert (client.config["DEAD_LETTER_QUEUE"], client.config.sources["DEAD_LETTER_QUEUE"]) == (
        "from-arg.dlq", ARGUMENT)
    MemoryBroker.reset(broker.partition("://")[2])


def test_async_client_resolves_as_client_does(monkeypatch: pytest.MonkeyPatch, no_otter_env: None) -> None:
    broker = f"memory://config-{uuid.uuid4().hex}"
    monkeypatch.setenv("OTTER_BROKER_URL", broker)
    monkeypatch.setenv("OTTER_RPC_QUEUE_PREFIX", "from-env.rpc.")
    app = Otter(RPC_QUEUE_PREFIX="from-env.rpc.")
    app.add_rpc("config.echo")(lambda comm, data: data)

    async def call() -> tuple[Any, AsyncClient]:
        async with AsyncClient(MAX_MESSAGE_SIZE=4096) as client:
            return await client.rpc("config.echo", "hi"), client

    with ServedApp(app, broker):
        reply, client = asyncio.run(call())
    assert reply == "hi"
    assert client.config == resolve({"MAX_MESSAGE_SIZE": 4096})
    assert client.config.sources["RPC_QUEUE_PREFIX"] == "env OTTER_RPC_QUEUE_PREFIX"
    assert client.config.sources["MAX_MESSAGE_SIZE"] == ARGUMENT
    MemoryBroker.reset(broker.partition("://")[2])


def test_the_test_client_and_its_app_share_the_resolved_names(
    monkeypatch: pytest.MonkeyPatch, no_otter_env: None
) -> None:
    monkeypatch.setenv("OTTER_TASK_EXCHANGE", "from-env.tasks")
    app = Otter(MESSAGE_EXCHANGE="from-app.messages")
    app.add_rpc("config.echo")(lambda comm, data: data)
    with app.test_client(RPC_TIMEOUT=4) as client:
        assert client.rpc("config.echo", 1).result(5) == 1
        served = client.served.config
    assert served["TASK_EXCHANGE"] == client.config["TASK_EXCHANGE"] == "from-env.tasks"
    assert served["MESSAGE_EXCHANGE"] == client.config["MESSAGE_EXCHANGE"] == "from-app.messages"
    assert served.sources["TASK_EXCHANGE"] == "env OTTER_TASK_EXCHANGE"
    assert served.sources["MESSAGE_EXCHANGE"] == APP_CONFIG
    assert (served["RPC_TIMEOUT"], served.sources["RPC_TIMEOUT"]) == (4, ARGUMENT)
    assert client.config["BROKER_URL"] == served["BROKER_URL"]


def test_otter_config_shows_what_the_resolver_computed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_otter_env: None
) -> None:
    module = tmp_path / f"config_app_{uuid.uuid4().hex[:8]}.py"
    module.write_text("from otter import Otter\napp = Otter('shown', SHUTDOWN_GRACE=3, GREETING='hi')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    environ = {"OTTER_RPC_TIMEOUT": "6", "OTTER_BROKER_URL": "amqp://svc:hunter2@h/"}
    result = CliRunner().invoke(cli, ["config", str(module), "--json", "--concurrency", "9"], env=environ)
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)

    app = Otter("shown", SHUTDOWN_GRACE=3, GREETING="hi")
    expected = resolve({"CONCURRENCY": 9}, app_config=app.config, environ=environ)
    assert {key: row["source"] for key, row in shown.items()} == {
        key: "option" if source == ARGUMENT else source for key, source in expected.sources.items()
    }
    assert shown["BROKER_URL"]["value"] == "amqp://svc:***@h/"
    assert {key: row["value"] for key, row in shown.items() if key != "BROKER_URL"} == {
        key: value for key, value in json.loads(json.dumps(expected, default=str)).items() if key != "BROKER_URL"
    }
    assert [shown[key]["source"] for key in ("CONCURRENCY", "RPC_TIMEOUT", "SHUTDOWN_GRACE", "GREETING", "DEBUG")] == [
        "option", "env OTTER_RPC_TIMEOUT", "app.config", "app.config", "default"]


def test_dlq_functions_take_the_queue_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, no_otter_env: None
) -> None:
    """``otter.dlq`` resolves as the app does: ``OTTER_DEAD_LETTER_QUEUE`` outranks the config handed to it."""
    broker = f"memory://config-{uuid.uuid4().hex}"
    queue, task = f"dlq-{uuid.uuid4().hex[:8]}", f"job-{uuid.uuid4().hex[:8]}"
    app = Otter(DEAD_LETTER_QUEUE=queue)

    @app.add_task(task)
    def fail(comm: Any, body: Any) -> None:
        raise LookupError(body)

    with ServedApp(app, broker), Client(broker, DEAD_LETTER_QUEUE=queue) as client:
        client.task(task, "lost")
        wait_until(lambda: len(list_dead_letters(broker, {"DEAD_LETTER_QUEUE": queue})) == 1, what="a dead letter")
        monkeypatch.setenv("OTTER_BROKER_URL", broker)
        monkeypatch.setenv("OTTER_DEAD_LETTER_QUEUE", queue)
        letters = list_dead_letters(None)  # the broker and the queue both from OTTER_*
        assert list_dead_letters(None, {"DEAD_LETTER_QUEUE": "otter.dead-letter"}) == letters  # env beats config
        monkeypatch.delenv("OTTER_DEAD_LETTER_QUEUE")
        assert list_dead_letters(None) == []  # the default queue holds nothing
    assert [(letter.task, letter.error_type) for letter in letters] == [(task, "LookupError")]
    MemoryBroker.reset(broker.partition("://")[2])
