"""Otter's event loop is uvloop's when uvloop is installed (the ``fast`` extra, which ``scripts/test`` installs)."""

from __future__ import annotations

import asyncio

import pytest

from otter import eventloop


def test_new_loops_are_uvloop_loops_when_uvloop_is_installed() -> None:
    uvloop = pytest.importorskip("uvloop")
    loop = eventloop.new_event_loop()
    try:
        assert isinstance(loop, uvloop.Loop)
    finally:
        loop.close()


def test_run_runs_the_coroutine_on_a_uvloop_loop() -> None:
    uvloop = pytest.importorskip("uvloop")

    async def which() -> type:
        return type(asyncio.get_running_loop())

    assert issubclass(eventloop.run(which()), uvloop.Loop)
