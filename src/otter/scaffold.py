"""The registration decorators and hooks shared by ``Otter`` and ``Blueprint``.

Each decorator is a thin wrapper over an ``add_*``/``register_*`` method and returns the function unchanged, so a
handler stays a plain function you can call in a unit test. Mistakes are refused when the decorator runs, with a
``ConfigurationError``: an option the decorator does not take (with the nearest one it does), and a handler or hook
that could not be called with the arguments it will get (``handler(comm, data)``; ``before(ctx)``...).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import timedelta
from typing import Any, TypeVar

from .errors import ConfigurationError
from .limits import RateLimit, check_max_priority, check_time_limit
from .protocol import TASK_QUEUE_TYPES
from .retry import validate_retry_options
from .routing import HOOK_ARGUMENTS, check_handler, check_name, check_options
from .schedules import Periodic

__all__ = ["ErrorHandler", "Hook", "Scaffold"]

F = TypeVar("F", bound=Callable[..., Any])
Hook = Callable[..., Any]
ErrorHandler = Callable[..., Any]


class Scaffold:
    """Holds the decorators; subclasses decide what registering means (record now, or replay later)."""

    def __init__(self) -> None:
        self.before_handler_funcs: list[Hook] = []
        self.after_handler_funcs: list[Hook] = []
        self.error_handlers: dict[type[BaseException], ErrorHandler] = {}

    # -- registration -------------------------------------------------------------------------------------------
    def add_rpc(self, name: str, **options: Any) -> Callable[[F], F]:
        """Serve the RPC ``name``: ``handler(comm, data)`` returns the reply.

        >>> @app.add_rpc("example.hash")
        ... def example_hash(comm, data): return {"result": data}
        """
        _check_name(name, "RPC")
        check_options("rpc", name, options)

        def decorator(handler: F) -> F:
            self._register("rpc", name, handler, options)
            return handler

        return decorator

    def add_task(
        self,
        name: str | None = None,
        *,
        default: bool | None = None,
        max_retries: int | None = None,
        retry_on: type[BaseException] | Iterable[type[BaseException]] | None = None,
        backoff: float | None = None,
        backoff_max: float | None = None,
        jitter: bool | None = None,
        queue_type: str | None = None,
        consumer_timeout: float | None = None,
        max_priority: int | None = None,
        rate_limit: str | None = None,
        time_limit: float | None = None,
        **options: Any,
    ) -> Callable[[F], F]:
        """Run tasks from the queue ``name``: ``handler(comm, body)``.

        Nameless tasks (``client.task(body)``) go to the default task queue, and one consumer takes them: an app
        whose only task handler this is claims that queue for itself, unless another consumer already has it (then
        the worker says so in its log and takes none); ``default=True`` shares the queue with the replicas of this
        app instead, and ``default=False`` opts out. Prefer named tasks.

        A task that raises runs again up to ``max_retries`` times when the error is one of ``retry_on``, waiting
        ``backoff`` seconds, doubling up to ``backoff_max`` (with ``jitter``), then goes to the dead-letter queue;
        options left out come from the app's ``TASK_*`` config.

        ``queue_type`` (``"classic"`` or ``"quorum"``) is how the worker declares the task's queue; None: the app's
        ``TASK_QUEUE_TYPE``. A quorum queue survives the loss of a cluster node and dead-letters a task delivered
        ``TASK_DELIVERY_LIMIT`` times (one that kills its worker each time), but kiwipy programs cannot declare it.
        ``consumer_timeout`` (seconds) overrides the app's ``CONSUMER_TIMEOUT`` for this task's queue: how long the
        broker lets a delivery stay unacked (RabbitMQ 4.3+ with quorum queues honour it; see "Long handlers").

        ``max_priority`` (1-255; RabbitMQ advises at most 10) declares a classic queue with ``x-max-priority``, so
        tasks sent with ``priority=`` run highest first (None: the app's ``TASK_MAX_PRIORITY``; 0: none). A quorum
        queue takes none: on RabbitMQ 4+ it has two levels of its own (priority 5 and up first), on 3.x none.
        ``rate_limit`` (``"100/s"``, ``"30/m"``, ``"10/h"``) spaces this task's starts evenly, per worker process.
        ``time_limit`` (seconds; None: the app's ``TASK_TIME_LIMIT``) fails a run that lasts longer with
        ``TimeLimitExceeded``: an ``async def`` handler is cancelled, a plain one runs on in its thread, which keeps
        its concurrency slot until it returns (docs/task-limits.md).

        >>> @app.add_task("mail.send", max_retries=3, retry_on=(IOError,), backoff=2.0)
        ... def send(comm, body): ...
        """
        if callable(name):
            raise ConfigurationError("use @app.add_task('queue.name'), with parentheses and a name")
        if name is not None:
            _check_name(name, "task")
        options = _task_options(name, max_retries=max_retries, retry_on=retry_on, backoff=backoff,
                                backoff_max=backoff_max, jitter=jitter, queue_type=queue_type,
                                consumer_timeout=consumer_timeout, max_priority=max_priority,
                                rate_limit=rate_limit, time_limit=time_limit, **options)

        def decorator(handler: F) -> F:
            self._register("task", name or handler.__name__, handler, {**options, "default": default})
            return handler

        return decorator


    def add_periodic(
        self,
        name: str,
        *,
        every: float | timedelta | None = None,
        cron: str | None = None,
        tz: str | None = None,
        missed: str | None = None,
        **task_options: Any,
    ) -> Callable[[F], F]:
        """Run ``handler(comm, tick)`` on a schedule: ``every`` seconds (or a ``timedelta``), or at the times of the
        ``cron`` expression in the time zone ``tz`` (default UTC). Once per tick across all replicas of the app.

        Each tick is an ordinary task on the queue ``name`` (so ``add_task``'s retry and queue options apply, and
        it runs on any replica); ``tick`` says which one: ``{"periodic", "id", "scheduled_at", "missed"}``.
        ``missed`` (``"once"``, ``"all"`` or ``"skip"``; None: the app's ``PERIODIC_MISSED``) says what happens
        to ticks that no replica was running to send (see docs/periodic.md).

        >>> @app.add_periodic("reports.daily", cron="0 7 * * mon-fri", tz="Europe/Paris")
        ... def daily_report(comm, tick): ...
        """
        _check_name(name, "periodic task")
        periodic = Periodic.build(name, every, cron, tz, missed)
        if "default" in task_options:
            raise ConfigurationError(f"add_periodic({name!r}) takes no default= option: its ticks go to its own "
                                     f"queue, by name")
        options = {**_task_options(name, **task_options), "periodic": periodic, "default": False}

        def decorator(handler: F) -> F:
            self._register("task", name, handler, options)
            return handler

        return decorator

    def add_broadcast(self, filters: str | Iterable[str], **options: Any) -> Callable[[F], F]:
        """Receive broadcasts whose subject matches a filter: ``handler(comm, body, sender, subject, correlation_id)``.

        >>> @app.add_broadcast(["message.*"])
        ... def on_message(comm, body, sender, subject, correlation_id): ...
        """
        patterns = [filters] if isinstance(filters, str) else list(filters)
        check_options("broadcast", ",".join(map(str, patterns)), options)

        def decorator(handler: F) -> F:
            self._register("broadcast", ",".join(patterns), handler, {**options, "filters": patterns})
            return handler

        return decorator

    # -- hooks --------------------------------------------------------------------------------------------------
    def before_handler(self, func: F) -> F:
        """Run ``func(ctx)`` before every handler; raising rejects the message like the handler raising would."""
        self._add_hook("before", func)
        return func

    def after_handler(self, func: F) -> F:
        """Run ``func(ctx, result)`` after every successful handler; its return value replaces the result."""
        self._add_hook("after", func)
        return func

    def errorhandler(self, exc_type: type[BaseException]) -> Callable[[F], F]:
        """Turn ``exc_type`` raised by a handler into a result: ``func(ctx, exc)`` returns the reply, or raises."""

        def decorator(func: F) -> F:
            self._add_error_handler(exc_type, func)
            return func

        return decorator

    # -- what subclasses implement ------------------------------------------------------------------------------
    def _register(self, kind: str, name: str, handler: Callable[..., Any], options: dict[str, Any]) -> None:
        """Record the route (checking the handler's signature: ``routing.check_handler``)."""
        raise NotImplementedError

    def check_setup(self, what: str) -> None:
        """Raise ``ConfigurationError`` if it is too late to ``what`` (the app already serves)."""

    def _add_hook(self, when: str, func: Hook) -> None:
        self.check_setup(f"add the {when}_handler hook {getattr(func, '__qualname__', func)!s}")
        check_handler(f"{when}_handler hook", func, HOOK_ARGUMENTS[f"{when}_handler"])
        (self.before_handler_funcs if when == "before" else self.after_handler_funcs).append(func)

    def _add_error_handler(self, exc_type: type[BaseException], func: ErrorHandler) -> None:
        self.check_setup(f"add an errorhandler for {getattr(exc_type, '__name__', exc_type)!s}")
        where = f" for {getattr(exc_type, '__name__', exc_type)!s}"
        check_handler("errorhandler", func, HOOK_ARGUMENTS["errorhandler"], where)
        self.error_handlers[exc_type] = func


def _check_name(name: Any, what: str) -> None:
    check_name(name, what)


def _task_options(
    name: str | None,
    *,
    max_retries: int | None = None,
    retry_on: type[BaseException] | Iterable[type[BaseException]] | None = None,
    backoff: float | None = None,
    backoff_max: float | None = None,
    jitter: bool | None = None,
    queue_type: str | None = None,
    consumer_timeout: float | None = None,
    max_priority: int | None = None,
    rate_limit: str | None = None,
    time_limit: float | None = None,
    **options: Any,
) -> dict[str, Any]:
    """A task's options (``add_task``'s and ``add_periodic``'s), checked: the route's options dict."""
    check_options("task", name or "", options)
    retry = {"max_retries": max_retries, "retry_on": retry_on, "backoff": backoff, "backoff_max": backoff_max,
             "jitter": jitter}
    validate_retry_options(retry)
    if queue_type is not None:
        if queue_type not in TASK_QUEUE_TYPES:
            raise ConfigurationError(f"add_task({name!r}) got queue_type={queue_type!r}; it must be one of "
                                     f"{', '.join(repr(t) for t in TASK_QUEUE_TYPES)}, or None for TASK_QUEUE_TYPE")
        options["queue_type"] = queue_type
    options.update({option: value for option, value in retry.items() if value is not None})
    if consumer_timeout is not None:
        if isinstance(consumer_timeout, bool) or not isinstance(consumer_timeout, int | float) \
                or not 0 < consumer_timeout < float("inf"):
            raise ConfigurationError(f"add_task({name!r}): consumer_timeout must be a number of seconds, more "
                                     f"than 0, got {consumer_timeout!r}")
        options["consumer_timeout"] = float(consumer_timeout)
    where = f"add_task({name!r})"
    if max_priority is not None:
        if queue_type == "quorum" and max_priority:
            raise ConfigurationError(f"{where}: a quorum queue takes no max_priority (RabbitMQ refuses "
                                     f"x-max-priority on it); on RabbitMQ 4+ it has two priorities of its own "
                                     f"(priority 5 and up run first), on 3.x none")
        options["max_priority"] = check_max_priority(where, max_priority) or 0
    if rate_limit is not None:
        options["rate_limit"] = RateLimit.parse(rate_limit, where)
    if time_limit is not None:
        options["time_limit"] = check_time_limit(where, time_limit)
    return options
