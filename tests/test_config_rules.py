"""Every config key is checked once, when the config is resolved, against ``otter.config.RULES``: a bad value names
the key, where it came from and what it must be; a typo of a key is refused with the key it resembles."""

from __future__ import annotations

from typing import Any

import pytest

from otter import ConfigurationError, Otter
from otter.config import DEFAULTS, RULES, resolve


def test_every_key_has_a_rule_and_every_default_obeys_it() -> None:
    assert set(RULES) == set(DEFAULTS)
    config = resolve(environ={})
    assert {key: config[key] for key in DEFAULTS if key != "BROKER_URL"} == {
        key: value for key, value in DEFAULTS.items() if key != "BROKER_URL"
    }


BAD = [
    # (layer, key, value, what the message must say it must be)
    ("env", "CONCURRENCY", "abc", "a whole number of at least 1"),
    ("env", "PREFETCH_MULTIPLIER", "-3", "a whole number of at least 1"),
    ("env", "DEBUG", "maybe", "true or false"),
    ("env", "LOG_LEVEL", "loud", "one of CRITICAL, ERROR, WARNING, INFO, DEBUG"),
    ("env", "RPC_TIMEOUT", "NaN", "a number of seconds, more than 0"),
    ("app.config", "SHUTDOWN_GRACE", -1, "a number of seconds, at least 0"),
    ("app.config", "CONCURRENCY", True, "a whole number of at least 1"),
    ("app.config", "CONCURRENCY", 2.5, "a whole number of at least 1"),
    ("app.config", "MESSAGE_EXCHANGE", "", "a non-empty string"),
    ("app.config", "TASK_RETRY_ON", [1], "an exception class, its dotted name"),
    ("app.config", "TASK_MAX_RETRIES", -1, "a whole number of at least 0"),
    ("argument", "RPC_TIMEOUT", 0, "a number of seconds, more than 0"),
    ("argument", "MAX_MESSAGE_SIZE", "4MB", "a number of bytes, at least 1"),
    ("argument", "BROKER_URL", "http://rabbit/", "a URL: amqp://user:password@host:5672/vhost"),
    ("argument", "TLS_CA_FILE", 42, "a file path"),
]


@pytest.mark.parametrize(("layer", "key", "value", "expects"), BAD, ids=[f"{b[0]}-{b[1]}-{b[2]!r}" for b in BAD])
def test_a_bad_value_names_the_key_its_source_and_what_is_valid(layer: str, key: str, value: Any, expects: str) -> None:
    arguments, app_config, environ = {}, {}, {}
    if layer == "env":
        environ[f"OTTER_{key}"] = value
        source = f"env OTTER_{key}"
    elif layer == "app.config":
        app_config[key] = value
        source = "app.config"
    else:
        arguments[key] = value
        source = "argument"
    with pytest.raises(ConfigurationError) as caught:
        resolve(arguments, app_config=app_config, environ=environ)
    message = str(caught.value)
    assert f"{key} is " in message and f"(from {source}); it must be {expects}" in message


def test_every_bad_value_is_reported_at_once_and_no_password_is_shown() -> None:
    with pytest.raises(ConfigurationError) as caught:
        resolve(
            {"BROKER_URL": "http://svc:hunter2@rabbit/"},
            app_config={"WORKERS": 0},
            environ={"OTTER_CONCURRENCY": "abc"},
        )
    lines = str(caught.value).splitlines()
    assert lines[0] == "invalid configuration:"
    assert sorted(line.split()[0] for line in lines[1:]) == ["BROKER_URL", "CONCURRENCY", "WORKERS"]
    assert "hunter2" not in str(caught.value) and "svc:***@rabbit" in str(caught.value)


def test_values_are_converted_to_the_type_otter_uses() -> None:
    config = resolve(
        {"RPC_TIMEOUT": 5, "LOG_LEVEL": "debug"},
        app_config={"CONCURRENCY": "8", "WORKERS": 2.0, "TLS_VERIFY": "no"},
        environ={"OTTER_DEBUG": "True", "OTTER_SHUTDOWN_GRACE": "1.5", "OTTER_RELOAD": "1"},
    )
    assert (config["RPC_TIMEOUT"], config["LOG_LEVEL"]) == (5.0, "DEBUG")
    assert isinstance(config["RPC_TIMEOUT"], float)
    assert (config["CONCURRENCY"], config["WORKERS"], config["TLS_VERIFY"]) == (8, 2, False)
    assert isinstance(config["CONCURRENCY"], int) and isinstance(config["WORKERS"], int)
    assert (config["DEBUG"], config["SHUTDOWN_GRACE"], config["RELOAD"]) == (True, 1.5, True)


@pytest.mark.parametrize(
    ("layer", "typo", "meant"),
    [
        ("app.config", "CONCURENCY", "CONCURRENCY"),
        ("app.config", "BROKER_ULR", "BROKER_URL"),
        ("argument", "MAX_RETRIES", "TASK_MAX_RETRIES"),
        ("argument", "PREFETCH_MULTIPLER", "PREFETCH_MULTIPLIER"),
    ],
)
def test_a_typo_of_a_key_in_arguments_or_app_config_is_refused_with_the_nearest_key(
    layer: str, typo: str, meant: str
) -> None:
    arguments = {typo: 3} if layer == "argument" else {}
    app_config = {typo: 3} if layer == "app.config" else {}
    with pytest.raises(ConfigurationError) as caught:
        resolve(arguments, app_config=app_config, environ={})
    assert f"{typo} (from {layer}) is not a config key; did you mean {meant}?" in str(caught.value)


def test_an_apps_own_keys_pass_through_unchecked() -> None:
    config = resolve({"SERVICE_TOKEN_TTL": "1h"}, app_config={"GREETING": "hi", "BROKER_URL_BACKUP": "x"}, environ={})
    assert (config["SERVICE_TOKEN_TTL"], config["GREETING"], config["BROKER_URL_BACKUP"]) == ("1h", "hi", "x")


def test_the_app_checks_its_config_when_it_resolves_it() -> None:
    app = Otter("svc", CONCURENCY=4)
    with pytest.raises(ConfigurationError, match="did you mean CONCURRENCY"):
        app.resolve_config()
    with pytest.raises(ConfigurationError, match=r"PREFETCH_MULTIPLIER is -3 \(from argument\)"):
        Otter("svc").resolve_config(prefetch_multiplier=-3)
