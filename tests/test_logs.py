"""Structured logs: ``otter run --log-format json`` and ``--log-config``, and the message each line is about."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import unique_names
from helpers_process import READY, AppProcess, wait_until
from otter import Client, Otter, RemoteError, current_context
from otter.logs import JsonFormatter, MessageContext, current_message
from rawbroker import RawBroker
from test_cli import SERVICE, otter

AMQP_URL = os.environ.get("OTTER_TEST_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672/")
TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
TRACEPARENT = f"00-{TRACE_ID}-b7ad6b7169203331-01"


def json_lines(output: str) -> list[dict[str, Any]]:
    """Every line of ``output`` must be one JSON object: the test fails on the first that is not."""
    return [json.loads(line) for line in output.splitlines() if line.strip()]


@pytest.fixture
def served_json() -> Iterator[tuple[AppProcess, Client]]:
    names = unique_names("logs")
    task_queue = f"logs-{uuid.uuid4().hex[:10]}.record"
    env = {f"OTTER_{key}": value for key, value in names.items()}
    env.update(CLI_TASK_QUEUE=task_queue)
    process = AppProcess("-m", "otter", "run", SERVICE, "--broker", AMQP_URL, "--log-format", "json", "--debug",
                         env=env)
    with process:
        process.wait_for(READY)
        with Client(AMQP_URL, **names) as client:
            yield process, client
        process.stop()
    with RawBroker.open(AMQP_URL, names) as raw:
        raw.delete(task_queue)


def test_json_lines_carry_the_service_route_correlation_trace_duration_and_outcome(
    served_json: tuple[AppProcess, Client],
) -> None:
    process, client = served_json
    assert client.rpc("cli.echo", 1, headers={"traceparent": TRACEPARENT}).result() == 1
    with pytest.raises(RemoteError):
        client.rpc("cli.fail", None).result()
    process.wait_for('"outcome": "error ValueError"')
    process.stop()

    lines = json_lines(process.output)  # stdout and stderr: nothing but JSON objects
    assert all({"time", "level", "logger", "message", "service"} <= line.keys() for line in lines)
    assert {line["service"] for line in lines} == {"cli-service"}
    assert all(line["time"].endswith("Z") and "T" in line["time"] for line in lines)

    echo = next(line for line in lines if line.get("route") == "cli.echo")
    assert echo["kind"] == "rpc" and echo["outcome"] == "ok" and echo["trace_id"] == TRACE_ID
    assert isinstance(echo["duration_ms"], float) and echo["duration_ms"] >= 0
    assert echo["correlation_id"]

    failed = next(line for line in lines if line.get("route") == "cli.fail" and line["level"] == "ERROR")
    # Not the first call's trace: None, or a trace of its own if this test process has an OpenTelemetry SDK set up.
    assert failed["outcome"] == "error ValueError" and failed["trace_id"] != TRACE_ID
    assert "Traceback (most recent call last)" in failed["traceback"] and "ValueError: boom" in failed["traceback"]
    assert failed["correlation_id"] != echo["correlation_id"]


@contextlib.contextmanager
def json_lines_of(logger: logging.Logger) -> Iterator[io.StringIO]:
    """What ``logger`` writes meanwhile, as the JSON formatter writes it."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter(service="tests"))
    logger.addHandler(handler)
    try:
        yield stream
    finally:
        logger.removeHandler(handler)


def test_a_handler_s_own_lines_know_their_message_in_a_thread_and_on_the_loop() -> None:
    app = Otter("ctx")
    handler_log = logging.getLogger("tests.logs.handler")

    @app.add_rpc("ctx.plain")
    def plain(comm: Any, data: Any) -> None:
        handler_log.warning("in a thread")

    @app.add_rpc("ctx.coroutine")
    async def coroutine(comm: Any, data: Any) -> None:
        handler_log.warning("on the loop")

    with json_lines_of(handler_log) as stream, app.test_client() as client:
        client.rpc("ctx.plain", None, headers={"traceparent": TRACEPARENT}).result()
        client.rpc("ctx.coroutine", None).result()
    thread_line, loop_line = json_lines(stream.getvalue())
    assert (thread_line["route"], thread_line["kind"], thread_line["trace_id"]) == ("ctx.plain", "rpc", TRACE_ID)
    assert loop_line["route"] == "ctx.coroutine" and loop_line["trace_id"] != TRACE_ID
    assert current_message.get() is None  # nothing leaks out of the handlers' tasks


def test_a_task_s_lines_carry_its_id_and_attempt() -> None:
    app = Otter("ids")
    handler_log = logging.getLogger("tests.logs.task")

    @app.add_task("ids.flaky", max_retries=1, backoff=0.01, jitter=False)
    def flaky(comm: Any, body: Any) -> None:
        handler_log.warning("running")
        context = current_context()
        if context is not None and context.attempt == 1:
            raise ConnectionError("try again")

    with json_lines_of(handler_log) as stream, app.test_client() as client:
        task_id = client.task("ids.flaky", None)
        client.wait_handled("ids.flaky")  # its last run: a retried task is handled once
    lines = json_lines(stream.getvalue())
    assert [(line["task_id"], line["attempt"]) for line in lines] == [(task_id, 1), (task_id, 2)]


def test_the_json_formatter_masks_passwords_and_keeps_extra_fields() -> None:
    record = logging.LogRecord("otter.x", logging.INFO, __file__, 1, "connecting to %s", ("amqp://u:secret@h/",),
                               None)
    record.queue = "billing"
    token = current_message.set(MessageContext("task", "billing.charge", "c1"))
    try:
        line = json.loads(JsonFormatter(service="svc", process_label="svc/2").format(record))
    finally:
        current_message.reset(token)
    assert line["message"] == "connecting to amqp://u:***@h/"
    assert (line["service"], line["worker"], line["queue"]) == ("svc", "svc/2", "billing")
    assert (line["kind"], line["route"], line["correlation_id"]) == ("task", "billing.charge", "c1")
    assert "kind" not in record.__dict__  # the record is left as it was, for the other handlers


def test_log_config_takes_a_yaml_dict_config(tmp_path: Path) -> None:
    log_file = tmp_path / "otter.log"
    config = tmp_path / "logging.yaml"
    config.write_text(
        "version: 1\n"
        "formatters:\n"
        "  json: {'()': otter.logs.JsonFormatter, service: from-yaml}\n"
        "handlers:\n"
        f"  file: {{class: logging.FileHandler, filename: '{log_file}', formatter: json}}\n"
        "root: {level: INFO, handlers: [file]}\n"
    )
    process = AppProcess("-m", "otter", "run", SERVICE, "--broker", "memory://logs", "--log-config", str(config))
    with process:
        wait_until(lambda: READY in log_file.read_text() if log_file.exists() else False,
                   what="the ready line in the log file")
        assert process.stop() == 0
    lines = json_lines(log_file.read_text())
    assert {line["service"] for line in lines} == {"from-yaml"}
    assert any(line["logger"] == "otter" and READY in line["message"] for line in lines)
    assert READY not in process.output  # the file handler replaced Otter's own


@pytest.mark.parametrize(
    ("content", "said"),
    [
        ("{not json", "is not valid JSON"),
        ('{"handlers": {}}', "must be a logging dictConfig mapping with a 'version' key"),
        ('{"version": 1, "handlers": {"h": {"class": "no.such.Handler"}}}', "was refused by logging.config"),
    ],
)
def test_a_bad_log_config_exits_2_saying_what_is_wrong(tmp_path: Path, content: str, said: str) -> None:
    config = tmp_path / "logging.json"
    config.write_text(content)
    result = otter("run", SERVICE, "--log-config", str(config), "--broker", "memory://x")
    assert result.returncode == 2, result.stderr
    assert said in result.stderr and "Traceback" not in result.stderr


def test_an_unknown_log_format_is_refused_by_name() -> None:
    result = otter("run", SERVICE, "--broker", "memory://x", env={"OTTER_LOG_FORMAT": "xml"})
    assert result.returncode == 2
    assert "LOG_FORMAT" in result.stderr and "text or json" in result.stderr
