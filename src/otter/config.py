"""``app.config``: a dict of UPPERCASE keys with Flask's loaders.

Precedence, highest first: an argument to ``app.run``/``Client``/the CLI, then ``OTTER_<KEY>`` in the environment
(``from_prefixed_env``, applied when the app runs), then what the app put in its config, then the defaults below.

>>> config = Config(); config.from_mapping(RPC_TIMEOUT=5)
>>> config["RPC_TIMEOUT"]
5
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from kiwipy.rmq import defaults as kiwipy_defaults

from .codec import DEFAULT_MAX_MESSAGE_SIZE

__all__ = ["DEFAULTS", "Config", "redact_url"]

DEFAULTS: dict[str, Any] = {
    "BROKER_URL": None,  # None: OTTER_BROKER_URL, else the embedded memory:// broker
    "DEBUG": False,
    "CONCURRENCY": 8,  # handlers running at once per kind, and the prefetch of each consumer
    "RPC_TIMEOUT": 30.0,  # seconds; every call has a deadline, sent as the message expiration
    "CONNECT_TIMEOUT": 5.0,
    "SHUTDOWN_GRACE": 30.0,  # seconds running handlers get to finish on SIGTERM/Ctrl-C
    "MAX_MESSAGE_SIZE": DEFAULT_MAX_MESSAGE_SIZE,
    # Names on the wire; the defaults are kiwipy's so kiwipy programs interoperate.
    "MESSAGE_EXCHANGE": kiwipy_defaults.MESSAGE_EXCHANGE,
    "TASK_EXCHANGE": kiwipy_defaults.TASK_EXCHANGE,
    "DEFAULT_TASK_QUEUE": kiwipy_defaults.TASK_QUEUE,
    "RPC_QUEUE_PREFIX": "otter.rpc.",
    "DEAD_LETTER_QUEUE": "otter.dead-letter",
}


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
            from importlib import import_module

            module_name, _, attr = obj.rpartition(".") if ":" not in obj else obj.partition(":")[::2]
            obj = getattr(import_module(module_name), attr) if attr else import_module(obj)
        for key in dir(obj):
            if key.isupper():
                self[key] = getattr(obj, key)

    def from_prefixed_env(self, prefix: str = "OTTER", *, environ: Mapping[str, str] | None = None) -> bool:
        """Load ``OTTER_<KEY>`` variables; values are parsed as JSON when they can be (``5``, ``true``)."""
        environ = os.environ if environ is None else environ
        start = f"{prefix}_"
        for name, raw in environ.items():
            if not name.startswith(start) or name == f"{prefix}_APP":
                continue
            try:
                value: Any = json.loads(raw)
            except ValueError:
                value = raw
            self[name[len(start):]] = value
        return True

    def __repr__(self) -> str:
        shown = {key: redact_url(value) if key.endswith("URL") and isinstance(value, str) else value
                 for key, value in self.items()}
        return f"<Config {shown!r}>"


def redact_url(url: str | None) -> str | None:
    """The URL with its password replaced by ``***``, safe for logs and reprs."""
    if not url:
        return url
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))
