"""Transactions across a real 3-replica cluster: forwarded from a secondary and replicated to every pod,
shown to watchers as one event per key at the transaction's LSN, all or nothing under a SIGKILL of kv-0
while transactions are in flight, and refused while a pod of an older build is about."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path
from typing import Any, Iterator

import pytest

from dns_cluster import Cluster, start_all
from local_cluster import LocalCluster, http, wait_for
from kvstore.client import Client

ENV = {"KV_WRITE_TIMEOUT": "3", "KV_RECOVERY_WAIT": "5", "KV_WATCH_KEEPALIVE": "0.5"}


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    c = LocalCluster("127.0.17.10", "127.0.17.2", replicas=3, env=ENV)
    c.up()
    try:
        yield c
    finally:
        c.down()


def post_txn(url: str, body: dict[str, Any], query: str = "") -> tuple[int, dict[str, str], Any]:
    status, headers, answer = http("POST", f"{url}/v1/txn{query}", json.dumps(body).encode(),
                                   {"Content-Type": "application/json"})
    return status, headers, json.loads(answer)


def listing(url: str, prefix: str) -> dict[str, int]:
    """Every key under ``prefix`` on one pod, with its version (a local read)."""
    out: dict[str, int] = {}
    start = None
    for _ in range(1000):
        query = f"prefix={prefix}&limit=1000" + (f"&start_after={start}" if start else "")
        status, _, body = http("GET", f"{url}/v1/kv?{query}")
        assert status == 200, body
        page = json.loads(body)
        out.update(zip(page["keys"], page["versions"]))
        if not page["more"]:
            return out
        start = page["next_start_after"]
    raise AssertionError("listing did not end")


def test_a_transaction_sent_to_a_secondary_is_forwarded_and_replicated_to_every_pod(cluster: LocalCluster) -> None:
    status, headers, answer = post_txn(cluster.url("kv-1"), {
        "compare": [{"key": "rep/a", "absent": True}],
        "success": [{"op": "put", "key": "rep/a", "value": "1"}, {"op": "put", "key": "rep/b", "value": "2"}]},
        "?w=all")
    assert status == 200, answer
    assert headers["X-Kv-Answered-By"] == "kv-0" and answer["succeeded"] is True
    lsn = answer["version"]
    for name in ("kv-0", "kv-1", "kv-2"):  # w=all: on every pod once answered
        for key, value in (("rep/a", b"1"), ("rep/b", b"2")):
            status, got_headers, body = http("GET", f"{cluster.url(name)}/v1/kv/{key}")
            assert (status, body, got_headers["ETag"]) == (200, value, f'"{lsn}"'), name
    # A secondary refuses a bad body itself, before forwarding.
    status, headers, answer = post_txn(cluster.url("kv-2"), {"compare": [{"key": "k"}]})
    assert (status, answer["error"]) == (400, "bad_txn") and "X-Kv-Answered-By" not in headers


def test_watchers_see_each_key_of_a_transaction_at_its_lsn(cluster: LocalCluster) -> None:
    async def run() -> tuple[list[dict[str, Any]], int]:
        events: list[dict[str, Any]] = []
        async with Client(cluster.url("kv-2"), timeout=10) as client:
            start = (await client.put("wt/z", b"0")).version
            assert start is not None
            reply = await client.txn(success=[{"op": "put", "key": "wt/x", "value": "1"},
                                              {"op": "put", "key": "other/y", "value": "2"},
                                              {"op": "delete", "key": "wt/z"},
                                              {"op": "put", "key": "wt/y", "value": "3"}])
            assert reply.status == 200, reply.body
            await asyncio.wait_for(_collect(client, "wt/", start + 1, events, 3), 30)
            return events, reply.data["version"]
    events, lsn = asyncio.run(run())
    assert [(e["type"], e["key"], e["version"]) for e in events] == [
        ("put", "wt/x", lsn), ("delete", "wt/z", lsn), ("put", "wt/y", lsn)]
    assert events[0]["value"] == b"1"


async def _collect(client: Client, prefix: str, from_lsn: int, events: list[dict[str, Any]], count: int) -> None:
    async for event in client.watch(prefix, from_lsn=from_lsn):
        if event["type"] in ("put", "delete"):
            events.append(event)
            if len(events) == count:
                return


def test_a_transaction_is_all_or_nothing_under_a_kill_of_kv0_mid_way(cluster: LocalCluster) -> None:
    attempted: set[int] = set()
    acknowledged: dict[int, int] = {}  # transaction -> its LSN
    keys = ("a", "b", "c")

    async def writer(first: int, step: int, stop: asyncio.Event) -> None:
        async with Client(cluster.url("kv-0"), timeout=3) as client:
            i = first
            while not stop.is_set():
                attempted.add(i)
                try:
                    reply = await client.txn(
                        [{"key": f"kill/{i:05d}/a", "absent": True}],
                        [{"op": "put", "key": f"kill/{i:05d}/{k}", "value": str(i)} for k in keys], w="majority")
                    if reply.status == 200 and reply.data["succeeded"]:
                        acknowledged[i] = reply.data["version"]
                        i += step
                        continue
                except Exception:  # kv-0 is away: the outcome is unknown and the number is not reused
                    pass
                i += step
                await asyncio.sleep(0.05)

    async def run() -> None:
        stop = asyncio.Event()
        writers = [asyncio.ensure_future(writer(n, 4, stop)) for n in range(4)]
        try:
            async with asyncio.timeout(120):
                while len(acknowledged) < 40:
                    await asyncio.sleep(0.05)
                os.kill(killed := cluster.pid("kv-0"), signal.SIGKILL)
                count = len(acknowledged)
                await asyncio.to_thread(cluster.wait_restarted, "kv-0", killed)
                while len(acknowledged) < count + 20:  # transactions go on after the recovery
                    await asyncio.sleep(0.05)
        finally:
            stop.set()
            await asyncio.gather(*writers, return_exceptions=True)
    asyncio.run(run())

    # Every pod catches up to kv-0's LSN, then holds each transaction whole or not at all.
    lsn = json.loads(http("GET", cluster.url("kv-0") + "/v1/status")[2])["lsn"]
    for name in ("kv-0", "kv-1", "kv-2"):
        status, _, body = http("GET", f"{cluster.url(name)}/v1/kv/kill/00000/a?min_lsn={lsn}")
        assert status in (200, 404), body
        held = listing(cluster.url(name), "kill/")
        for i in sorted(attempted):
            versions = {held.get(f"kill/{i:05d}/{k}") for k in keys}
            assert len(versions) == 1, (name, i, versions)  # all three at one LSN, or none
            if i in acknowledged:
                assert versions == {acknowledged[i]}, (name, i, versions)
        assert len(held) == 3 * len({i for i in attempted if held.get(f"kill/{i:05d}/a")})


def test_no_transaction_while_a_pod_of_an_older_build_is_about(workdir: Path) -> None:
    with Cluster(workdir, 19) as c:
        c.start(0)
        c.start(1)
        c.start(2, KV_TEST_PEER_PROTOCOL="2-3")  # a build before transactions
        start_all(c)
        body = {"success": [{"op": "put", "key": "up/a", "value": "1"}]}
        status, headers, answer = post_txn(c.url(0), body)
        assert (status, answer["error"], headers.get("Retry-After")) == (503, "upgrade_in_progress", "1"), answer
        assert "kv-2" in answer["message"]
        status, _, answer = http("PUT", c.url(0) + "/v1/kv/up/ttl?ttl=5", b"x")
        assert (status, json.loads(answer)["error"]) == (503, "upgrade_in_progress")
        assert c.put(0, "up/plain", b"x")[0] == 200  # plain writes go on
        assert c.get(0, "up/a")[0] == 404  # nothing was applied
        c.stop(2)
        c.start(2)  # the update is done
        wait_for("a transaction once no older pod is about", lambda: post_txn(c.url(0), body)[0] == 200, 30)
