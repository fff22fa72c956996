"""Testing helpers: serve an app in a background thread and talk to it with a real ``Client``.

No mocks: the app runs the same worker over a real transport (the in-memory broker by default, or any broker URL),
and the client is the same ``Client`` users ship with.

>>> with app.test_client() as client:
...     assert client.rpc("example.hash", "otter").result() == {"result": "..."}

It is also a pytest plugin (registered by the ``pytest11`` entry point, so installing otter is enough). Define a
fixture named ``app`` that returns your app, then ask for:

- ``otter_client``: a client for your app served in this process on a private in-memory broker;
- ``otter_worker``: a client for your app served on the real broker ``OTTER_TEST_BROKER_URL`` (default
  ``amqp://guest:guest@127.0.0.1:5672/``) under exchange names unique to the test;
- ``otter_app`` (your ``app``) and ``otter_broker_url``, to build on. See docs/cli.md for an example.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import uuid
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from . import eventloop
from .client import Client
from .config import ARGUMENT
from .delays import DelayLevels
from .errors import DeadlineExceeded, OtterError
from .transports import MEMORY_URL

if TYPE_CHECKING:
    from .app import Otter
    from .worker import Handled

__all__ = ["TEST_BROKER_ENV", "HandledLog", "ServedApp", "TestClient", "serve_in_thread", "unique_names"]


class HandledLog:
    """Every message the served app finished with, for tests to wait on (``wait_handled``) instead of sleeping.

    With ``raise_errors``, waiting re-raises the first error a handler of the awaited messages raised, so a failing
    task or broadcast handler fails the test rather than only logging.
    """

    def __init__(self, raise_errors: bool = False) -> None:
        self.raise_errors = raise_errors
        self.handled: list[Handled] = []
        self._changed = threading.Condition()

    def __call__(self, event: Handled) -> None:  # an Observer, called on the worker's loop
        with self._changed:
            self.handled.append(event)
            self._changed.notify_all()

    def wait(self, name: str, count: int = 1, timeout: float = 5.0) -> list[Handled]:
        """Wait until the route ``name`` has finished with ``count`` messages in all (retries and requeues do not
        count until their last run), and return them; ``DeadlineExceeded`` if it has not within ``timeout``."""

        def finished() -> list[Handled]:
            return [event for event in self.handled if event.name == name and event.final]

        with self._changed:
            if not self._changed.wait_for(lambda: len(finished()) >= count, timeout):
                seen = len(finished())
                raise DeadlineExceeded(f"{name!r} finished with {seen} of {count} messages within {timeout:g} s")
            done = finished()[:count]
        if self.raise_errors:
            for event in done:
                if event.error is not None:
                    raise event.error
        return done


class ServedApp:
    """An app served on its own event loop in a daemon thread until ``stop()``; ``handled`` logs what it finished
    with (see ``HandledLog``)."""

    def __init__(self, app: Otter, url: str | None = None, *, raise_errors: bool = False, **config: Any) -> None:
        self.app = app
        self.handled = HandledLog(raise_errors)
        self.config = app.resolve_config(url or f"{MEMORY_URL}test-{uuid.uuid4().hex}", **config)
        for key in ("METRICS_PORT", "HEALTH_PORT"):  # only when the test asks: an OTTER_* port in the shell would
            if self.config.sources.get(key) != ARGUMENT:  # have every test's app bind the same port
                self.config[key] = None
        self.url: str = self.config["BROKER_URL"]
        self._loop = eventloop.new_event_loop()
        self._stop = asyncio.Event()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name=f"otter-app-{app.name}", daemon=True)

    def start(self, timeout: float = 15.0) -> ServedApp:
        """Serve the app in its thread and wait until it is ready (at most ``timeout`` seconds); the ``with``
        statement calls this."""
        self._thread.start()
        if not self._ready.wait(timeout):
            self.stop()
            raise OtterError(f"the app did not start within {timeout:g} s")
        if self._error is not None:
            raise self._error
        return self

    def stop(self, timeout: float | None = None) -> None:
        """Stop serving; waits for the app's graceful stop (``SHUTDOWN_GRACE`` and a margin by default)."""
        if not self._thread.is_alive():
            return
        self._loop.call_soon_threadsafe(self._stop.set)
        wait = float(self.config["SHUTDOWN_GRACE"]) + 15.0 if timeout is None else timeout
        self._thread.join(wait)
        if self._thread.is_alive():
            raise OtterError(f"the app did not stop within {wait:g} s")

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
        await self.app.serve(self.config, self._stop, started=self._ready.set, observers=(self.handled,))


class TestClient(Client):
    """A ``Client`` that also stops the app it was made for when closed."""

    __test__ = False  # not a pytest test class

    def __init__(self, served: ServedApp, **config: Any) -> None:
        self.served = served
        super().__init__(served.url, **{**_names(served.config), **config})

    def wait_handled(self, name: str, count: int = 1, timeout: float = 5.0) -> list[Handled]:
        """Wait until the app's route ``name`` has finished with ``count`` messages (see ``HandledLog.wait``).

        >>> client.task("mail.send", {"to": "a@b.c"})
        >>> [event] = client.wait_handled("mail.send")
        >>> event.outcome
        'ok'
        """
        return self.served.handled.wait(name, count, timeout)

    def close(self) -> None:
        """Close the client, then stop the app it was serving."""
        try:
            super().close()
        finally:
            self.served.stop()


def serve_in_thread(
    app: Otter, url: str | None = None, *, raise_errors: bool = False, **config: Any
) -> TestClient:
    """Serve ``app`` in the background (default: a fresh in-memory broker) and return a client wired to it;
    ``raise_errors=True`` makes ``wait_handled`` re-raise a handler's error in the test."""
    served = ServedApp(app, url, raise_errors=raise_errors, **config).start()
    return TestClient(served)


def _names(config: dict[str, Any]) -> dict[str, Any]:
    keys = ("MESSAGE_EXCHANGE", "TASK_EXCHANGE", "DEFAULT_TASK_QUEUE", "RPC_QUEUE_PREFIX", "DEAD_LETTER_QUEUE",
            "RPC_TIMEOUT", "MAX_MESSAGE_SIZE", "TRACING")
    return {key: config[key] for key in keys}


# -- the pytest plugin ----------------------------------------------------------------------------------------------
TEST_BROKER_ENV = "OTTER_TEST_BROKER_URL"
DEFAULT_TEST_BROKER_URL = "amqp://guest:guest@127.0.0.1:5672/"


def unique_names(prefix: str = "test") -> dict[str, Any]:
    """Exchange and queue names no other test uses, so tests can share one broker and run in parallel.

    Task queues are named after their tasks, so two tests serving the same task at the same time on one broker
    still share its queue.
    """
    tag = f"{prefix}-{uuid.uuid4().hex[:12]}"
    return {
        "MESSAGE_EXCHANGE": f"{tag}.messages",
        "TASK_EXCHANGE": f"{tag}.tasks",
        "DEFAULT_TASK_QUEUE": f"{tag}.tasks.default",
        "RPC_QUEUE_PREFIX": f"{tag}.rpc.",
        "DEAD_LETTER_QUEUE": f"{tag}.dead-letter",
        "CONTROL_EXCHANGE": f"{tag}.control",
    }


def _delete_names(url: str, names: Mapping[str, str]) -> None:
    """Remove a test's exchanges and its own durable queues, the delay levels of its delayed tasks among them, from
    the broker (RPC and broadcast queues go away by themselves)."""
    if not url.startswith(("amqp://", "amqps://")):
        return
    import aio_pika

    async def delete() -> None:
        connection = await aio_pika.connect(url)
        async with connection:
            channel = await connection.channel()
            delay_exchanges, delay_queues = DelayLevels(names["TASK_EXCHANGE"]).names()
            for queue in (names["DEFAULT_TASK_QUEUE"], names["DEAD_LETTER_QUEUE"], *delay_queues):
                await channel.queue_delete(queue)
            for exchange in (names["MESSAGE_EXCHANGE"], names["TASK_EXCHANGE"], names.get("CONTROL_EXCHANGE"),
                             *delay_exchanges):
                if exchange is None:
                    continue
                await channel.exchange_delete(exchange)

    with contextlib.suppress(Exception):  # tidying up must not turn a passing test into an error
        asyncio.run(delete())


try:
    import pytest
except ImportError:  # the helpers above work without pytest; only the fixtures need it
    pytest = None  # type: ignore[assignment]

if pytest is not None:

    @pytest.fixture
    def otter_app(request: pytest.FixtureRequest) -> Otter:
        """The app under test: the value of your ``app`` fixture (or override ``otter_app`` itself)."""
        from .app import Otter

        try:
            app = request.getfixturevalue("app")
        except pytest.FixtureLookupError:
            pytest.fail(
                "otter's fixtures need your app: define a fixture named 'app' that returns it, e.g.\n\n"
                "    @pytest.fixture\n    def app():\n        return create_app()\n",
                pytrace=False,
            )
        if not isinstance(app, Otter):
            pytest.fail(f"the 'app' fixture returned {app!r}, not an otter.Otter app", pytrace=False)
        return app

    @pytest.fixture(scope="session")
    def otter_broker_url() -> str:
        """The real broker ``otter_worker`` uses: ``OTTER_TEST_BROKER_URL``, else RabbitMQ on localhost."""
        return os.environ.get(TEST_BROKER_ENV) or DEFAULT_TEST_BROKER_URL

    @pytest.fixture
    def otter_client(otter_app: Otter) -> Iterator[TestClient]:
        """A client for your app, served in this process on an in-memory broker of its own."""
        from .transports.memory import MemoryBroker

        name = f"pytest-{uuid.uuid4().hex}"
        client = serve_in_thread(otter_app, f"{MEMORY_URL}{name}")
        try:
            yield client
        finally:
            client.close()
            MemoryBroker.reset(name)

    @pytest.fixture
    def otter_worker(otter_app: Otter, otter_broker_url: str) -> Iterator[TestClient]:
        """A client for your app, served on the real broker under exchange names unique to this test."""
        names = unique_names()
        client = serve_in_thread(otter_app, otter_broker_url, **names)
        try:
            yield client
        finally:
            client.close()
            _delete_names(otter_broker_url, names)
