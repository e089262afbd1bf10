"""Watch and backup across real clusters: a watch that spans a kv-0 kill and a follower restart sees
every acknowledged write exactly once and in order; a secondary's watch never shows an entry kv-0 never
wrote; a backup of a secondary restored into a new cluster holds exactly the keys of its LSN, and
names where they came from; a truncated backup is refused before a new cluster's volume is touched."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path
from typing import Any, Iterator

import pytest

from dns_cluster import Cluster, start_all, write_many
from local_cluster import LocalCluster, http, wait_for
from kvstore import backup
from kvstore.client import Client, follow
from kvstore.local.handle import ClusterError, LocalCluster as PlainCluster

ENV = {"KV_WATCH_KEEPALIVE": "0.5", "KV_WRITE_TIMEOUT": "3", "KV_RECOVERY_WAIT": "5"}


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    c = LocalCluster("127.0.13.10", "127.0.13.2", replicas=3, env=ENV)
    c.up()
    try:
        yield c
    finally:
        c.down()


async def put_until_acknowledged(client: Client, key: str, value: bytes, seconds: float = 60) -> int:
    """A w=majority PUT retried until it is acknowledged (the same key and value each time)."""
    async with asyncio.timeout(seconds):
        while True:
            try:
                reply = await client.put(key, value, w="majority")
                if reply.status == 200:
                    assert reply.version is not None
                    return reply.version
            except Exception:  # kv-0 still away: try again
                pass
            await asyncio.sleep(0.1)


async def test_a_watch_spanning_a_kv0_kill_and_a_follower_restart_sees_every_acknowledged_write_once_in_order(
        cluster: LocalCluster) -> None:
    start = json.loads(http("GET", cluster.url("kv-1") + "/v1/status")[2])["lsn"]
    # The watcher follows kv-1 first, and kv-2 when kv-1 goes away.
    urls = [cluster.url("kv-1"), cluster.url("kv-2")]
    events: list[dict[str, Any]] = []
    final_key = "span/final"

    async def watch() -> None:
        async for event in follow(urls, "span/", from_lsn=start + 1, give_up_after=90, timeout=3):
            events.append(event)
            if event["key"] == final_key:
                return

    attempted: dict[str, bytes] = {}  # every key is written once, so an event names its write
    acknowledged: dict[int, str] = {}
    stop = asyncio.Event()

    async def write() -> None:
        async with Client(cluster.url("kv-0"), timeout=3) as client:
            i = 0
            while not stop.is_set():
                key, value = f"span/{i:05d}", b"value-%d" % i
                attempted[key] = value
                i += 1
                try:
                    reply = await client.put(key, value, w="majority")
                    if reply.status == 200:
                        acknowledged[reply.version] = key
                        continue
                except Exception:  # kv-0 is away: the outcome is unknown, the key is never reused
                    pass
                await asyncio.sleep(0.05)

    watcher = asyncio.create_task(watch())
    writer = asyncio.create_task(write())
    try:
        await asyncio.sleep(1.5)
        for pod in ("kv-0", "kv-1"):  # kv-0 first (writes stop, then resume), then the watched follower
            before = len(acknowledged)
            pid = cluster.pid(pod)
            cluster.kill(pod)
            await asyncio.to_thread(cluster.wait_restarted, pod, pid, 90)
            await asyncio.to_thread(wait_for, "writes to be acknowledged again",
                                    lambda: len(acknowledged) > before + 20, 60)
        stop.set()
        await writer
        attempted[final_key] = b"final"
        async with Client(cluster.url("kv-0"), timeout=3) as client:
            acknowledged[await put_until_acknowledged(client, final_key, b"final")] = final_key
        await asyncio.wait_for(watcher, 90)
    finally:
        stop.set()
        watcher.cancel()
        await asyncio.gather(writer, watcher, return_exceptions=True)

    versions = [e["version"] for e in events]
    assert versions == sorted(set(versions)), "events out of order or repeated"
    seen = {e["version"]: e["key"] for e in events}
    missing = {v: k for v, k in acknowledged.items() if seen.get(v) != k}
    assert not missing, f"{len(missing)} acknowledged writes never seen, e.g. {sorted(missing.items())[:3]}"
    for event in events:  # nothing that was never written
        assert event["type"] == "put" and attempted.get(event["key"]) == event["value"], event
    assert len(acknowledged) > 60


async def test_a_backup_of_a_secondary_restores_into_a_new_cluster_with_exactly_the_keys_of_its_lsn(
        cluster: LocalCluster, workdir: Path) -> None:
    writes: list[tuple[int, str, bytes | None]] = []  # (version, key, value or None for a delete)
    stop = asyncio.Event()

    async def write() -> None:
        async with Client(cluster.url("kv-0")) as client:
            i, after_backup = 0, 0
            while after_backup < 20:  # some writes land after the backup's LSN
                after_backup += stop.is_set()
                key = f"bk/{i % 40:03d}"
                if i % 7 == 6 and any(k == key and v is not None for _, k, v in writes):
                    reply = await client.delete(key)
                    value = None
                else:
                    value = b"v%d" % i
                    reply = await client.put(key, value)
                assert reply.status in (200, 404), reply.body
                if reply.status == 200:
                    writes.append((json.loads(reply.body)["version"], key, value))
                i += 1

    path = workdir / "a.kvbackup"
    writer = asyncio.create_task(write())
    await asyncio.sleep(0.3)
    async with Client(cluster.url("kv-2")) as client:  # a secondary, while kv-0 takes writes
        info, _ = await backup.download(client, str(path))
    stop.set()
    await writer
    source = json.loads(http("GET", cluster.url("kv-0") + "/v1/status")[2])
    assert info.pod == "kv-2" and info.history == source["history_id"]
    assert any(v > info.lsn for v, _, _ in writes) and any(v <= info.lsn for v, _, _ in writes)
    expected: dict[str, tuple[int, bytes]] = {}
    for version, key, value in sorted(writes):
        if version <= info.lsn:
            if value is None:
                expected.pop(key, None)
            else:
                expected[key] = (version, value)
    in_file = {key.decode(): int.from_bytes(raw[:8], "big") for chunk in backup.records(str(path))
               for key, raw in chunk}

    restored = LocalCluster("127.0.14.10", "127.0.14.2", replicas=3, env=ENV)
    restored.restore = str(path)
    restored.up()
    try:
        async def listing(url: str) -> dict[str, int]:
            out: dict[str, int] = {}
            async with Client(url) as client:
                after = None
                while True:
                    page = (await client.list(start_after=after, limit=1000)).data
                    out.update(zip(page["keys"], page["versions"]))
                    if not page["more"]:
                        return out
                    after = page["next_start_after"]

        for pod in ("kv-0", "kv-1", "kv-2"):  # the followers copied kv-0
            url = restored.url(pod)
            wait_for(f"{pod} to hold the backup", lambda: json.loads(
                http("GET", url + "/v1/status")[2])["lsn"] >= info.lsn, 30)
            keys = await listing(url)
            assert keys == in_file, pod
            assert {k: v for k, v in keys.items() if k.startswith("bk/")} == \
                {k: v for k, (v, _) in expected.items()}, pod
            async with Client(url) as client:
                for key, (version, value) in expected.items():
                    reply = await client.get(key)
                    assert (reply.status, reply.body, reply.version) == (200, value, version), (pod, key)
            status = json.loads(http("GET", url + "/v1/status")[2])
            # Its own line of writes, forked from the backed-up one at the backup's LSN.
            assert status["fork"] == {"parent": info.history, "lsn": info.lsn}, (pod, status["fork"])
            assert status["history_id"] != info.history
        # A watcher of the old cluster at the backup's LSN may go on here: up to it the two lines agree.
        # The stream then says when it passes into the new history; past the fork the old one is refused.
        query = f"/v1/watch?prefix=after-&from_lsn={info.lsn + 1}&history={info.history}"
        async with Client(restored.url("kv-1")) as client:
            async with client.open_stream(query) as stream:
                start = json.loads(await stream.content.readline())
                status, _, body = http("PUT", restored.url("kv-0") + "/v1/kv/after-restore?w=all", b"new")
                assert status == 200 and json.loads(body)["version"] == info.lsn + 1
                lines = [json.loads(await stream.content.readline())]
                while lines[-1]["type"] == "keepalive":  # at the backup's LSN, while the PUT was on its way
                    assert lines[-1]["lsn"] == info.lsn, lines
                    lines = [json.loads(await stream.content.readline())]
                lines.append(json.loads(await stream.content.readline()))
        new_history = json.loads(http("GET", restored.url("kv-1") + "/v1/status")[2])["history_id"]
        assert (start["history"], start["lsn"]) == (info.history, info.lsn)
        assert lines[0]["key"] == "after-restore" and lines[0]["version"] == info.lsn + 1
        assert lines[1] == {"type": "keepalive", "lsn": info.lsn + 1, "history": new_history}
        status, _, body = http("GET", restored.url("kv-1") +
                               f"/v1/watch?from_lsn={info.lsn + 2}&history={info.history}")
        assert status == 409 and json.loads(body)["error"] == "history_changed"
    finally:
        restored.down()


def test_cluster_up_refuses_a_truncated_backup_before_touching_kv0s_volume(cluster: LocalCluster,
                                                                           workdir: Path) -> None:
    path = workdir / "cut.kvbackup"
    asyncio.run(_backup_of(cluster.url("kv-1"), path))
    path.write_bytes(path.read_bytes()[:-100])
    target = PlainCluster(workdir / "new", base_address="127.0.15.10", dns_address="127.0.15.2")
    target.restore = str(path)
    with pytest.raises(ClusterError, match="--restore: .* is truncated"):
        target.up()
    assert not (workdir / "new" / "data-kv-0").exists()


async def _backup_of(url: str, path: Path) -> None:
    async with Client(url) as client:
        await backup.download(client, str(path))


def test_a_secondarys_watch_never_shows_an_entry_kv0_never_wrote(workdir: Path) -> None:
    """kv-0 sends the batch holding LSN 6 and never writes it (a crash before its fsync, on demand):
    both followers hold it, no majority ever will, and no watch shows it."""
    with Cluster(workdir, 16, env={"KV_WATCH_KEEPALIVE": "0.3"}) as c:
        c.start(0, KV_TEST_HOLD_COMMIT="6@1")
        start_all(c)
        write_many(c, "held", 5)  # LSNs 1..5
        answers: list[int] = []
        writer = threading.Thread(target=lambda: answers.append(_put_quietly(c, "held/never", b"unwritten")))
        writer.start()
        for ordinal in (1, 2):
            wait_for(f"kv-{ordinal} to hold LSN 6", lambda: c.status(ordinal).get("lsn") == 6, 10)
        for ordinal in (0, 1, 2):
            got = asyncio.run(_watch_for(c.url(ordinal), seconds=2))
            assert [e["version"] for e in got if e["type"] == "put"] == [1, 2, 3, 4, 5], (ordinal, got)
            assert (got[-1]["type"], got[-1]["lsn"]) == ("keepalive", 5), (ordinal, got[-1])
        c.stop(0)
        writer.join(15)
        assert answers and answers[0] != 200


async def _watch_for(url: str, seconds: float) -> list[dict[str, Any]]:
    """Every line of a watch from LSN 1 for ``seconds``."""
    got: list[dict[str, Any]] = []
    async with Client(url) as client:
        try:
            async with asyncio.timeout(seconds):
                async for line in client.watch("held/", from_lsn=1, values=False):
                    got.append(line)
        except TimeoutError:
            pass
    return got


def _put_quietly(c: Cluster, key: str, value: bytes) -> int:
    """PUT that kv-0 never answers (it is killed): the status, or 0 when the connection broke."""
    try:
        return http("PUT", f"{c.url(0)}/v1/kv/{key}?w=majority", value, timeout=10)[0]
    except OSError:
        return 0
