"""When a failed task runs again, and after how long: the retry policy of one task queue.

A policy comes from the task's options (``@app.add_task("x", max_retries=3, retry_on=(IOError,), backoff=1.0,
backoff_max=60.0, jitter=True)``), falling back to the app's config (``TASK_MAX_RETRIES``, ``TASK_RETRY_ON``,
``TASK_RETRY_BACKOFF``, ``TASK_RETRY_BACKOFF_MAX``, ``TASK_RETRY_JITTER``). The worker never sleeps: a retry is a
copy of the message parked in a broker-side delay queue (see ``Transport.retry_later``), so the worker's slot is
free for other tasks meanwhile and a retry survives the worker's death.

Delays double from ``backoff`` up to ``backoff_max``. Each distinct delay is a delay queue on RabbitMQ, so jittered
delays are rounded to an eighth of an octave (about 9 %): a bounded set of queues, still spread enough to break up a
thundering herd.

>>> policy = RetryPolicy(max_retries=3, backoff=1.0, jitter=False)
>>> [policy.delay(n) for n in (1, 2, 3)]
[1.0, 2.0, 4.0]
"""

from __future__ import annotations

import importlib
import math
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .errors import ConfigurationError, ValidationError

__all__ = ["RETRY_OPTIONS", "RetryPolicy", "validate_retry_options"]

RETRY_OPTIONS = ("max_retries", "retry_on", "backoff", "backoff_max", "jitter")
_CONFIG_KEYS = {
    "max_retries": "TASK_MAX_RETRIES",
    "retry_on": "TASK_RETRY_ON",
    "backoff": "TASK_RETRY_BACKOFF",
    "backoff_max": "TASK_RETRY_BACKOFF_MAX",
    "jitter": "TASK_RETRY_JITTER",
}
_STEPS_PER_OCTAVE = 8


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how late a failed task runs again.

    ``max_retries`` counts runs after the first, so a task runs at most ``max_retries + 1`` times.
    ``retry_on=None`` retries every ``Exception`` except ``ValidationError`` (bad arguments stay bad).
    """

    max_retries: int = 0
    retry_on: tuple[type[BaseException], ...] | None = None
    backoff: float = 1.0
    backoff_max: float = 300.0
    jitter: bool = True

    def __post_init__(self) -> None:
        validate_retry_options(
            {"max_retries": self.max_retries, "retry_on": self.retry_on, "backoff": self.backoff,
             "backoff_max": self.backoff_max, "jitter": self.jitter}
        )

    @classmethod
    def for_task(cls, options: Mapping[str, Any], config: Mapping[str, Any]) -> RetryPolicy:
        """The task's own options where given, the app's config otherwise."""
        values: dict[str, Any] = {}
        for option, key in _CONFIG_KEYS.items():
            value = options.get(option)
            if value is None:
                value = config.get(key)
            if value is not None:
                values[option] = value
        if "retry_on" in values:
            values["retry_on"] = _exception_types(values["retry_on"])
        for option, kind in (("max_retries", int), ("backoff", float), ("backoff_max", float)):
            if option in values and not isinstance(values[option], bool):
                values[option] = _number(values[option], kind, option)
        return cls(**values)

    def should_retry(self, exc: BaseException, attempts: int) -> bool:
        """Whether a task that just failed with ``exc`` on its ``attempts``-th run runs again."""
        return attempts <= self.max_retries and self.retryable(exc)

    def retryable(self, exc: BaseException) -> bool:
        """Whether ``exc`` is worth another try at all, however many were made."""
        if self.retry_on is None:
            return isinstance(exc, Exception) and not isinstance(exc, ValidationError)
        return isinstance(exc, self.retry_on)

    def delay(self, attempts: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before the run after the ``attempts``-th failed one."""
        exponent = min(max(attempts - 1, 0), 64)  # 2**64 * any backoff is past any cap
        delay = min(self.backoff_max, self.backoff * 2.0**exponent)
        if not self.jitter or delay <= 0:
            return delay
        jittered = (rng or random).uniform(delay / 2, delay)
        return min(self.backoff_max, _round_to_bucket(jittered))


def _round_to_bucket(seconds: float) -> float:
    """Round to a geometric grid of ``_STEPS_PER_OCTAVE`` steps per doubling, in whole milliseconds."""
    if seconds < 0.001:
        return 0.0
    step = round(math.log2(seconds * 1000) * _STEPS_PER_OCTAVE)
    return float(round(2.0 ** (step / _STEPS_PER_OCTAVE)) / 1000)


def validate_retry_options(options: Mapping[str, Any]) -> None:
    """Raise ``ConfigurationError`` for a retry option that cannot work; ``None`` means "inherit"."""
    unknown = set(options) - set(RETRY_OPTIONS)
    if unknown:
        raise ConfigurationError(f"unknown retry options {sorted(unknown)}; use {', '.join(RETRY_OPTIONS)}")
    max_retries = options.get("max_retries")
    if max_retries is not None and (isinstance(max_retries, bool) or not isinstance(max_retries, int)
                                    or max_retries < 0):
        raise ConfigurationError(f"max_retries must be an integer >= 0, got {max_retries!r}")
    for option in ("backoff", "backoff_max"):
        value = options.get(option)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not math.isfinite(value) or value < 0):
            raise ConfigurationError(f"{option} must be a number of seconds >= 0, got {value!r}")
    jitter = options.get("jitter")
    if jitter is not None and not isinstance(jitter, bool):
        raise ConfigurationError(f"jitter must be True or False, got {jitter!r}")
    if options.get("retry_on") is not None:
        _exception_types(options["retry_on"])


def _exception_types(value: Any) -> tuple[type[BaseException], ...]:
    """``retry_on`` as a tuple of exception classes; dotted names (from the environment) are imported."""
    items: Iterable[Any] = (value,) if isinstance(value, (type, str)) else value
    try:
        types = tuple(_exception_type(item) for item in items)
    except TypeError:
        raise ConfigurationError(f"retry_on must be exception classes, got {value!r}") from None
    return types


def _exception_type(item: Any) -> type[BaseException]:
    if isinstance(item, str):
        module_name, _, name = item.rpartition(".")
        try:
            item = getattr(importlib.import_module(module_name or "builtins"), name)
        except (ImportError, AttributeError, ValueError):
            raise ConfigurationError(f"retry_on names {item!r}, which cannot be imported") from None
    if not (isinstance(item, type) and issubclass(item, BaseException)):
        raise ConfigurationError(f"retry_on must be exception classes, got {item!r}")
    return item


def _number(value: Any, kind: type, option: str) -> Any:
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise ConfigurationError(f"{option} must be a number, got {value!r}") from None
