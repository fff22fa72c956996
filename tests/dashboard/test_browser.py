"""The dashboard in a real headless Chromium, against a real ``otter run`` worker on the shared RabbitMQ: a service
appears, its counters move after calls, the RPC form answers, a dead letter is replayed after the confirmation
page, and without the token there is only the login page. Conditions on the page are waited for
(``WebDriverWait``), never slept for. Screenshots: ``artifacts/dashboard/`` (see ``browser.py``)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as shown
from selenium.webdriver.support.ui import WebDriverWait

from helpers_process import wait_until
from otter import Client
from otter.dlq import list_dead_letters

from .conftest import Service
from .helpers import DashboardProcess

pytestmark = pytest.mark.amqp
Start = Callable[..., DashboardProcess]
WAIT = 20  # seconds: generous for a loaded 2-core machine; a page that is right returns at once


def text_of(driver: Any, css: str) -> str:
    """The text of the first element ``css`` finds, read in one step in the page: the live section is replaced
    every second, and an element found first and read after could be gone by then (a stale reference)."""
    text = driver.execute_script("const e = document.querySelector(arguments[0]); return e ? e.innerText : '';", css)
    return str(text).strip()


def test_a_service_appears_and_its_counters_move_after_calls(
    browser: Any, service: Service, amqp_url: str, start_dashboard: Start
) -> None:
    browser.get(start_dashboard(service.env).url)
    article = f'article.service[data-service="{service.name}"]'
    WebDriverWait(browser, WAIT).until(shown.presence_of_element_located((By.CSS_SELECTOR, article)))
    assert text_of(browser, f"{article} .replica-count") == "1"
    handled = f'{article} tr[data-route="rpc:dash.echo"] td.handled'
    assert text_of(browser, handled) == "0"
    with Client(amqp_url, **service.names) as client:
        for n in range(5):
            assert client.rpc("dash.echo", n).result() == {"echo": n}
    WebDriverWait(browser, WAIT).until(lambda driver: text_of(driver, handled) == "5")
    rate = f'{article} tr[data-route="rpc:dash.echo"] td.rate'
    WebDriverWait(browser, WAIT).until(lambda driver: text_of(driver, rate).endswith("/s"))
    assert int(browser.find_element(By.ID, "services").get_attribute("data-updates")) >= 1  # it moved live


def test_the_rpc_form_shows_the_reply_and_the_typed_error(
    browser: Any, service: Service, start_dashboard: Start
) -> None:
    browser.get(start_dashboard(service.env).url)
    for name, body, expected in (("dash.echo", '{"n": 42}', '"n": 42'), ("dash.fail", '"k"', "RemoteError KeyError")):
        name_field = WebDriverWait(browser, WAIT).until(shown.presence_of_element_located((By.ID, "rpc-name")))
        name_field.clear()
        name_field.send_keys(name)
        body_field = browser.find_element(By.ID, "rpc-body")
        body_field.clear()
        body_field.send_keys(body)
        browser.find_element(By.ID, "rpc-submit").click()
        WebDriverWait(browser, WAIT).until(lambda driver, e=expected: e in text_of(driver, "#rpc-result"))
    assert text_of(browser, "#rpc-result .error-message") == "'k'"


def test_a_dead_letter_is_replayed_after_the_confirmation_page(
    browser: Any, service: Service, amqp_url: str, start_dashboard: Start
) -> None:
    with Client(amqp_url, **service.names) as client:
        client.task(service.task, {"order": 1}, wait=True)
    wait_until(lambda: list_dead_letters(amqp_url, service.names), what="a dead letter")
    browser.get(start_dashboard(service.env).url)
    WebDriverWait(browser, WAIT).until(shown.element_to_be_clickable((By.CSS_SELECTOR, "button.replay-one")))
    assert text_of(browser, "tr.dead-letter td.reason") == "handler-error"
    browser.find_element(By.CSS_SELECTOR, "button.replay-one").click()
    WebDriverWait(browser, WAIT).until(shown.element_to_be_clickable((By.ID, "confirm-yes")))
    assert "Replay 1 dead letter(s)" in text_of(browser, "#confirm h2")
    assert len(list_dead_letters(amqp_url, service.names)) == 1  # the question alone changed nothing

    service.fixed.touch()
    browser.find_element(By.ID, "confirm-yes").click()
    WebDriverWait(browser, WAIT).until(lambda driver: "replayed 1 dead letter(s)" in text_of(driver, "#notice"))
    service.process.wait_for("task done: {'order': 1}")
    assert list_dead_letters(amqp_url, service.names) == []
    assert browser.find_elements(By.ID, "no-dead-letters")


def test_without_the_token_there_is_only_the_login_page(
    browser: Any, service: Service, start_dashboard: Start
) -> None:
    token = f"t-{uuid.uuid4().hex}"
    url = start_dashboard({**service.env, "OTTER_DASHBOARD_TOKEN": token}).url
    browser.get(url)
    WebDriverWait(browser, WAIT).until(shown.presence_of_element_located((By.ID, "token")))
    assert browser.current_url == f"{url}/login"
    assert not browser.find_elements(By.ID, "services")
    browser.find_element(By.ID, "token").send_keys("not-the-token")
    browser.find_element(By.ID, "login").click()
    WebDriverWait(browser, WAIT).until(shown.presence_of_element_located((By.ID, "login-error")))
    browser.get(f"{url}/api/services")  # a browser asks for HTML: it is sent to log in
    WebDriverWait(browser, WAIT).until(shown.url_to_be(f"{url}/login"))
    assert "services" not in browser.page_source

    WebDriverWait(browser, WAIT).until(shown.presence_of_element_located((By.ID, "token"))).send_keys(token)
    browser.find_element(By.ID, "login").click()
    WebDriverWait(browser, WAIT).until(shown.presence_of_element_located((By.ID, "rpc-form")))
    assert browser.current_url == f"{url}/"
