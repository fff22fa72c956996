"""The seed README end to end in one process: serve ``examples/app.py``, then make the seed client's three calls.

The app runs in a background thread on the in-process broker (``memory://``), or on RabbitMQ when
``OTTER_BROKER_URL`` is set. The calls are the seed's ``examples/client.py``: broadcast "otter" with subject
``message.send``, task 5 on the default task queue, RPC ``example.hash`` of "otter". Exits 0 once the RPC answered
with the right hash, the broadcast arrived and the task has finished; non-zero if any of that failed.

    scripts/demo                                                       # in-process broker
    OTTER_BROKER_URL=amqp://guest:guest@127.0.0.1:5672/ scripts/demo   # RabbitMQ
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import threading
from pathlib import Path
from typing import Any

from otter import Client, Otter, OtterError
from otter.app import RUN_FROM_CLI_ENV
from otter.config import redact_url
from otter.testing import ServedApp

SEED_APP = Path(__file__).resolve().parent / "app.py"
NAME_KEYS = ("MESSAGE_EXCHANGE", "TASK_EXCHANGE", "DEFAULT_TASK_QUEUE", "RPC_QUEUE_PREFIX", "DEAD_LETTER_QUEUE")
TASK_DELAY = 5  # the seed's client.task(5): the seed's task sleeps this many seconds


def load_seed_app() -> Otter:
    """Import examples/app.py with OTTER_RUN_FROM_CLI=true, so its module-level ``app.run(...)`` returns at once."""
    previous = os.environ.get(RUN_FROM_CLI_ENV)
    os.environ[RUN_FROM_CLI_ENV] = "true"
    try:
        spec = importlib.util.spec_from_file_location("seed_app", SEED_APP)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        if previous is None:
            os.environ.pop(RUN_FROM_CLI_ENV)
        else:
            os.environ[RUN_FROM_CLI_ENV] = previous
    app: Otter = module.app
    return app


def say(message: str) -> None:
    print(f"demo: {message}", flush=True)


def main() -> int:
    app = load_seed_app()
    finished = {"broadcast": threading.Event(), "task": threading.Event()}

    @app.after_handler
    def notice(ctx: Any, result: Any) -> Any:
        """Lets the demo wait for the seed's handlers to finish instead of guessing with a sleep."""
        if ctx.kind in finished:
            finished[ctx.kind].set()
        return result

    url = os.environ.get("OTTER_BROKER_URL") or "memory://demo"
    where = "the in-process broker" if url.startswith("memory://") else "RabbitMQ"
    try:
        with ServedApp(app, url) as served:
            say(f"serving examples/app.py on {redact_url(served.url)} ({where})")
            names = {key: served.config[key] for key in NAME_KEYS}
            with Client(served.url, **names) as client:
                if not client.comm:
                    say(f"the client could not connect: {client.error}")
                    return 1
                say('client.broadcast("otter", subject="message.send")')
                client.broadcast("otter", subject="message.send")
                say(f"client.task({TASK_DELAY})  (the task sleeps {TASK_DELAY} s in the app's thread pool)")
                client.task(TASK_DELAY)
                say('client.rpc("example.hash", "otter").result()')
                data = client.rpc("example.hash", "otter").result()
                say(f"rpc result: {data}")
            if data != {"result": hashlib.sha256(b"otter").hexdigest()}:
                say("the rpc result is not the sha256 of 'otter'")
                return 1
            if not finished["broadcast"].wait(10):
                say("the broadcast did not arrive within 10 s")
                return 1
            say("waiting for the task to finish")
            if not finished["task"].wait(TASK_DELAY + 15):
                say(f"the task did not finish within {TASK_DELAY + 15} s")
                return 1
    except OtterError as exc:
        say(f"failed: {type(exc).__name__}: {exc}")
        return 1
    say("all done: broadcast received, rpc answered, task finished")
    return 0


if __name__ == "__main__":
    sys.exit(main())
