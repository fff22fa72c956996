"""A worker's own figures per route, as plain numbers: what its metrics export and what ``otter services`` shows.

``Tally`` is an observer of handled messages (``otter.worker.Handled``): per route it counts outcomes and handler
errors, keeps the handlers running now, and a histogram of durations with fine buckets (about 12% apart), so that
a latency over a recent window can be read from the difference of two snapshots (``LatencyWindow``) without
keeping any sample. It is what ``otter.metrics.Metrics`` counts with, so a worker with metrics on counts once for
both, and one with metrics off pays only this (``DISCOVERY``, see docs/protocol.md, "Control messages").
Imports nothing beyond the standard library.
"""

from __future__ import annotations

import bisect
import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .worker import Handled

__all__ = [
    "DURATION_BUCKETS",
    "LATENCY_BOUNDS",
    "Histogram",
    "LatencyWindow",
    "RouteTally",
    "Tally",
    "fold",
    "outcome_label",
    "outcome_of",
    "percentiles_ms",
    "quantile",
]

# Handler durations from 1 ms to a minute, as Prometheus shows them: RPCs are milliseconds, tasks may take long.
DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# What a tally counts in: 25 µs to an hour, each bound 12.2% above the last (2 ** (1/6)), plus every Prometheus
# bound, so that those buckets are sums of these (``fold``). A quantile read from them is within about 6%.
LATENCY_BOUNDS = tuple(sorted({round(25e-6 * 2 ** (step / 6), 9) for step in range(0, 163)} | set(DURATION_BUCKETS)))


def outcome_of(event: Handled) -> str:
    """A bounded label for what became of a message (``Handled.outcome`` is free text, unfit as a label):
    ok, error (an RPC or broadcast whose handler raised), retry, dead_letter, requeued, expired or rejected
    (bad input, or a reply that could not be encoded)."""
    return outcome_label(event.action, event.error, event.outcome)


def outcome_label(action: str, error: BaseException | None, outcome: str) -> str:
    """``outcome_of`` from the parts the worker has at hand (no ``Handled`` needed)."""
    label = _ACTION_LABELS.get(action)
    if label is not None:
        return label
    if error is not None:
        return "error"
    if outcome == "ok" or outcome == "expired":
        return outcome
    return "rejected"


_ACTION_LABELS = {"retry": "retry", "dead-letter": "dead_letter", "requeue": "requeued"}


class Histogram:
    """Counts per bucket (the last one is +Inf) and the sum, as plain numbers."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value


class RouteTally:
    """One route's numbers: the worker adds to ``running`` as a handler starts and takes away as it ends, and
    ``record``s each message it finished."""

    __slots__ = ("duration", "errors", "outcomes", "running")

    def __init__(self) -> None:
        self.running = 0
        self.outcomes: dict[str, int] = {}
        self.errors: dict[str, int] = {}
        self.duration = Histogram(LATENCY_BOUNDS)

    def record(self, seconds: float, outcome: str, error: BaseException | None) -> None:
        """One message finished: ``outcome`` from ``outcome_label``, ``error`` what its handler raised."""
        outcomes = self.outcomes
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
        duration = self.duration
        duration.counts[bisect.bisect_left(LATENCY_BOUNDS, seconds)] += 1
        duration.total += seconds
        if error is not None:
            errors, name = self.errors, type(error).__name__
            errors[name] = errors.get(name, 0) + 1

    @property
    def handled(self) -> int:
        """Messages finished here: every outcome but ``requeued`` (given back unstarted, or to run elsewhere)."""
        return sum(count for outcome, count in dict(self.outcomes).items() if outcome != "requeued")

    @property
    def failed(self) -> int:
        """Handled messages whose outcome was not ``ok``: a handler error, a retry, a dead letter, bad input, an
        RPC past its deadline."""
        outcomes = dict(self.outcomes)
        return sum(count for outcome, count in outcomes.items() if outcome not in ("ok", "requeued"))


class Tally:
    """An ``Observer`` of handled messages that counts per route (see the module docstring)."""

    def __init__(self) -> None:
        self.routes: dict[tuple[str, str], RouteTally] = {}

    def __call__(self, event: Handled) -> None:
        """As an ordinary observer; the worker itself calls each route's ``RouteTally.record`` instead (no event
        to build per message)."""
        route = self.routes.get((event.kind, event.name)) or self.route(event.kind, event.name)
        route.record(event.seconds, outcome_of(event), event.error)

    def route(self, kind: str, name: str) -> RouteTally:
        """The route's numbers, made when first needed."""
        route = self.routes.get((kind, name))
        if route is None:
            route = self.routes[(kind, name)] = RouteTally()
        return route

    def durations(self) -> dict[tuple[str, str], list[int]]:
        """A copy of every route's duration counts (each copy one C call: safe from another thread)."""
        return {key: list(route.duration.counts) for key, route in list(self.routes.items())}


def fold(counts: Sequence[int], bounds: Sequence[float], into: Sequence[float]) -> list[int]:
    """``counts`` over ``bounds`` (+Inf last) summed into the buckets of ``into``, whose bounds are all in
    ``bounds``: how ``LATENCY_BOUNDS`` counts become the Prometheus ``DURATION_BUCKETS``."""
    folded = [0] * (len(into) + 1)
    for index, count in enumerate(counts):
        if count:
            upper = bounds[index] if index < len(bounds) else math.inf
            folded[bisect.bisect_left(into, upper)] += count
    return folded


def quantile(q: float, counts: Sequence[int], bounds: Sequence[float] = LATENCY_BOUNDS) -> float | None:
    """The ``q`` quantile of a histogram's ``counts``, interpolated linearly inside its bucket (as Prometheus'
    ``histogram_quantile``); the +Inf bucket answers its lower bound. None for no sample."""
    total = sum(counts)
    if total <= 0:
        return None
    rank = q * total
    seen = 0
    for index, count in enumerate(counts):
        if count and seen + count >= rank:
            if index >= len(bounds):
                return bounds[-1]
            lower = bounds[index - 1] if index else 0.0
            return lower + (bounds[index] - lower) * max(0.0, rank - seen) / count
        seen += count
    return bounds[-1]


class LatencyWindow:
    """Latency quantiles per route over about the last ``window`` seconds, from a ``Tally``'s cumulative
    histograms: ``tick()`` (every ``step`` seconds, off the message path) keeps a copy of them, and ``recent()``
    subtracts the oldest copy still inside the window from the current counts. No sample is kept; a quantile is
    within a bucket's width (about 12%) of the exact one over the same messages."""

    def __init__(self, tally: Tally, *, window: float = 60.0, step: float = 5.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.tally, self.window, self.step, self._clock = tally, window, step, clock
        self._copies: deque[tuple[float, dict[tuple[str, str], list[int]]]] = deque()
        self.tick()

    def tick(self) -> None:
        """Keep a copy of the counts now; forget the ones no longer needed to cover the window."""
        now = self._clock()
        self._copies.append((now, self.tally.durations()))
        while len(self._copies) > 1 and now - self._copies[1][0] >= self.window:
            self._copies.popleft()

    def recent(self) -> tuple[float, dict[tuple[str, str], list[int]]]:
        """How many seconds the window covers now (at most ``window`` plus a ``step``; less just after start), and
        each route's duration counts within it."""
        now = self._clock()
        since, then = self._copies[0]
        counts = {}
        for key, current in self.tally.durations().items():
            before = then.get(key)
            counts[key] = current if before is None else [a - b for a, b in zip(current, before, strict=True)]
        return now - since, counts


def percentiles_ms(counts: Iterable[int], *qs: float) -> list[float | None]:
    """Quantiles of ``LATENCY_BOUNDS`` counts in milliseconds, rounded to a microsecond (None: no sample)."""
    counts = list(counts)
    values = [quantile(q, counts) for q in qs]
    return [None if value is None else round(value * 1000, 3) for value in values]

