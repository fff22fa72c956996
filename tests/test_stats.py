"""otter.stats: per-route counts, Prometheus buckets folded from the fine ones, and latency over a recent window."""

from __future__ import annotations

import random

import pytest

from otter.stats import DURATION_BUCKETS, LATENCY_BOUNDS, Histogram, LatencyWindow, Tally, fold, quantile
from otter.worker import Handled


def handled(name: str, seconds: float, outcome: str = "ok", error: BaseException | None = None,
            action: str = "reply") -> Handled:
    return Handled("rpc", name, "q", None, outcome, seconds, error, True, action)


def test_every_prometheus_bound_is_a_fine_bound_so_folding_equals_counting_in_prometheus_buckets() -> None:
    assert set(DURATION_BUCKETS) <= set(LATENCY_BOUNDS) and list(LATENCY_BOUNDS) == sorted(LATENCY_BOUNDS)
    values = [random.lognormvariate(-6, 2.5) for _ in range(5000)] + list(DURATION_BUCKETS) + [1e-9, 7200.0]
    fine, coarse = Histogram(LATENCY_BOUNDS), Histogram(DURATION_BUCKETS)
    for value in values:
        fine.observe(value)
        coarse.observe(value)
    assert fold(fine.counts, LATENCY_BOUNDS, DURATION_BUCKETS) == coarse.counts


@pytest.mark.parametrize("q", [0.5, 0.9, 0.99])
def test_a_quantile_from_the_fine_buckets_is_within_a_bucket_of_the_exact_one(q: float) -> None:
    values = sorted(random.lognormvariate(-7, 1.0) for _ in range(20000))
    histogram = Histogram(LATENCY_BOUNDS)
    for value in values:
        histogram.observe(value)
    exact = values[int(q * len(values)) - 1]
    estimate = quantile(q, histogram.counts)
    assert estimate is not None and abs(estimate - exact) / exact < 0.13
    assert quantile(q, [0] * len(histogram.counts)) is None


def test_a_tally_counts_handled_errors_and_running_per_route() -> None:
    tally = Tally()
    tally.route("rpc", "a").running += 1  # as the worker counts a running handler
    tally(handled("a", 0.001))
    tally(handled("a", 0.002, "KeyError: x", KeyError("x")))
    tally(handled("a", 0.001, "returned to its queue", action="requeue"))
    route = tally.routes[("rpc", "a")]
    assert (route.handled, route.failed, route.running, route.errors) == (2, 1, 1, {"KeyError": 1})


def test_the_window_holds_only_what_was_handled_within_it() -> None:
    now = [0.0]
    tally = Tally()
    window = LatencyWindow(tally, window=60.0, step=5.0, clock=lambda: now[0])
    for _ in range(100):
        tally(handled("a", 1.0))  # old and slow
    for second in range(5, 70, 5):
        now[0] = float(second)
        window.tick()
    for _ in range(100):
        tally(handled("a", 0.001))  # recent and fast
    covered, counts = window.recent()
    assert 60.0 <= covered <= 65.0
    assert sum(counts[("rpc", "a")]) == 100
    p99 = quantile(0.99, counts[("rpc", "a")])
    assert p99 is not None and p99 <= 0.001
