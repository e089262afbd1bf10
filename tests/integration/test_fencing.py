"""Fencing: a second process named kv-0 never serves stale strong reads or loses acknowledged writes.

A StatefulSet promises one pod per name only while nodes are healthy: a
force-deleted kv-0 may keep running behind a partition while its replacement
starts, and an operator may start a copy of kv-0's volume by hand. Each test
builds that by hand with real processes and a DNS server the test controls
(see dns_cluster.py): the *claimant* is a second ``kvstore serve`` with
``POD_NAME=kv-0`` on a consistent copy of kv-0's volume at its own address.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

from dns_cluster import Cluster, assert_all_readable, start_all, write_many
from local_cluster import http, wait_for


def copy_volume(c: Cluster, ordinal: int, to: Path) -> Path:
    """A consistent copy of kv-N's data dir, taken while the process is stopped (SIGSTOP)."""
    pid = c.pods[ordinal].proc.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        shutil.copytree(c.data_dir(ordinal), to)
    finally:
        os.kill(pid, signal.SIGCONT)
    return to


def answer(url: str, method: str = "GET", body: bytes | None = None) -> tuple[int, str]:
    """(HTTP status, error code or "") of one request."""
    status, _, raw = http(method, url, body, timeout=10)
    try:
        return status, json.loads(raw).get("error", "") if status >= 400 else ""
    except ValueError:
        return status, ""


def status_of(url: str) -> dict:
    try:
        return json.loads(http("GET", url + "/v1/status", timeout=5)[2])
    except OSError:
        return {}


def test_a_second_kv0_that_dns_does_not_list_never_serves(workdir: Path) -> None:
    """A copy of kv-0's volume started by hand: the followers refuse it, the real kv-0 goes on."""
    with Cluster(workdir, 51) as c:
        start_all(c)
        before = write_many(c, "before", 10)
        claimant = c.start_claimant(0, "127.0.51.50", copy_volume(c, 0, workdir / "copy"))
        after = write_many(c, "after", 10)

        def asked_its_followers() -> object:
            status = status_of(claimant.url)
            return status.get("writable") or (status.get("recovery") or {}).get("unheard")
        wait_for("the claimant to have asked its followers", asked_its_followers, 30)
        for method, suffix in (("GET", "?consistency=strong"), ("PUT", "?w=1"), ("PUT", "?w=majority")):
            code = answer(f"{claimant.url}/v1/kv/after/0{suffix}", method, b"zombie" if method == "PUT" else None)
            assert code[0] == 503 and code[1] in ("recovering", "not_primary"), (method, suffix, code)
        status = status_of(claimant.url)
        assert status["state"] == "recovering"
        assert "not recovering with epoch" in json.dumps(status["recovery"]["unheard"])  # why, per follower
        assert status_of(c.url(0))["state"] == "primary"
        acknowledged = before | after | write_many(c, "later", 5)
        assert_all_readable(c, 0, acknowledged, strong=True)
        assert c.get(0, "after/0", strong=True) == (200, b"after-0")  # the claimant's PUTs never landed


def test_a_replaced_kv0_stops_serving_and_rejoins_without_losing_writes(workdir: Path) -> None:
    """kv-0 is replaced (DNS lists a new process) while the old one runs on, then DNS lists it again."""
    with Cluster(workdir, 52) as c:
        start_all(c)
        before = write_many(c, "before", 10)
        old = c.url(0)
        new_host = "127.0.52.50"
        new_url = f"http://{new_host}:8080"
        c.start_claimant(0, new_host, copy_volume(c, 0, workdir / "copy"), wait=False)
        c.list_at(0, new_host)  # the replacement pod took kv-0's name
        wait_for("the replacement to take writes", lambda: status_of(new_url).get("writable"), 30)
        status, _, body = http("PUT", f"{new_url}/v1/kv/moved?w=majority", b"new")
        assert status == 200, body
        # The old process still runs and still gets requests from clients that knew its address.
        code = answer(f"{old}/v1/kv/moved?consistency=strong")
        assert code == (503, "not_primary"), code  # never the stale 404
        assert answer(f"{old}/v1/kv/moved?w=majority", "PUT", b"old")[0] in (503, 504)
        wait_for("the old kv-0 to find it was replaced",
                 lambda: (status_of(old).get("fencing") or {}).get("fenced"), 30)
        assert "promised epoch" in status_of(old)["fencing"]["fenced"]
        for method, suffix in (("GET", "?consistency=strong"), ("PUT", "?w=1")):
            code = answer(f"{old}/v1/kv/moved{suffix}", method, b"old" if method == "PUT" else None)
            assert code[0] == 503 and code[1] in ("recovering", "not_primary"), (method, suffix, code)
        assert answer(f"{new_url}/v1/kv/moved?consistency=strong") == (200, "")

        # DNS lists the old process again (the replacement's node went away): it recovers from
        # the followers, with everything the replacement acknowledged; the replacement is fenced.
        c.list_at(0, None)
        c.wait_writable()
        assert c.get(0, "moved", strong=True) == (200, b"new")
        assert_all_readable(c, 0, before, strong=True)
        wait_for("the replacement to stop answering strong reads",
                 lambda: answer(f"{new_url}/v1/kv/moved?consistency=strong")[0] == 503, 30)
        assert c.put(0, "back", b"home")[0] == 200
