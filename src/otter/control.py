"""Otter's control messages, the worker's side: answer "status" with who this process is and how its routes do.

Every worker process hears the control exchange on a queue of its own (``Transport.consume_control``) and answers
each request through the default exchange to the request's ``reply_to``, as an RPC reply goes. What it answers is
built here from what the worker already knows: its route table, its config, and the ``otter.stats.Tally`` that
counts its messages (the metrics' own numbers when metrics are on), so answering costs nothing per message. The
requester's side is ``otter.services``; the shapes are in docs/protocol.md ("Control messages").

Nothing secret goes out: no broker URL, no config value but the concurrency and the service's version.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import sys
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from .codec import JsonCodec
from .errors import MessageError
from .pipeline import RouteTable
from .protocol import CONTROL_VERSION
from .stats import LatencyWindow, Tally, percentiles_ms
from .transports import Delivery, Subscription, Transport

__all__ = ["STATUS", "Identity", "RouteEntry", "StatusResponder", "package_version", "route_entries"]

log = logging.getLogger("otter.control")

STATUS = "status"  # the one command so far
WINDOW = 60.0  # seconds of latency the quantiles cover
WINDOW_STEP = 5.0  # how often the window keeps a copy of the counts (so it covers 60 to 65 s)


def package_version(modules: Iterable[str]) -> str | None:
    """The version of the first of ``modules`` whose top-level package says one: its ``__version__``, else the
    installed distribution of that name. (Not ``packages_distributions()``: it reads every installed distribution,
    seconds on a busy machine.)"""
    from importlib.metadata import PackageNotFoundError, version

    for module in modules:
        top = module.partition(".")[0]
        if not top or top == "__main__":
            continue
        declared = getattr(sys.modules.get(top), "__version__", None)
        if isinstance(declared, str):
            return declared
        with contextlib.suppress(PackageNotFoundError, ValueError):
            return version(top)
    return None


@dataclass(frozen=True)
class Identity:
    """Who answers: fixed for the life of the worker process. ``version`` is looked up once, when first asked for
    (``StatusResponder.start`` asks in a thread: reading package metadata takes milliseconds the loop should not
    spend)."""

    service: str
    configured_version: str | None
    handler_modules: tuple[str, ...]
    concurrency: int
    host: str
    pid: int
    instance_id: str  # unique per process start: a restarted worker with a reused pid is a new instance
    started_at: float  # epoch seconds
    started: float  # time.monotonic() then, for the uptime

    @classmethod
    def now(cls, service: str, version: str | None, handler_modules: Iterable[str], concurrency: int) -> Identity:
        """This process, starting now."""
        return cls(service, version, tuple(dict.fromkeys(handler_modules)), concurrency, socket.gethostname(),
                   os.getpid(), uuid.uuid4().hex, time.time(), time.monotonic())

    @cached_property
    def version(self) -> str | None:
        if self.configured_version is not None:
            return self.configured_version
        return package_version(self.handler_modules)


@dataclass(frozen=True)
class RouteEntry:
    """A route as a status reply lists it: ``queue`` is the queue (or queues, comma-separated) it consumes;
    empty for a broadcast filter, whose queue is the worker's own, shared by all its filters."""

    kind: str
    name: str
    queue: str


def route_entries(table: RouteTable, rpc_queue: Callable[[str], str]) -> list[RouteEntry]:
    """Every route of ``table`` once, in the order ``otter routes`` lists them: RPCs, tasks, broadcasts."""
    entries = [RouteEntry("rpc", p.route.name, rpc_queue(p.route.name)) for p in table.rpcs]
    queues: dict[str, list[str]] = {}
    for queue, pipeline in table.tasks.items():
        queues.setdefault(pipeline.route.name, []).append(queue)
    entries += [RouteEntry("task", name, ", ".join(names)) for name, names in queues.items()]
    entries += [RouteEntry("broadcast", p.route.name, "") for p in table.broadcasts]
    return entries


class StatusResponder:
    """Answers control requests for one worker process (see the module docstring); ``state`` says what the
    worker is doing (starting, serving, stopping)."""

    def __init__(
        self, identity: Identity, routes: list[RouteEntry], tally: Tally, codec: JsonCodec, transport: Transport,
        state: Callable[[], str],
    ) -> None:
        self.identity, self.routes, self.tally, self.codec = identity, routes, tally, codec
        self.transport, self.state = transport, state
        self.window = LatencyWindow(tally, window=WINDOW, step=WINDOW_STEP)
        self._subscription: Subscription | None = None
        self._ticking: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await asyncio.to_thread(lambda: self.identity.version)
        self._subscription = await self.transport.consume_control(self.on_request)
        self._ticking = asyncio.ensure_future(self._tick())

    async def close(self) -> None:
        if self._ticking is not None:
            self._ticking.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticking
        if self._subscription is not None:
            with contextlib.suppress(Exception):
                await self._subscription.cancel()

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self.window.step)
            self.window.tick()

    # -- what it answers ----------------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """This process and its routes, as JSON-able data (the ``status`` of a reply; docs/protocol.md)."""
        identity = self.identity
        covered, recent = self.window.recent()
        routes = []
        for entry in self.routes:
            tally = self.tally.routes.get((entry.kind, entry.name))
            p50, p99 = percentiles_ms(recent.get((entry.kind, entry.name), ()), 0.5, 0.99)
            routes.append({
                "kind": entry.kind, "name": entry.name, "queue": entry.queue,
                "handled": tally.handled if tally else 0, "errors": tally.failed if tally else 0,
                "in_flight": tally.running if tally else 0, "p50_ms": p50, "p99_ms": p99,
            })
        return {
            "service": identity.service, "version": identity.version, "host": identity.host, "pid": identity.pid,
            "instance_id": identity.instance_id, "started_at": identity.started_at,
            "uptime": round(time.monotonic() - identity.started, 3), "state": self.state(),
            "concurrency": identity.concurrency, "in_flight": sum(route["in_flight"] for route in routes),
            "handled": sum(route["handled"] for route in routes), "errors": sum(route["errors"] for route in routes),
            "window": round(covered, 3), "routes": routes,
        }

    def answer(self, body: bytes, content_type: str | None) -> dict[str, Any]:
        """The reply to a request: the status, or an ``error`` saying what was wrong with the request."""
        try:
            request = self.codec.decode(body, content_type)
        except MessageError as exc:
            return {"otter_control": CONTROL_VERSION, "error": f"unreadable control request: {exc}"}
        command = request.get("command") if isinstance(request, dict) else None
        if command != STATUS:
            return {"otter_control": CONTROL_VERSION,
                    "error": f"unknown control command {command!r}; this worker answers {STATUS!r}"}
        return {"otter_control": CONTROL_VERSION, STATUS: self.status()}

    async def on_request(self, delivery: Delivery) -> None:
        """Reply to one request; bad input gets an error reply (or, with nowhere to reply, a log line), never an
        exception out of here."""
        try:
            reply = self.answer(delivery.body, delivery.content_type)
            if "error" in reply:
                log.warning("%s (from %s)", reply["error"], delivery.reply_to or "a request with no reply_to")
            if delivery.reply_to:
                await self.transport.reply(delivery.reply_to, self.codec.encode(reply, what="control reply"),
                                           correlation_id=delivery.correlation_id)
        except Exception:
            log.exception("could not answer a control request")
