"""``otter.transports.amqp.fence``: the fast path's patches are applied at the first connect, only to the versions
they were written for; anything else runs on aio-pika's public path with one warning, over the real broker."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from typing import Any

import kiwipy.rmq.defaults as kiwipy_defaults
import pytest

from otter.protocol import KiwipyDefaults
from otter.testing import unique_names
from otter.transports.amqp import fence
from rawbroker import RawBroker


def test_the_installed_versions_are_the_ones_the_fast_path_was_written_for() -> None:
    assert fence.version_problems(fence.installed_versions(), fence.SERIES) == []
    assert fence.attribute_problems(fence._aiormq_checks()) == []
    assert fence.attribute_problems(fence._pamqp_checks()) == []


def test_a_version_outside_its_series_is_named_with_the_series() -> None:
    versions = {"aio-pika": "9.5.8", "aiormq": "7.0.1", "pamqp": "4.0.0"}
    assert fence.version_problems(versions, fence.AIORMQ_PART) == ["aiormq 7.0.1 (written for 6.9.x)"]
    assert fence.version_problems(versions, fence.PAMQP_PART) == ["pamqp 4.0.0 (written for 3.3.x)"]
    assert fence.version_problems({}, ["aiormq"]) == ["aiormq not installed (written for 6.9.x)"]


def test_a_missing_or_reshaped_attribute_is_named() -> None:
    class Channel:
        def _read_content(self, frame: Any, header: Any, extra: Any) -> None: ...

        def _on_return_frame(self, frame: Any) -> None: ...

    problems = fence.attribute_problems([
        fence.Check(Channel, "_read_content", ("self", "frame", "header")),
        fence.Check(Channel, "_Channel__get_content_header", ("self",)),
        fence.Check(Channel, "_on_return_frame", ("self", "frame")),
    ])
    assert len(problems) == 2
    assert "_read_content(self, frame, header, extra) is not (self, frame, header)" in problems[0]
    assert "_Channel__get_content_header is missing" in problems[1]


def test_kiwipy_defaults_copied_into_protocol_are_kiwipys() -> None:
    for name in ("MESSAGE_EXCHANGE", "TASK_EXCHANGE", "TASK_QUEUE", "MESSAGE_TTL", "TASK_MESSAGE_TTL"):
        assert getattr(KiwipyDefaults, name) == getattr(kiwipy_defaults, name), name


def run_python(*parts: str, timeout: float = 60) -> str:
    code = "\n".join(textwrap.dedent(part) for part in parts)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


ORIGINALS = """
    import aiormq.channel, aiormq.connection, pamqp.decode, pamqp.encode
    untouched = lambda: (
        aiormq.channel.Channel._on_return_frame.__module__ == "aiormq.channel"
        and aiormq.channel.Channel._on_confirm_frame.__module__ == "aiormq.channel"
        and aiormq.connection.FrameGenerator.__anext__.__module__ == "aiormq.connection"
        and pamqp.decode.short_str.__module__ == "pamqp.decode"
        and pamqp.encode.encode_table_value.__module__ == "pamqp.encode"
    )
"""


def test_importing_otter_patches_nothing() -> None:
    run_python(ORIGINALS, """
    import otter, otter.client, otter.transports.amqp, otter.transports.amqp.fast
    assert untouched()
    """)


@pytest.mark.amqp
def test_out_of_series_versions_run_on_the_public_path_unpatched_with_one_warning(amqp_url: str) -> None:
    """In a fresh process (no patch applied before), every version out of series: nothing is patched, one warning
    line names what was found, and RPCs, unroutable RPCs, confirmed tasks and replies still work."""
    names = dict(unique_names("fence"))
    task_queue = f"{names['MESSAGE_EXCHANGE']}.work"
    try:
        output = run_python(ORIGINALS, f"""
        import logging, queue
        import otter
        from otter.testing import ServedApp
        from otter.transports.amqp import fence

        class Recorder(logging.Handler):
            def emit(self, record):
                records.append(record)

        records = []
        logging.getLogger("otter.amqp").addHandler(Recorder())
        fence.installed_versions = lambda: {{"aio-pika": "9.6.0", "aiormq": "7.2.4", "pamqp": "4.0.1"}}
        names = {names!r}
        app = otter.Otter(**names)
        done = queue.Queue()
        app.add_rpc("fence.echo")(lambda comm, data: data)
        app.add_task({task_queue!r})(lambda comm, body: done.put(body))
        with ServedApp(app, {amqp_url!r}, **names), otter.Client({amqp_url!r}, **names) as client:
            assert client.rpc("fence.echo", "hi").result(timeout=10) == "hi"
            try:
                client.rpc("fence.nobody", 1).result(timeout=10)
            except otter.Unroutable:
                pass
            else:
                raise AssertionError("an unserved RPC did not fail with Unroutable")
            client.task({task_queue!r}, 5)
            assert done.get(timeout=10) == 5
        assert untouched()
        warnings = [r.getMessage() for r in records if r.levelno >= logging.WARNING]
        assert len(warnings) == 1, warnings
        print(warnings[0])
        """)
    finally:
        with RawBroker.open(amqp_url, names) as raw:
            raw.delete(task_queue)
    assert "aio-pika 9.6.0 (written for 9.5.x), aiormq 7.2.4 (written for 6.9.x)" in output
    assert "pamqp 4.0.1 (written for 3.3.x)" in output
    assert "slower" in output or "costs more" in output


@pytest.mark.amqp
def test_a_fresh_process_applies_the_fixes_at_its_first_connect_and_an_unserved_rpc_fails_at_once(
    amqp_url: str,
) -> None:
    """aiormq binds a channel's frame handlers when the channel opens, so the fixes must be in place before the
    first channel: the return of an unserved RPC (``aiormq_fixes``) then fails the call at once."""
    names = dict(unique_names("fence"))
    run_python(ORIGINALS, f"""
    import asyncio, time
    import otter
    from otter.config import DEFAULTS
    from otter.transports.amqp import AmqpTransport
    from otter.transports.base import Topology

    async def main():
        transport = AmqpTransport({amqp_url!r}, Topology.from_config({{**DEFAULTS, **{names!r}}}))
        assert untouched()
        await transport.connect()
        try:
            assert transport.fast_path and not untouched()
            started = time.monotonic()
            try:
                await transport.call("fence.nobody", b"1", correlation_id="c-1", timeout=10, headers={{}})
            except otter.Unroutable:
                assert time.monotonic() - started < 2
            else:
                raise AssertionError("an unserved RPC did not fail with Unroutable")
        finally:
            await transport.close()

    asyncio.run(main())
    """)
    with RawBroker.open(amqp_url, names) as raw:
        raw.delete()
