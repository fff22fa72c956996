"""``otter.dashboard.rates``: rates from successive discovery counts, summed over replicas, with no I/O."""

from __future__ import annotations

import pytest

from otter.dashboard.rates import RateTracker
from otter.services import Instance, RouteStats


def replica(instance: str, handled: int, errors: int = 0, *, service: str = "billing", uptime: float = 10.0,
            p50: float | None = 1.0, p99: float | None = 5.0, version: str | None = "1.0") -> Instance:
    route = RouteStats(kind="rpc", name="billing.charge", queue="rpc.billing.charge", handled=handled, errors=errors,
                       in_flight=1, p50_ms=p50, p99_ms=p99)
    return Instance(service=service, version=version, host="h", pid=1, instance_id=instance, started_at=0.0,
                    uptime=uptime, concurrency=8, in_flight=1, handled=handled, errors=errors, routes=(route,))


def test_the_first_snapshot_has_counts_but_no_rates() -> None:
    [service] = RateTracker().update([replica("a", 10, 2)], now=100.0)
    [route] = service.routes
    assert (route.handled, route.errors, route.replicas) == (10, 2, 1)
    assert route.rate is None and route.error_rate is None


def test_rates_are_the_difference_over_the_time_between_snapshots_summed_over_replicas() -> None:
    tracker = RateTracker()
    tracker.update([replica("a", 10, 1), replica("b", 100)], now=100.0)
    [service] = tracker.update([replica("a", 30, 3), replica("b", 110)], now=102.0)
    [route] = service.routes
    assert route.rate == pytest.approx((20 + 10) / 2)
    assert route.error_rate == pytest.approx(2 / 2)
    assert (route.handled, route.errors, route.in_flight, route.replicas) == (140, 3, 2, 2)
    assert (service.handled, service.errors, service.in_flight) == (140, 3, 2)


def test_a_new_replica_counts_from_its_second_snapshot_and_a_missing_one_is_remembered_a_while() -> None:
    tracker = RateTracker(memory=10.0)
    tracker.update([replica("a", 10)], now=1.0)
    [service] = tracker.update([replica("a", 20), replica("new", 500)], now=2.0)
    assert service.routes[0].rate == pytest.approx(10.0)  # "new"'s 500 since its start are no rate
    tracker.update([replica("new", 510)], now=3.0)  # "a" answered too late for this round
    [service] = tracker.update([replica("a", 40), replica("new", 520)], now=4.0)
    assert service.routes[0].rate == pytest.approx(10.0 + 20 / 2)  # "a" over the two seconds since it was seen
    tracker.update([replica("new", 530)], now=5.0)
    [service] = tracker.update([replica("a", 99), replica("new", 540)], now=14.0)  # "a" unseen for 10 s: forgotten
    assert service.routes[0].rate == pytest.approx(10 / 9)


def test_a_count_that_goes_down_gives_no_negative_rate() -> None:
    tracker = RateTracker()
    tracker.update([replica("a", 10)], now=1.0)
    [service] = tracker.update([replica("a", 4)], now=2.0)
    assert service.routes[0].rate == 0.0


def test_services_are_grouped_and_sorted_replicas_oldest_first_latency_the_slowest_replicas() -> None:
    services = RateTracker().update([
        replica("young", 1, service="mail", uptime=5.0, p50=2.0, p99=None, version="2.0"),
        replica("old", 1, service="mail", uptime=50.0, p50=1.0, p99=9.0, version="1.0"),
        replica("x", 1, service="auth", p50=None, p99=None),
    ], now=1.0)
    assert [service.name for service in services] == ["auth", "mail"]
    auth, mail = services
    assert [r.instance_id for r in mail.replicas] == ["old", "young"]
    assert mail.versions == ("1.0", "2.0")
    assert (mail.routes[0].p50_ms, mail.routes[0].p99_ms) == (2.0, 9.0)
    assert (auth.routes[0].p50_ms, auth.routes[0].p99_ms) == (None, None)
