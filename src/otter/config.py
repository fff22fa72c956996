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

Each of Otter's keys is checked once, here, against ``RULES`` (its type and range, and the conversion to the type
Otter uses): a bad value raises ``ConfigurationError`` naming the key, where it came from and what it must be. Keys
that are not Otter's pass through (an app may keep its own settings in ``app.config``), except one that looks like a
typo of Otter's (``CONCURENCY``): as an argument or in ``app.config`` it is refused with the key it resembles; as an
``OTTER_`` variable it gets a warning, because the environment is shared with other programs and other versions.

>>> config = resolve({"RPC_TIMEOUT": 5}, app_config={"RPC_TIMEOUT": 1}, environ={"OTTER_DEBUG": "true"})
>>> config["RPC_TIMEOUT"], config.sources["RPC_TIMEOUT"], config["DEBUG"], config.sources["DEBUG"]
(5, 'argument', True, 'env OTTER_DEBUG')
"""

from __future__ import annotations

import difflib
import json
import logging
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from .codec import DEFAULT_MAX_MESSAGE_SIZE
from .errors import ConfigurationError
from .protocol import RPC_QUEUE_TYPES, TASK_QUEUE_TYPES
from .protocol import KiwipyDefaults as kiwipy_defaults
from .schedules import MISSED_POLICIES

__all__ = ["DEFAULTS", "RULES", "Config", "ResolvedConfig", "Rule", "redact_url", "redacted", "resolve"]

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
    "CONCURRENCY": 8,  # handlers running at once in a worker: per RPC name, for all tasks, for all broadcasts
    # Each consumer's prefetch is CONCURRENCY x this (Celery's default, 4): the next messages are already here when
    # a handler finishes. 1 for long-running handlers and several replicas, so a busy worker holds nothing an idle
    # one could run.
    "PREFETCH_MULTIPLIER": 4,
    "RPC_TIMEOUT": 30.0,  # seconds; every call has a deadline, sent as the message expiration
    "CONNECT_TIMEOUT": 5.0,
    # A starting worker waits this long for a broker that cannot be reached yet (it starts first, in a deployment),
    # trying again with a log line each time; a broker that answers and refuses is not waited for.
    "STARTUP_WAIT": 30.0,
    "SHUTDOWN_GRACE": 30.0,  # seconds running handlers get to finish on SIGTERM/Ctrl-C
    # Seconds a task consumer may hold a delivery unacked, asked of the broker per consumer (basic.consume's
    # x-consumer-timeout: RabbitMQ 4.3+, quorum queues; older brokers ignore it). None: the broker's consumer_timeout.
    "CONSUMER_TIMEOUT": None,
    "MAX_MESSAGE_SIZE": DEFAULT_MAX_MESSAGE_SIZE,  # bytes, enforced by senders and receivers alike
    # Encodes what JSON has no place for (Decimal, your classes): a function (or its dotted path) as orjson's default.
    "JSON_DEFAULT": None,
    # Broker outages: sends wait for the connection to come back; a task send retries until PUBLISH_TIMEOUT,
    # then raises BrokerUnavailable (never drops silently). RECONNECT_INTERVAL is the pause between attempts.
    "PUBLISH_TIMEOUT": 15.0,
    "RECONNECT_INTERVAL": 1.0,
    # Tasks and broadcasts a sync Client has handed over without their publisher confirm yet; a full window blocks
    # client.task()/broadcast() until confirms come (flat memory). flush() and close() wait for all of them.
    "SEND_WINDOW": 1000,
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
    # Task queues (docs/protocol.md, "Task queues"). classic: kiwipy's declaration, so kiwipy programs share the
    # queues; quorum: replicated in a cluster, with a delivery limit, not declarable by kiwipy. A task's own
    # add_task(queue_type=...) wins.
    "TASK_QUEUE_TYPE": "classic",
    # RPC queues (docs/protocol.md, "RPC queues"). classic: auto-delete, so a name nobody serves fails fast
    # (Unroutable), but it lives on one node of a cluster; quorum: survives the loss of a node, lingers a minute
    # after its last worker left.
    "RPC_QUEUE_TYPE": "classic",
    # Seconds a task may wait in its queue; 0 or None: for ever. kiwipy's 7 days keep classic queues kiwipy's; past it
    # a task is dead-lettered with the reason "expired", except on those kiwipy-compatible classic queues.
    "TASK_MESSAGE_TTL": kiwipy_defaults.TASK_MESSAGE_TTL / 1000,
    # Deliveries of one task a quorum queue makes before it dead-letters it ("delivery-limit"): the guard against
    # a task that kills its worker process every time. RabbitMQ 4's own default.
    "TASK_DELIVERY_LIMIT": 20,
    # Periodic tasks (app.add_periodic, docs/periodic.md): what happens to ticks found more than PERIODIC_GRACE
    # seconds after their time (no replica was running to send them): "once" sends one tick for all of them, "all"
    # each of them, "skip" none. A periodic task's own missed= wins.
    "PERIODIC_MISSED": "once",
    "PERIODIC_GRACE": 10.0,
    # Priorities (otter.limits): the x-max-priority of the classic task queues a worker declares, and of those a
    # sender creates; None: none (kiwipy's declaration). A task's own add_task(max_priority=...) wins.
    "TASK_MAX_PRIORITY": None,
    # Seconds a task's handler may run before it fails with TimeLimitExceeded; None: no limit. A task's own
    # add_task(time_limit=...) wins.
    "TASK_TIME_LIMIT": None,
    # Read by the otter command line (otter run), see docs/cli.md.
    "WORKERS": 1,  # worker processes; more than one runs them under a supervisor that restarts any that dies
    "RELOAD": False,  # restart the worker when a .py file changes (development only)
    "LOG_LEVEL": "INFO",  # of the otter loggers; DEBUG=True logs one line per message at INFO
    # Operating (see otter.metrics and otter.health): HTTP ports on all interfaces, None for off. With WORKERS > 1
    # the supervisor serves both, for all its workers.
    "METRICS_PORT": None,  # Prometheus metrics at /metrics (needs the metrics extra: pip install 'otter-mq[metrics]')
    "HEALTH_PORT": None,  # /livez and /readyz, for Kubernetes probes
    "LOG_FORMAT": "text",  # or "json": one JSON object per line (otter.logs.JsonFormatter)
    "LOG_CONFIG": None,  # a logging dictConfig file (JSON or YAML) that replaces Otter's log handler
    # OpenTelemetry spans (otter.tracing): "auto" traces when opentelemetry is installed (otter-mq[otel]).
    "TRACING": "auto",
    # Service discovery (otter services, otter.services; docs/protocol.md, "Control messages"): each worker answers
    # status requests on CONTROL_EXCHANGE and counts per route. False: no control queue, and nothing counted per
    # message unless metrics are on.
    "DISCOVERY": True,
    "SERVICE_VERSION": None,  # what discovery reports as the service's version; None: the app's package version
    # Names on the wire; the defaults are kiwipy's so kiwipy programs interoperate.
    "MESSAGE_EXCHANGE": kiwipy_defaults.MESSAGE_EXCHANGE,
    "TASK_EXCHANGE": kiwipy_defaults.TASK_EXCHANGE,
    "DEFAULT_TASK_QUEUE": kiwipy_defaults.TASK_QUEUE,
    "RPC_QUEUE_PREFIX": "otter.rpc.",
    "DEAD_LETTER_QUEUE": "otter.dead-letter",
    "CONTROL_EXCHANGE": "otter.control",  # Otter's own (fanout): status requests of otter services
}



@dataclass(frozen=True)
class Rule:
    """What one config key accepts: ``convert`` returns the value as Otter uses it or raises ``ValueError``;
    ``expects`` says what is valid, for the error message. ``None`` is accepted only when ``optional``."""

    expects: str
    convert: Callable[[Any], Any]
    optional: bool = False


def _whole(minimum: int) -> Rule:
    def convert(value: Any) -> int:
        if isinstance(value, str):
            value = value.strip()
            number = int(value) if value.lstrip("+-").isdigit() else None
        elif isinstance(value, float) and value.is_integer():
            number = int(value)
        else:
            number = value if isinstance(value, int) and not isinstance(value, bool) else None
        if number is None or number < minimum:
            raise ValueError
        return number

    return Rule(f"a whole number of at least {minimum}", convert)


def _seconds(minimum: float, *, inclusive: bool) -> Rule:
    def convert(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise ValueError
        number = float(value)
        if not math.isfinite(number) or number < minimum or (number == minimum and not inclusive):
            raise ValueError
        return number

    bound = f"at least {minimum:g}" if inclusive else f"more than {minimum:g}"
    return Rule(f"a number of seconds, {bound}", convert)


_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


def _flag(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
        return value.strip().lower() in _TRUE
    raise ValueError


def _text(*, empty: bool = False) -> Callable[[Any], str]:
    def convert(value: Any) -> str:
        if isinstance(value, os.PathLike):
            value = os.fspath(value)
        if not isinstance(value, str) or (not empty and not value.strip()):
            raise ValueError
        return value

    return convert


def _port(value: Any) -> int:
    port: int = _whole(1).convert(value)
    if port > 65535:
        raise ValueError
    return port


def _broker_url(value: Any) -> str:
    if not isinstance(value, str) or value.partition("://")[0].lower() not in ("amqp", "amqps", "memory"):
        raise ValueError
    return value


def _log_level(value: Any) -> str:
    if not isinstance(value, str) or value.strip().upper() not in LOG_LEVELS:
        raise ValueError
    return value.strip().upper()


def _auto_or_flag(value: Any) -> bool | str:
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    return bool(_flag(value))


def _choice(*choices: str) -> Callable[[Any], str]:
    def convert(value: Any) -> str:
        if not isinstance(value, str) or value.strip().lower() not in choices:
            raise ValueError
        return value.strip().lower()

    return convert


def _exception_names(value: Any) -> Any:
    """The shape only; the names are imported when a task's retry policy is built (``otter.retry``)."""
    items = list(value) if isinstance(value, list | tuple) else [value]
    if not items or not all(_is_exception_name(item) for item in items):
        raise ValueError
    return value


def _is_exception_name(item: Any) -> bool:
    return isinstance(item, str) or (isinstance(item, type) and issubclass(item, BaseException))


def _ttl(value: Any) -> float | None:
    """0 is "never", like None, because an argument of None means "not given"."""
    seconds = float(_seconds(0, inclusive=True).convert(value))
    if 0 < seconds < 0.001:
        raise ValueError
    return seconds or None


def _max_priority(value: Any) -> int | None:
    number = int(_whole(0).convert(value))
    if number > 255:
        raise ValueError
    return number or None


LOG_LEVELS = ("CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG")
def _function(value: Any) -> Any:
    if isinstance(value, str):
        try:
            value = _import_string(value)
        except (ImportError, AttributeError, ValueError):
            raise ValueError from None
    if not callable(value):
        raise ValueError
    return value


_FLAG = Rule("true or false", _flag)
_NAME = Rule("a non-empty string", _text())
_PATH = Rule("a file path", _text(), optional=True)

# Every key of DEFAULTS, what it accepts and how it is converted; checked once, by resolve().
RULES: dict[str, Rule] = {
    "BROKER_URL": Rule("a URL: amqp://user:password@host:5672/vhost, amqps://... or memory://", _broker_url, True),
    "DEBUG": _FLAG,
    "CONCURRENCY": _whole(1),
    "PREFETCH_MULTIPLIER": _whole(1),
    "RPC_TIMEOUT": _seconds(0, inclusive=False),
    "CONNECT_TIMEOUT": _seconds(0, inclusive=False),
    "STARTUP_WAIT": _seconds(0, inclusive=True),
    "SHUTDOWN_GRACE": _seconds(0, inclusive=True),
    "CONSUMER_TIMEOUT": Rule("a number of seconds, more than 0", _seconds(0, inclusive=False).convert, True),
    "MAX_MESSAGE_SIZE": Rule("a number of bytes, at least 1", _whole(1).convert),
    "JSON_DEFAULT": Rule("a function, or its dotted path (e.g. 'myapp.encoding:default')", _function, True),
    "PUBLISH_TIMEOUT": _seconds(0, inclusive=False),
    "RECONNECT_INTERVAL": _seconds(0, inclusive=False),
    "SEND_WINDOW": _whole(1),
    "TLS_CA_FILE": _PATH,
    "TLS_CERT_FILE": _PATH,
    "TLS_KEY_FILE": _PATH,
    "TLS_KEY_PASSWORD": Rule("a string", _text(empty=True), optional=True),
    "TLS_VERIFY": _FLAG,
    "TASK_MAX_RETRIES": _whole(0),
    "TASK_RETRY_ON": Rule(
        "an exception class, its dotted name (e.g. 'builtins.OSError'), or a list of them", _exception_names, True
    ),
    "TASK_RETRY_BACKOFF": _seconds(0, inclusive=True),
    "TASK_RETRY_BACKOFF_MAX": _seconds(0, inclusive=True),
    "TASK_RETRY_JITTER": _FLAG,
    "TASK_QUEUE_TYPE": Rule(" or ".join(TASK_QUEUE_TYPES), _choice(*TASK_QUEUE_TYPES)),
    "RPC_QUEUE_TYPE": Rule(" or ".join(RPC_QUEUE_TYPES), _choice(*RPC_QUEUE_TYPES)),
    "TASK_MESSAGE_TTL": Rule("a number of seconds, at least 0.001; 0 or None: never", _ttl, True),
    "TASK_DELIVERY_LIMIT": _whole(1),
    "PERIODIC_MISSED": Rule(" or ".join(MISSED_POLICIES), _choice(*MISSED_POLICIES)),
    "PERIODIC_GRACE": _seconds(0, inclusive=True),
    "TASK_MAX_PRIORITY": Rule("a whole number from 1 to 255 (RabbitMQ advises at most 10); 0 or None: none",
                              _max_priority, True),
    "TASK_TIME_LIMIT": Rule("a number of seconds, more than 0", _seconds(0, inclusive=False).convert, True),
    "WORKERS": _whole(1),
    "RELOAD": _FLAG,
    "LOG_LEVEL": Rule(f"one of {', '.join(LOG_LEVELS)}", _log_level),
    "METRICS_PORT": Rule("a TCP port, 1 to 65535", _port, optional=True),
    "HEALTH_PORT": Rule("a TCP port, 1 to 65535", _port, optional=True),
    "LOG_FORMAT": Rule("text or json", _choice("text", "json")),
    "LOG_CONFIG": _PATH,
    "TRACING": Rule("auto, true or false", _auto_or_flag),
    "DISCOVERY": _FLAG,
    "SERVICE_VERSION": Rule("a non-empty string", _text(), optional=True),
    "CONTROL_EXCHANGE": _NAME,
    "MESSAGE_EXCHANGE": _NAME,
    "TASK_EXCHANGE": _NAME,
    "DEFAULT_TASK_QUEUE": _NAME,
    "RPC_QUEUE_PREFIX": Rule("a string", _text(empty=True)),
    "DEAD_LETTER_QUEUE": _NAME,
}

# OTTER_* variables that steer the command line or the test plugin rather than configure an app.
NOT_CONFIG = frozenset(
    {"APP", "RUN_FROM_CLI", "WORKER_NUMBER", "WORKER_HEALTH_DIR", "WORKER_METRICS_DIR", "TEST_BROKER_URL",
     "DASHBOARD_TOKEN"}
)


class Config(dict[str, Any]):
    """Configuration values; only UPPERCASE keys are taken from objects and the environment."""

    def __init__(self, defaults: Mapping[str, Any] | None = None) -> None:
        super().__init__(DEFAULTS if defaults is None else defaults)

    def from_mapping(self, mapping: Mapping[str, Any] | None = None, **kwargs: Any) -> bool:
        """Take the UPPERCASE keys of ``mapping`` and ``kwargs``, as Flask's ``Config.from_mapping``."""
        items = {**(mapping or {}), **kwargs}
        self.update({key: value for key, value in items.items() if key.isupper()})
        return True

    def from_object(self, obj: object | str) -> None:
        """Take the UPPERCASE attributes of ``obj``, an object or its dotted import path (``"myapp.settings"``)."""
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
    problems = [*_typos(given, ARGUMENT), *_typos(app_config, APP_CONFIG)]
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
    for key, rule in RULES.items():
        value = values[key]
        if value is None and rule.optional:
            continue
        try:
            values[key] = rule.convert(value)
        except (TypeError, ValueError, OverflowError):
            shown = redacted({key: value})[key]
            problems.append(f"{key} is {shown!r} (from {sources[key]}); it must be {rule.expects}")
    if problems:
        raise ConfigurationError("invalid configuration:\n  " + "\n  ".join(problems))
    return ResolvedConfig(values, sources)


def _typos(layer: Mapping[str, Any], source: str) -> list[str]:
    """A key of ``layer`` that is not Otter's but is a typo-sized edit away from one (``CONCURENCY``)."""
    problems = []
    for key in layer:
        if key in DEFAULTS or key in NOT_CONFIG:
            continue
        nearest = difflib.get_close_matches(key, DEFAULTS, n=1, cutoff=TYPO_CUTOFF)
        if nearest:
            problems.append(f"{key} (from {source}) is not a config key; did you mean {nearest[0]}?")
    return problems


# How alike (difflib's ratio) a key must be to one of Otter's to count as its typo: CONCURENCY, MAX_RETRIES and
# BROKER_ULR do; an app's own GREETING or BROKER_URL_BACKUP do not.
TYPO_CUTOFF = 0.8
_typos_reported: set[str] = set()


def _warn_about_typos(env: Mapping[str, Any], *known_layers: Mapping[str, Any]) -> None:
    """One warning per process for an ``OTTER_`` variable that is no config key but looks like one (a typo)."""
    known = set(DEFAULTS).union(*known_layers)
    for key in env:
        if key in known or key in _typos_reported:
            continue
        nearest = difflib.get_close_matches(key, known, n=1, cutoff=TYPO_CUTOFF)
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
    """The URL with its password replaced by ``***``, safe for logs and reprs; in a ``;``-separated list of broker
    URLs (Celery's way of naming several), every one of them."""
    if not url:
        return url
    if ";" in url:
        return ";".join(redact_url(part) or "" for part in url.split(";"))
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        netloc = parts.netloc.rsplit("@", 1)[1]
    except (ValueError, IndexError):  # too malformed to take apart safely: show no credentials at all
        return f"{url.partition('://')[0]}://***"
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))
