"""``otter dashboard`` served for real (its own process, the shared RabbitMQ), spoken to over HTTP: who may use it,
what a POST must carry, that the broker's password never reaches a page, and the RPC form and dead-letter actions
end to end. The page as a browser shows it is in ``test_browser.py``."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import uuid
from typing import Any

import pytest

from helpers_process import READY, REPO_ROOT, AppProcess, app_env, wait_until
from otter import Client
from otter.dlq import list_dead_letters

from .conftest import Service
from .helpers import SERVICE_APP, DashboardProcess, csrf_of, first_event, http

pytestmark = pytest.mark.amqp
HTML = {"Accept": "text/html"}


def test_a_token_guards_every_page_and_endpoint(service_env: Any) -> None:
    env, _ = service_env
    token = f"t-{uuid.uuid4().hex}"
    with DashboardProcess(env={**env, "OTTER_DASHBOARD_TOKEN": token}) as dashboard:
        url = dashboard.url
        page = http(f"{url}/", headers=HTML)
        assert (page.status, page.headers["Location"]) == (303, "/login")
        for path in ("/api/services", "/events", "/static/dashboard.js", "/?done=purged&count=1"):
            assert http(f"{url}{path}").status == 401, path
        assert http(f"{url}/dlq/purge", form={"confirmed": "yes"}).status == 401
        assert http(f"{url}/rpc", form={"name": "dash.echo"}).status == 401
        assert http(f"{url}/api/services", headers={"Authorization": "Bearer wrong"}).status == 401

        assert http(f"{url}/api/services", headers={"Authorization": f"Bearer {token}"}).status == 200
        refused = http(f"{url}/login", form={"token": token[:-1]})
        assert refused.status == 401 and "that is not the token" in refused.text
        login = http(f"{url}/login", form={"token": token})
        assert (login.status, login.headers["Location"]) == (303, "/")
        cookie = login.headers["Set-Cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie and token not in cookie
        pair = cookie.split(";", 1)[0]
        assert http(f"{url}/", headers={**HTML, "Cookie": pair}).status == 200
        assert http(f"{url}/", headers={**HTML, "Cookie": pair[:-1]}).status == 303


def test_wrong_tokens_are_throttled_per_address(service_env: Any) -> None:
    """Ten wrong tokens (bearer or the login form) from one address within a minute: it is refused with 429 and a
    Retry-After, even with the right token, instead of guessing on at the server's speed."""
    env, _ = service_env
    token = f"t-{uuid.uuid4().hex}"
    with DashboardProcess(env={**env, "OTTER_DASHBOARD_TOKEN": token}) as dashboard:
        url = dashboard.url
        for n in range(5):
            assert http(f"{url}/api/services", headers={"Authorization": f"Bearer guess-{n}"}).status == 401
            assert http(f"{url}/login", form={"token": f"guess-{n}"}).status == 401
        refused = http(f"{url}/api/services", headers={"Authorization": f"Bearer {token}"})
        assert refused.status == 429 and 0 < int(refused.headers["Retry-After"]) <= 60
        login = http(f"{url}/login", form={"token": token})
        assert login.status == 429 and "too many wrong tokens" in login.text


def test_a_post_needs_the_pages_csrf_value_and_its_own_origin(service_env: Any) -> None:
    env, _ = service_env
    with DashboardProcess(env=env) as dashboard:
        url = dashboard.url
        csrf = csrf_of(http(f"{url}/").text)
        assert http(f"{url}/dlq/purge", form={"confirmed": "yes"}).status == 403
        assert http(f"{url}/dlq/purge", form={"confirmed": "yes", "csrf": "guess"}).status == 403
        foreign = http(f"{url}/dlq/purge", form={"confirmed": "yes", "csrf": csrf},
                       headers={"Origin": "http://evil.example"})
        assert foreign.status == 403
        assert http(f"{url}/rpc", form={"name": "x", "csrf": csrf}, headers={"Origin": "null"}).status == 403
        done = http(f"{url}/dlq/purge", form={"confirmed": "yes", "csrf": csrf}, headers={"Origin": url})
        assert (done.status, done.headers["Location"]) == (303, "/?done=purged&count=0#dead-letters")


def test_a_loopback_dashboard_answers_loopback_names_only(service_env: Any) -> None:
    env, _ = service_env
    with DashboardProcess(env=env) as dashboard:
        assert http(f"{dashboard.url}/", headers={"Host": "localhost"}).status == 200
        assert http(f"{dashboard.url}/", headers={"Host": "rebound.evil.example"}).status == 400


def test_it_refuses_to_serve_beyond_loopback_without_a_token() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "otter", "dashboard", "--host", "0.0.0.0", "--port", "0",
         "--broker", "amqp://guest:guest@127.0.0.1:5672/"],
        env=app_env(), cwd=REPO_ROOT, capture_output=True, text=True, timeout=30,
    )
    assert result.returncode == 2
    assert "refusing to serve 0.0.0.0 without a token" in result.stderr
    assert "OTTER_DASHBOARD_TOKEN" in result.stderr


def test_the_broker_password_never_reaches_a_page(service_env: Any) -> None:
    """A broker that cannot be reached makes every part of the page show an error: none names the password."""
    env, _ = service_env
    secret = f"pw-{uuid.uuid4().hex}"
    broker = f"amqp://guest:{secret}@127.0.0.1:9/"  # port 9: nothing listens there
    with DashboardProcess(env={**env, "OTTER_BROKER_URL": broker}) as dashboard:
        url = dashboard.url
        page = http(f"{url}/")
        csrf = csrf_of(page.text)
        answers = [page.text, http(f"{url}/api/services").text, first_event(f"{url}/events"),
                   http(f"{url}/rpc", form={"name": "dash.echo", "body": "1", "csrf": csrf}).text,
                   http(f"{url}/dlq/purge", form={"csrf": csrf}).text]
        assert "amqp://guest:***@127.0.0.1:9/" in page.text
        assert 'id="dlq-error"' in page.text and "BrokerUnavailable" in answers[3]
        for answer in answers:
            assert secret not in answer
        assert secret not in dashboard.output


def test_the_rpc_form_shows_the_reply_or_the_typed_error(service: Service) -> None:
    with DashboardProcess(env=service.env) as dashboard:
        csrf = csrf_of(http(f"{dashboard.url}/").text)

        def call(name: str, body: str) -> str:
            answer = http(f"{dashboard.url}/rpc", form={"name": name, "body": body, "csrf": csrf})
            assert answer.status == 200
            return answer.text

        assert '"echo": {\n    "a": [\n      1' in call("dash.echo", '{"a": [1, "<b>"]}').replace("&#34;", '"')
        assert "&lt;b&gt;" in call("dash.echo", '"<b>"')  # escaped, never markup
        failed = call("dash.fail", '"k"')
        assert "RemoteError KeyError" in failed and "&#39;k&#39;" in failed
        assert "Unroutable" in call(f"nobody.{uuid.uuid4().hex[:8]}", "null")
        assert "the body is not JSON" in call("dash.echo", "otter")


def test_a_dead_letter_is_replayed_only_after_the_confirmation_step(service: Service, amqp_url: str) -> None:
    with Client(amqp_url, **service.names) as client:
        client.task(service.task, {"order": 7}, wait=True)
        client.task(service.task, {"order": 8}, wait=True)
    letters = wait_until(lambda: (found := list_dead_letters(amqp_url, service.names)) and len(found) == 2 and found,
                         what="two dead letters")
    # The worker runs the two at once, so either may have been dead-lettered first.
    [first] = [letter for letter in letters if letter.payload == {"order": 7}]
    [second] = [letter for letter in letters if letter is not first]
    with DashboardProcess(env=service.env) as dashboard:
        url = dashboard.url
        page = http(f"{url}/").text
        assert page.count('class="dead-letter"') == 2 and "handler-error" in page and "not fixed yet" in page
        csrf = csrf_of(page)
        ask = http(f"{url}/dlq/replay", form={"letter": first.correlation_id, "csrf": csrf})
        assert ask.status == 200 and "Replay 1 dead letter(s)" in ask.text and 'id="confirm-yes"' in ask.text
        assert len(list_dead_letters(amqp_url, service.names)) == 2  # asking changed nothing

        service.fixed.touch()
        done = http(f"{url}/dlq/replay", form={"letter": first.correlation_id, "csrf": csrf, "confirmed": "yes"})
        assert (done.status, done.headers["Location"]) == (303, "/?done=replayed&count=1#dead-letters")
        service.process.wait_for("task done: {'order': 7}")
        [left] = list_dead_letters(amqp_url, service.names)
        assert left.correlation_id == second.correlation_id
        assert "replayed 1 dead letter(s)" in http(f"{url}{done.headers['Location']}").text


def test_api_services_counts_every_replica_and_drops_a_stopped_one(service: Service, amqp_url: str) -> None:
    """Two replicas of one service: both listed, the calls they shared summed, a rate once two rounds saw them, and
    the one stopped gone from the next rounds."""
    with AppProcess("-m", "otter", "run", SERVICE_APP, env=service.env) as second:
        second.wait_for(READY, timeout=60)
        with DashboardProcess(env=service.env) as dashboard:

            def ours() -> dict[str, Any] | None:
                answer = http(f"{dashboard.url}/api/services")
                assert answer.status == 200 and answer.headers["Content-Type"] == "application/json"
                found = [s for s in json.loads(answer.text)["services"] if s["name"] == service.name]
                return found[0] if found else None

            assert wait_until(lambda: (found := ours()) and len(found["replicas"]) == 2, what="both replicas")
            with Client(amqp_url, **service.names) as client:
                for n in range(6):
                    client.rpc("dash.echo", n).result()

            def echo_route() -> dict[str, Any] | None:
                found = ours()
                routes = [r for r in (found or {}).get("routes", []) if r["name"] == "dash.echo"]
                return routes[0] if routes and routes[0]["handled"] == 6 and routes[0]["rate"] is not None else None

            route = wait_until(echo_route, what="6 calls counted, with a rate")
            assert (route["kind"], route["replicas"], route["errors"]) == ("rpc", 2, 0)
            assert route["p99_ms"] is not None and route["p50_ms"] <= route["p99_ms"]
            assert second.stop() == 0
            wait_until(lambda: (found := ours()) and len(found["replicas"]) == 1, what="the stopped replica gone")


def test_a_port_in_use_exits_1_and_no_broker_exits_2(service_env: Any) -> None:
    env, _ = service_env
    with DashboardProcess(env=env) as running:
        port = running.url.rsplit(":", 1)[1]
        taken = subprocess.run([sys.executable, "-m", "otter", "dashboard", "--port", port], env=app_env(env),
                               cwd=REPO_ROOT, capture_output=True, text=True, timeout=30)
    assert taken.returncode == 1 and f"cannot listen on 127.0.0.1:{port}" in taken.stderr
    no_broker = subprocess.run([sys.executable, "-m", "otter", "dashboard"], env=app_env(), cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=30)
    assert no_broker.returncode == 2 and "no broker given" in no_broker.stderr


def _connections_named(name: str) -> int:
    """How many connections the shared broker has whose ``connection_name`` is ``name``."""
    listed = subprocess.run(["rabbitmqctl", "list_connections", "client_properties", "--quiet", "--formatter", "json"],
                            capture_output=True, text=True, timeout=60, check=True)
    return sum(1 for row in json.loads(listed.stdout)
               if any(key == "connection_name" and value == name for key, _type, value in row["client_properties"]))


def test_discovery_rounds_share_one_broker_connection(service: Service) -> None:
    """Each refresh runs a discovery round; the rounds reuse one connection rather than opening one a second."""
    if shutil.which("rabbitmqctl") is None or "127.0.0.1" not in service.env["OTTER_BROKER_URL"]:
        pytest.skip("counts connections with rabbitmqctl on the shared broker of this machine")
    name = f"dash-rounds-{uuid.uuid4().hex[:8]}"
    env = {**service.env, "OTTER_BROKER_URL": f"{service.env['OTTER_BROKER_URL'].split('?')[0]}?name={name}"}
    with DashboardProcess(env=env) as dashboard:
        rounds: set[float] = set()

        def three_rounds() -> bool:
            answer = json.loads(http(f"{dashboard.url}/api/services").text)
            assert answer["error"] is None, answer["error"]
            rounds.add(answer["taken_at"])
            return len(rounds) >= 3

        wait_until(three_rounds, timeout=30, what="three discovery rounds", interval=0.2)
        assert _connections_named(name) == 1
