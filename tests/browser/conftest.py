"""A real headless browser for the dashboard tests: Debian's chromium driven by Selenium.

Installed with apt-get when the tests run as root and it is missing; skipped
otherwise, with one line saying how to install it (a failure in CI: tests/needs.py).
"""

from __future__ import annotations

import shutil
from typing import Any, Iterator

import pytest

import needs

PACKAGES = ("chromium", "chromium-driver")
HOW = "the dashboard tests need a browser: sudo apt-get install chromium chromium-driver"


def _binaries() -> tuple[str | None, str | None]:
    return shutil.which("chromium"), shutil.which("chromedriver")


def ensure_chromium() -> tuple[str, str]:
    """Paths to chromium and chromedriver, installing Debian's packages when root; else a skip (CI: a failure)."""
    browser, driver = _binaries()
    why = None
    if browser is None or driver is None:
        why = needs.apt_install(*PACKAGES)
        browser, driver = _binaries()
    if browser is None or driver is None:
        needs.missing(f"{HOW} ({why or 'apt-get did not provide them'})")
    return browser, driver


@pytest.fixture(scope="session")
def chrome() -> Iterator[Any]:
    """One headless chromium for the session (a few seconds to start on a busy machine)."""
    browser, driver_path = ensure_chromium()
    try:
        from selenium import webdriver
    except ImportError:
        needs.missing("selenium is in the test extra: pip install -e .[test]")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1500,1100", "--no-first-run", "--disable-extensions"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # An explicit driver path: Selenium Manager would otherwise try to download one.
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
