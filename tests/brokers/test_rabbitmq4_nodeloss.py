"""Losing a node of a three-node RabbitMQ 4 cluster under load (``nodeloss.run``): 20,000 quorum tasks, node 0 (where
the worker and the client are) SIGKILLed after 5,000 confirmed sends, RPCs in a loop throughout.

Opt-in (``OTTER_TEST_RABBITMQ4_SLOW=1``): about a minute on a 2-core machine, plus the cluster's boot. The figures
it prints are the ones in the README ("Several brokers, or a cluster").
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from brokers.nodeloss import run
from brokers.rabbitmq4 import Rabbitmq4Cluster

pytestmark = [
    pytest.mark.rabbitmq4,
    pytest.mark.skipif(os.environ.get("OTTER_TEST_RABBITMQ4_SLOW") != "1",
                       reason="a longer RabbitMQ 4 test; OTTER_TEST_RABBITMQ4_SLOW=1 runs it"),
]


def test_no_confirmed_task_is_lost_when_a_cluster_node_dies(
    rabbitmq4_cluster: Rabbitmq4Cluster, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="otter")
    report = run(rabbitmq4_cluster, tmp_path, tasks=20_000, kill_after=5_000)
    print(f"\n{report}")
    assert report.sent == 20_000
    assert 5_000 <= report.confirmed_before_kill < 5_200  # the sends in flight when the kill was decided
    assert report.lost == 0, report
    assert report.confirmed + sum(report.send_errors.values()) == report.sent, report
    assert not [kind for kind in report.send_errors if kind not in ("BrokerUnavailable",)], report
    assert report.rpc["answered"] > 0 and report.rpc_late == 0, report
    assert all(kind in ("answered", "BrokerUnavailable", "DeadlineExceeded") for kind in report.rpc), report
    # Everything came back on the surviving nodes, well within a minute.
    for recovered in (report.worker_reconnected, report.first_task_after, report.first_rpc_after):
        assert recovered is not None and recovered < 30, report
    assert report.broadcast_after is not None and report.broadcast_after < 5, report
    # At most one warning for the sends that had to wait for the move, not one per send in flight (200); none when
    # every send in flight was confirmed before the connection went (three runs of this session's code).
    retrying = [r for r in caplog.records if "retrying for up to" in r.getMessage()]
    assert len(retrying) <= 3, [r.getMessage() for r in retrying]
