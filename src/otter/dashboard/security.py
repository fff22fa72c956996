"""Who may use the dashboard, decided without I/O: the bind rule, the token, and the checks a POST must pass.

The dashboard can replay and purge dead letters and call any RPC, so it is as powerful as the broker credentials
it holds. It binds 127.0.0.1 by default; a token (``--token``, or ``OTTER_DASHBOARD_TOKEN``) protects every page and
endpoint, given as ``Authorization: Bearer <token>`` or through the login form, which sets a cookie holding a digest
of the token (never the token). A POST from a browser must also carry the page's CSRF value and, when the browser
names its origin, come from the dashboard's own. Wrong tokens are throttled per client address (``Throttle``), so
the token cannot be guessed at the speed of the server.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from ..errors import ConfigurationError

__all__ = ["COOKIE", "CSRF_FIELD", "TOKEN_ENV", "Guard", "Throttle", "check_bind", "is_loopback", "loopback_hosts"]

TOKEN_ENV = "OTTER_DASHBOARD_TOKEN"
COOKIE = "otter_dashboard"
CSRF_FIELD = "csrf"


def is_loopback(host: str) -> bool:
    """Whether ``host`` (as given to ``--host``) listens only on this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name: it may resolve to anything


def loopback_hosts(host: str) -> list[str]:
    """The ``Host`` headers a loopback-bound dashboard answers: a page on another name that resolves here (DNS
    rebinding) gets nothing."""
    return sorted({"127.0.0.1", "localhost", "::1", "[::1]", host})


def check_bind(host: str, token: str | None, insecure: bool) -> None:
    """Refuse to serve a non-loopback address without a token, unless told ``insecure``."""
    if token is not None and not token:
        raise ConfigurationError(f"the dashboard token is empty; give a real one (--token or {TOKEN_ENV}), or none")
    if token is None and not insecure and not is_loopback(host):
        raise ConfigurationError(
            f"refusing to serve {host} without a token: anyone who reaches it could replay and purge dead letters "
            f"and call your RPCs. Set {TOKEN_ENV} (or --token), bind 127.0.0.1, or pass --insecure if a proxy in "
            "front of it does the checking"
        )


@dataclass(frozen=True)
class Guard:
    """The token (``None``: open, which ``check_bind`` allows on loopback only) and this server's CSRF value."""

    token: str | None
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(32))

    @property
    def cookie_value(self) -> str:
        """What the login cookie holds: a digest of the token, so the cookie never reveals the token itself."""
        assert self.token is not None
        return hmac.new(self.token.encode(), b"otter-dashboard-login", hashlib.sha256).hexdigest()

    def token_matches(self, given: str | None) -> bool:
        """Constant-time comparison, so timing tells nothing about the token."""
        return self.token is not None and given is not None and hmac.compare_digest(given.encode(), self.token.encode())

    def allowed(self, headers: Mapping[str, str], cookies: Mapping[str, str]) -> bool:
        """Whether a request may see pages and use endpoints."""
        if self.token is None:
            return True
        return self.bearer(headers) or hmac.compare_digest(cookies.get(COOKIE, "").encode(), self.cookie_value.encode())

    def bearer(self, headers: Mapping[str, str]) -> bool:
        """The token in an ``Authorization: Bearer`` header: a program's way in, which browsers never add by
        themselves (so it needs no CSRF value)."""
        scheme, _, given = headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and self.token_matches(given.strip())

    def post_allowed(self, headers: Mapping[str, str], form: Mapping[str, str], own_origin: str) -> bool:
        """Whether a POST may act: the bearer token, or (from a browser) this page's CSRF value and no foreign
        ``Origin``."""
        if self.bearer(headers):
            return True
        return same_origin(headers, own_origin) and hmac.compare_digest(
            str(form.get(CSRF_FIELD, "")).encode(), self.csrf.encode()
        )


def same_origin(headers: Mapping[str, str], own_origin: str) -> bool:
    """No ``Origin`` (or ``Referer``) header, or one naming ``own_origin`` (``http://host:port``)."""
    origin = headers.get("origin")
    if origin is None and "referer" in headers:
        parts = urlsplit(headers["referer"])
        origin = f"{parts.scheme}://{parts.netloc}"
    return origin is None or origin == own_origin


class Throttle:
    """Wrong tokens per client address: after ``limit`` failures within ``window`` seconds, that address is refused
    (HTTP 429) until the oldest of them is ``window`` seconds old, without its token being checked. A right token
    clears the address's count. Addresses are forgotten once their failures are old, so memory stays bounded by
    the addresses that failed in the last ``window``."""

    def __init__(self, limit: int = 10, window: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit, self.window, self._clock = limit, window, clock
        self._failures: dict[str, list[float]] = {}

    def retry_after(self, address: str) -> float:
        """Seconds until ``address`` may try a token again; 0 when it may now."""
        recent = self._recent(address)
        if len(recent) < self.limit:
            return 0.0
        return max(0.0, recent[0] + self.window - self._clock())

    def failed(self, address: str) -> None:
        self._recent(address).append(self._clock())

    def succeeded(self, address: str) -> None:
        self._failures.pop(address, None)

    def _recent(self, address: str) -> list[float]:
        now = self._clock()
        for old in [key for key, times in self._failures.items() if not times or times[-1] <= now - self.window]:
            del self._failures[old]  # nothing recent: forget the address
        times = self._failures.setdefault(address, [])
        times[:] = [at for at in times if at > now - self.window]
        return times
