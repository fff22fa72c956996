"""``HandlerThreadPool``: bounded, reuses idle threads, and its threads are daemons (never hold the process open)."""

from __future__ import annotations

import threading

import pytest

from otter.threadpool import HandlerThreadPool


def test_runs_work_and_returns_results_and_errors() -> None:
    pool = HandlerThreadPool(2)
    try:
        assert pool.submit(lambda a, b: a + b, 2, b=3).result(timeout=5) == 5
        with pytest.raises(ZeroDivisionError):
            pool.submit(lambda: 1 / 0).result(timeout=5)
    finally:
        pool.shutdown()


def test_never_runs_more_than_max_workers_at_once_and_threads_are_daemons() -> None:
    pool = HandlerThreadPool(3, thread_name_prefix="otter-test")
    release = threading.Event()
    lock = threading.Lock()
    running = peak = 0
    threads: set[threading.Thread] = set()

    def work() -> None:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
            threads.add(threading.current_thread())
        release.wait(5)
        with lock:
            running -= 1

    futures = [pool.submit(work) for _ in range(10)]
    release.set()
    for future in futures:
        future.result(timeout=5)
    pool.shutdown()
    assert peak <= 3
    assert 1 <= len(threads) <= 3
    assert all(thread.daemon and thread.name.startswith("otter-test") for thread in threads)


def test_idle_threads_are_reused() -> None:
    pool = HandlerThreadPool(4)
    try:
        names = {pool.submit(lambda: threading.current_thread().name).result(timeout=5) for _ in range(20)}
        assert len(names) == 1
    finally:
        pool.shutdown()


def test_shutdown_cancels_queued_work_and_refuses_new_work() -> None:
    pool = HandlerThreadPool(1)
    release = threading.Event()
    started = threading.Event()

    def block() -> None:
        started.set()
        release.wait(5)

    running = pool.submit(block)
    assert started.wait(5)
    queued = pool.submit(lambda: "never")
    pool.shutdown(wait=False, cancel_futures=True)
    assert queued.cancelled()
    with pytest.raises(RuntimeError):
        pool.submit(lambda: None)
    release.set()
    assert running.result(timeout=5) is None
