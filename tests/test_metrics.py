"""``otter run --metrics-port`` and ``--health-port``: a real worker process (and a real supervisor with two), a known
number of RPCs, tasks and broadcasts, some failing, then the scraped counters must match exactly.

The broker outage (``/readyz`` 503 and back, ``/livez`` 200 throughout) is in ``tests/faults/test_health.py``.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from conftest import unique_names
from helpers_http import free_port, probe, scrape, value
from helpers_process import READY, AppProcess, app_env, wait_until
from otter import Client, Otter, RemoteError
from otter.config import resolve
from otter.errors import ConfigurationError
from rawbroker import RawBroker

APP = "tests/apps/metrics_app.py"

pytestmark = pytest.mark.amqp


@pytest.fixture
def service(amqp_url: str) -> Iterator[tuple[dict[str, str], dict[str, Any], str]]:
    names = unique_names("metrics")
    task = f"metrics-{uuid.uuid4().hex[:10]}.work"
    env = {f"OTTER_{key}": value for key, value in names.items()}
    env.update(OTTER_BROKER_URL=amqp_url, METRICS_TASK=task)
    yield env, names, task
    with RawBroker.open(amqp_url, names) as raw:
        raw.delete(task)


def test_scraped_counters_match_what_was_sent(amqp_url: str, service: Any) -> None:
    env, names, task = service
    metrics_port, health_port = free_port(), free_port()
    command = ("-m", "otter", "run", APP, "--metrics-port", str(metrics_port), "--health-port", str(health_port))
    with AppProcess(*command, env=env) as worker, Client(amqp_url, **names) as client:
        worker.wait_for(READY)
        assert probe(health_port, "/readyz") == (200, "ready\n")
        assert probe(health_port, "/livez") == (200, "alive\n")
        assert probe(health_port, "/nothing")[0] == 404
        for n in range(7):
            assert client.rpc("metrics.echo", n).result() == n
        for n in range(3):
            with pytest.raises(RemoteError):
                client.rpc("metrics.fail", n).result()
        for n in range(4):
            client.task(task, n)
        client.task(task, "fail")  # runs twice (max_retries=1), then goes to the dead letters
        for body in ("a", "b", "fail"):
            client.broadcast(body, subject="metrics.news.today")

        def settled() -> Any:  # handlers run concurrently: wait for the total, then check where each one went
            samples = scrape(metrics_port)
            total = sum(count for (name, _), count in samples.items() if name == "otter_messages_handled_total")
            return samples if total >= 19 else None

        samples = wait_until(settled, 15, "19 messages handled (the failing task twice)")
        handled = {
            (dict(labels)["kind"], dict(labels)["name"], dict(labels)["outcome"]): count
            for (name, labels), count in samples.items() if name == "otter_messages_handled_total"
        }
        assert handled == {
            ("rpc", "metrics.echo", "ok"): 7,
            ("rpc", "metrics.fail", "error"): 3,
            ("task", task, "ok"): 4,
            ("task", task, "retry"): 1,
            ("task", task, "dead_letter"): 1,
            ("broadcast", "metrics.news.*", "ok"): 2,
            ("broadcast", "metrics.news.*", "error"): 1,
        }
        assert value(samples, "otter_handler_errors_total", kind="rpc", name="metrics.fail", error="KeyError") == 3
        assert value(samples, "otter_handler_errors_total", kind="task", name=task, error="ValueError") == 2
        assert value(samples, "otter_handler_errors_total", kind="broadcast", name="metrics.news.*",
                     error="RuntimeError") == 1
        assert value(samples, "otter_task_retries_total", name=task) == 1
        assert value(samples, "otter_handler_duration_seconds_count", kind="rpc", name="metrics.echo") == 7
        assert value(samples, "otter_handler_duration_seconds_count", kind="task", name=task) == 6
        assert value(samples, "otter_publish_seconds_count", what="reply") == 10
        assert value(samples, "otter_publish_seconds_count", what="retry") == 1
        assert value(samples, "otter_publish_seconds_count", what="dead_letter") == 1
        assert value(samples, "otter_connected") == 1
        assert value(samples, "otter_reconnects_total") == 0

        # In flight, then a graceful stop: not ready while stopping, alive until the process ends.
        holding = client.rpc("metrics.hold", 3)  # returns False after 3 s, within the grace period
        wait_until(lambda: value(scrape(metrics_port), "otter_messages_in_flight", kind="rpc",
                                 name="metrics.hold") == 1, 10, "the held RPC to be in flight")
        worker.process.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        worker.wait_for("stopping: finishing running handlers")
        status, text = probe(health_port, "/readyz")
        assert (status, text) == (503, "not ready: stopping\n")
        assert probe(health_port, "/livez")[0] == 200
        assert holding.result(timeout=10) is False, "the held RPC finished within the grace period"
        assert worker.stop() == 0


def test_two_workers_report_their_sum_on_one_endpoint(amqp_url: str, service: Any) -> None:
    env, names, _task = service
    metrics_port, health_port = free_port(), free_port()
    command = ("-m", "otter", "run", APP, "--workers", "2", "--grace", "2", "--metrics-port", str(metrics_port),
               "--health-port", str(health_port))
    with AppProcess(*command, env=env) as supervisor, Client(amqp_url, **names) as client:
        wait_until(lambda: supervisor.output.count(READY) == 2, what="both workers started")
        wait_until(lambda: probe(health_port, "/readyz")[0] == 200, 10, "the pod to be ready")
        assert probe(health_port, "/readyz") == (200, "ready (2 workers)\n")
        pids: set[int] = set()
        calls = 0
        while len(pids) < 2 or calls < 40:  # until both workers served some (they share the queue)
            pids.add(client.rpc("metrics.pid").result())
            calls += 1
            assert calls < 400, "one worker took every call"

        def summed() -> Any:  # each worker writes its figures for the supervisor every second
            samples = scrape(metrics_port)
            handled = value(samples, "otter_messages_handled_total", kind="rpc", name="metrics.pid", outcome="ok")
            return samples if handled >= calls else None

        samples = wait_until(summed, 5, f"the sum of both workers to reach {calls}")
        assert value(samples, "otter_messages_handled_total", kind="rpc", name="metrics.pid", outcome="ok") == calls
        assert value(samples, "otter_connected") == 2
        assert value(samples, "otter_publish_seconds_count", what="reply") == calls
        assert value(samples, "otter_handler_duration_seconds_count", kind="rpc", name="metrics.pid") == calls

        # A killed worker: the pod is not ready until it is replaced; its counts stay in the sum.
        victim = next(iter(pids))
        subprocess.run(["kill", "-KILL", str(victim)], check=True)
        supervisor.wait_for("was killed by SIGKILL")
        wait_until(lambda: probe(health_port, "/readyz")[0] == 200 and supervisor.output.count(READY) == 3, 20,
                   "the replacement worker to be ready")
        samples = wait_until(lambda: (found := scrape(metrics_port)) and value(found, "otter_connected") == 2 and found,
                             5, "the replacement's figures")
        assert value(samples, "otter_messages_handled_total", kind="rpc", name="metrics.pid", outcome="ok") == calls
        assert value(samples, "otter_connected") == 2, "the killed worker's gauge left the sum"
        assert supervisor.stop() == 0


def test_metrics_without_prometheus_client_say_what_to_install(amqp_url: str) -> None:
    code = (
        "import sys; sys.modules['prometheus_client'] = None\n"
        "from otter.cli import main\n"
        f"main(['run', '{APP}', '--metrics-port', '{free_port()}', '--broker', '{amqp_url}'])\n"
    )
    result = subprocess.run([sys.executable, "-c", code], env=app_env(), capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "pip install 'otter-mq[metrics]'" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(("option", "what"), [("--health-port", "health probes"), ("--metrics-port", "metrics")])
@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_taken_port_is_one_clear_error(amqp_url: str, option: str, what: str, workers: str) -> None:
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run([sys.executable, "-m", "otter", "run", APP, option, str(port), "--workers", workers,
                                 "--broker", amqp_url], env=app_env(), capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert f"cannot serve {what} on port {port} ({option[2:].upper().replace('-', '_')}): " in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("port", [0, 65536, "http", True])
def test_ports_are_checked_like_every_other_key(port: Any) -> None:
    with pytest.raises(ConfigurationError, match=r"METRICS_PORT .* must be a TCP port"):
        resolve({"METRICS_PORT": port}, environ={})
    assert resolve({"HEALTH_PORT": "8080"}, environ={})["HEALTH_PORT"] == 8080


def test_app_run_serves_them_too_in_process() -> None:
    """``serve`` (under ``app.run`` and the test client) reads the ports from the config, on any transport."""
    app = Otter("in-process")

    @app.add_rpc("inproc.echo")
    def echo(comm: Any, data: Any) -> Any:
        return data

    metrics_port, health_port = free_port(), free_port()
    with app.test_client(METRICS_PORT=metrics_port, HEALTH_PORT=health_port) as client:
        assert probe(health_port, "/readyz") == (200, "ready\n")
        for n in range(3):
            client.rpc("inproc.echo", n).result()
        samples = scrape(metrics_port)
        assert value(samples, "otter_messages_handled_total", kind="rpc", name="inproc.echo", outcome="ok") == 3
        assert value(samples, "otter_connected") == 1


def test_bad_requests_to_the_probes_get_an_answer_or_a_closed_socket_and_change_nothing() -> None:
    app = Otter("probed")

    @app.add_rpc("probed.echo")
    def echo(comm: Any, data: Any) -> Any:
        return data

    health_port = free_port()
    with app.test_client(HEALTH_PORT=health_port) as client:
        answers = []
        for request in (b"POST /readyz HTTP/1.1\r\n\r\n", b"\x00\xff garbage\r\n\r\n", b"GET " + b"x" * 70000,
                        b"", b"GET /readyz?verbose=1 HTTP/1.0\r\n\r\n"):
            with socket.create_connection(("127.0.0.1", health_port), timeout=5) as raw:
                raw.sendall(request)
                raw.shutdown(socket.SHUT_WR)
                answers.append(raw.recv(4096).split(b"\r\n")[0])
        assert answers == [b"HTTP/1.1 405 Method Not Allowed", b"HTTP/1.1 404 Not Found", b"", b"",
                           b"HTTP/1.1 200 OK"]
        assert probe(health_port, "/readyz") == (200, "ready\n")
        assert client.rpc("probed.echo", 1).result() == 1


def test_the_supervisor_sums_its_workers_and_keeps_a_finished_ones_counts(tmp_path: Any) -> None:
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from otter.metrics import Metrics, PodCollector
    from otter.worker import Handled

    def worker(handled: int, slow: int, running: int) -> dict[str, Any]:
        metrics = Metrics()
        for n in range(handled):
            seconds = 2.0 if n < slow else 0.0005
            metrics(Handled("rpc", "x.y", "q", None, "ok", seconds, None, True, "reply"))
        metrics(Handled("task", "t", "q", None, "e", 0.1, ValueError(), False, "retry"))
        metrics.route("rpc", "x.y").running += running  # as the worker counts a running handler
        metrics.connection_changed(True, False)
        return metrics.snapshot()

    (tmp_path / "1.json").write_text(json.dumps(worker(3, 1, 2)))
    (tmp_path / "2.json").write_text(json.dumps(worker(4, 0, 1)))
    (tmp_path / "3.json").write_text(json.dumps(worker(5, 2, 7)))
    (tmp_path / "4.json.tmp").write_text("{half a fil")  # being written: skipped
    collector = PodCollector(tmp_path)
    collector.worker_exited(3)
    registry = CollectorRegistry()
    registry.register(collector)
    samples = {(s.name, frozenset(s.labels.items())): s.value
               for family in text_string_to_metric_families(generate_latest(registry).decode())
               for s in family.samples}
    rpc = {"kind": "rpc", "name": "x.y"}
    assert value(samples, "otter_messages_handled_total", **rpc, outcome="ok") == 12  # the finished one's too
    assert value(samples, "otter_messages_in_flight", **rpc) == 3  # running workers only
    assert value(samples, "otter_connected") == 2
    assert value(samples, "otter_task_retries_total", name="t") == 3
    assert value(samples, "otter_handler_errors_total", kind="task", name="t", error="ValueError") == 3
    assert value(samples, "otter_handler_duration_seconds_bucket", **rpc, le="0.001") == 9
    assert value(samples, "otter_handler_duration_seconds_bucket", **rpc, le="1.0") == 9
    assert value(samples, "otter_handler_duration_seconds_bucket", **rpc, le="2.5") == 12
    assert value(samples, "otter_handler_duration_seconds_bucket", **rpc, le="+Inf") == 12
    assert value(samples, "otter_handler_duration_seconds_count", **rpc) == 12
    assert value(samples, "otter_handler_duration_seconds_sum", **rpc) == pytest.approx(3 * 2.0 + 9 * 0.0005)


def test_the_test_client_serves_no_port_it_was_not_given(monkeypatch: pytest.MonkeyPatch) -> None:
    """An ``OTTER_HEALTH_PORT`` left in the shell would have every test's app bind the same port."""
    taken = free_port()
    monkeypatch.setenv("OTTER_HEALTH_PORT", str(taken))
    monkeypatch.setenv("OTTER_METRICS_PORT", str(taken))
    app = Otter("quiet")

    @app.add_rpc("quiet.echo")
    def echo(comm: Any, data: Any) -> Any:
        return data

    with app.test_client() as first, app.test_client() as second:
        assert first.rpc("quiet.echo", 1).result() == 1
        assert second.rpc("quiet.echo", 2).result() == 2
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", taken), timeout=5).close()
