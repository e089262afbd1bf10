"""Each write concern fails as it should, so a concern that quietly became ``w=1`` is caught.

With both followers stopped, only ``w=1`` may succeed: ``w=majority`` (also
the default) and ``w=all`` answer 504 with a body that says what happened;
once kv-0 has heard no majority for the contact window, every write is refused
(503 ``not_primary``). A replica alone, whose DNS lists only itself, still
counts ``KV_REPLICAS`` replicas: pods missing from DNS never lower the count.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import subprocess
import sys
import urllib.parse
from pathlib import Path
from typing import Iterator

import pytest

from dns_thread import DnsThread
from local_cluster import LocalCluster, http, wait_for
from replica_process import ReplicaProcess

BASE = "127.0.61"        # the 3-pod cluster
ALONE = "127.0.62"       # the lone replica and its DNS server


def put(url: str, key: str, value: bytes, w: str | None) -> tuple[int, dict[str, str], dict]:
    query = f"?w={w}" if w else ""
    status, headers, body = http("PUT", f"{url}/v1/kv/{urllib.parse.quote(key, safe='')}{query}", value)
    return status, headers, json.loads(body) if body else {}


def lsn_of(url: str) -> int:
    """The replica's durable LSN, from its status."""
    return json.loads(http("GET", f"{url}/v1/status")[2])["lsn"]


def assert_honest_504(status: int, headers: dict[str, str], body: dict, confirmed: int, required: int) -> None:
    """A 504 that says the write is durable on the primary, with its version and the counts."""
    assert status == 504, (status, body)
    assert body["error"] == "write_concern_timeout", body
    assert "durable on the primary" in body["message"], body
    assert (body["confirmed"], body["required"]) == (confirmed, required), body
    assert isinstance(body["version"], int) and headers["ETag"] == f'"{body["version"]}"', (headers, body)


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    c = LocalCluster(f"{BASE}.10", f"{BASE}.2", replicas=3, env={"KV_WRITE_TIMEOUT": "1"})
    c.up()
    try:
        yield c
    finally:
        c.down()


def test_with_both_followers_stopped_only_w1_succeeds_until_kv0_is_cut_off(cluster: LocalCluster) -> None:
    kv0 = cluster.url("kv-0")
    assert put(kv0, "wc/before", b"x", "all")[0] == 200   # every follower is caught up and acking
    held = lsn_of(kv0)  # what both followers hold
    paused = [cluster.pause("kv-1"), cluster.pause("kv-2")]
    try:
        # All sent while kv-0 last heard its majority a moment ago (each 504 takes the write timeout,
        # one after another they would outlast the contact window), in a fixed order: each is sent
        # once the one before has its LSN. The first lands right after what the followers hold,
        # where a count off by one would wrongly take them as holding it.
        writes = [("majority", "wc/majority", b"m", "majority"), ("default", "wc/default", b"d", None),
                  ("all", "wc/all", b"a", "all"), ("one", "wc/one", b"1", "1")]
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            pending = {}
            for lsn, (name, *args) in enumerate(writes, start=held + 1):
                pending[name] = pool.submit(put, kv0, *args)
                wait_for(f"the {name} write to get LSN {lsn}", lambda lsn=lsn: lsn_of(kv0) >= lsn, 5, 0.01)
            answers = {name: future.result() for name, future in pending.items()}
        assert_honest_504(*answers["majority"], confirmed=1, required=2)
        assert_honest_504(*answers["default"], confirmed=1, required=2)  # KV_WRITE_CONCERN: majority
        assert_honest_504(*answers["all"], confirmed=1, required=3)
        assert answers["one"][0] == 200, answers["one"]
        versions = [answers[name][2].get("version") for name in ("majority", "default", "all", "one")]
        assert versions == [held + 1, held + 2, held + 3, held + 4], versions
        # Not rolled back: durable on the primary, readable there at the version the 504 named.
        for key, value in (("wc/majority", b"m"), ("wc/all", b"a"), ("wc/one", b"1")):
            s, h, got = http("GET", f"{kv0}/v1/kv/{urllib.parse.quote(key, safe='')}")
            assert (s, got) == (200, value), key
        # Cut off from every follower for longer than the contact window, kv-0 may have been
        # replaced: it takes no write at all, and says so before applying anything.
        wait_for("kv-0 to refuse writes", lambda: put(kv0, "wc/probe", b"p", "1")[0] == 503, 15)
        status, headers, body = put(kv0, "wc/late", b"l", "1")
        assert (status, body["error"]) == (503, "not_primary") and headers["Retry-After"] == "1", body
        assert "has not heard from a majority" in body["message"], body
    finally:
        for pid in paused:
            cluster.resume(pid)
    # Once they run again, the followers get every one of those writes.
    lsn = json.loads(http("GET", f"{kv0}/v1/status")[2])["lsn"]
    for pod in ("kv-1", "kv-2"):
        status, _, got = http("GET", f"{cluster.url(pod)}/v1/kv/wc%2Fall?min_lsn={lsn}")
        assert (status, got) == (200, b"a"), pod
    wait_for("kv-0 to take writes again", lambda: put(kv0, "wc/after", b"x", "all")[0] == 200, 15)
    assert http("GET", f"{kv0}/v1/kv/wc%2Flate?consistency=strong")[0] == 404  # refused means not applied


@pytest.mark.parametrize("replicas, majority_status", [("3", 503), ("1", 200)])
def test_pods_missing_from_dns_do_not_lower_the_count(tmp_path: Path, replicas: str,
                                                      majority_status: int) -> None:
    # kv-0 alone; DNS answers and lists kv-0 only (kv-1, kv-2 do not exist yet, or were deleted).
    with DnsThread(f"{ALONE}.2", {"kv-0": f"{ALONE}.10"}) as dns_server:
        replica = ReplicaProcess(tmp_path, "kv-0", f"{ALONE}.10", env={
            "KV_REPLICAS": replicas, "KV_WRITE_CONCERN": "majority", "KV_WRITE_TIMEOUT": "1",
            "KV_DNS_SERVER": dns_server.address, "KV_REFRESH_INTERVAL": "0.2"})
        try:
            replica.start()
            wait_for("kv-0 to ask DNS", lambda: dns_server.queries > 0, 10)
            if replicas != "1":
                # An empty kv-0 that cannot hear its followers never starts a history on its
                # own (it could wipe theirs): the operator decides, as after a lost cluster.
                status, _, body = put(replica.url, "alone/early", b"e", "1")
                assert status == 503 and body["error"] == "recovering", body
                decided = subprocess.run(
                    [sys.executable, "-m", "kvstore", "recover", "fresh",
                     "--peer-url", f"http://{replica.host}:{replica.peer_port}"],
                    capture_output=True, text=True, timeout=30,
                    env={**os.environ, "KV_CLUSTER_TOKEN": replica.environment()["KV_CLUSTER_TOKEN"]})
                assert decided.returncode == 0, decided.stderr
                wait_for("kv-0 to decide", lambda: put(replica.url, "alone/w1", b"1", "1")[2].get("error") != "recovering", 10)
            answers = [put(replica.url, f"alone/{w}", w.encode(), w) for w in ("majority", "all", "1")]
            if majority_status == 503:
                # Alone, kv-0 hears no majority: it may have been replaced, so it takes no write,
                # not even w=1 (an operator who means a single replica sets KV_REPLICAS=1).
                for status, _, body in answers:
                    assert (status, body["error"]) == (503, "not_primary"), body
            else:  # the control: the same replica configured as a 1-replica StatefulSet
                assert [status for status, _, _ in answers] == [200, 200, 200], answers
        finally:
            replica.stop()
