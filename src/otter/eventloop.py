"""Which event loop Otter runs on: uvloop when installed (``pip install otter[fast]``), else asyncio's.

The Python client, not the broker, is the bottleneck of a RabbitMQ service; uvloop's C loop takes a large share of
that cost away, so every loop that carries Otter's messages (the worker's, the ``Client``'s I/O thread, the test
server's, the dead-letter commands') comes from here. (The ``--workers`` supervisor only watches processes.)
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

__all__ = ["new_event_loop", "run"]

try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop is in the fast extra, installed by scripts/test
    uvloop = None  # type: ignore[assignment]


def new_event_loop() -> asyncio.AbstractEventLoop:
    return uvloop.new_event_loop() if uvloop is not None else asyncio.new_event_loop()


def run(main: Coroutine[Any, Any, Any]) -> Any:
    """``asyncio.run`` on the loop ``new_event_loop`` makes."""
    return uvloop.run(main) if uvloop is not None else asyncio.run(main)
