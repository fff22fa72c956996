"""OpenTelemetry: one trace from a client call through an RPC, a nested RPC and a task; deadlines that travel."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from conftest import unique_names
from otter import Client, DeadlineExceeded, Otter, RemoteError

EXPORTER = InMemorySpanExporter()
if not isinstance(trace.get_tracer_provider(), TracerProvider):  # once per test process: the provider is global
    _provider = TracerProvider()
    _provider.add_span_processor(SimpleSpanProcessor(EXPORTER))
    trace.set_tracer_provider(_provider)


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    EXPORTER.clear()
    yield EXPORTER
    EXPORTER.clear()


def chain_app(prefix: str, task_done: threading.Event) -> Otter:
    app = Otter("traced")

    @app.add_rpc(f"{prefix}.outer")
    def outer(comm: Any, data: Any) -> Any:  # a plain handler: the nested call leaves from a pool thread
        return comm.rpc_send(f"{prefix}.inner", data).result()

    @app.add_rpc(f"{prefix}.inner")
    async def inner(comm: Any, data: Any) -> Any:
        await comm.task(f"{prefix}.task", data)
        if data == "fail":
            raise ValueError("inner failed")
        return data

    @app.add_task(f"{prefix}.task")
    def task(comm: Any, body: Any) -> None:
        task_done.set()

    return app


def by_name(finished: tuple[ReadableSpan, ...]) -> dict[str, ReadableSpan]:
    return {span.name: span for span in finished}


def wait_for_spans(exporter: InMemorySpanExporter, count: int) -> tuple[ReadableSpan, ...]:
    deadline = time.monotonic() + 10
    while len(exporter.get_finished_spans()) < count:  # the task's span ends just after its handler returns
        assert time.monotonic() < deadline, [span.name for span in exporter.get_finished_spans()]
        time.sleep(0.01)
    return tuple(exporter.get_finished_spans())


def test_a_call_an_rpc_a_nested_rpc_and_a_task_form_one_trace(
    broker_url: str, spans: InMemorySpanExporter,
) -> None:
    names = unique_names("trace")
    prefix = names["RPC_QUEUE_PREFIX"].rstrip(".")
    task_done = threading.Event()
    app = chain_app(prefix, task_done)
    tracer = trace.get_tracer("tests")
    with app.test_client(broker_url, **names) as client, tracer.start_as_current_span("request") as root:
        assert client.rpc(f"{prefix}.outer", 7).result() == 7
        assert task_done.wait(10)
    found = by_name(wait_for_spans(spans, 7))

    chain = [
        ("request", None, SpanKind.INTERNAL),
        (f"call {prefix}.outer", "request", SpanKind.CLIENT),
        (f"process {prefix}.outer", f"call {prefix}.outer", SpanKind.CONSUMER),
        (f"call {prefix}.inner", f"process {prefix}.outer", SpanKind.CLIENT),
        (f"process {prefix}.inner", f"call {prefix}.inner", SpanKind.CONSUMER),
        (f"publish {prefix}.task", f"process {prefix}.inner", SpanKind.PRODUCER),
        (f"process {prefix}.task", f"publish {prefix}.task", SpanKind.CONSUMER),
    ]
    trace_id = root.get_span_context().trace_id
    for name, parent, kind in chain:
        span = found[name]
        assert span.context is not None and span.context.trace_id == trace_id, name
        assert span.kind == kind, name
        if parent is not None:
            assert span.parent is not None and span.parent.span_id == found[parent].context.span_id, name  # type: ignore[union-attr]
    process = found[f"process {prefix}.outer"]
    assert process.attributes is not None
    assert process.attributes["messaging.system"] == "rabbitmq"
    assert process.attributes["messaging.operation.type"] == "process"
    assert process.attributes["messaging.destination.name"] == f"{prefix}.outer"
    call = found[f"call {prefix}.outer"]
    assert call.attributes is not None
    assert call.attributes["messaging.message.conversation_id"] == process.attributes[
        "messaging.message.conversation_id"]


def test_a_failing_handler_marks_its_span_and_the_caller_s(broker_url: str, spans: InMemorySpanExporter) -> None:
    names = unique_names("trace")
    prefix = names["RPC_QUEUE_PREFIX"].rstrip(".")
    app = chain_app(prefix, threading.Event())
    with app.test_client(broker_url, **names) as client, pytest.raises(RemoteError):
        client.rpc(f"{prefix}.inner", "fail").result()
    found = by_name(wait_for_spans(spans, 3))
    process, call = found[f"process {prefix}.inner"], found[f"call {prefix}.inner"]
    assert process.status.status_code == StatusCode.ERROR and "ValueError: inner failed" in str(
        process.status.description)
    assert [event.name for event in process.events] == ["exception"]
    assert call.status.status_code == StatusCode.ERROR  # the caller's span: the error reply raised there


def test_a_nested_call_never_outlives_its_caller_s_deadline(broker_url: str) -> None:
    names = unique_names("deadline")
    prefix = names["RPC_QUEUE_PREFIX"].rstrip(".")
    app = Otter("deadlines")
    outcome: dict[str, Any] = {}

    @app.add_rpc(f"{prefix}.outer")
    def outer(comm: Any, data: Any) -> None:
        started = time.monotonic()
        try:
            comm.rpc_send(f"{prefix}.slow", None).result()  # its own timeout: RPC_TIMEOUT, 30 s
        except DeadlineExceeded as exc:
            outcome["error"], outcome["after"] = exc, time.monotonic() - started
        try:
            comm.rpc_send(f"{prefix}.slow", None).result()  # the caller's deadline is behind us now
        except DeadlineExceeded as exc:
            outcome["late"] = exc

    seen = threading.Event()  # both outcomes are in: the slow handler may end (closing the client waits for it)

    @app.add_rpc(f"{prefix}.slow")
    async def slow(comm: Any, data: Any) -> None:
        await asyncio.to_thread(seen.wait, 10)  # well past the caller's 1 s deadline

    with app.test_client(broker_url, **names) as client:
        # The nested call ends at the caller's deadline: the reply and the caller's own timeout race; either is right.
        with contextlib.suppress(DeadlineExceeded):
            client.rpc(f"{prefix}.outer", None, timeout=1.0).result()
        deadline = time.monotonic() + 10
        while "late" not in outcome:
            assert time.monotonic() < deadline, outcome
            time.sleep(0.01)
        seen.set()
    assert outcome["after"] < 2.0, outcome  # the caller's 1 s, not the nested call's own 30 s
    assert "has passed" in str(outcome["late"])


@pytest.mark.parametrize("how", ["not installed", "TRACING=false"])
def test_without_opentelemetry_or_with_tracing_off_nothing_of_it_is_imported(how: str) -> None:
    names = unique_names("untraced")
    program = f"""
import sys
{"sys.modules['opentelemetry'] = None  # as if not installed" if how == "not installed" else ""}
from otter import Otter
app = Otter("plain")

@app.add_rpc("{names["RPC_QUEUE_PREFIX"]}echo")
def echo(comm, data):
    return data

config = {{"TRACING": False}} if {how == "TRACING=false"!r} else {{}}
with app.test_client(**config) as client:
    assert client.rpc("{names["RPC_QUEUE_PREFIX"]}echo", 1).result() == 1
loaded = sorted(name for name, module in sys.modules.items() if name.startswith("opentelemetry") and module)
print("loaded:", loaded)
"""
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "loaded: []" in result.stdout


def test_tracing_true_without_opentelemetry_says_what_to_install() -> None:
    program = """
import sys
sys.modules['opentelemetry'] = None
from otter import Otter, ConfigurationError
try:
    Otter("x").test_client(TRACING=True).__enter__()
except ConfigurationError as exc:
    print(exc)
"""
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=60)
    assert "pip install 'otter-mq[otel]'" in result.stdout, result.stderr


def test_a_client_alone_traces_its_sends(spans: InMemorySpanExporter, amqp_url: str) -> None:
    names = unique_names("trace")
    with Client(amqp_url, **names) as client:
        client.broadcast({"n": 1}, subject=f"{names['RPC_QUEUE_PREFIX']}news")
    (span,) = wait_for_spans(spans, 1)
    assert span.name == f"publish {names['RPC_QUEUE_PREFIX']}news" and span.kind == SpanKind.PRODUCER
