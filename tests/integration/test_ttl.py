"""Keys with a ttl on real processes: kv-0 deletes them through the log once their time is up, so they are
gone on every replica and for every watcher, stay gone across restarts, still expire when kv-0 restarted
in between and never before their time; bad ttl values get 400."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from local_cluster import LocalCluster, http, wait_for
from replica_process import running
from kvstore.client import Client

ENV = {"KV_WRITE_TIMEOUT": "3", "KV_RECOVERY_WAIT": "5", "KV_WATCH_KEEPALIVE": "0.5"}
PODS = ("kv-0", "kv-1", "kv-2")


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    c = LocalCluster("127.0.18.10", "127.0.18.2", replicas=3, env=ENV)
    c.up()
    try:
        yield c
    finally:
        c.down()


def put_ttl(url: str, key: str, value: bytes, ttl: int, w: str = "all") -> tuple[int, float]:
    """PUT with a ttl: (version, the earliest moment the key may be gone)."""
    earliest = time.time() + ttl
    status, _, body = http("PUT", f"{url}/v1/kv/{key}?ttl={ttl}&w={w}", value)
    assert status == 200, body
    return json.loads(body)["version"], earliest


def gone(url: str, key: str, earliest: float, strong: bool = False) -> bool:
    """Whether the key reads as absent; never before ``earliest`` (no early loss)."""
    status, _, body = http("GET", f"{url}/v1/kv/{key}" + ("?consistency=strong" if strong else ""))
    assert status in (200, 404), body
    if status == 404:
        assert time.time() >= earliest, f"{url} lost {key} before its ttl ran out"
    return status == 404


def test_an_expired_key_is_deleted_on_every_replica_and_watchers_see_the_delete(cluster: LocalCluster) -> None:
    version, earliest = put_ttl(cluster.url("kv-1"), "exp/a", b"short-lived", 2)  # forwarded to kv-0
    for name in PODS:
        status, headers, body = http("GET", f"{cluster.url(name)}/v1/kv/exp/a")
        assert (status, body, headers["ETag"]) == (200, b"short-lived", f'"{version}"') or time.time() >= earliest

    async def watch() -> list[dict[str, Any]]:
        events = []
        async with Client(cluster.url("kv-2"), timeout=10) as client:
            async for event in client.watch("exp/", from_lsn=version):
                if event["type"] in ("put", "delete"):
                    events.append(event)
                    if event["type"] == "delete":
                        return events
        return events
    events = asyncio.run(asyncio.wait_for(watch(), 60))
    assert [(e["type"], e["key"]) for e in events] == [("put", "exp/a"), ("delete", "exp/a")]
    assert events[0]["version"] == version and events[1]["version"] > version
    for name in PODS:
        wait_for(f"exp/a gone on {name}", lambda: gone(cluster.url(name), "exp/a", earliest), 30)

    # It stays gone across a restart of a follower and of kv-0.
    for name in ("kv-1", "kv-0"):
        os.kill(killed := cluster.pid(name), signal.SIGKILL)
        cluster.wait_restarted(name, killed)
        assert http("GET", f"{cluster.url(name)}/v1/kv/exp/a")[0] == 404


def test_a_key_written_again_keeps_its_new_value(cluster: LocalCluster) -> None:
    _, earliest = put_ttl(cluster.url("kv-0"), "exp/again", b"old", 1)
    status, _, body = http("PUT", cluster.url("kv-0") + "/v1/kv/exp/again?w=all", b"new, no ttl")
    assert status == 200, body
    _, earliest_b = put_ttl(cluster.url("kv-0"), "exp/marker", b"x", 1)
    wait_for("the marker to expire", lambda: gone(cluster.url("kv-0"), "exp/marker", earliest_b), 30)
    for name in PODS:  # the old deadline passed long ago: the new write decides
        assert http("GET", f"{cluster.url(name)}/v1/kv/exp/again?consistency=strong")[2] == b"new, no ttl"


def test_a_ttl_written_before_a_kv0_restart_still_expires_and_not_early(cluster: LocalCluster) -> None:
    _, earliest = put_ttl(cluster.url("kv-0"), "exp/restart", b"v", 6)
    status, _, answer = http("POST", cluster.url("kv-0") + "/v1/txn?w=all", json.dumps(
        {"success": [{"op": "put", "key": "exp/txn", "value": "t", "ttl": 6},
                     {"op": "put", "key": "exp/kept", "value": "k"}]}).encode())
    assert status == 200, answer
    os.kill(killed := cluster.pid("kv-0"), signal.SIGKILL)
    cluster.wait_restarted("kv-0", killed)
    for name in PODS:
        for key in ("exp/restart", "exp/txn"):
            wait_for(f"{key} gone on {name}", lambda: gone(cluster.url(name), key, earliest, strong=name == "kv-0"),
                     60)
        assert http("GET", f"{cluster.url(name)}/v1/kv/exp/kept")[2] == b"k"


@pytest.mark.parametrize("query", ["ttl=0", "ttl=-1", "ttl=abc", "ttl=1.5", "ttl=", "ttl=315360001",
                                   "ttl=99999999999999999999", "ttl=1&ttl=2"])
def test_bad_ttl_values_get_400(cluster: LocalCluster, query: str) -> None:
    status, _, body = http("PUT", f"{cluster.url('kv-1')}/v1/kv/exp/bad?{query}", b"v")
    assert (status, json.loads(body)["error"]) == (400, "bad_parameter"), body
    assert "ttl" in json.loads(body)["message"]
    status, _, body = http("DELETE", f"{cluster.url('kv-0')}/v1/kv/exp/bad?ttl=5")
    assert (status, json.loads(body)["error"]) == (400, "unknown_parameter")
    assert http("GET", f"{cluster.url('kv-0')}/v1/kv/exp/bad")[0] == 404


def test_a_ttl_survives_a_restart_of_a_single_replica(tmp_path: Path) -> None:
    with running(tmp_path) as replica:
        _, earliest = put_ttl(replica.url, "one/k", b"v", 5, w="1")
        replica.kill()  # at once: the deadline is this process's to find on disk
        replica.start()
        wait_for("one/k gone after the restart", lambda: gone(replica.url, "one/k", earliest), 30)
        assert "expirer: 1 key(s) with a ttl" in replica.log_path.read_text()
        earliest = time.time() + 1
        ran = subprocess.run([sys.executable, "-m", "kvstore", "put", "one/cli", "v", "--ttl", "1", "--url",
                              replica.url], capture_output=True, text=True, timeout=60)
        assert ran.returncode == 0, ran.stderr
        wait_for("one/cli gone", lambda: gone(replica.url, "one/cli", earliest), 30)
