"""The dashboard in a real headless chromium, against a real local StatefulSet.

One cluster and one browser for the module (about a minute in all): the page
loads clean, shows the pods with their roles, follows a kill of kv-0 live,
writes through the key browser, and renders a hostile key as text.

``KV_SCREENSHOT_DIR=docs ./kv test tests/browser`` also saves the screenshots
the README shows (taken while kv-0 is down, and once it is back).
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from local_cluster import LocalCluster, http, wait_for

BASE = "127.0.80.10"
DNS = "127.0.80.2"
HOSTILE = "<img src=x onerror=alert(1)>"

ROWS_JS = """
return Array.from(document.querySelectorAll('#pods tbody tr')).map(tr => ({
  pod: tr.dataset.pod, role: tr.querySelector('.role').textContent,
  state: tr.querySelector('.status').dataset.state, restarts: tr.querySelector('.restarts').textContent,
  ready: tr.querySelector('.ready').textContent}));
"""


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    c = LocalCluster(BASE, DNS).up()
    try:
        yield c
    finally:
        c.down()


@pytest.fixture(scope="module")
def page(chrome: Any, cluster: LocalCluster) -> Any:
    """The dashboard as served by kv-1 (a secondary: kv-0 gets killed), opened through ``/``."""
    chrome.get(cluster.url("kv-1") + "/")
    wait_for("three pods on the page", lambda: len(rows(chrome)) == 3, 20)
    chrome.execute_script("window.kvSamePage = 'yes';")  # gone if the page ever reloads
    return chrome


def rows(driver: Any) -> dict[str, dict[str, str]]:
    return {row["pod"]: row for row in driver.execute_script(ROWS_JS)}


def console_errors(driver: Any) -> list[str]:
    """Console entries at error level since the last call (CSP violations are errors too)."""
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


@contextlib.contextmanager
def traffic(cluster: LocalCluster) -> Iterator[None]:
    """Writes and reads in the background while screenshots are taken, so the sparklines move.

    Only with KV_SCREENSHOT_DIR: the tests themselves do not need it. Bounded in count and time.
    """
    if not os.environ.get("KV_SCREENSHOT_DIR"):
        yield
        return
    stop = threading.Event()
    urls = [cluster.url(name) for name in ("kv-1", "kv-2")]

    def run() -> None:
        deadline = time.monotonic() + 60
        for i in range(20000):
            if stop.is_set() or time.monotonic() > deadline:
                return
            try:
                http("PUT", f"{urls[i % 2]}/v1/kv/load/{i % 50}", body=str(i).encode(), timeout=2)
                http("GET", f"{urls[i % 2]}/v1/kv/load/{i % 50}", timeout=2)
            except OSError:
                time.sleep(0.1)  # kv-0 down: writes fail fast with 503, connection errors back off
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        time.sleep(4)  # a few samples before the kill
        yield
    finally:
        stop.set()
        thread.join(10)


def screenshot(driver: Any, name: str) -> None:
    directory = os.environ.get("KV_SCREENSHOT_DIR")
    if directory:
        Path(directory).mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(Path(directory) / name))


def answer(driver: Any) -> dict[str, str]:
    """The key browser's answer panel as {label: value}."""
    return driver.execute_script("""
      const out = {}; const dl = document.getElementById('answer');
      dl.querySelectorAll('dt').forEach(dt => { out[dt.textContent] = dt.nextElementSibling.textContent; });
      return out;""")


def browser_write(driver: Any, key: str, value: str, w: str = "majority") -> dict[str, str]:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    for field, text in (("key", key), ("value", value)):
        element = driver.find_element(By.ID, field)
        element.clear()
        element.send_keys(text)
    Select(driver.find_element(By.ID, "w")).select_by_value(w)
    driver.execute_script("document.getElementById('answer').replaceChildren();")
    driver.find_element(By.ID, "put").click()
    return wait_for("the PUT's answer", lambda: answer(driver).get("status") and answer(driver), 15)


def test_page_loads_with_the_pods_and_their_roles(page: Any) -> None:
    wait_for("every pod Ready", lambda: all(r["state"] == "Ready" for r in rows(page).values()), 20)
    found = rows(page)
    assert {name: row["role"] for name, row in found.items()} == {
        "kv-0": "primary", "kv-1": "secondary", "kv-2": "secondary"}
    assert all(row["ready"] == "1/1" and row["restarts"] == "0" for row in found.values())
    served_by = page.execute_script("return document.getElementById('served-by').textContent")
    assert served_by == "served by kv-1 (secondary)"
    assert console_errors(page) == []


def test_ui_answers_carry_a_policy_forbidding_inline_script(cluster: LocalCluster) -> None:
    for path in ("/ui/", "/ui/app.js", "/ui/style.css"):
        status, headers, body = http("GET", cluster.url("kv-2") + path)
        assert status == 200, body
        policy = headers["Content-Security-Policy"]
        assert "script-src 'self'" in policy and "unsafe-inline" not in policy
    status, _, body = http("GET", cluster.url("kv-2") + "/ui/")
    assert b"<script src=" in body and b"<script>" not in body


def test_a_key_put_in_the_browser_is_readable_on_another_pod(page: Any, cluster: LocalCluster) -> None:
    shown = browser_write(page, "dash/greeting", "hello from the browser", w="all")
    assert shown["status"].startswith("200"), shown
    assert shown["answered by"].startswith("kv-0"), shown  # kv-1 forwarded the write to the primary
    assert int(shown["X-Kv-Lsn"]) >= 1
    status, headers, body = http("GET", cluster.url("kv-2") + "/v1/kv/dash/greeting")
    assert (status, body) == (200, b"hello from the browser")
    assert shown["version (ETag)"] == headers["ETag"]
    assert console_errors(page) == []


def test_a_hostile_key_shows_as_text_and_runs_nothing(page: Any, cluster: LocalCluster) -> None:
    from selenium.common.exceptions import NoAlertPresentException
    from selenium.webdriver.common.by import By

    shown = browser_write(page, HOSTILE, HOSTILE)
    assert shown["status"].startswith("200"), shown
    prefix = page.find_element(By.ID, "prefix")
    prefix.clear()
    prefix.send_keys("<img")
    page.find_element(By.ID, "list").click()
    listed = wait_for("the key in the list", lambda: page.execute_script(
        "return Array.from(document.querySelectorAll('#keylist button')).map(b => b.textContent)"), 10)
    assert listed == [HOSTILE]
    page.find_element(By.CSS_SELECTOR, "#keylist button").click()
    wait_for("the value read back", lambda: page.find_element(By.ID, "value").get_property("value") == HOSTILE, 10)
    assert page.find_elements(By.TAG_NAME, "img") == []  # the markup never became an element
    with pytest.raises(NoAlertPresentException):
        page.switch_to.alert.text
    assert console_errors(page) == []  # an inline handler blocked by the CSP would be logged here
    status, _, body = http("GET", cluster.url("kv-0") + "/v1/kv/%3Cimg%20src%3Dx%20onerror%3Dalert(1)%3E")
    assert (status, body) == (200, HOSTILE.encode())


def test_the_key_browser_follows_a_prefix_live(page: Any, cluster: LocalCluster) -> None:
    from selenium.webdriver.common.by import By

    prefix = page.find_element(By.ID, "prefix")
    prefix.clear()
    prefix.send_keys("live/")
    page.find_element(By.ID, "follow").click()  # lists the prefix, then watches it from that listing on
    listed = "return Array.from(document.querySelectorAll('#keylist button')).map(b => b.textContent)"
    wait_for("the empty listing", lambda: page.execute_script(listed) == [], 10)
    wait_for("the watch to start", lambda: page.find_element(By.ID, "following").text == "following…", 10)
    for name in ("a", "b"):  # written through another pod, never through the page
        assert http("PUT", cluster.url("kv-2") + f"/v1/kv/live/{name}", b"x")[0] == 200
    wait_for("both keys to appear without a click", lambda: page.execute_script(listed) == ["live/a", "live/b"], 10)
    assert http("DELETE", cluster.url("kv-0") + "/v1/kv/live/a")[0] == 200
    wait_for("the delete to show", lambda: page.execute_script(listed) == ["live/b"], 10)
    assert page.find_element(By.ID, "following").text.startswith("live: v") and " delete live/a" in \
        page.find_element(By.ID, "following").text
    page.find_element(By.ID, "follow").click()
    assert page.find_element(By.ID, "following").text == ""
    assert page.find_element(By.ID, "live").text.startswith("live")  # the cluster feed's indicator, untouched
    assert console_errors(page) == []


def test_a_killed_primary_shows_down_then_back_without_a_reload(page: Any, cluster: LocalCluster) -> None:
    old_pid = cluster.pid("kv-0")
    with traffic(cluster):
        cluster.kill("kv-0")
        wait_for("kv-0 shown down", lambda: rows(page)["kv-0"]["state"] == "Down", 15, interval=0.05)
        screenshot(page, "dashboard-kill.png")
        shown = browser_write(page, "dash/during-kill", "x")  # through kv-1, which forwards to kv-0
        # kv-0 may already be back (200); while it is not, the page shows the 503 and when to retry.
        assert shown["status"].startswith(("503", "200")), shown
        if shown["status"].startswith("503"):
            assert shown["Retry-After"] == "1 s" and '"error"' in shown["body"], shown
        # chromium logs an answer of 503 as an error; that one is expected, nothing else is.
        assert [e for e in console_errors(page) if "status of 503" not in e] == []
        cluster.wait_restarted("kv-0", old_pid)
        wait_for("kv-0 shown back with one restart",
                 lambda: rows(page)["kv-0"]["state"] == "Ready" and rows(page)["kv-0"]["restarts"] == "1", 20)
    assert page.execute_script("return window.kvSamePage") == "yes"
    assert cluster.pods()["kv-0"]["restarts"] == 1  # the controller agrees with the page


def test_the_timeline_shows_the_kill(page: Any, cluster: LocalCluster) -> None:
    def kinds() -> list[tuple[str, str, str]]:
        return [tuple(item) for item in page.execute_script(
            "return Array.from(document.querySelectorAll('#events li'))"
            ".map(li => [li.dataset.pod, li.dataset.kind, li.querySelector('.message').textContent])")]

    def seen() -> bool:
        found = kinds()
        return (any(pod == "kv-1" and kind == "down" and "kv-0" in text for pod, kind, text in found)
                and any(pod == "kv-0" and kind == "restarted" for pod, kind, _ in found))
    wait_for("the kill in the timeline", seen, 15)
    status, _, body = http("GET", cluster.url("kv-1") + "/v1/cluster")
    merged = [(e["pod"], e["seq"], e["time"]) for e in json.loads(body)["events"]]
    assert status == 200 and len(merged) == len(set(merged))  # each pod's events merged once
    time.sleep(1.5)  # a screenshot with the back-online view and its events
    screenshot(page, "dashboard.png")
    assert console_errors(page) == []
