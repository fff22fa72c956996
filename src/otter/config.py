"""``app.config`` (a dict of UPPERCASE keys with Flask's loaders) and ``resolve``, the one place that decides the
effective config.

Precedence, highest first, for the app, ``Client``/``AsyncClient``/``TestClient``, the CLI and ``otter.dlq`` alike:

1. an argument (``app.run(url, debug=...)``, ``Client(url, timeout=..., **config)``, a CLI option); ``None`` means
   "not given";
2. ``OTTER_<KEY>`` in the environment, parsed as JSON when it can be (``5``, ``true``, ``["ValueError"]``);
3. the app's ``app.config`` (the config handed to ``otter.dlq``'s functions counts as this layer);
4. ``DEFAULTS`` below.

``BROKER_URL`` falls through an empty value at every layer (``OTTER_BROKER_URL=`` is as good as unset) and ends at
the embedded ``memory://`` broker when no layer names one.

>>> config = resolve({"RPC_TIMEOUT": 5}, app_config={"RPC_TIMEOUT": 1}, environ={"OTTER_DEBUG": "true"})
>>> config["RPC_TIMEOUT"], config.sources["RPC_TIMEOUT"], config["DEBUG"], config.sources["DEBUG"]
(5, 'argument', True, 'env OTTER_DEBUG')
"""

from __future__ import annotations

import difflib
import json
import logging
import os
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from .codec import DEFAULT_MAX_MESSAGE_SIZE
from .protocol import KiwipyDefaults as kiwipy_defaults

__all__ = ["DEFAULTS", "Config", "ResolvedConfig", "redact_url", "redacted", "resolve"]

log = logging.getLogger("otter.config")

ENV_PREFIX = "OTTER"
EMBEDDED_BROKER_URL = "memory://"  # transports.MEMORY_URL; written here too because transports import this module

# Where a value came from, as ResolvedConfig.sources and `otter config` show it (env values: "env OTTER_<KEY>").
ARGUMENT = "argument"
APP_CONFIG = "app.config"
DEFAULT = "default"

DEFAULTS: dict[str, Any] = {
    "BROKER_URL": None,  # None: OTTER_BROKER_URL, else the embedded memory:// broker
    "DEBUG": False,
    "CONCURRENCY": 8,  # handlers running at once per kind
    # Each consumer's prefetch is CONCURRENCY x this (Celery's default, 4): the next messages are already here when
    # a handler finishes. 1 for long-running handlers and several replicas, so a busy worker holds nothing an idle
    # one could run.
    "PREFETCH_MULTIPLIER": 4,
    "RPC_TIMEOUT": 30.0,  # seconds; every call has a deadline, sent as the message expiration
    "CONNECT_TIMEOUT": 5.0,
    "SHUTDOWN_GRACE": 30.0,  # seconds running handlers get to finish on SIGTERM/Ctrl-C
    "MAX_MESSAGE_SIZE": DEFAULT_MAX_MESSAGE_SIZE,  # bytes, enforced by senders and receivers alike
    # Encodes what JSON has no place for (Decimal, your classes): a function (or its dotted path) as orjson's default.
    "JSON_DEFAULT": None,
    # Broker outages: sends wait for the connection to come back; a task send retries until PUBLISH_TIMEOUT,
    # then raises BrokerUnavailable (never drops silently). RECONNECT_INTERVAL is the pause between attempts.
    "PUBLISH_TIMEOUT": 15.0,
    "RECONNECT_INTERVAL": 1.0,
    # TLS for amqps:// URLs (the URL's cafile/certfile/keyfile/no_verify_ssl parameters work too); see otter.tls.
    "TLS_CA_FILE": None,  # PEM bundle of the CAs that may sign the broker's certificate; None: the system's
    "TLS_CERT_FILE": None,  # client certificate (PEM), for brokers that verify their peers
    "TLS_KEY_FILE": None,  # its private key (PEM); None: in TLS_CERT_FILE
    "TLS_KEY_PASSWORD": None,
    "TLS_VERIFY": True,  # check the broker's certificate and host name; False only for throwaway setups
    # Task retries (see otter.retry); a task's own add_task options win. Retrying is opt-in because a task that
    # failed half-way may not be safe to run twice; by default a failed task goes straight to the dead letters.
    "TASK_MAX_RETRIES": 0,  # runs after the first
    "TASK_RETRY_ON": None,  # exception classes (or dotted names); None: any Exception but ValidationError
    "TASK_RETRY_BACKOFF": 1.0,  # seconds before the first retry, doubling each time
    "TASK_RETRY_BACKOFF_MAX": 300.0,
    "TASK_RETRY_JITTER": True,
    # Read by the otter command line (otter run), see docs/cli.md.
    "WORKERS": 1,  # worker processes; more than one runs them under a supervisor that restarts any that dies
    "RELOAD": False,  # restart the worker when a .py file changes (development only)
    "LOG_LEVEL": "INFO",  # of the otter loggers; DEBUG=True logs one line per message at INFO
    # Names on the wire; the defaults are kiwipy's so kiwipy programs interoperate.
    "MESSAGE_EXCHANGE": kiwipy_defaults.MESSAGE_EXCHANGE,
    "TASK_EXCHANGE": kiwipy_defaults.TASK_EXCHANGE,
    "DEFAULT_TASK_QUEUE": kiwipy_defaults.TASK_QUEUE,
    "RPC_QUEUE_PREFIX": "otter.rpc.",
    "DEAD_LETTER_QUEUE": "otter.dead-letter",
}


# OTTER_* variables that steer the command line or the test plugin rather than configure an app.
NOT_CONFIG = frozenset({"APP", "RUN_FROM_CLI", "WORKER_NUMBER", "TEST_BROKER_URL"})


class Config(dict[str, Any]):
    """Configuration values; only UPPERCASE keys are taken from objects and the environment."""

    def __init__(self, defaults: Mapping[str, Any] | None = None) -> None:
        super().__init__(DEFAULTS if defaults is None else defaults)

    def from_mapping(self, mapping: Mapping[str, Any] | None = None, **kwargs: Any) -> bool:
        items = {**(mapping or {}), **kwargs}
        self.update({key: value for key, value in items.items() if key.isupper()})
        return True

    def from_object(self, obj: object | str) -> None:
        if isinstance(obj, str):
            obj = _import_string(obj)
        for key in dir(obj):
            if key.isupper():
                self[key] = getattr(obj, key)

    def from_prefixed_env(self, prefix: str = ENV_PREFIX, *, environ: Mapping[str, str] | None = None) -> bool:
        """Load ``OTTER_<KEY>`` variables; values are parsed as JSON when they can be (``5``, ``true``)."""
        environ = os.environ if environ is None else environ
        start = f"{prefix}_"
        for name, raw in environ.items():
            if not name.startswith(start) or name[len(start):] in NOT_CONFIG:
                continue
            try:
                value: Any = json.loads(raw)
            except ValueError:
                value = raw
            self[name[len(start):]] = value
        return True

    def __repr__(self) -> str:
        return f"<Config {redacted(self)!r}>"


class ResolvedConfig(dict[str, Any]):
    """The effective config: a plain dict of values, plus ``sources``, where each came from (``"argument"``,
    ``"env OTTER_<KEY>"``, ``"app.config"`` or ``"default"``). Made by ``resolve``."""

    def __init__(self, values: Mapping[str, Any], sources: Mapping[str, str]) -> None:
        super().__init__(values)
        self.sources = dict(sources)

    def __repr__(self) -> str:
        return f"<ResolvedConfig {redacted(self)!r}>"


def resolve(
    arguments: Mapping[str, Any] | None = None,
    *,
    app_config: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> ResolvedConfig:
    """The effective config: ``arguments`` > ``OTTER_<KEY>`` in ``environ`` (default ``os.environ``) >
    ``app_config`` > ``DEFAULTS``, each value with its source.

    ``arguments`` and ``app_config`` have UPPERCASE keys; an argument that is ``None`` was not given. An app config
    value equal to the default is reported as ``"default"`` (``Config()`` starts from the defaults, so the two cannot
    be told apart). See the module docstring for ``BROKER_URL``.

    >>> resolve({"BROKER_URL": None}, environ={}).sources["BROKER_URL"]
    'default'
    """
    env = Config({})
    env.from_prefixed_env(ENV_PREFIX, environ=os.environ if environ is None else environ)
    app_config = app_config or {}
    given = {key: value for key, value in (arguments or {}).items() if value is not None}
    _warn_about_typos(env, app_config, given)

    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for key in {**DEFAULTS, **app_config, **env, **given}:
        layers = (
            (given, ARGUMENT),
            (env, f"env {ENV_PREFIX}_{key}"),
            (app_config, APP_CONFIG),
            (DEFAULTS, DEFAULT),
        )
        for layer, source in layers:
            if key not in layer or (key == "BROKER_URL" and not layer[key]):
                continue
            value = layer[key]
            if source == APP_CONFIG and key in DEFAULTS and value == DEFAULTS[key]:
                source = DEFAULT
            values[key], sources[key] = value, source
            break
    if not values.get("BROKER_URL"):
        values["BROKER_URL"], sources["BROKER_URL"] = EMBEDDED_BROKER_URL, DEFAULT
    return ResolvedConfig(values, sources)


_typos_reported: set[str] = set()


def _warn_about_typos(env: Mapping[str, Any], *known_layers: Mapping[str, Any]) -> None:
    """One warning per process for an ``OTTER_`` variable that is no config key but looks like one (a typo)."""
    known = set(DEFAULTS).union(*known_layers)
    for key in env:
        if key in known or key in _typos_reported:
            continue
        nearest = difflib.get_close_matches(key, known, n=1, cutoff=0.8)
        if nearest:
            _typos_reported.add(key)
            log.warning(
                "%s_%s is not a known config key; did you mean %s_%s?",
                ENV_PREFIX, key, ENV_PREFIX, nearest[0],
            )


def _import_string(path: str) -> object:
    """``"pkg.settings"``, ``"pkg.settings:Config"`` or ``"pkg.settings.Config"``."""
    from importlib import import_module

    if ":" in path:
        module_name, _, attr = path.partition(":")
        return getattr(import_module(module_name), attr)
    try:
        return import_module(path)
    except ImportError:
        module_name, _, attr = path.rpartition(".")
        if not module_name:
            raise
        return getattr(import_module(module_name), attr)


def redacted(config: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``config`` safe to show: passwords in URLs and ``*PASSWORD*``/``*SECRET*`` values masked."""
    shown: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, str) and key.endswith("URL"):
            shown[key] = redact_url(value)
        elif value is not None and ("PASSWORD" in key or "SECRET" in key):
            shown[key] = "***"
        else:
            shown[key] = value
    return shown


def redact_url(url: str | None) -> str | None:
    """The URL with its password replaced by ``***``, safe for logs and reprs."""
    if not url:
        return url
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        netloc = parts.netloc.rsplit("@", 1)[1]
    except (ValueError, IndexError):  # too malformed to take apart safely: show no credentials at all
        return f"{url.partition('://')[0]}://***"
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))
