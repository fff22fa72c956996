"""Run worker processes and keep them running: ``otter run --workers N`` and ``otter run --reload``.

Each worker is a fresh ``python -m otter run`` process serving the whole app, so N workers share the RPC and task
queues (work spreads across them) and each receives every broadcast. The supervisor:

- restarts a worker that dies (with a growing pause when one keeps dying at start-up, so a broken app does not spin);
- with ``reload``, restarts every worker when a ``.py`` file under the watched directories changes, and waits for
  the next change when a worker exits on its own (a syntax error, say) instead of restarting it in a loop;
- on SIGINT or SIGTERM forwards SIGTERM, gives the workers their grace period (plus a margin to close), kills the
  ones still running, and returns 0 when every worker stopped cleanly.

Workers get their settings through ``OTTER_*`` variables, never the command line, so a broker password does not
show in ``ps``. ``services`` (async context managers, e.g. the metrics and health endpoints of all the workers) run
in the supervisor's loop while it supervises, and ``on_exit(number, pid)`` hears of every worker that ended. On
Linux a worker is sent SIGTERM if the supervisor itself dies, so none is left orphaned. Each worker learns its number
from ``OTTER_WORKER_NUMBER`` and names its process after it (``set_process_title``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["WORKER_NUMBER_ENV", "Supervisor", "set_process_title"]

WORKER_NUMBER_ENV = "OTTER_WORKER_NUMBER"  # set in each worker's environment: 1..N

log = logging.getLogger("otter.supervisor")

# A worker that dies sooner than this after starting counts as failing to start; the pause before the next try
# doubles each time, up to MAX_RESTART_PAUSE.
HEALTHY_AFTER = 5.0
FIRST_RESTART_PAUSE = 0.5
MAX_RESTART_PAUSE = 10.0
# Beyond the grace period, how long a stopping worker may take to close its connection before it is killed.
CLOSE_MARGIN = 5.0


@dataclass(eq=False)
class _Slot:
    """One of the N worker positions; its process changes when the worker is restarted."""

    number: int
    process: asyncio.subprocess.Process | None = None
    restart_requested: bool = False
    wake: asyncio.Event | None = None


class Supervisor:
    """Keep ``workers`` copies of ``command`` running until SIGINT/SIGTERM; see the module docstring."""

    def __init__(
        self,
        command: Sequence[str],
        *,
        workers: int,
        grace: float,
        env: Mapping[str, str] | None = None,
        watch: Sequence[Path] = (),
        services: Sequence[contextlib.AbstractAsyncContextManager[object]] = (),
        on_exit: Callable[[int, int], None] | None = None,
    ) -> None:
        self.command = list(command)
        self.workers = max(1, workers)
        self.grace = grace
        self.env = dict(os.environ if env is None else env)
        self.watch = list(watch)
        self.services = list(services)
        self.on_exit = on_exit
        self._stopping = False
        self._stop: asyncio.Event | None = None
        self._slots: list[_Slot] = []
        self._exit_codes: list[int] = []

    def run(self) -> int:
        """Supervise until stopped; the exit code is 0 when every worker stopped cleanly."""
        return asyncio.run(self.supervise())

    async def supervise(self) -> int:
        async with contextlib.AsyncExitStack() as services:
            for service in self.services:
                await services.enter_async_context(service)
            return await self._supervise()

    async def _supervise(self) -> int:
        loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._stop.set)
        self._slots = [_Slot(number, wake=asyncio.Event()) for number in range(1, self.workers + 1)]
        keepers = [asyncio.create_task(self._keep(slot)) for slot in self._slots]
        watcher = asyncio.create_task(self._watch()) if self.watch else None
        log.info(
            "supervising %d worker%s%s",
            self.workers,
            "s" if self.workers > 1 else "",
            f"; reloading on changes in {', '.join(map(str, self.watch))}" if self.watch else "",
        )
        try:
            await self._stop.wait()
        finally:
            self._stopping = True
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
            if watcher is not None:
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher
            await self._stop_workers()
            for keeper in keepers:
                keeper.cancel()
            await asyncio.gather(*keepers, return_exceptions=True)
        failed = [code for code in self._exit_codes if code != 0]
        if failed:
            log.warning("%d worker(s) did not stop cleanly (exit codes %s)", len(failed), failed)
        return 1 if failed else 0

    # -- one worker position --------------------------------------------------------------------------------------
    async def _keep(self, slot: _Slot) -> None:
        """Start the slot's worker and start it again whenever it ends, until the supervisor stops."""
        assert slot.wake is not None
        loop = asyncio.get_running_loop()
        failures = 0
        while not self._stopping:
            started = loop.time()
            process = await self._spawn(slot)
            code = await process.wait()
            if self.on_exit is not None:
                try:
                    self.on_exit(slot.number, process.pid)
                except Exception:
                    log.exception("cleaning up after worker %d failed", slot.number)
            if self._stopping:
                return
            if slot.restart_requested:  # a reload: start the new code at once
                slot.restart_requested = False
                failures = 0
                continue
            lived = loop.time() - started
            if self.watch:
                log.warning(
                    "worker %d (pid %d) %s; waiting for a file change to start it again",
                    slot.number,
                    process.pid,
                    _describe_exit(code),
                )
                slot.wake.clear()
                await slot.wake.wait()
                slot.restart_requested = False
                continue
            failures = failures + 1 if lived < HEALTHY_AFTER else 0
            pause = min(FIRST_RESTART_PAUSE * 2 ** (failures - 1), MAX_RESTART_PAUSE) if failures else 0.0
            log.warning(
                "worker %d (pid %d) %s; restarting it%s",
                slot.number,
                process.pid,
                _describe_exit(code),
                f" in {pause:g}s" if pause else "",
            )
            if pause:
                slot.wake.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(slot.wake.wait(), pause)

    async def _spawn(self, slot: _Slot) -> asyncio.subprocess.Process:
        env = {**self.env, WORKER_NUMBER_ENV: str(slot.number)}
        process = await asyncio.create_subprocess_exec(
            *self.command, env=env, preexec_fn=_die_with_parent if sys.platform == "linux" else None
        )
        slot.process = process
        log.info("started worker %d/%d (pid %d)", slot.number, self.workers, process.pid)
        if self._stopping:  # the stop began while this one was starting
            _signal(process, signal.SIGTERM)
        return process

    # -- reload ---------------------------------------------------------------------------------------------------
    async def _watch(self) -> None:
        from watchfiles import PythonFilter, awatch

        async for changes in awatch(*self.watch, watch_filter=PythonFilter()):
            if self._stopping:
                return
            changed = sorted({os.path.relpath(path) for _, path in changes})
            shown = ", ".join(changed[:5]) + (" ..." if len(changed) > 5 else "")
            log.info("detected changes in %s; restarting", shown)
            for slot in self._slots:
                slot.restart_requested = True
                if slot.process is not None and slot.process.returncode is None:
                    _signal(slot.process, signal.SIGTERM)
                if slot.wake is not None:
                    slot.wake.set()

    # -- shutdown -------------------------------------------------------------------------------------------------
    async def _stop_workers(self) -> None:
        running = [slot.process for slot in self._slots if slot.process is not None]
        alive = [process for process in running if process.returncode is None]
        log.info("stopping %d worker%s (grace %gs)", len(alive), "s" if len(alive) != 1 else "", self.grace)
        for process in alive:
            _signal(process, signal.SIGTERM)
        waits = [asyncio.ensure_future(process.wait()) for process in alive]
        if waits:
            _, late = await asyncio.wait(waits, timeout=self.grace + CLOSE_MARGIN)
            if late:
                log.warning("%d worker(s) still running after %gs; killing them", len(late), self.grace + CLOSE_MARGIN)
                for process in alive:
                    if process.returncode is None:
                        _signal(process, signal.SIGKILL)
                await asyncio.wait(late)
        self._exit_codes = [process.returncode for process in alive if process.returncode is not None]


def _signal(process: asyncio.subprocess.Process, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(sig)


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


def _die_with_parent() -> None:
    """In the child, before exec: ask Linux to send SIGTERM when the supervisor dies."""
    import ctypes

    pr_set_pdeathsig = 1
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


PR_SET_NAME = 15  # linux/prctl.h
COMM_LENGTH = 15  # Linux keeps 15 bytes of a process name (TASK_COMM_LEN, 16, with the NUL)


def set_process_title(title: str, short: str) -> str | None:
    """Name this process, so ``ps``/``top`` tell workers apart; returns how it was done, or None.

    With ``setproctitle`` installed (it is optional: ``pip install setproctitle``), ``ps`` shows the whole ``title``.
    Without it, on Linux, ``prctl(PR_SET_NAME)`` sets the process name that ``top``, ``ps -o comm`` and ``pgrep`` show
    to ``short``, cut to 15 bytes; the command line in ``ps aux`` stays ``python -m otter run``. Elsewhere: nothing.
    """
    try:
        from setproctitle import setproctitle
    except ImportError:
        pass
    else:
        setproctitle(title)
        return "setproctitle"
    if sys.platform != "linux":
        return None
    import ctypes

    name = short.encode("utf-8")[:COMM_LENGTH]
    try:
        done = ctypes.CDLL(None, use_errno=True).prctl(PR_SET_NAME, ctypes.c_char_p(name), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return None
    return "prctl" if done else None
