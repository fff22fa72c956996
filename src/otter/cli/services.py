"""``otter services``: every running Otter worker process, grouped by service, from one status request
(``otter.services``; docs/protocol.md, "Control messages")."""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

import click

from ..config import redact_url
from ..services import Instance, discover
from .output import CONTEXT_SETTINGS, console, exit_on_error, quiet_logging
from .settings import BROKER_OPTION, broker_config


@click.command(context_settings=CONTEXT_SETTINGS)
@BROKER_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of instances instead of tables.")
@click.option("--timeout", "-t", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True,
              metavar="SECONDS", help="How long to wait for the workers' answers.")
@click.option("--expect", type=click.IntRange(min=1), metavar="N",
              help="Stop waiting as soon as N workers have answered.")
def services(broker_url: str | None, as_json: bool, timeout: float, expect: int | None) -> None:
    """List every Otter worker process on the broker, grouped by service: version, host, pid, uptime,
    concurrency, routes, and messages in flight, handled and failed since it started.

    Each worker answers a status request on the control exchange (CONTROL_EXCHANGE) itself: no management plugin.
    A worker that is gone (killed, disconnected) cannot answer, so it is absent at once. Latencies (p50, p99) are
    each worker's over its last minute.

    Exit codes: 0 (also when none answered), 4 the broker cannot be reached.
    """
    quiet_logging()
    config = broker_config(broker_url)
    # Names (CONTROL_EXCHANGE) come from OTTER_* as broker_config's did.
    found: list[Instance] = exit_on_error(lambda: discover(config["BROKER_URL"], timeout, expected=expect))
    if as_json:
        click.echo(json.dumps([instance.as_dict() for instance in found], indent=2))
        return
    if not found:
        click.echo(f"no Otter worker answered within {timeout:g} s on {redact_url(config['BROKER_URL'])}")
        return
    _print_tables(found, timeout)


def _print_tables(found: list[Instance], timeout: float) -> None:
    from rich.markup import escape
    from rich.table import Table

    by_service: dict[str, list[Instance]] = defaultdict(list)
    for instance in found:
        by_service[instance.service].append(instance)
    out = console()
    out.print(f"{_count(len(by_service), 'service')}, {_count(len(found), 'worker process', 'es')} (answers "
              f"within {timeout:g} s)")
    for service, instances in by_service.items():
        versions = ", ".join(sorted({i.version for i in instances if i.version}))
        title = f"{service}{f' {versions}' if versions else ''}: {_count(len(instances), 'replica')}"
        table = Table("Host", "PID", "Uptime", "State", "Concurrency", "In flight", "Handled", "Errors",
                      title=escape(title), title_justify="left")
        for i in instances:
            table.add_row(escape(i.host), str(i.pid), _duration(i.uptime), i.state, str(i.concurrency),
                          str(i.in_flight), str(i.handled), str(i.errors))
        out.print(table)
        caption = "counts summed over replicas; latencies: the slowest replica's, over its last minute"
        routes = Table("Kind", "Name / filters", "Queue", "Replicas", "In flight", "Handled", "Errors", "p50 ms",
                       "p99 ms", title=f"{escape(service)}: routes", caption=caption, title_justify="left")
        for row in _route_rows(instances):
            routes.add_row(*map(escape, row))
        out.print(routes)


def _route_rows(instances: list[Instance]) -> list[tuple[str, ...]]:
    summed: dict[tuple[str, str, str], list[Any]] = {}
    for instance in instances:
        for route in instance.routes:
            row = summed.setdefault((route.kind, route.name, route.queue), [0, 0, 0, 0, None, None])
            row[0] += 1
            row[1] += route.in_flight
            row[2] += route.handled
            row[3] += route.errors
            row[4] = _worst(row[4], route.p50_ms)
            row[5] = _worst(row[5], route.p99_ms)
    return [(kind, name, queue or "-", *(str(n) for n in row[:4]), _ms(row[4]), _ms(row[5]))
            for (kind, name, queue), row in summed.items()]


def _count(n: int, noun: str, plural: str = "s") -> str:
    return f"{n} {noun}{'' if n == 1 else plural}"


def _worst(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else max(a, b)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}" if value >= 1 else f"{value:.3f}"


def _duration(seconds: float) -> str:
    minutes, second = divmod(int(seconds), 60)
    hours, minute = divmod(minutes, 60)
    days, hour = divmod(hours, 24)
    if days:
        return f"{days}d{hour}h"
    if hours:
        return f"{hours}h{minute:02d}m"
    return f"{minute}m{second:02d}s" if minutes else f"{seconds:.1f}s"
