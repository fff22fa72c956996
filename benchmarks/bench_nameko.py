"""Peer: Nameko 2.14 (eventlet), in its own virtualenv: ``run.py --with nameko --peer-python nameko=/path/python``.

The server is a ``ServiceRunner`` after ``eventlet.monkey_patch()`` (what ``nameko run`` does), so it can say when it
is ready. rpc: an ``@rpc`` method called through ``ClusterRpcProxy``; task: Nameko has no task queue, the closest is a
SERVICE_POOL ``@event_handler`` (durable queue, persistent messages, ack after the worker returned) fed by
``event_dispatcher``; bcast: a BROADCAST ``@event_handler`` in each subscriber. Nameko defaults otherwise
(max_workers 10, so prefetch 10; publisher confirms on; JSON).
"""

import eventlet

eventlet.monkey_patch()

import collections  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import time  # noqa: E402

import common  # noqa: E402
from nameko.events import BROADCAST, event_handler  # noqa: E402
from nameko.rpc import rpc  # noqa: E402

ARGS = common.parse_args()
CONFIG = {"AMQP_URI": ARGS.url}
SERVICE = "bench_" + re.sub(r"[^A-Za-z0-9_]", "_", ARGS.ns)
SOURCE = SERVICE + "_src"
COUNTER = common.Counter(ARGS)


class RpcService:
    name = SERVICE

    @rpc
    def compute(self, data):
        COUNTER.hit()
        return common.handle(data)


class TaskService:
    name = SERVICE

    @event_handler(SOURCE, "task")
    def on_task(self, payload):
        common.handle(payload)
        COUNTER.hit()


class BcastService:
    name = SERVICE

    @event_handler(SOURCE, "bc", handler_type=BROADCAST, reliable_delivery=False)
    def on_bc(self, payload):
        common.handle(payload)
        COUNTER.hit()


def server():
    from nameko.runners import ServiceRunner

    runner = ServiceRunner(CONFIG)
    runner.add_service({"rpc": RpcService, "task": TaskService, "bcast": BcastService}[ARGS.wl])
    runner.start()
    common.mark(ARGS.ready)
    runner.wait()


def wait_marks(paths, what):
    deadline = time.monotonic() + ARGS.timeout
    while not all(os.path.exists(p) for p in paths):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not there after {ARGS.timeout:g}s")
        time.sleep(0.005)


def client():
    wait_marks(ARGS.ready_files, "server ready marks")
    payload = common.PAYLOAD
    if ARGS.wl in ("rpc_seq", "rpc_conc"):
        from nameko.standalone.rpc import ClusterRpcProxy

        with ClusterRpcProxy(CONFIG) as cluster:
            service = getattr(cluster, SERVICE)
            for _ in range(ARGS.warm):
                common.check(service.compute(payload))
            window = common.Window(ARGS.server_pids)
            if ARGS.wl == "rpc_seq":
                lat = []
                clock = time.perf_counter_ns
                window.start()
                for _ in range(ARGS.n):
                    t = clock()
                    result = service.compute(payload)
                    lat.append(clock() - t)
                res = window.stop()
                common.check(result)
                return {**res, **common.latency_stats(lat), "n": ARGS.n, "rate": ARGS.n / res["elapsed_s"]}
            pending = collections.deque()
            window.start()
            for _ in range(ARGS.n):
                if len(pending) >= ARGS.conc:
                    common.check(pending.popleft().result())
                pending.append(service.compute.call_async(payload))
            while pending:
                common.check(pending.popleft().result())
            res = window.stop()
            return {**res, "n": ARGS.n, "conc": ARGS.conc, "rate": ARGS.n / res["elapsed_s"]}
    from nameko.standalone.events import event_dispatcher

    dispatch = event_dispatcher(CONFIG)
    event = "task" if ARGS.wl == "task" else "bc"
    for _ in range(ARGS.warm):
        dispatch(SOURCE, event, payload)
    wait_marks(ARGS.warm_files, "warm-up marks")
    window = common.Window(ARGS.server_pids)
    window.start()
    for _ in range(ARGS.n):
        dispatch(SOURCE, event, payload)
    res = window.stop()
    return {**res, "n": ARGS.n, "t_sent": res["t_end"]}


if __name__ == "__main__":
    if ARGS.role == "server":
        server()
    else:
        RESULT = client()
        RESULT.update(client="nameko")
        common.emit(RESULT)
