"""``otter dashboard``: a web page that shows a running Otter system and acts on it.

It shows every service and replica that discovery finds, each route's rate, error rate and p50/p99 latency (live,
every second), the dead-letter queue (replay and purge, each after a confirmation page), and a form to call an RPC.
Install it with ``pip install 'otter-mq[dashboard]'`` (starlette, uvicorn, jinja2, python-multipart).

>>> from otter.dashboard import DashboardSettings, create_app
>>> app = create_app(DashboardSettings(url="amqp://guest:guest@127.0.0.1/", config=resolve({})))

Modules: ``app`` (the ASGI app and its guard middleware), ``views`` (pages and endpoints), ``monitor`` (one discovery
round per refresh, shared by every open page), ``rates`` (rates from successive counts, no I/O), ``fleet`` (the one
reader of discovery), ``security`` (bind rule, token, CSRF), ``templates/`` and ``static/``.
"""

from __future__ import annotations

from .app import DashboardSettings, create_app

__all__ = ["DashboardSettings", "create_app"]
