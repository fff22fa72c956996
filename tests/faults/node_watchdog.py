"""Stops a private RabbitMQ node when the test process that started it is gone, however it went.

``python node_watchdog.py <test pid> <node pid> <node base dir>``, started in a session of its own by
``PrivateRabbitMQ.start``. The fixture stops the node itself at the end of a test session; this only matters when
pytest is killed (a CI timeout, Ctrl-C twice) and never gets there: otherwise the node would outlive it, holding its
ports and memory. The node is stopped by its pid (SIGTERM is a clean shutdown for RabbitMQ; SIGKILL if it lingers),
not with rabbitmqctl, whose cookie may already be gone with pytest's temporary directories.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import time

POLL = 0.5
STOP_GRACE = 15.0


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def main(test_pid: int, node_pid: int, base: str) -> None:
    while alive(test_pid) and alive(node_pid):
        time.sleep(POLL)
    if alive(node_pid):
        os.kill(node_pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE
        while alive(node_pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if alive(node_pid):
            os.kill(node_pid, signal.SIGKILL)
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
