"""``otter.dashboard.security``: the bind rule, the token and the POST checks, decided without I/O (the served
dashboard applying them is ``test_server.py``)."""

from __future__ import annotations

import pytest

from otter.dashboard.security import COOKIE, Guard, Throttle, check_bind, is_loopback, same_origin
from otter.errors import ConfigurationError

ORIGIN = "http://127.0.0.1:8089"


@pytest.mark.parametrize(("host", "loopback"), [
    ("127.0.0.1", True), ("127.8.0.1", True), ("localhost", True), ("::1", True), ("[::1]", True),
    ("0.0.0.0", False), ("::", False), ("192.0.2.10", False), ("dashboard.example", False),
])
def test_only_loopback_addresses_count_as_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_a_non_loopback_host_needs_a_token_or_insecure() -> None:
    check_bind("127.0.0.1", None, insecure=False)
    check_bind("0.0.0.0", "s3cret", insecure=False)
    check_bind("0.0.0.0", None, insecure=True)
    with pytest.raises(ConfigurationError, match=r"refusing to serve 0\.0\.0\.0 without a token"):
        check_bind("0.0.0.0", None, insecure=False)
    with pytest.raises(ConfigurationError, match="token is empty"):
        check_bind("127.0.0.1", "", insecure=False)


def test_the_token_opens_by_bearer_header_or_by_the_cookie_that_holds_its_digest() -> None:
    guard = Guard("s3cret")
    assert guard.allowed({"authorization": "Bearer s3cret"}, {})
    assert guard.allowed({}, {COOKIE: guard.cookie_value})
    assert "s3cret" not in guard.cookie_value
    assert Guard("other").cookie_value != guard.cookie_value
    for headers, cookies in (({}, {}), ({"authorization": "Bearer s3cre"}, {}), ({"authorization": "Basic s3cret"}, {}),
                             ({}, {COOKIE: "s3cret"}), ({}, {COOKIE: guard.cookie_value[:-1]})):
        assert not guard.allowed(headers, cookies)
    assert Guard(None).allowed({}, {})
    assert not Guard(None).token_matches("anything")


def test_a_post_needs_the_csrf_value_and_no_foreign_origin_unless_it_has_the_bearer_token() -> None:
    guard = Guard("s3cret")
    form = {"csrf": guard.csrf}
    assert guard.post_allowed({}, form, ORIGIN)
    assert guard.post_allowed({"origin": ORIGIN}, form, ORIGIN)
    assert not guard.post_allowed({}, {}, ORIGIN)
    assert not guard.post_allowed({}, {"csrf": Guard("s3cret").csrf}, ORIGIN)  # another server's value
    assert not guard.post_allowed({"origin": "http://evil.example"}, form, ORIGIN)
    assert not guard.post_allowed({"referer": "http://evil.example/page"}, form, ORIGIN)
    assert guard.post_allowed({"authorization": "Bearer s3cret", "origin": "http://evil.example"}, {}, ORIGIN)


def test_same_origin_reads_origin_then_referer() -> None:
    assert same_origin({}, ORIGIN)
    assert same_origin({"referer": f"{ORIGIN}/dlq/replay"}, ORIGIN)
    assert not same_origin({"origin": "null"}, ORIGIN)
    assert not same_origin({"origin": "http://127.0.0.1:9999"}, ORIGIN)


def test_the_throttle_refuses_an_address_after_its_limit_of_wrong_tokens_until_the_window_passes() -> None:
    now = [1000.0]
    throttle = Throttle(limit=3, window=60.0, clock=lambda: now[0])
    for _ in range(3):
        assert throttle.retry_after("10.0.0.1") == 0
        throttle.failed("10.0.0.1")
    assert throttle.retry_after("10.0.0.1") == 60.0  # refused, for as long as the oldest failure is recent
    assert throttle.retry_after("10.0.0.2") == 0  # another address is not
    now[0] += 59.5
    assert throttle.retry_after("10.0.0.1") == 0.5
    now[0] += 0.5
    assert throttle.retry_after("10.0.0.1") == 0  # the first failure left the window


def test_a_right_token_clears_the_count_and_old_addresses_are_forgotten() -> None:
    now = [0.0]
    throttle = Throttle(limit=2, window=10.0, clock=lambda: now[0])
    throttle.failed("a")
    throttle.succeeded("a")
    throttle.failed("a")
    assert throttle.retry_after("a") == 0  # one failure since the right token
    for n in range(100):
        throttle.failed(f"scanner-{n}")
    now[0] += 11
    throttle.retry_after("a")
    assert throttle._failures.keys() <= {"a"}  # nothing kept for addresses with no recent failure
