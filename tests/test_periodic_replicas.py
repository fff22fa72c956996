"""Periodic tasks served by three real worker processes on the real RabbitMQ: each tick runs once across them, and
when the process holding the schedule is SIGKILLed another takes it over within one period (docs/periodic.md)."""

from __future__ import annotations

import itertools
import signal
import time
import uuid
from collections import Counter
from datetime import datetime
from pathlib import Path

import pytest

from conftest import unique_names
from helpers_process import READY, AppProcess, wait_until
from otter.protocol import schedule_queue_name
from rawbroker import RawBroker

PERIOD = 1.0  # seconds
HOLDS = "holds its schedule"  # what the holder logs when the broker makes it the active consumer


def _runs(directory: Path) -> dict[int, list[tuple[str, float]]]:
    """The ticks each process ran, by pid: (tick id, when it ran); only complete lines."""
    runs: dict[int, list[tuple[str, float]]] = {}
    for path in directory.glob("ticks-*.txt"):
        text = path.read_text()
        lines = text[: text.rfind("\n") + 1].splitlines()
        runs[int(path.stem.removeprefix("ticks-"))] = [(line.split()[0], float(line.split()[1])) for line in lines]
    return runs


def _scheduled(tick_id: str) -> float:
    return datetime.fromisoformat(tick_id.rpartition("@")[2].replace("Z", "+00:00")).timestamp()


@pytest.mark.amqp
def test_three_replicas_run_each_tick_once_and_a_killed_holder_is_replaced_within_a_period(
    amqp_url: str, tmp_path: Path
) -> None:
    names = unique_names("periodic")
    task = f"periodic-{uuid.uuid4().hex[:10]}.tick"
    env = {f"OTTER_{key}": value for key, value in names.items()}
    env.update(OTTER_BROKER_URL=amqp_url, PERIODIC_TASK=task, PERIODIC_EVERY=str(PERIOD),
               PERIODIC_RECORD_DIR=str(tmp_path))
    replicas = [AppProcess("tests/apps/periodic_app.py", env=env) for _ in range(3)]
    try:
        for replica in replicas:
            replica.start()
        for replica in replicas:
            replica.wait_for(READY)
        holder = wait_until(lambda: next((r for r in replicas if HOLDS in r.output), None), 10, "a schedule holder")
        assert sum(HOLDS in replica.output for replica in replicas) == 1, "one replica holds the schedule"

        def ticks_run() -> Counter[str]:
            return Counter(tick for runs in _runs(tmp_path).values() for tick, _ in runs)

        wait_until(lambda: len(ticks_run()) >= 4, 15, "4 ticks")
        before_kill = _runs(tmp_path)
        assert all(count == 1 for count in ticks_run().values()), ticks_run()
        assert len(before_kill) >= 2, f"ticks are ordinary tasks, run by any replica: {before_kill}"

        holder.process.send_signal(signal.SIGKILL)  # type: ignore[union-attr]
        killed_at = time.time()
        holder.kill()
        survivors = [replica for replica in replicas if replica is not holder]
        wait_until(lambda: any(HOLDS in replica.output for replica in survivors), 10, "another holder")
        wait_until(lambda: sum(_scheduled(tick) > killed_at for tick in ticks_run()) >= 3, 15, "3 ticks after the kill")
        for replica in survivors:
            assert replica.stop(signal.SIGTERM) == 0, replica.output
    finally:
        for replica in replicas:
            replica.kill()
        with RawBroker.open(amqp_url, names) as raw:
            raw.delete(task, schedule_queue_name(task))

    counts = ticks_run()
    times = sorted(_scheduled(tick) for tick in counts)
    # No tick was lost in the takeover: they follow one another a period apart from the first to the last.
    assert [round(later - earlier, 3) for earlier, later in itertools.pairwise(times)] == [PERIOD] * (len(times) - 1)
    # At most one ran twice: the holder may die between sending a tick and recording it (ticks are at-least-once).
    twice = [tick for tick, count in counts.items() if count > 1]
    assert len(twice) <= 1 and max(counts.values()) <= 2, counts
    first_after_kill = min(t for t in times if t > killed_at)
    ran_at = min(at for runs in _runs(tmp_path).values() for tick, at in runs if _scheduled(tick) == first_after_kill)
    print(f"\ntakeover: the first tick after the kill ran {ran_at - first_after_kill:.3f} s after its time; "
          f"{len(times)} ticks, run twice: {twice}")
    assert ran_at - first_after_kill < PERIOD, "another replica took the schedule over within one period"
