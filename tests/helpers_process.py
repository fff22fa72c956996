"""Run Otter apps as real subprocesses, watch their output, stop them with real signals.

Tests that need separate processes (the seed examples, replicas, a blocking task) use ``AppProcess``: reader threads
collect stdout and stderr line by line, so a test can wait for a line (``wait_for``) instead of sleeping.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

REPO_ROOT = Path(__file__).resolve().parent.parent
READY = "is running on"  # what app.run() logs once every consumer is in place


def app_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This environment without ``OTTER_*`` variables (they would change the app's names or URL), unbuffered so
    ``print`` output arrives line by line, plus ``extra``."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("OTTER_")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


class AppProcess:
    """A Python program in its own process; ``output`` is everything it wrote so far (stdout and stderr)."""

    def __init__(self, *args: str, env: Mapping[str, str] | None = None, cwd: Path = REPO_ROOT) -> None:
        self.args = [sys.executable, *args]
        self.env = app_env(env)
        self.cwd = cwd
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._readers: list[threading.Thread] = []
        self.process: subprocess.Popen[str] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None, "start() first"
        return self.process.pid

    @property
    def output(self) -> str:
        with self._changed:
            return "".join(self.lines)

    def start(self) -> AppProcess:
        self.process = subprocess.Popen(
            self.args,
            cwd=self.cwd,
            env=self.env,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
        )
        for stream in (self.process.stdout, self.process.stderr):
            assert stream is not None
            reader = threading.Thread(target=self._read, args=(stream,), daemon=True)
            reader.start()
            self._readers.append(reader)
        return self

    def wait_for(self, text: str, timeout: float = 20.0) -> None:
        """Return once ``text`` appears in the output; fail with the output if it does not, or the process ends."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while text not in "".join(self.lines):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"{text!r} not printed within {timeout:g} s by {self.args}:\n{self._tail()}")
                if self.process is not None and self.process.poll() is not None and not self._reading():
                    raise AssertionError(
                        f"{self.args} exited with {self.process.returncode} before printing {text!r}:\n{self._tail()}"
                    )
                self._changed.wait(min(remaining, 0.2))

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 30.0) -> int:
        """Send ``sig`` and return the exit code once the process is gone."""
        assert self.process is not None, "start() first"
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(
                f"{self.args} did not stop within {timeout:g} s of {sig.name}:\n{self._tail()}"
            ) from None
        self._join_readers()
        return code

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._join_readers()

    def __enter__(self) -> AppProcess:
        return self.start()

    def __exit__(self, *exc_info: Any) -> None:
        self.kill()

    def _read(self, stream: IO[str]) -> None:
        with stream:
            for line in stream:
                with self._changed:
                    self.lines.append(line)
                    self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def _join_readers(self) -> None:
        for reader in self._readers:
            reader.join(5)

    def _reading(self) -> bool:
        return any(reader.is_alive() for reader in self._readers)

    def _tail(self, lines: int = 60) -> str:
        return "".join(self.lines[-lines:])


def wait_until(
    condition: Callable[[], Any], timeout: float = 20.0, what: str = "the condition", interval: float = 0.02
) -> Any:
    """Poll ``condition`` until it returns something truthy, and return that; fail after ``timeout`` seconds
    saying ``what`` was awaited. The one polling helper of the test suite."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


@contextlib.contextmanager
def machine_wide_lock(name: str) -> Iterator[None]:
    """Hold a lock shared by every test session on this machine (xdist workers and separate pytest runs alike).

    For tests that cannot use unique names, such as the seed examples with their fixed kiwipy.* names: two
    sessions running them at once on the shared broker would serve each other's tasks.
    """
    with file_lock(Path(tempfile.gettempdir()) / f"otter-tests-{name}.lock"):
        yield


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if missing): one holder at a time across processes."""
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)

