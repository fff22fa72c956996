"""Health probes for Kubernetes (``HEALTH_PORT``): ``/livez`` and ``/readyz`` on a tiny HTTP server on the loop.

- ``/livez`` answers 200 while the event loop runs, whatever the broker does: a broker outage is no reason to
  restart a worker (it reconnects by itself), and a restart would only add a cold start to the outage.
- ``/readyz`` answers 200 only while the worker is connected with every consumer active, else 503 with the reason
  (starting, reconnecting, stopping).

With ``--workers N`` the supervisor serves the port: each worker serves its probes on a port of its own on
127.0.0.1 and writes the port number to a file in a directory the supervisor owns; the supervisor's ``/readyz`` is
200 when every worker answers 200, and its ``/livez`` 200 while its loop runs and every worker that has started
answers ``/livez``. So a probe sees the whole pod, and a worker restarting makes it not ready, not dead.

A plain asyncio server (no HTTP library): the probes need a status line and one line of text, nothing more.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import ConfigurationError

if TYPE_CHECKING:
    from .worker import Worker

__all__ = ["WORKER_HEALTH_DIR_ENV", "ProbeServer", "ask", "pod_probes", "worker_probes"]

log = logging.getLogger("otter.health")

WORKER_HEALTH_DIR_ENV = "OTTER_WORKER_HEALTH_DIR"  # where a supervised worker writes its probe port
ASK_TIMEOUT = 2.0  # the supervisor's wait for a worker's answer
REQUEST_TIMEOUT = 5.0  # a client that sends no request line within this is dropped

Probe = Callable[[], Awaitable[tuple[int, str]]]
_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}


class ProbeServer:
    """Answers ``GET <path>`` with what the probe of that path says; ``start`` binds, ``close`` stops."""

    def __init__(self, probes: dict[str, Probe]) -> None:
        self.probes = probes
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> ProbeServer:
        try:
            self._server = await asyncio.start_server(self._answer, host, port)
        except OSError as exc:
            raise ConfigurationError(f"cannot serve health probes on port {port} (HEALTH_PORT): "
                                     f"{exc.strerror or exc}; choose a free port") from None
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readline(), REQUEST_TIMEOUT)
            if not request.strip():
                return  # connected and said nothing (a TCP probe)
            method, _, rest = request.decode("latin-1").partition(" ")
            path = rest.partition(" ")[0].partition("?")[0]
            probe = self.probes.get(path)
            if probe is None:
                status, text = 404, f"no such probe; try {', '.join(sorted(self.probes))}"
            elif method not in ("GET", "HEAD"):
                status, text = 405, "use GET"
            else:
                status, text = await probe()
            body = f"{text}\n".encode()
            head = (f"HTTP/1.1 {status} {_REASONS.get(status, '')}\r\nContent-Type: text/plain; charset=utf-8\r\n"
                    f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode("latin-1")
            writer.write(head if method == "HEAD" else head + body)
            await writer.drain()
        except (OSError, asyncio.TimeoutError, ValueError, EOFError):
            pass  # a client that went away, sent nothing or an endless line: nothing to answer
        except Exception:
            log.exception("a health probe failed")
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


def worker_probes(worker: Worker) -> dict[str, Probe]:
    """One worker's probes: alive while its loop answers; ready while ``worker.readiness()`` finds nothing wrong."""

    async def livez() -> tuple[int, str]:
        return 200, "alive"

    async def readyz() -> tuple[int, str]:
        reason = worker.readiness()
        return (200, "ready") if reason is None else (503, f"not ready: {reason}")

    return {"/livez": livez, "/readyz": readyz}


NOBODY = -1  # ask(): nothing listens (the worker is gone, or not yet serving)
SILENT = 0  # ask(): something listens but does not answer in time (a blocked event loop)


async def ask(port: int, path: str, timeout: float = ASK_TIMEOUT) -> tuple[int, str]:
    """GET ``path`` from 127.0.0.1:``port``: the status and the text, or ``NOBODY`` / ``SILENT`` and why."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout)
    except asyncio.TimeoutError:
        return SILENT, f"no answer within {timeout:g}s"
    except OSError as exc:
        return NOBODY, f"nothing listens on port {port} ({exc.strerror or exc})"
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        answer = await asyncio.wait_for(reader.read(4096), timeout)
    except asyncio.TimeoutError:
        return SILENT, f"no answer within {timeout:g}s"
    except OSError as exc:
        return NOBODY, f"the connection to port {port} failed ({exc.strerror or exc})"
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
    head, _, body = answer.decode("latin-1").partition("\r\n\r\n")
    try:
        status = int(head.split(" ", 2)[1])
    except (IndexError, ValueError):
        return NOBODY, f"not an HTTP answer on port {port}"
    return status, body.strip()


def write_port(directory: str, number: str, port: int) -> Path:
    """Tell the supervisor where this worker's probes are (written whole, then renamed, so never read half)."""
    path = Path(directory) / number
    partial = path.with_suffix(".tmp")
    partial.write_text(str(port))
    os.replace(partial, path)
    return path


def pod_probes(directory: Path, workers: int) -> dict[str, Probe]:
    """The supervisor's probes over its ``workers`` (their ports in ``directory``); see the module docstring."""

    async def each(path: str) -> list[tuple[str, int, str]]:
        numbers = [str(number) for number in range(1, workers + 1)]
        ports: list[int | None] = []
        for number in numbers:
            try:
                ports.append(int((directory / number).read_text()))
            except (OSError, ValueError):
                ports.append(None)  # not started yet, or restarting
        answers = await asyncio.gather(*(ask(port, path) for port in ports if port is not None))
        found = iter(answers)
        return [(number, *(next(found) if port is not None else (NOBODY, "not started")))
                for number, port in zip(numbers, ports, strict=True)]

    async def livez() -> tuple[int, str]:
        # Only a worker whose loop is stuck counts: one that is gone or starting is the supervisor's to restart.
        hung = [f"worker {number}: {text}" for number, status, text in await each("/livez") if status == SILENT]
        return (503, "; ".join(hung)) if hung else (200, "alive")

    async def readyz() -> tuple[int, str]:
        waiting = [f"worker {number}: {text}" for number, status, text in await each("/readyz") if status != 200]
        return (503, "not ready: " + "; ".join(waiting)) if waiting else (200, f"ready ({workers} workers)")

    return {"/livez": livez, "/readyz": readyz}
