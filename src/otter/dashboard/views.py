"""The dashboard's pages and endpoints. Each reads or acts through Otter's public API (discovery, ``otter.dlq``,
``AsyncClient``) and renders a template; every POST passes ``Guard.post_allowed`` first.

    GET  /                 the page: services (live), dead letters, the RPC form
    GET  /events           server-sent events: the services section, rendered, every refresh
    GET  /api/services     the same figures as JSON
    POST /dlq/replay       one dead letter (``letter``: its correlation id) or all, after a confirmation page
    POST /dlq/purge        every dead letter, after a confirmation page
    POST /rpc              call an RPC (``name``, ``body`` as JSON) and show the reply or the typed error
    GET|POST /login, POST /logout
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from .. import dlq
from ..errors import BrokerUnavailable, OtterError, RemoteError, ValidationError
from ..logs import redact
from .security import COOKIE, CSRF_FIELD, same_origin

if TYPE_CHECKING:
    from .app import Dashboard

__all__ = ["FILTERS", "routes"]

DEAD_LETTERS_SHOWN = 100
NOT_MEASURED = "\N{EN DASH}"  # no figure yet: shown rather than a misleading 0
NOTICES = {"replayed": "replayed {count} dead letter(s)", "purged": "removed {count} dead letter(s)"}


def routes(static: Path) -> list[Route | Mount]:
    return [
        Route("/", index),
        Route("/events", events),
        Route("/api/services", api_services),
        Route("/dlq/replay", dlq_replay, methods=["POST"]),
        Route("/dlq/purge", dlq_purge, methods=["POST"]),
        Route("/rpc", rpc, methods=["POST"]),
        Route("/login", login, methods=["GET", "POST"]),
        Route("/logout", logout, methods=["POST"]),
        Mount("/static", StaticFiles(directory=static), name="static"),
    ]


@dataclass(frozen=True)
class RpcOutcome:
    """What the RPC form shows after a call: the reply as JSON, or the error with its type."""

    name: str
    body: str
    reply: str | None = None
    error_type: str | None = None
    error_message: str | None = None
    details: str | None = None


# -- pages -------------------------------------------------------------------------------------------------------
async def index(request: Request) -> Response:
    notice = NOTICES.get(request.query_params.get("done", ""))
    count = request.query_params.get("count", "")
    shown = notice.format(count=int(count)) if notice and count.isdigit() else None
    return await _page(request, notice=shown)


async def events(request: Request) -> Response:
    """The services section, rendered on the server, as a server-sent event per refresh; the page's script swaps
    it in. A browser that goes away ends the stream (Starlette cancels it on disconnect)."""
    dashboard = _dashboard(request)
    template = dashboard.templates.get_template("_services.html")

    async def stream() -> AsyncIterator[str]:
        interval = dashboard.settings.interval
        while True:
            started = time.monotonic()
            overview = await dashboard.monitor.current()
            html = template.render(overview=overview)
            yield "event: services\n" + "".join(f"data: {line}\n" for line in html.splitlines()) + "\n"
            # The refresh pace (a round's own time included), not a wait for something.
            await asyncio.sleep(max(0.0, interval - (time.monotonic() - started)))

    return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-store"})


async def api_services(request: Request) -> Response:
    overview = await _dashboard(request).monitor.current()
    return JSONResponse({"taken_at": overview.taken_at, "error": overview.error,
                         "services": [{**asdict(service), "handled": service.handled, "errors": service.errors,
                                       "in_flight": service.in_flight} for service in overview.services]})


# -- dead letters ------------------------------------------------------------------------------------------------
async def dlq_replay(request: Request) -> Response:
    """Replay one dead letter (by correlation id) or all of them; without ``confirmed``, ask first."""
    form = await _checked_form(request)
    dashboard = _dashboard(request)
    settings = dashboard.settings
    letter_id = form.get("letter") or None
    chosen: Callable[[dlq.DeadLetter], bool] | None = None
    if letter_id is not None:
        def chosen(letter: dlq.DeadLetter) -> bool:
            return letter.correlation_id == letter_id
    if form.get("confirmed") != "yes":
        # One letter may be anywhere in the queue, so it is looked for in all; "all" needs only a count to show.
        letters, error = await _dead_letters(dashboard, limit=None if chosen else DEAD_LETTERS_SHOWN + 1)
        picked = [letter for letter in letters if chosen is None or chosen(letter)]
        return _confirm(request, action="/dlq/replay", fields={"letter": letter_id or ""}, letters=picked,
                        question=f"Replay {_count(picked)} dead letter(s) to the task queues they came from?",
                        error=error)
    try:
        count = await dlq.replay_async(settings.url, settings.config, where=chosen)
    except OtterError as exc:
        return await _page(request, dlq_error=_describe(exc), status_code=502)
    return RedirectResponse(f"/?done=replayed&count={count}#dead-letters", status_code=303)


async def dlq_purge(request: Request) -> Response:
    """Delete every dead letter; without ``confirmed``, ask first."""
    form = await _checked_form(request)
    dashboard = _dashboard(request)
    settings = dashboard.settings
    if form.get("confirmed") != "yes":
        letters, error = await _dead_letters(dashboard, limit=DEAD_LETTERS_SHOWN + 1)
        return _confirm(request, action="/dlq/purge", fields={}, letters=letters, error=error,
                        question=f"Delete all {_count(letters)} dead letter(s) in "
                                 f"{settings.config['DEAD_LETTER_QUEUE']!r} for good?")
    try:
        count = await dlq.purge_async(settings.url, settings.config)
    except OtterError as exc:
        return await _page(request, dlq_error=_describe(exc), status_code=502)
    return RedirectResponse(f"/?done=purged&count={count}#dead-letters", status_code=303)


# -- the RPC form ------------------------------------------------------------------------------------------------
async def rpc(request: Request) -> Response:
    form = await _checked_form(request)
    name, body = form.get("name", "").strip(), form.get("body", "")
    outcome = await _call(_dashboard(request), name, body)
    return await _page(request, rpc=outcome)


async def _call(dashboard: Dashboard, name: str, body: str) -> RpcOutcome:
    if not name:
        return RpcOutcome(name, body, error_type="UsageError", error_message="give the RPC's name")
    try:
        data = json.loads(body) if body.strip() else None
    except ValueError as exc:
        return RpcOutcome(name, body, error_type="UsageError",
                          error_message=f"the body is not JSON ({exc}); strings need quotes: \"otter\"")
    try:
        client = await dashboard.client()
        reply = await client.rpc(name, data, timeout=dashboard.settings.rpc_timeout)
    except ValidationError as exc:
        return RpcOutcome(name, body, error_type="ValidationError", error_message="invalid arguments",
                          details=_json(exc.messages))
    except RemoteError as exc:
        details = exc.remote_traceback or (_json(exc.details) if exc.details is not None else None)
        return RpcOutcome(name, body, error_type=f"RemoteError {exc.remote_type}", error_message=exc.message,
                          details=details)
    except OtterError as exc:
        if isinstance(exc, BrokerUnavailable):
            await dashboard.close_client()  # connect again on the next call
        return RpcOutcome(name, body, error_type=type(exc).__name__, error_message=redact(str(exc)))
    return RpcOutcome(name, body, reply=_json(reply))


# -- login -------------------------------------------------------------------------------------------------------
async def login(request: Request) -> Response:
    dashboard = _dashboard(request)
    if dashboard.guard.token is None:
        return RedirectResponse("/", status_code=303)
    if request.method == "GET":
        return _render(request, "login.html")
    form = await request.form()
    given = form.get("token")
    if not same_origin(request.headers, _own_origin(request)):
        raise HTTPException(403, "a login from another site")
    address = client_address(request)
    if wait := dashboard.throttle.retry_after(address):
        return _render(request, "login.html", error=_too_many(wait), status_code=429,
                       headers={"Retry-After": str(math.ceil(wait))})
    if not dashboard.guard.token_matches(given if isinstance(given, str) else None):
        dashboard.throttle.failed(address)
        return _render(request, "login.html", error="that is not the token", status_code=401)
    dashboard.throttle.succeeded(address)
    response = RedirectResponse("/", status_code=303)
    response.set_cookie(COOKIE, dashboard.guard.cookie_value, httponly=True, samesite="strict",
                        secure=request.url.scheme == "https")
    return response


async def logout(request: Request) -> Response:
    await _checked_form(request)
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(COOKIE)
    return response


# -- helpers -----------------------------------------------------------------------------------------------------
def client_address(request: Request) -> str:
    """Whom wrong tokens are counted against: the peer's address (behind a proxy, the proxy's, so its clients
    share one count: throttled together rather than not at all)."""
    return request.client.host if request.client else "unknown"


def too_many_tries(wait: float) -> Response:
    """429 for an address the throttle holds back, saying for how long (also as ``Retry-After``)."""
    return PlainTextResponse(_too_many(wait) + "\n", status_code=429, headers={"Retry-After": str(math.ceil(wait))})


def _too_many(wait: float) -> str:
    return f"too many wrong tokens from your address: try again in {math.ceil(wait)} s"


def _dashboard(request: Request) -> Dashboard:
    dashboard: Dashboard = request.app.state.dashboard
    return dashboard


def _own_origin(request: Request) -> str:
    return f"{request.url.scheme}://{request.url.netloc}"


async def _checked_form(request: Request) -> dict[str, str]:
    """The POST's form fields, once it passed the CSRF and origin checks (else 403)."""
    form = await request.form()
    fields = {key: value for key, value in form.items() if isinstance(value, str)}
    if not _dashboard(request).guard.post_allowed(request.headers, fields, _own_origin(request)):
        raise HTTPException(403, "refused: this form did not come from this dashboard's own page (reload it)")
    return fields


async def _dead_letters(dashboard: Dashboard, limit: int | None) -> tuple[list[dlq.DeadLetter], str | None]:
    settings = dashboard.settings
    try:
        return await dlq.list_dead_letters_async(settings.url, settings.config, limit), None
    except OtterError as exc:
        return [], _describe(exc)


async def _page(request: Request, status_code: int = 200, **context: Any) -> Response:
    dashboard = _dashboard(request)
    overview, (letters, error) = await asyncio.gather(
        dashboard.monitor.current(), _dead_letters(dashboard, DEAD_LETTERS_SHOWN + 1))
    context.setdefault("dlq_error", error)
    return _render(request, "index.html", status_code=status_code, overview=overview,
                   letters=letters[:DEAD_LETTERS_SHOWN], more_letters=len(letters) > DEAD_LETTERS_SHOWN, **context)


def _confirm(request: Request, *, action: str, fields: dict[str, str], letters: list[dlq.DeadLetter],
             question: str, error: str | None) -> Response:
    return _render(request, "confirm.html", action=action, fields=fields, letters=letters[:DEAD_LETTERS_SHOWN],
                   question=question, dlq_error=error)


def _render(request: Request, template: str, status_code: int = 200, headers: dict[str, str] | None = None,
            **context: Any) -> Response:
    dashboard = _dashboard(request)
    context.update(broker=dashboard.shown_url, csrf=dashboard.guard.csrf, csrf_field=CSRF_FIELD,
                   protected=dashboard.guard.token is not None,
                   dead_letter_queue=dashboard.settings.config["DEAD_LETTER_QUEUE"],
                   interval=dashboard.settings.interval)
    response: Response = dashboard.templates.TemplateResponse(request, template, context, status_code=status_code,
                                                              headers=headers)
    return response


def _count(letters: list[dlq.DeadLetter]) -> str:
    return str(len(letters)) if len(letters) <= DEAD_LETTERS_SHOWN else f"more than {DEAD_LETTERS_SHOWN}"


def _describe(exc: Exception) -> str:
    return redact(f"{type(exc).__name__}: {exc}")


def _json(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, default=str)


# -- template filters --------------------------------------------------------------------------------------------
def _rate(value: float | None) -> str:
    return NOT_MEASURED if value is None else f"{value:.1f}/s"


def _millis(value: float | None) -> str:
    return NOT_MEASURED if value is None else f"{value:.1f} ms"


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m" if hours else f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"


def _letter_id(letter: dlq.DeadLetter) -> str | None:
    """The task id when dead letters carry one, else the correlation id (which replay picks a letter by)."""
    task_id = getattr(letter, "task_id", None)
    return str(task_id) if task_id else letter.correlation_id


FILTERS: dict[str, Callable[..., str | None]] = {
    "rate": _rate, "millis": _millis, "duration": _duration, "letter_id": _letter_id,
}
