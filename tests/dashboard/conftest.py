"""Fixtures of the dashboard tests: a service process on the shared broker, with the test's own names."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from conftest import unique_names
from helpers_process import READY, AppProcess
from rawbroker import RawBroker

from .browser import browser_fixture, save_screenshot
from .helpers import SERVICE_APP, DashboardProcess


@dataclass
class Service:
    """The service process, and the environment that reaches it and points a dashboard at the same exchanges."""

    process: AppProcess
    env: dict[str, str]
    names: dict[str, Any]

    @property
    def name(self) -> str:
        return self.env["DASHBOARD_SERVICE"]

    @property
    def task(self) -> str:
        return self.env["DASHBOARD_TASK"]

    @property
    def fixed(self) -> Path:
        """The file whose presence makes the service's task succeed."""
        return Path(self.env["DASHBOARD_FIXED"])


@pytest.fixture
def service_env(amqp_url: str, tmp_path: Path) -> Iterator[tuple[dict[str, str], dict[str, Any]]]:
    """The environment of a service and its dashboard (``OTTER_*`` names, the service's and its task's names),
    and the config names in it; the task queue is deleted afterwards."""
    names = unique_names("dash")
    tag = uuid.uuid4().hex[:10]
    task, service_name = f"dash-{tag}.work", f"dash-service-{tag}"
    env = {f"OTTER_{key}": str(value) for key, value in names.items()}
    env.update(OTTER_BROKER_URL=amqp_url, DASHBOARD_TASK=task, DASHBOARD_SERVICE=service_name,
               DASHBOARD_FIXED=str(tmp_path / "fixed"))
    yield env, names
    with RawBroker.open(amqp_url, names) as raw:
        raw.delete(task)


@pytest.fixture
def service(service_env: tuple[dict[str, str], dict[str, Any]]) -> Iterator[Service]:
    env, names = service_env
    with AppProcess("-m", "otter", "run", SERVICE_APP, env=env) as process:
        process.wait_for(READY, timeout=60)  # generous: a loaded machine starts a Python process slowly
        yield Service(process, env, names)


@pytest.fixture
def browser(request: pytest.FixtureRequest) -> Iterator[Any]:
    yield from browser_fixture(request)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    yield
    save_screenshot(item)


@pytest.fixture
def start_dashboard() -> Iterator[Callable[..., DashboardProcess]]:
    """``start_dashboard(env, *options)``: an ``otter dashboard`` process, stopped when the test is over (after its
    screenshot)."""
    started: list[DashboardProcess] = []

    def start(env: dict[str, str], *options: str) -> DashboardProcess:
        process = DashboardProcess(*options, env=env).start()
        started.append(process)
        return process

    yield start
    for process in started:
        process.kill()
