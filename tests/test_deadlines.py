"""RPC deadlines: a request that waited past its caller's deadline is never run, and the caller gets
``DeadlineExceeded`` instead of waiting on work done for nobody.

The app has one slot (``CONCURRENCY=1``) and its first call blocks, so later calls wait: one inside the worker
(delivered, waiting for the slot: the worker must skip it) and one in the broker's queue (the message expiration
drops it there, or the worker skips it). A handler-run counter proves neither ran.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from typing import Any

import pytest

from otter import Client, Otter, protocol
from otter.core import deadline_passed
from otter.errors import DeadlineExceeded, MessageError
from otter.testing import ServedApp


def test_a_request_that_waited_past_its_deadline_is_not_run(
    broker_url: str, names: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    app = Otter(CONCURRENCY=1, **names)
    runs: Counter[str] = Counter()
    started, release = threading.Event(), threading.Event()

    @app.add_rpc("svc.work")
    def work(comm: Any, label: str) -> str:
        runs[label] += 1
        if label == "blocker":
            started.set()
            assert release.wait(20)
        return label

    caplog.set_level(logging.WARNING, logger="otter.worker")
    with ServedApp(app, broker_url, **names), Client(broker_url, **names) as client:
        blocker = client.rpc("svc.work", "blocker", timeout=20)
        assert started.wait(10)
        late = [client.rpc("svc.work", f"late-{n}", timeout=0.5) for n in range(2)]
        for call in late:
            with pytest.raises(DeadlineExceeded):
                call.result()
        release.set()
        assert blocker.result() == "blocker"
        # Calls run in order on the single slot: once this one ran, the late ones were either skipped or gone.
        assert client.rpc("svc.work", "after", timeout=10).result() == "after"
    assert runs == Counter({"blocker": 1, "after": 1})
    assert "deadline passed before it started; not run" in caplog.text


def test_deadline_header_is_integer_milliseconds_and_anything_else_is_unreadable() -> None:
    now = time.time()
    assert not deadline_passed({}, now)  # a kiwipy caller sends no deadline
    assert deadline_passed({protocol.DEADLINE_HEADER: protocol.deadline_ms(now - 1)}, now)
    assert not deadline_passed({protocol.DEADLINE_HEADER: protocol.deadline_ms(now + 5)}, now)
    for wrong in ("soon", now + 5, True, b"123", [1]):
        with pytest.raises(MessageError, match=protocol.DEADLINE_HEADER):
            deadline_passed({protocol.DEADLINE_HEADER: wrong}, now)
