"""Schedules and the missed-tick policy (``otter.schedules``): no broker, no clock; ``now`` is an argument."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from otter import Blueprint, ConfigurationError, Otter
from otter.protocol import read_schedule_state, schedule_state
from otter.routing import TaskRoute
from otter.schedules import CATCH_UP_BATCH, Cron, Every, Periodic, Tick, iso_time, plan, tick_id


def _utc(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=timezone.utc).timestamp()


def test_every_ticks_at_multiples_of_its_period_since_the_epoch() -> None:
    minute = Every(60)
    assert minute.next_after(_utc("2026-01-05 10:00:30")) == _utc("2026-01-05 10:01:00")
    assert minute.next_after(_utc("2026-01-05 10:01:00")) == _utc("2026-01-05 10:02:00"), "strictly after"
    assert minute.latest_at_or_before(_utc("2026-01-05 10:01:00")) == _utc("2026-01-05 10:01:00")


def test_a_fractional_period_gives_ticks_that_survive_the_state_round_trip() -> None:
    """A state records milliseconds: a tick read back must be the very tick sent, or it would be sent again."""
    fifth = Every(0.2)
    at = 1_796_211_303.4
    for _ in range(50):
        at = fifth.next_after(at)
        recorded = read_schedule_state(schedule_state("t", at))
        assert recorded == at
        assert fifth.next_after(recorded) > at
        assert plan(fifth, "once", 10, last=recorded, now=at + 0.01).ticks == ()


def test_cron_follows_its_time_zone_and_weekdays() -> None:
    weekday_7am = Cron("0 7 * * mon-fri", "Europe/Paris")
    friday_noon = datetime(2026, 1, 9, 12, tzinfo=ZoneInfo("Europe/Paris")).timestamp()
    monday = datetime.fromtimestamp(weekday_7am.next_after(friday_noon), ZoneInfo("Europe/Paris"))
    assert (monday.weekday(), monday.hour, monday.minute) == (0, 7, 0)
    assert weekday_7am.latest_at_or_before(monday.timestamp()) == monday.timestamp()
    before = datetime.fromtimestamp(weekday_7am.latest_at_or_before(monday.timestamp() - 1), ZoneInfo("Europe/Paris"))
    assert (before.weekday(), before.hour) == (4, 7)  # the Friday before


def test_cron_with_seconds_and_describe() -> None:
    every_ten_seconds = Cron("* * * * * */10")
    assert every_ten_seconds.next_after(_utc("2026-01-05 10:00:01")) == _utc("2026-01-05 10:00:10")
    assert every_ten_seconds.describe() == "cron * * * * * */10"
    assert Cron("0 7 * * *", "Asia/Tokyo").describe() == "cron 0 7 * * * (Asia/Tokyo)"


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({}, "exactly one of every="),
        ({"every": 1, "cron": "* * * * *"}, "exactly one of every="),
        ({"every": 0}, "at least 0.01"),
        ({"every": True}, "a number of seconds"),
        ({"every": float("inf")}, "a number of seconds"),
        ({"cron": "not cron"}, "a cron expression"),
        ({"cron": "* * * * *", "tz": "Mars/Olympus"}, "an IANA time zone"),
        ({"every": 5, "tz": "UTC"}, "tz= goes with cron="),
        ({"every": 5, "missed": "twice"}, "missed= must be one of"),
        ({"every": 5, "default": True}, "takes no default= option"),
        ({"every": 5, "max_retry": 3}, "did you mean 'max_retries'"),
    ],
)
def test_add_periodic_refuses_what_it_cannot_schedule(arguments: dict[str, object], message: str) -> None:
    app = Otter()
    with pytest.raises(ConfigurationError, match=message):
        app.add_periodic("job", **arguments)  # type: ignore[arg-type]


def test_add_periodic_on_a_blueprint_keeps_its_schedule_and_task_options_under_the_prefix() -> None:
    bp = Blueprint("reports")

    @bp.add_periodic("daily", every=timedelta(hours=24), missed="skip", max_retries=2)
    def daily(comm: object, tick: object) -> None: ...

    app = Otter()
    app.register_blueprint(bp, name_prefix="reports")
    [route] = app.routes
    assert isinstance(route, TaskRoute) and route.name == "reports.daily" and route.handler is daily
    assert route.periodic == Periodic(Every(86400), "skip")
    assert route.options["max_retries"] == 2
    assert app.task_queues() == {"reports.daily": route}, "never the default queue's owner"


def test_a_first_run_starts_now_with_nothing_to_catch_up() -> None:
    step = plan(Every(60), "all", 10, last=None, now=1000.0)
    assert (step.ticks, step.last, step.next_at) == ((), 1000.0, 1020.0)


def test_a_tick_found_within_the_grace_runs_whatever_the_policy() -> None:
    for missed in ("once", "all", "skip"):
        step = plan(Every(60), missed, 10, last=1020.0, now=1085.0)
        assert step.ticks == (Tick(1080.0),) and step.last == 1080.0 and step.next_at == 1140.0


def test_missed_ticks_once_all_and_skip() -> None:
    once = plan(Every(60), "once", 10, last=0.0, now=600.5)
    assert once.ticks == (Tick(600.0, missed=9),) and once.missed == 9  # folded into the tick on time
    nothing_on_time = plan(Every(60), "once", 10, last=0.0, now=615.0)
    assert nothing_on_time.ticks == (Tick(600.0, missed=10),)
    skip = plan(Every(60), "skip", 10, last=0.0, now=615.0)
    assert skip.ticks == () and skip.missed == 10 and skip.last == 600.0
    everything = plan(Every(60), "all", 10, last=0.0, now=615.0)
    assert [tick.at for tick in everything.ticks] == [60.0 * n for n in range(1, 11)]


def test_all_catches_up_in_batches() -> None:
    step = plan(Every(1), "all", 10, last=0.0, now=1000.5)
    assert len(step.ticks) == CATCH_UP_BATCH and step.last == CATCH_UP_BATCH
    assert step.next_at == 1000.5, "the rest follow at once"


def test_a_record_from_a_clock_ahead_waits_for_this_one() -> None:
    step = plan(Every(60), "all", 10, last=2000.0, now=1000.0)
    assert (step.ticks, step.last) == ((), 2000.0)


def test_tick_ids_name_the_task_and_the_scheduled_time() -> None:
    at = _utc("2026-01-05 07:00:00")
    assert tick_id("reports.daily", at) == "reports.daily@2026-01-05T07:00:00.000Z"
    assert iso_time(at + 0.25) == "2026-01-05T07:00:00.250Z"


@pytest.mark.parametrize("bad", [None, [], {"last": "yesterday"}, {"last": -1}, {"last": True}, {"other": 1}])
def test_an_unreadable_state_is_refused(bad: object) -> None:
    from otter import MessageError

    with pytest.raises(MessageError):
        read_schedule_state(bad)
