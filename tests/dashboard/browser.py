"""A real headless browser for the dashboard tests: Debian's ``chromium`` driven through its ``chromium-driver``
by selenium (nothing is downloaded: selenium is pointed at both binaries).

When either is missing the tests skip saying so, or fail under ``OTTER_TEST_REQUIRE_BROWSER=1``, which
``scripts/test`` sets after installing both with apt-get where it can. Every test's last page is kept as a
screenshot under ``artifacts/dashboard/`` (``OTTER_TEST_ARTIFACTS`` moves it), taken as the test's body ends, pass
or fail, while the processes it started (fixtures) still run.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from helpers_process import REPO_ROOT

REQUIRE_ENV = "OTTER_TEST_REQUIRE_BROWSER"
BROWSERS = ("chromium", "chromium-browser")
DRIVER = "chromedriver"
ARTIFACTS = Path(os.environ.get("OTTER_TEST_ARTIFACTS", REPO_ROOT / "artifacts")) / "dashboard"


def _missing(reason: str) -> None:
    message = f"{reason}: apt-get install chromium chromium-driver (scripts/test does it where it can)"
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{message}; {REQUIRE_ENV}=1 makes this a failure")
    pytest.skip(message)


def browser_fixture(request: pytest.FixtureRequest) -> Iterator[Any]:
    """A headless Chromium (selenium ``WebDriver``), closed after the test and its screenshot."""
    binary = next((found for name in BROWSERS if (found := shutil.which(name))), None)
    driver_path = shutil.which(DRIVER)
    if binary is None or driver_path is None:
        _missing(f"no {'chromium' if binary is None else 'chromedriver'} on PATH")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        _missing("selenium is not installed (it is in otter-mq[test])")
    options = webdriver.ChromeOptions()
    options.binary_location = str(binary)
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--window-size=1280,900", "--lang=en-GB"):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=str(driver_path)))
    try:
        yield driver
    finally:
        driver.quit()


def save_screenshot(item: pytest.Item) -> None:
    """The page the test's browser shows now, as ``artifacts/dashboard/<test>.png``."""
    driver = getattr(item, "funcargs", {}).get("browser")
    if driver is not None:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(ARTIFACTS / f"{item.name}.png"))
