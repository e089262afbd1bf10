"""Recovery that never loses or forks acknowledged data, with real processes and a real DNS server.

Each test builds the failure by hand, step by step, so it is deterministic:
pods are ``kvstore serve`` processes on their own loopback addresses with the
Kubernetes ports, and the headless Service is a DNS server the test controls
(which pods it lists, or whether it answers at all). Every scenario here lost
acknowledged writes or wiped a replica before kv-0 proved it was current.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from dns_cluster import SILENCE_SECONDS, TOKEN, Cluster, assert_all_readable, start_all, write_many
from local_cluster import http, wait_for


def assert_recovering_answer(c: Cluster, key: str, waiting_for: str) -> None:
    """Writes, strong reads and local reads of an empty kv-0 answer 503 recovering, never a wrong 404."""
    for method, suffix in (("PUT", "?w=1"), ("GET", ""), ("GET", "?consistency=strong")):
        status, headers, body = http(method, f"{c.url(0)}/v1/kv/{key}{suffix}", b"x" if method == "PUT" else None)
        answer = json.loads(body)
        assert (status, answer["error"]) == (503, "recovering"), (method, suffix, status, body)
        assert headers.get("Retry-After") == "1" and waiting_for in answer["message"], answer


# ------------------------------------------------------------------ scenarios
def test_an_empty_primary_under_ordered_ready_waits_for_its_followers(workdir: Path) -> None:
    """kv-0 lost its volume and the StatefulSet restarts in order: no follower exists yet."""
    with Cluster(workdir, 41) as c:
        start_all(c)
        acknowledged = write_many(c, "before", 20) | write_many(c, "all", 5, w="all")
        history = c.status(0)["history_id"]
        for ordinal in (2, 1, 0):
            c.stop(ordinal)
        shutil.rmtree(c.data_dir(0))
        c.list_in_dns()  # OrderedReady: only kv-0 will exist until it is Ready
        c.start(0)  # Ready while it recovers, so the StatefulSet goes on to create kv-1
        assert_recovering_answer(c, "before/0", "kv-1")
        status = c.status(0)
        assert status["state"] == "recovering" and status["recovery"]["waiting_for"] == ["kv-1", "kv-2"]
        c.start(1)
        time.sleep(1.5)  # kv-0 has heard kv-1 now, but one follower is no quorum when kv-0 is empty
        assert_recovering_answer(c, "before/0", "kv-2")
        c.start(2)
        c.wait_writable()
        assert_all_readable(c, 0, acknowledged, strong=True)
        status = c.status(0)
        assert status["history_id"] == history and status["fork"] is None  # every follower was heard
        assert status["epoch"] >= 2
        assert "copying kv-" in c.log(0)


def test_a_dns_timeout_at_the_primary_start_is_never_an_empty_cluster(workdir: Path) -> None:
    with Cluster(workdir, 42) as c:
        start_all(c)
        acknowledged = write_many(c, "k", 20)
        c.stop(0)
        shutil.rmtree(c.data_dir(0))
        c.dns.silent = True
        c.start(0, wait=False)
        time.sleep(4)  # several rounds of asking, every one timing out
        assert c.status(0)["state"] == "recovering"
        assert_recovering_answer(c, "k/0", "kv-1")
        unheard = wait_for("kv-0 to say why it has not heard its followers",
                           lambda: c.status(0)["recovery"]["unheard"], 15)
        assert set(unheard) == {"kv-1", "kv-2"} and all(v == "not in DNS" for v in unheard.values()), unheard
        assert c.status(0)["state"] == "recovering"
        c.dns.silent = False
        c.wait_writable()
        assert_all_readable(c, 0, acknowledged, strong=True)


def test_an_empty_primary_never_restores_from_a_less_advanced_peer_alone(workdir: Path) -> None:
    """kv-2 holds w=majority writes kv-1 never saw; kv-2 is missing from DNS when kv-0 restarts empty."""
    with Cluster(workdir, 43) as c:
        start_all(c)
        acknowledged = write_many(c, "old", 10, w="all")
        c.stop(1)
        acknowledged |= write_many(c, "new", 10)  # on kv-0 and kv-2 only
        c.stop(0)
        shutil.rmtree(c.data_dir(0))
        c.start(1)
        c.list_in_dns(0, 1)  # kv-2 is being rescheduled: not in DNS, though its volume holds the writes
        c.start(0)
        time.sleep(2)
        assert_recovering_answer(c, "new/0", "kv-2")
        c.list_in_dns(0, 1, 2)
        c.wait_writable()
        assert_all_readable(c, 0, acknowledged, strong=True)
        wait_for("kv-1 to catch up", lambda: c.status(1).get("lsn") == c.status(0)["lsn"], 30)
        assert_all_readable(c, 1, acknowledged)


def test_a_rolled_back_primary_catches_up_before_it_serves(workdir: Path) -> None:
    """kv-0's volume goes back in time (a restored backup): its old state must never be served."""
    with Cluster(workdir, 44) as c:
        start_all(c)
        write_many(c, "k", 10, w="all")
        c.stop(0)
        backup = workdir / "kv-0-backup"
        shutil.copytree(c.data_dir(0), backup)
        c.start(0)
        c.wait_writable()
        newer = {f"k/{i}": b"newer-%d" % i for i in range(10)}
        for key, value in newer.items():
            assert c.put(0, key, value)[0] == 200
        c.stop(0)
        shutil.rmtree(c.data_dir(0))
        shutil.copytree(backup, c.data_dir(0))  # the rollback
        c.start(0)
        c.wait_writable()
        assert_all_readable(c, 0, newer, strong=True)
        assert_all_readable(c, 0, newer)
        status, _, body = c.put(0, "after", b"x", w="all")
        assert status == 200, body
        assert_all_readable(c, 2, newer | {"after": b"x"})


def test_a_full_restart_under_ordered_ready_answers_503_until_it_is_sure(workdir: Path) -> None:
    """Every pod stops; kv-0 comes back first with its disk and a client writes the moment it answers."""
    with Cluster(workdir, 45) as c:
        start_all(c)
        acknowledged = write_many(c, "k", 20)
        for ordinal in (2, 1, 0):
            c.stop(ordinal)
        c.list_in_dns()
        c.start(0)
        status, _, body = c.put(0, "early", b"x")
        assert status == 503 and json.loads(body)["error"] == "recovering", body
        c.start(1)
        c.start(2)
        c.wait_writable()
        assert c.status(0)["fork"] is None
        assert_all_readable(c, 0, acknowledged, strong=True)
        assert c.put(0, "later", b"y", w="all")[0] == 200


def test_a_follower_with_data_of_another_history_is_never_wiped(workdir: Path) -> None:
    """A volume from another cluster: kv-1 keeps its data, says it diverged, and waits for an operator."""
    foreign = workdir / "foreign"
    foreign.mkdir()
    with Cluster(foreign, 46, replicas=1) as other:
        other.start(0)
        other.wait_writable()
        theirs = write_many(other, "mine", 5, w="1")
        other.stop(0)
    with Cluster(workdir, 47) as c:
        start_all(c)
        write_many(c, "k", 30)
        c.stop(1)
        shutil.rmtree(c.data_dir(1))
        shutil.copytree(other.data_dir(0), c.data_dir(1))  # kv-1's PVC now holds another history
        c.start(1, wait=False)
        wait_for("kv-1 to say it diverged", lambda: c.status(1).get("state") == "diverged", 30)
        assert_all_readable(c, 1, theirs)  # nothing wiped
        status, _, body = http("GET", c.url(1) + "/readyz")
        assert status == 503 and "diverged" in json.loads(body)["message"]
        assert "kv_diverged 1.0" in http("GET", c.url(1) + "/metrics")[2].decode()
        assert "kvstore recover resync --pod kv-1" in c.log(1)
        # The operator's one explicit action: kv-1 drops its data and copies kv-0.
        result = subprocess.run([sys.executable, "-m", "kvstore", "recover", "resync", "--pod", "kv-1",
                                 "--peer-url", f"http://{c.host(1)}:8081"], capture_output=True, text=True,
                                env={**os.environ, "KV_CLUSTER_TOKEN": TOKEN}, timeout=30)
        assert result.returncode == 0, result.stderr
        wait_for("kv-1 to follow again", lambda: c.status(1).get("state") == "following"
                 and c.status(1).get("lsn") == c.status(0)["lsn"], 30)
        assert c.get(1, "mine/0")[0] == 404 and c.get(1, "k/0") == (200, b"k-0")


async def _put_concurrently(url: str, items: list[tuple[str, bytes]], concurrency: int = 16) -> list[int]:
    import aiohttp
    statuses: list[int] = []
    queue = list(reversed(items))
    async with aiohttp.ClientSession() as session:
        async def worker() -> None:
            while queue:
                key, value = queue.pop()
                async with session.put(f"{url}/v1/kv/{key}?w=majority", data=value) as response:
                    statuses.append(response.status)
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return statuses


def test_a_follower_catches_up_on_entries_at_the_size_limits(workdir: Path) -> None:
    """A paused follower's backlog of large entries must fit the stream messages it accepts."""
    with Cluster(workdir, 48) as c:
        start_all(c)
        os.kill(c.pods[2].proc.pid, signal.SIGSTOP)
        try:
            time.sleep(SILENCE_SECONDS + 1.5)  # kv-0 drops the silent stream: kv-2 will ask from its position
            # Sized so that, followed by the largest entry, they fill one stream message
            # to the byte, where a sender that forgot the framing overshot.
            items = [(f"big/{i:04d}", os.urandom(2076)) for i in range(1999)]
            statuses = asyncio.run(_put_concurrently(c.url(0), items))
            assert statuses == [200] * len(items)
            status, _, body = c.put(0, "k" * 1024, b"v" * (1024 * 1024))  # the largest the limits allow
            assert status == 200, body
        finally:
            os.kill(c.pods[2].proc.pid, signal.SIGCONT)
        wait_for("kv-2 to catch up", lambda: c.status(2).get("lsn") == c.status(0)["lsn"], 60)
        assert c.put(0, "after", b"x", w="all")[0] == 200
        assert c.get(2, "k" * 1024) == (200, b"v" * (1024 * 1024))
        assert "code 1009" not in c.log(2)


def test_a_follower_that_cannot_follow_says_it_is_stalled_and_how_far_behind(workdir: Path) -> None:
    """kv-2 was given smaller limits than kv-0 (a misconfiguration): it cannot take kv-0's messages."""
    with Cluster(workdir, 49, env={"KV_MAX_VALUE_BYTES": str(6 * 1024 * 1024)}) as c:
        c.start(0)
        c.start(1)
        c.start(2, KV_MAX_VALUE_BYTES=str(1024 * 1024))
        c.wait_writable()
        wait_for("every follower to follow", lambda: len(c.status(0).get("followers", ())) == 2, 30)
        assert c.put(0, "small", b"x", w="all")[0] == 200
        assert c.put(0, "large", b"v" * (5 * 1024 * 1024))[0] == 200  # one entry beyond what kv-2 takes
        for i in range(5):
            assert c.put(0, f"more/{i}", b"y")[0] == 200
        primary_lsn = c.status(0)["lsn"]
        assert primary_lsn == 7 and c.status(2)["lsn"] == 1  # small, large, more/0..4; kv-2 holds small
        behind = 6
        # kv-2 counts from kv-0's LSN as it last heard it: on a loaded machine it may stall before
        # the last writes reach kv-0, and it asks again on each retry (backoff at most a few seconds).
        expected = f"stalled: {behind} entries behind"

        def stalled() -> bool:
            status, _, body = http("GET", c.url(2) + "/readyz")  # Ready (200) has no message
            return status == 503 and expected in json.loads(body)["message"]
        wait_for(f"kv-2 to say {expected!r}", stalled, 30)
        read = http("GET", c.url(2) + "/v1/kv/small")
        assert read[0] == 200 and read[1]["X-Kv-Primary-Lsn"] == str(primary_lsn)  # a stale read, and says so
        assert c.status(2)["state"] == "stalled"
        metrics = http("GET", c.url(2) + "/metrics")[2].decode()
        assert f"kv_replication_lag_entries {float(behind)}" in metrics
        assert f'kv_follower_lag_entries{{follower="kv-2"}} {float(behind)}' in \
            http("GET", c.url(0) + "/metrics")[2].decode()
        # Each kind of failure is logged once, not on every retry.
        assert c.log(2).count("following kv-0 failed") <= 3, c.log(2)


def test_a_strong_read_never_shows_a_write_a_majority_does_not_hold(workdir: Path) -> None:
    """A w=1 write lives on kv-0 alone until a follower has it: kv-0 losing its volume would undo it."""
    with Cluster(workdir, 50, env={"KV_WRITE_TIMEOUT": "1"}) as c:
        start_all(c)
        assert c.put(0, "k", b"old", w="all")[0] == 200
        followers = [c.pods[1].proc.pid, c.pods[2].proc.pid]
        for pid in followers:
            os.kill(pid, signal.SIGSTOP)
        try:
            assert c.put(0, "k", b"new", w="1")[0] == 200
            assert c.get(0, "k") == (200, b"new")  # a local read may show it: it says it is local
            # Never 200 with "new": no majority confirms kv-0 (fencing) nor holds the write.
            unanswered = {(503, "not_primary"), (504, "not_confirmed")}
            status, _, body = http("GET", c.url(0) + "/v1/kv/k?consistency=strong")
            assert (status, json.loads(body)["error"]) in unanswered, body
            # A refusal based on that state waits the same way: its current_version is not held yet.
            status, _, body = http("PUT", c.url(0) + "/v1/kv/k", b"x", headers={"If-Match": '"1"'})
            assert (status, json.loads(body)["error"]) in unanswered, body
        finally:
            for pid in followers:
                os.kill(pid, signal.SIGCONT)
        assert c.get(0, "k", strong=True) == (200, b"new")
        assert c.status(0)["committed_lsn"] == c.status(0)["lsn"]
