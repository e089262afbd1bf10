"""Switchover, failover and failback on a real local cluster (real processes, SIGKILL, SIGSTOP).

Each test runs a steady ``w=majority`` writer that moves to another pod when
one refuses the connection (as a client with several pod addresses does) and
checks afterwards that every acknowledged write is there, with its value.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.parse
from typing import Iterator

import pytest

from tests.local_cluster import LocalCluster, http
from kvstore.local.handle import wait_for

BASE, DNS = "127.0.20.10", "127.0.20.2"
FAILOVER_AFTER = 2.0
ENV = {"KV_FAILOVER_AFTER": str(FAILOVER_AFTER), "KV_SWITCHOVER_ON_STOP": "true", "KV_WRITE_TIMEOUT": "3",
       "KV_REFRESH_INTERVAL": "0.5"}


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    with LocalCluster(BASE, DNS, replicas=3, env=ENV) as c:
        wait_for("kv-0 to take writes", c.writable, 60)
        yield c


def status(cluster: LocalCluster, pod: str) -> dict:
    code, _, body = http("GET", cluster.url(pod) + "/v1/status", timeout=5)
    assert code == 200, body
    return json.loads(body)


def primary_of(cluster: LocalCluster, pod: str) -> str | None:
    """The pod that ``pod`` names as the serving primary (None: it cannot say)."""
    try:
        s = status(cluster, pod)
    except (OSError, AssertionError):
        return None
    return s["primary"]["name"]


class Writer:
    """Writes key w-<n> = <n> with w=majority, one at a time, to the pods in turn when one fails to connect."""

    def __init__(self, cluster: LocalCluster, pods: list[str], prefix: str) -> None:
        self.cluster, self.pods, self.prefix = cluster, pods, prefix
        self.acked: dict[str, str] = {}
        self.failed: list[str] = []  # answers other than a refused connection: what a client sees as an error
        self.ack_times: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "Writer":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def longest_gap(self) -> float:
        times = self.ack_times
        return max((b - a for a, b in zip(times, times[1:])), default=0.0)

    def _run(self) -> None:
        n, turn = 0, 0
        deadline = time.monotonic() + 300  # bounded whatever the test does
        while not self._stop.is_set() and time.monotonic() < deadline:
            key, value = f"{self.prefix}-{n}", str(n)
            pod = self.pods[turn % len(self.pods)]
            try:
                done, code, body = self.write(pod, key, value)
            except OSError:
                turn += 1  # refused or reset: this pod is down, try the next
                time.sleep(0.02)
                continue
            if done:
                self.acked[key] = value
                self.ack_times.append(time.monotonic())
                n += 1
            else:
                self.failed.append(f"{pod} {key}: {code} {body[:200]!r}")
                turn += 1
                time.sleep(0.05)
            time.sleep(0.005)

    def write(self, pod: str, key: str, value: str) -> tuple[bool, int, bytes]:
        """One write through ``pod``: (acknowledged, status, body); OSError when the pod is down."""
        code, _, body = http("PUT", self.cluster.url(pod) + "/v1/kv/" + urllib.parse.quote(key)
                             + "?w=majority", value.encode(), timeout=10)
        return code in (200, 201, 204), code, body


class TxnWriter(Writer):
    """A Writer whose writes are transactions (``POST /v1/txn``), each putting one key it finds absent."""

    def write(self, pod: str, key: str, value: str) -> tuple[bool, int, bytes]:
        txn = {"compare": [{"key": key, "absent": True}], "success": [{"op": "put", "key": key, "value": value}]}
        code, _, body = http("POST", self.cluster.url(pod) + "/v1/txn?w=majority", json.dumps(txn).encode(),
                             timeout=10)
        return code == 200 and json.loads(body)["succeeded"], code, body


def assert_all_acked_readable(cluster: LocalCluster, writer: Writer) -> None:
    """Every acknowledged write is there with its value (strong reads, through any pod)."""
    assert writer.acked, "the writer acknowledged nothing"
    lost = []
    for key, value in writer.acked.items():
        code, _, body = http("GET", cluster.url("kv-1") + "/v1/kv/" + urllib.parse.quote(key)
                             + "?consistency=strong", timeout=10)
        if code != 200 or body.decode() != value:
            lost.append((key, code, body[:80]))
    assert not lost, f"{len(lost)} acknowledged writes lost: {lost[:5]}"


def wait_kv0_leads(cluster: LocalCluster, timeout: float = 60.0) -> None:
    wait_for("kv-0 to lead again", lambda: cluster.leader() == "kv-0"
             and all(primary_of(cluster, p) == "kv-0" for p in cluster.pods()), timeout)


def test_switchover_pauses_writes_and_fails_none_then_kv0_takes_the_role_back(cluster: LocalCluster) -> None:
    wait_kv0_leads(cluster)
    with Writer(cluster, ["kv-0", "kv-1", "kv-2"], "so") as writer:
        wait_for("some writes", lambda: len(writer.acked) > 20, 30)
        result = cluster_cli(cluster, "switchover", "--to", "kv-1")
        assert result.returncode == 0, result.stderr
        assert "kv-1" in result.stdout
        wait_for("kv-1 to lead", lambda: cluster.leader() == "kv-1", 10)
        assert primary_of(cluster, "kv-2") == "kv-1"
        n = len(writer.acked)
        wait_for("writes through kv-1's epoch", lambda: len(writer.acked) > n + 20, 30)
        # Failback: kv-0 follows kv-1, is current, and gets the role back.
        wait_kv0_leads(cluster, 30)
        n = len(writer.acked)
        wait_for("writes after the failback", lambda: len(writer.acked) > n + 20, 30)
    assert writer.failed == [], writer.failed[:5]
    assert_all_acked_readable(cluster, writer)
    print(f"switchover and failback: longest gap between acknowledged writes {writer.longest_gap():.3f}s")


def test_switchover_refusals_are_clear(cluster: LocalCluster) -> None:
    wait_kv0_leads(cluster)
    missing = cluster_cli(cluster, "switchover", "--to", "kv-7")
    assert missing.returncode == 1 and "not a voter" in missing.stderr, missing.stderr
    itself = cluster_cli(cluster, "switchover", "--to", "kv-0")
    assert itself.returncode == 1 and "primary already" in itself.stderr, itself.stderr
    bad = cluster_cli(cluster, "switchover", "--to", "zz")
    assert bad.returncode == 2 and "pod name" in bad.stderr, bad.stderr
    assert cluster.leader() == "kv-0"


def test_kv0_held_down_fails_over_then_fails_back_losing_nothing(cluster: LocalCluster) -> None:
    wait_kv0_leads(cluster)
    epoch = status(cluster, "kv-1")["epoch"]
    with Writer(cluster, ["kv-1", "kv-2"], "hold") as writer:
        wait_for("some writes", lambda: len(writer.acked) > 20, 30)
        cluster.control("/v1/hold", {"pod": "kv-0"})
        try:
            wait_for("another pod to lead", lambda: cluster.leader() in ("kv-1", "kv-2"), 30)
            acting = cluster.leader()
            n = len(writer.acked)
            wait_for("writes while kv-0 is away", lambda: len(writer.acked) > n + 30, 30)
            assert status(cluster, acting)["primary"]["why"].startswith("failover")
            assert status(cluster, acting)["epoch"] > epoch
        finally:
            cluster.control("/v1/release", {"pod": "kv-0"})
        wait_kv0_leads(cluster, 60)
        n = len(writer.acked)
        wait_for("writes after kv-0 is back", lambda: len(writer.acked) > n + 20, 30)
    assert_all_acked_readable(cluster, writer)
    print(f"kv-0 held down: longest gap between acknowledged writes {writer.longest_gap():.3f}s")


def test_frozen_primary_resumed_after_a_failover_acknowledges_nothing(cluster: LocalCluster) -> None:
    """A primary SIGSTOPped past the failover time wakes up thinking it leads: nothing it acknowledges is
    lost, and no strong read it answers shows what the new primary replaced. First it wakes while both
    followers are frozen (it cannot learn it was replaced: only its lease and its confirmation rounds
    stop it), then while they run."""
    wait_kv0_leads(cluster)
    probe = cluster.url("kv-1") + "/v1/kv/probe?w=majority"
    assert http("PUT", probe, b"old")[0] in (200, 201, 204)
    acked: list[str] = []
    reads: list[bytes] = []

    def poke(attempts: int) -> None:
        """w=1 writes and strong reads sent to the woken kv-0."""
        for _ in range(attempts):
            key = f"zombie-{len(acked)}-{time.monotonic_ns()}"
            try:
                if http("PUT", cluster.url("kv-0") + f"/v1/kv/{key}?w=1", b"x", timeout=5)[0] < 300:
                    acked.append(key)
                code, _, body = http("GET", cluster.url("kv-0") + "/v1/kv/probe?consistency=strong", timeout=5)
            except OSError:
                continue
            if code == 200:
                reads.append(body)

    with Writer(cluster, ["kv-1", "kv-2"], "frozen") as writer:
        wait_for("some writes", lambda: len(writer.acked) > 20, 30)
        pid = cluster.pause("kv-0")
        try:
            wait_for("another pod to lead", lambda: cluster.leader() in ("kv-1", "kv-2"), 30)
            assert http("PUT", probe, b"new")[0] in (200, 201, 204)
            followers = [cluster.pause(pod) for pod in ("kv-1", "kv-2")]
            try:
                cluster.resume(pid)
                poke(4)
            finally:
                for follower in followers:
                    cluster.resume(follower)
        finally:
            cluster.resume(pid)
        poke(20)
        assert all(body == b"new" for body in reads), reads
        wait_kv0_leads(cluster, 60)
    for key in acked:
        code, _, body = http("GET", cluster.url("kv-2") + "/v1/kv/" + key + "?consistency=strong")
        assert (code, body) == (200, b"x"), f"{key}, acknowledged by the resumed kv-0, is lost: {code}"
    assert_all_acked_readable(cluster, writer)


def cluster_cli(cluster: LocalCluster, *args: str):
    from kvstore.local.handle import run_cli
    return run_cli(*args, "--dir", str(cluster.directory), timeout=30)


def test_failover_with_a_follower_volume_lost_elects_the_up_to_date_one_and_loses_nothing(
        cluster: LocalCluster) -> None:
    """kv-1 comes back empty while kv-0 is lost: kv-2, which holds every acknowledged write, leads, although
    kv-1 comes first by ordinal (the election restriction, not the tie rule, decides)."""
    import shutil
    wait_kv0_leads(cluster)
    cluster.control("/v1/hold", {"pod": "kv-1"})
    try:
        acked = {}
        for i in range(30):  # w=majority with kv-1 down: on kv-0 and kv-2 only
            code, _, _ = http("PUT", cluster.url("kv-0") + f"/v1/kv/lost-volume-{i}?w=majority", str(i).encode())
            assert code in (200, 201, 204)
            acked[f"lost-volume-{i}"] = str(i)
        shutil.rmtree(cluster.directory / "data-kv-1")
        cluster.control("/v1/hold", {"pod": "kv-0"})
    finally:
        cluster.control("/v1/release", {"pod": "kv-1"})
    try:
        wait_for("kv-2 to lead", lambda: cluster.leader() == "kv-2", 60)
        assert status(cluster, "kv-2")["primary"]["why"].startswith("failover")
        for key, value in acked.items():
            assert read_retrying(cluster, "kv-1", key) == (200, value), key
    finally:
        cluster.control("/v1/release", {"pod": "kv-0"})
    wait_kv0_leads(cluster, 60)
    for key, value in acked.items():
        assert read_retrying(cluster, "kv-1", key) == (200, value), key


def read_retrying(cluster: LocalCluster, pod: str, key: str, timeout: float = 15.0) -> tuple[int, str]:
    """A strong read through ``pod``, retried while it answers 503 (a client's retry), as (status, body)."""
    deadline = time.monotonic() + timeout
    while True:
        code, _, body = http("GET", cluster.url(pod) + f"/v1/kv/{key}?consistency=strong")
        if code != 503 or time.monotonic() > deadline:
            return code, body.decode()
        time.sleep(0.1)


def test_a_key_with_a_ttl_expires_through_the_pod_that_took_over(cluster: LocalCluster) -> None:
    """kv-0 is held down before a ttl runs out: the new primary finds the deadline in its log and writes the
    delete, so the key is gone on it and on its follower (whose local read shows only what the log says)."""
    wait_kv0_leads(cluster)
    code, _, body = http("PUT", cluster.url("kv-0") + "/v1/kv/ttl-failover?w=all&ttl=3", b"short-lived")
    assert code in (200, 201), body
    kept = http("PUT", cluster.url("kv-0") + "/v1/kv/ttl-kept?w=all&ttl=3600", b"long-lived")
    assert kept[0] in (200, 201), kept[2]
    cluster.control("/v1/hold", {"pod": "kv-0"})
    try:
        wait_for("another pod to lead", lambda: cluster.leader() in ("kv-1", "kv-2"), 30)
        acting = cluster.leader()
        assert acting is not None
        other = "kv-2" if acting == "kv-1" else "kv-1"

        def gone_on(pod: str) -> bool:
            return http("GET", cluster.url(pod) + "/v1/kv/ttl-failover", timeout=5)[0] == 404
        wait_for(f"{acting} to delete the expired key", lambda: gone_on(other), 30)
        assert read_retrying(cluster, acting, "ttl-failover")[0] == 404
        assert read_retrying(cluster, acting, "ttl-kept") == (200, "long-lived")
        # A key written with a ttl in the new primary's epoch expires too.
        code, _, body = http("PUT", cluster.url(acting) + "/v1/kv/ttl-new-epoch?w=majority&ttl=1", b"x")
        assert code in (200, 201), body
        wait_for(f"{acting} to delete the key of its own epoch",
                 lambda: http("GET", cluster.url(other) + "/v1/kv/ttl-new-epoch", timeout=5)[0] == 404, 30)
    finally:
        cluster.control("/v1/release", {"pod": "kv-0"})
    wait_kv0_leads(cluster, 60)
    assert read_retrying(cluster, "kv-0", "ttl-failover")[0] == 404
    assert read_retrying(cluster, "kv-0", "ttl-kept") == (200, "long-lived")


def test_transactions_wait_out_a_switchover_and_fail_none(cluster: LocalCluster) -> None:
    """Transactions sent to the primary that hands over are held, then go to the new primary (as PUTs do)."""
    wait_kv0_leads(cluster)
    with TxnWriter(cluster, ["kv-0", "kv-1", "kv-2"], "txn-so") as writer:
        wait_for("some transactions", lambda: len(writer.acked) > 20, 30)
        result = cluster_cli(cluster, "switchover", "--to", "kv-2")
        assert result.returncode == 0, result.stderr
        wait_for("kv-2 to lead", lambda: cluster.leader() == "kv-2", 10)
        n = len(writer.acked)
        wait_for("transactions in kv-2's epoch", lambda: len(writer.acked) > n + 20, 30)
        wait_kv0_leads(cluster, 30)  # the failback: a second switchover
        n = len(writer.acked)
        wait_for("transactions after the failback", lambda: len(writer.acked) > n + 20, 30)
    assert writer.failed == [], writer.failed[:5]
    assert_all_acked_readable(cluster, writer)


def test_a_deposed_primary_never_names_an_lsn_of_its_lost_tail_on_a_local_read(cluster: LocalCluster) -> None:
    """kv-0 wrote entries no follower got, then a failover began a new line at those LSNs: once kv-0 follows,
    and before it has dropped that tail, a local read's X-Kv-Lsn must not claim to reflect the new line's
    writes it has not seen (a client would take the older value as at least that fresh)."""
    import concurrent.futures
    wait_kv0_leads(cluster)
    # kv-0 follows for a while (a switchover and its failback), so its disk records a committed LSN
    # past the victim's first version: that version is a settled, readable one on kv-0.
    assert cluster_cli(cluster, "switchover", "--to", "kv-1").returncode == 0
    wait_for("kv-1 to lead", lambda: cluster.leader() == "kv-1", 10)
    for key, value in (("deposed-victim", b"old"), ("deposed-next", b"x")):
        assert put_retrying(cluster, "kv-1", key, value, "all")[0] in (200, 201, 204)
    wait_kv0_leads(cluster, 30)
    for pod in ("kv-1", "kv-2"):
        cluster.control("/v1/hold", {"pod": pod})
    try:
        # A tail on kv-0 only: w=majority writes that kv-0 fsyncs while no follower runs (they time out).
        with concurrent.futures.ThreadPoolExecutor(20) as pool:
            list(pool.map(lambda i: http("PUT", cluster.url("kv-0") + f"/v1/kv/deposed-tail-{i}?w=majority",
                                         b"t", timeout=10), range(20)))
        tail_lsn = status(cluster, "kv-0")["lsn"]
        kv0 = cluster.pause("kv-0")
    finally:
        for pod in ("kv-1", "kv-2"):
            cluster.control("/v1/release", {"pod": pod})
    paused = [kv0]
    try:
        wait_for("another pod to lead", lambda: cluster.leader() in ("kv-1", "kv-2"), 30)
        acting = cluster.leader()
        assert acting is not None
        other = "kv-2" if acting == "kv-1" else "kv-1"
        code, headers, body = put_retrying(cluster, acting, "deposed-victim", b"new", "majority")
        assert code in (200, 201, 204), body
        version = int({k.lower(): v for k, v in headers.items()}["etag"].strip('"'))
        assert version <= tail_lsn, (version, tail_lsn)  # the new line's write sits below kv-0's tail
        # kv-0 wakes while the new primary is frozen: the other follower tells it of the new epoch, so it
        # follows a primary it cannot reach, and keeps its tail.
        paused.append(cluster.pause(acting))
        cluster.resume(kv0)
        wait_for(f"kv-0 to follow {acting}", lambda: primary_of(cluster, "kv-0") == acting, 30)
        paused.append(cluster.pause(other))  # before kv-0 would promise it an epoch: nothing changes now
        assert status(cluster, "kv-0")["lsn"] >= tail_lsn, "kv-0 dropped its tail: the case was not reached"
        code, headers, body = http("GET", cluster.url("kv-0") + "/v1/kv/deposed-victim", timeout=10)
        seen = {k.lower(): v for k, v in headers.items()}.get("x-kv-lsn")
        print(f"deposed kv-0 read: {code} {body[:60]!r} x-kv-lsn {seen}; replaced at {version}, tail {tail_lsn}")
        assert code == 200 and body == b"old", (code, body)
        assert seen is not None and int(seen) < version, (
            f"kv-0 answered the value replaced at {version} as fresh up to lsn {seen}")
        # Read-your-writes: a read that must reflect the new version waits for it, never shows the old one.
        code, _, body = http("GET", cluster.url("kv-0") + f"/v1/kv/deposed-victim?min_lsn={version}", timeout=30)
        assert code == 504 and b"min_lsn_timeout" in body, (code, body)
    finally:
        for pid in paused:
            cluster.resume(pid)
    wait_kv0_leads(cluster, 60)
    assert read_retrying(cluster, "kv-0", "deposed-victim") == (200, "new")


def put_retrying(cluster: LocalCluster, pod: str, key: str, value: bytes, w: str,
                 timeout: float = 15.0) -> tuple[int, dict[str, str], bytes]:
    """A PUT through ``pod``, retried while it answers 503 (a new primary not yet followed in its epoch)."""
    deadline = time.monotonic() + timeout
    while True:
        code, headers, body = http("PUT", cluster.url(pod) + f"/v1/kv/{key}?w={w}", value)
        if code != 503 or time.monotonic() > deadline:
            return code, headers, body
        time.sleep(0.1)
