"""Serve the dashboard and a service for it as real processes, and talk HTTP to the dashboard."""

from __future__ import annotations

import re
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from email.message import Message
from typing import Any

from helpers_process import AppProcess

ADDRESS = re.compile(r"Otter dashboard on (http://\S+?)/ ")
SERVICE_APP = "tests/apps/dashboard_app.py"


class DashboardProcess(AppProcess):
    """``otter dashboard`` in its own process; ``url`` once it listens (``http://127.0.0.1:PORT``)."""

    def __init__(self, *args: str, env: dict[str, str]) -> None:
        super().__init__("-m", "otter", "dashboard", "--port", "0", *args, env=env)
        self.url = ""

    def start(self) -> DashboardProcess:
        super().start()
        self.wait_for("Otter dashboard on http", timeout=60)
        found = ADDRESS.search(self.output)
        assert found, self.output
        self.url = found.group(1)
        return self

    def __enter__(self) -> DashboardProcess:
        return self.start()


@dataclass(frozen=True)
class Answer:
    status: int
    headers: Message
    text: str


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # the tests look at the redirect itself


_OPENER = urllib.request.build_opener(_NoRedirects)


def http(url: str, form: dict[str, str] | None = None, headers: dict[str, str] | None = None) -> Answer:
    """One request (a POST of ``form`` when given), redirects not followed, errors returned as answers."""
    data = urllib.parse.urlencode(form).encode() if form is not None else None
    request = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with _OPENER.open(request, timeout=15) as answer:
            return Answer(answer.status, answer.headers, answer.read().decode())
    except urllib.error.HTTPError as error:
        with error:
            return Answer(error.code, error.headers, error.read().decode())


def csrf_of(page: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', page)
    assert found, "no CSRF value in the page"
    return found.group(1)


def first_event(url: str, headers: dict[str, str] | None = None) -> str:
    """The first server-sent event of ``url`` (the stream is then closed)."""
    request = urllib.request.Request(url, headers=headers or {})
    lines = []
    with _OPENER.open(request, timeout=15) as stream:
        for raw in stream:
            line = raw.decode().rstrip("\n")
            if not line and lines:
                return "\n".join(lines)
            lines.append(line)
    raise AssertionError(f"the stream ended without an event: {lines}")
