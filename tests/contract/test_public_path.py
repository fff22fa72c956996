"""Contract tests again on aio-pika's public path: the fallback Otter takes when ``otter.transports.amqp.fence``
finds an aiormq it was not written for. Real broker, real behaviour; only the version the fence sees is changed."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

import otter
from otter.testing import ServedApp
from otter.transports.amqp import fence, public

from . import test_bad_input, test_broadcasts, test_rpc, test_tasks

OUT_OF_SERIES = {"aio-pika": "9.5.8", "aiormq": "7.0.0", "pamqp": "3.3.0"}


@pytest.fixture
def broker_url(amqp_url: str) -> str:
    """RabbitMQ only: the in-memory broker has no fast path to leave."""
    return amqp_url


@pytest.fixture(autouse=True)
def public_path(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every connection of the test (server and client) sees aiormq 7.0.0, and must choose the public path."""
    chosen: list[bool] = []
    choose = fence.choose

    def recorded(robust_channel: object, underlay: object) -> bool:
        chosen.append(choose(robust_channel, underlay))
        return chosen[-1]

    monkeypatch.setattr(fence, "installed_versions", lambda: dict(OUT_OF_SERIES))
    monkeypatch.setattr(fence, "choose", recorded)
    yield
    assert chosen, "no AMQP connection was made"
    assert not any(chosen), "a connection took the fast path"


test_results = test_rpc.test_sync_and_async_handlers_return_results
test_unroutable = test_rpc.test_unserved_name_is_unroutable_at_once
test_deadline = test_rpc.test_late_answer_raises_deadline_exceeded
test_typed_errors = test_rpc.test_handler_exception_reaches_caller_typed
test_nested_calls = test_rpc.test_nested_calls_from_handlers
test_tasks_run_once = test_tasks.test_named_task_runs_once_with_its_body
test_dead_letters = test_tasks.test_failing_task_is_dead_lettered_with_the_reason
test_bad_tasks = test_bad_input.test_bad_task_bytes_are_dead_lettered
test_broadcast_metadata = test_broadcasts.test_broadcast_reaches_handler_with_metadata


def test_a_worker_stops_without_waiting_for_a_closed_channel(broker_url: str, names: dict[str, Any]) -> None:
    """The status responder cancels its consumer after the worker closed its connection; on this path that cancel
    waited ``CANCEL_TIMEOUT`` for the closed channel to come back, on every stop."""
    app = otter.Otter(**names)
    app.add_rpc(f"{names['RPC_QUEUE_PREFIX']}echo")(lambda comm, data: data)
    served = ServedApp(app, broker_url, **names).start()
    started = time.monotonic()
    served.stop()
    assert time.monotonic() - started < public.CANCEL_TIMEOUT
