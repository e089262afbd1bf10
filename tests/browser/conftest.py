"""A real headless browser for the dashboard tests: Debian's chromium driven by Selenium.

Installed with apt-get when the tests run as root and it is missing; skipped
otherwise, with one line saying how to install it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from typing import Any, Iterator

import pytest

PACKAGES = ("chromium", "chromium-driver")
HOW = "the dashboard tests need a browser: sudo apt-get install chromium chromium-driver"


def _binaries() -> tuple[str | None, str | None]:
    return shutil.which("chromium"), shutil.which("chromedriver")


def ensure_chromium() -> tuple[str, str]:
    """Paths to chromium and chromedriver, installing Debian's packages when root; else skip."""
    browser, driver = _binaries()
    if (browser is None or driver is None) and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        try:
            subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, timeout=600)
            subprocess.run(["apt-get", "install", "-y", "-qq", *PACKAGES],
                           env=env, capture_output=True, timeout=900)
        except subprocess.TimeoutExpired:
            pass
        browser, driver = _binaries()
    if browser is None or driver is None:
        pytest.skip(HOW)
    return browser, driver


@pytest.fixture(scope="session")
def chrome() -> Iterator[Any]:
    """One headless chromium for the session (a few seconds to start on a busy machine)."""
    browser, driver_path = ensure_chromium()
    webdriver = pytest.importorskip("selenium.webdriver",
                                    reason="selenium is in the test extra: pip install -e .[test]")
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
