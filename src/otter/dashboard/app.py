"""The dashboard's ASGI application: its settings, the state its pages share, and the middleware that guards them.

>>> app = create_app(DashboardSettings(url="amqp://guest:guest@127.0.0.1/", config=resolve({})))
>>> uvicorn.run(app, host="127.0.0.1", port=8089)      # what ``otter dashboard`` does

The pages themselves are in ``views``; what they show is computed in ``rates`` and read through ``fleet``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.templating import Jinja2Templates
from starlette.types import ASGIApp, Receive, Scope, Send

from ..client import AsyncClient
from ..config import redact_url
from . import views
from .monitor import Monitor
from .security import Guard, Throttle, is_loopback, loopback_hosts
from .views import client_address, too_many_tries

__all__ = ["Dashboard", "DashboardSettings", "create_app"]

STATIC = Path(__file__).parent / "static"


@dataclass(frozen=True)
class DashboardSettings:
    """What ``otter dashboard`` was told: the broker, its resolved config (names of exchanges and queues), the
    address it serves (for the host check), the token, and how often the live figures refresh."""

    url: str
    config: Mapping[str, Any]
    host: str = "127.0.0.1"
    token: str | None = None
    interval: float = 1.0
    discovery_timeout: float = 0.7  # the wait for answers in each round; replicas answering later miss it
    rpc_timeout: float = 10.0


class Dashboard:
    """The state every request shares: the live monitor, the guard, and one client for the RPC form."""

    def __init__(self, settings: DashboardSettings) -> None:
        self.settings = settings
        self.shown_url = redact_url(settings.url) or ""
        self.guard = Guard(settings.token)
        self.throttle = Throttle()  # wrong tokens, per client address
        self.monitor = Monitor(settings.url, settings.config, interval=settings.interval,
                               timeout=settings.discovery_timeout)
        environment = Environment(loader=PackageLoader("otter.dashboard", "templates"),
                                  autoescape=select_autoescape(default=True))
        environment.filters.update(views.FILTERS)
        self.templates = Jinja2Templates(env=environment)
        self._client: AsyncClient | None = None
        self._client_lock = asyncio.Lock()

    async def client(self) -> AsyncClient:
        """The RPC form's client, connected on first use (and again after a failed connection)."""
        async with self._client_lock:
            if self._client is None:
                client = AsyncClient(self.settings.url, **dict(self.settings.config))
                await client.connect()
                self._client = client
            return self._client

    async def close_client(self) -> None:
        """Drop the RPC form's client, so the next call connects again."""
        client, self._client = self._client, None
        if client is not None:
            await client.close()

    async def close(self) -> None:
        await self.monitor.close()
        await self.close_client()


class RequireToken:
    """Every path but the login page needs the token: pages redirect to the login form, the rest answer 401. A
    wrong bearer token counts against the caller's address in ``throttle``, which answers 429 once it has too many."""

    def __init__(self, app: ASGIApp, guard: Guard, throttle: Throttle) -> None:
        self.app, self.guard, self.throttle = app, guard, throttle

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.guard.token is None or scope["path"] == "/login":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        response: Response
        address = client_address(request)
        if "authorization" in request.headers:
            if wait := self.throttle.retry_after(address):
                await too_many_tries(wait)(scope, receive, send)
                return
            if self.guard.bearer(request.headers):
                self.throttle.succeeded(address)
            else:
                self.throttle.failed(address)
        if self.guard.allowed(request.headers, request.cookies):
            await self.app(scope, receive, send)
            return
        if request.method == "GET" and "text/html" in request.headers.get("accept", ""):
            response = RedirectResponse("/login", status_code=303)
        else:
            response = PlainTextResponse("this dashboard needs its token: log in at /login, or send "
                                         "'Authorization: Bearer <token>'\n", status_code=401,
                                         headers={"WWW-Authenticate": "Bearer"})
        await response(scope, receive, send)


def create_app(settings: DashboardSettings) -> Starlette:
    """The dashboard as an ASGI app, ready for any ASGI server."""
    dashboard = Dashboard(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await dashboard.close()

    # A dashboard on loopback answers loopback names only; one exposed with a token answers any (the token is the
    # guard, and a page on another name never holds the login cookie).
    hosts = loopback_hosts(settings.host) if is_loopback(settings.host) else ["*"]
    app = Starlette(
        routes=views.routes(STATIC),
        middleware=[Middleware(TrustedHostMiddleware, allowed_hosts=hosts),
                    Middleware(RequireToken, guard=dashboard.guard, throttle=dashboard.throttle)],
        lifespan=lifespan,
    )
    app.state.dashboard = dashboard
    return app
