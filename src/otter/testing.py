"""Testing helpers: serve an app in a background thread and talk to it with a real ``Client``.

No mocks: the app runs the same worker over a real transport (the in-memory broker by default, or any broker URL),
and the client is the same ``Client`` users ship with.

>>> with app.test_client() as client:
...     assert client.rpc("example.hash", "otter").result() == {"result": "..."}
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from typing import TYPE_CHECKING, Any

from .client import Client
from .errors import OtterError
from .transports import MEMORY_URL

if TYPE_CHECKING:
    from .app import Otter

__all__ = ["ServedApp", "TestClient", "serve_in_thread"]


class ServedApp:
    """An app served on its own event loop in a daemon thread until ``stop()``."""

    def __init__(self, app: Otter, url: str | None = None, **config: Any) -> None:
        self.app = app
        self.config = app.resolve_config(url or f"{MEMORY_URL}test-{uuid.uuid4().hex}", **config)
        self.url: str = self.config["BROKER_URL"]
        self._loop = asyncio.new_event_loop()
        self._stop = asyncio.Event()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name=f"otter-app-{app.name}", daemon=True)

    def start(self, timeout: float = 15.0) -> ServedApp:
        self._thread.start()
        if not self._ready.wait(timeout):
            raise OtterError(f"the app did not start within {timeout:g} s")
        if self._error is not None:
            raise self._error
        return self

    def stop(self, timeout: float = 30.0) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(timeout)

    def __enter__(self) -> ServedApp:
        return self.start()

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()

    def _main(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._serve())
        except BaseException as exc:
            self._error = exc
        finally:
            self._ready.set()
            self._loop.close()

    async def _serve(self) -> None:
        worker = self.app.start_worker(self.config)
        try:
            await worker.start()
            self._ready.set()
            await self._stop.wait()
        finally:
            await worker.stop()
            self.app._started = False


class TestClient(Client):
    """A ``Client`` that also stops the app it was made for when closed."""

    __test__ = False  # not a pytest test class

    def __init__(self, served: ServedApp, **config: Any) -> None:
        self.served = served
        super().__init__(served.url, **{**_names(served.config), **config})

    def close(self) -> None:
        try:
            super().close()
        finally:
            self.served.stop()


def serve_in_thread(app: Otter, url: str | None = None, **config: Any) -> TestClient:
    """Serve ``app`` in the background (default: a fresh in-memory broker) and return a client wired to it."""
    served = ServedApp(app, url, **config).start()
    return TestClient(served)


def _names(config: dict[str, Any]) -> dict[str, Any]:
    keys = ("MESSAGE_EXCHANGE", "TASK_EXCHANGE", "DEFAULT_TASK_QUEUE", "RPC_QUEUE_PREFIX", "DEAD_LETTER_QUEUE",
            "RPC_TIMEOUT", "MAX_MESSAGE_SIZE")
    return {key: config[key] for key in keys}
