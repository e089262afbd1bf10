"""Replication across real processes: write concerns, catch-up, snapshots, failover of reads,
an empty primary, read-your-writes, the peer token, and cascading.

Every test runs twice, once with followers pulling from kv-0 and once in
cascade (kv-N pulls from kv-N-1). After each test, every replica must hold
identical data at the same LSN.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import signal
import socket
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from http.client import HTTPConnection, HTTPException
from pathlib import Path
from typing import Iterator

import aiohttp
import pytest

from local_cluster import LocalCluster, http, wait_for
from kvstore.local.state import running_pid
from kvstore.replication.protocol import decode_message

RETENTION = 40  # small, so a follower that misses a few writes needs a snapshot


@pytest.fixture(scope="module", params=["primary", "previous"], ids=["pull-from-primary", "cascade"])
def cluster(request: pytest.FixtureRequest) -> Iterator[LocalCluster]:
    base = {"primary": "127.0.7", "previous": "127.0.8"}[request.param]
    c = LocalCluster(f"{base}.10", f"{base}.2", replicas=3, env={
        "KV_REPLICATE_FROM": request.param, "KV_WRITE_TIMEOUT": "2", "KV_LOG_RETENTION": str(RETENTION),
        "KV_READ_WAIT": "3"})
    c.up()
    try:
        yield c
    finally:
        c.down()


def put(c: LocalCluster, pod: str, key: str, value: bytes, w: str = "majority",
        timeout: float = 15) -> tuple[int, dict[str, str], dict]:
    status, headers, body = http("PUT", f"{c.url(pod)}/v1/kv/{urllib.parse.quote(key, safe='')}?w={w}",
                                 value, timeout=timeout)
    return status, headers, json.loads(body) if body else {}


def get(c: LocalCluster, pod: str, key: str, query: str = "") -> tuple[int, dict[str, str], bytes]:
    return http("GET", f"{c.url(pod)}/v1/kv/{urllib.parse.quote(key, safe='')}{query}")


def contents(c: LocalCluster, pod: str) -> tuple[int, str]:
    """(LSN, digest over every key and value) of one replica, read locally."""
    url = urllib.parse.urlsplit(c.url(pod))
    # One kept-alive connection for the whole read: a module's tests leave hundreds of keys, each
    # read from every pod after every test.
    conn = HTTPConnection(url.hostname or "", url.port, timeout=15)

    def fetch(path: str) -> tuple[int, bytes]:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    try:
        status, body = fetch("/v1/status")
        assert status == 200
        lsn = json.loads(body)["lsn"]
        digest = hashlib.sha256()
        start_after = None
        for _ in range(10_000):
            query = "limit=1000" + (f"&start_after={urllib.parse.quote(start_after, safe='')}" if start_after else "")
            status, body = fetch(f"/v1/kv?{query}")
            page = json.loads(body)
            for key in page["keys"]:
                s, value = fetch(f"/v1/kv/{urllib.parse.quote(key, safe='')}")
                if s == 200:
                    digest.update(len(key).to_bytes(4, "big") + key.encode() + len(value).to_bytes(4, "big") + value)
            if not page["more"]:
                break
            start_after = page["next_start_after"]
    finally:
        conn.close()
    return lsn, digest.hexdigest()


def wait_converged(c: LocalCluster, timeout: float = 60) -> tuple[int, str]:
    """Every live replica at the same LSN with the same digest; bounded."""
    def same() -> tuple[int, str] | None:
        try:
            c.wait_ready(timeout=1)
            names = list(c.pods())
            with ThreadPoolExecutor(len(names)) as pool:  # each pod read at once (they are separate processes)
                views = dict(zip(names, pool.map(lambda name: contents(c, name), names)))
        except (AssertionError, OSError, HTTPException, ValueError, KeyError):
            return None
        return next(iter(views.values())) if len(set(views.values())) == 1 else None
    return wait_for("replicas to converge", same, timeout, interval=0.5)


@pytest.fixture(autouse=True)
def converges_after(cluster: LocalCluster) -> Iterator[None]:
    yield
    try:
        wait_converged(cluster)
    except AssertionError:
        views = {}
        for name in cluster.pods():
            try:
                views[name] = contents(cluster, name)
            except Exception as exc:  # noqa: BLE001 - diagnostics only
                views[name] = repr(exc)
        raise AssertionError(f"replicas diverged: {views}\n{cluster.logs()}") from None


class PausedController:
    """SIGSTOP the controller, like a kubelet that does not restart pods; SIGCONT on exit."""

    def __init__(self, c: LocalCluster) -> None:
        self.pid = running_pid(c.directory)
        assert self.pid

    def __enter__(self) -> "PausedController":
        os.kill(self.pid, signal.SIGSTOP)
        return self

    def __exit__(self, *exc: object) -> None:
        os.kill(self.pid, signal.SIGCONT)


# ------------------------------------------------------------------- write concerns
def test_w_all_is_readable_on_every_replica_at_once(cluster: LocalCluster) -> None:
    status, headers, body = put(cluster, "kv-0", "all/direct", b"one", w="all")
    assert status == 200, body
    for pod in ("kv-1", "kv-2"):
        s, h, value = get(cluster, pod, "all/direct")
        assert (s, value) == (200, b"one"), pod
        assert h["ETag"] == headers["ETag"]
    # Through a secondary: forwarded to kv-0, the answer comes back as is.
    status, headers, body = put(cluster, "kv-2", "all/forwarded", b"two", w="all")
    assert status == 200 and headers.get("X-Kv-Answered-By") == "kv-0", (status, headers, body)
    # The headers every answer carries say who answered: kv-0, the primary.
    assert (headers.get("X-Kv-Pod"), headers.get("X-Kv-Role")) == ("kv-0", "primary"), headers
    for pod in ("kv-0", "kv-1", "kv-2"):
        assert get(cluster, pod, "all/forwarded")[2] == b"two"


def test_majority_succeeds_and_all_times_out_with_a_secondary_stopped(cluster: LocalCluster) -> None:
    pid = cluster.pause("kv-2")
    try:
        status, _, body = put(cluster, "kv-0", "concern/majority", b"m", w="majority")
        assert status == 200, body
        status, headers, body = put(cluster, "kv-0", "concern/all", b"a", w="all")
        assert status == 504, body
        assert body["error"] == "write_concern_timeout"
        assert body["confirmed"] == 2 and body["required"] == 3
        assert "durable on the primary" in body["message"]
        assert headers["ETag"] == f'"{body["version"]}"'
        # Durable on the primary means readable there.
        assert get(cluster, "kv-0", "concern/all")[2] == b"a"
    finally:
        cluster.resume(pid)
    assert put(cluster, "kv-0", "concern/after", b"x", w="all")[0] == 200


# ------------------------------------------------------------------------ catch-up
def test_sigkilled_secondary_catches_up(cluster: LocalCluster) -> None:
    with PausedController(cluster):
        os.kill(killed := cluster.pid("kv-1"), signal.SIGKILL)
        for i in range(10):  # fewer than the retained log: catch-up from the log
            assert put(cluster, "kv-0", f"catchup/{i}", b"v%d" % i, w="majority")[0] == 200
    cluster.wait_restarted("kv-1", killed)
    lsn, _ = wait_converged(cluster)
    assert get(cluster, "kv-1", "catchup/9", f"?min_lsn={lsn}")[2] == b"v9"


def test_secondary_that_missed_more_than_the_log_gets_a_snapshot(cluster: LocalCluster) -> None:
    # Killed, not paused: a paused follower still has what was pushed into its
    # socket before it stopped reading, and catches up from that.
    with PausedController(cluster):
        os.kill(killed := cluster.pid("kv-2"), signal.SIGKILL)
        for i in range(RETENTION * 3):
            assert put(cluster, "kv-0", f"snap/{i:03}", b"s" * 50, w="majority")[0] == 200
        # Logs are truncated in the background; wait until kv-2's position is gone
        # from its upstream (kv-0, or kv-1 in cascade).
        for upstream in ("kv-0", "kv-1"):
            wait_for(f"log truncation on {upstream}",
                     lambda: json.loads(http("GET", cluster.url(upstream) + "/v1/status")[2])
                     ["log_start"] > RETENTION, timeout=30)
    cluster.wait_restarted("kv-2", killed)
    wait_converged(cluster)
    metrics = http("GET", cluster.url("kv-2") + "/metrics")[2].decode()
    received = [line for line in metrics.splitlines()
                if line.startswith('kv_snapshot_transfers_total{direction="received"}')]
    assert received and float(received[0].split()[-1]) >= 1, received


def test_scale_up_replica_gets_everything(cluster: LocalCluster) -> None:
    assert put(cluster, "kv-0", "scale/before", b"b", w="all")[0] == 200
    cluster.scale(4)
    try:
        wait_converged(cluster)
        assert get(cluster, "kv-3", "scale/before")[2] == b"b"
        # w=all counts every pod kv-0's DNS lists: kv-3 once kv-0's next look at DNS found it.
        wait_for("kv-0 to count kv-3 among the members",
                 lambda: "kv-3" in json.loads(http("GET", cluster.url("kv-0") + "/v1/status")[2])
                 ["membership"]["members"], timeout=30)
        assert put(cluster, "kv-3", "scale/after", b"a", w="all")[0] == 200
        assert get(cluster, "kv-3", "scale/after")[2] == b"a"
    finally:
        cluster.scale(3)
    # Scaled back: kv-0 removes kv-3 from the voters once it left DNS (had kv-3 become
    # one); until then w=all waits for it. Then w=all means kv-0, kv-1 and kv-2 again.
    def three_voters() -> bool:
        membership = json.loads(http("GET", cluster.url("kv-0") + "/v1/status")[2])["membership"]
        return membership["voters"] == ["kv-0", "kv-1", "kv-2"] and membership["settled"] \
            and "kv-3" not in membership["members"]
    wait_for("kv-0 to count 3 voters again", three_voters, timeout=30)
    assert put(cluster, "kv-0", "scale/back", b"c", w="all")[0] == 200


# ----------------------------------------------------------------- primary failure
def test_primary_down_reads_go_on_writes_get_503_then_nothing_is_lost(cluster: LocalCluster) -> None:
    acknowledged = {}
    for i in range(20):
        # w=all: w=majority would leave the last writes on kv-0 and one follower,
        # and the reads below expect them on both.
        status, _, body = put(cluster, "kv-1", f"failover/{i}", b"f%d" % i, w="all")
        assert status == 200, body
        acknowledged[f"failover/{i}"] = b"f%d" % i
    with PausedController(cluster):
        os.kill(killed := cluster.pid("kv-0"), signal.SIGKILL)
        time.sleep(0.2)
        for pod in ("kv-1", "kv-2"):
            status, headers, value = get(cluster, pod, "failover/19")
            assert (status, value) == (200, b"f19"), pod
            # A 1 s client timeout: the answer must be quick, never a hang.
            status, headers, body = http("PUT", f"{cluster.url(pod)}/v1/kv/failover-during", b"x", timeout=1)
            assert status == 503, body
            assert headers.get("Retry-After") and json.loads(body)["error"] == "no_primary"
            # In the project's words, not aiohttp's ("Cannot connect to host … ssl:default").
            message = json.loads(body)["message"]
            assert "kv-0 does not answer on its peer port" in message and "connection refused" in message, message
            assert "ssl" not in message and "Connect call failed" not in message, message
    cluster.wait_restarted("kv-0", killed)
    for key, value in acknowledged.items():
        for pod in ("kv-0", "kv-1", "kv-2"):
            assert get(cluster, pod, key, "?consistency=strong" if pod == "kv-0" else "")[2] == value


def test_primary_with_an_empty_disk_restores_before_taking_writes(cluster: LocalCluster) -> None:
    acknowledged = {}
    for i in range(15):
        status, _, body = put(cluster, "kv-0", f"empty/{i}", b"e%d" % i)
        assert status == 200, body
        acknowledged[f"empty/{i}"] = b"e%d" % i
    before, _ = wait_converged(cluster)
    data_dir = Path(cluster.pods()["kv-0"]["data_dir"])
    with PausedController(cluster):
        os.kill(killed := cluster.pid("kv-0"), signal.SIGKILL)
        time.sleep(0.2)
        shutil.rmtree(data_dir)  # the PVC was lost
    cluster.wait_restarted("kv-0", killed)
    status, _, body = http("GET", cluster.url("kv-0") + "/v1/status")
    assert json.loads(body)["lsn"] >= before
    for key, value in acknowledged.items():
        assert get(cluster, "kv-0", key)[2] == value, key
    # The followers refused the empty kv-0 and retry with back-off (kv-2 in cascade
    # only once kv-1 follows the new epoch): soon a w=all write reaches both.
    wait_for("a w=all write on the restored kv-0", lambda: put(cluster, "kv-0", "empty/after", b"new",
                                                                 w="all")[0] == 200, timeout=30)
    log = (cluster.directory / "logs" / "kv-0.log").read_text()
    assert "recovery decided: heard every follower: copying kv-" in log


# ------------------------------------------------------------------------- reads
def test_min_lsn_gives_read_your_writes_on_a_secondary(cluster: LocalCluster) -> None:
    for i in range(5):
        status, headers, body = put(cluster, "kv-0", "ryw", b"v%d" % i, w="1")
        assert status == 200
        status, _, value = get(cluster, "kv-2", "ryw", f"?min_lsn={body['version']}")
        assert (status, value) == (200, b"v%d" % i)


def test_min_lsn_beyond_a_stopped_primary_is_504_not_a_hang(cluster: LocalCluster) -> None:
    lsn = json.loads(http("GET", cluster.url("kv-1") + "/v1/status")[2])["lsn"]
    status, _, body = get(cluster, "kv-1", "anything", f"?min_lsn={lsn + 1000}")
    assert status == 504 and json.loads(body)["error"] == "min_lsn_timeout"


def test_strong_reads_see_the_latest_acknowledged_write(cluster: LocalCluster) -> None:
    for i in range(5):
        assert put(cluster, "kv-0", "strong", b"s%d" % i, w="1")[0] == 200
        for pod in ("kv-1", "kv-2"):
            status, headers, value = get(cluster, pod, "strong", "?consistency=strong")
            assert (status, value) == (200, b"s%d" % i)
            assert headers.get("X-Kv-Answered-By") == "kv-0"


def test_status_shows_every_replica_with_lsn_and_lag(cluster: LocalCluster) -> None:
    put(cluster, "kv-0", "status/x", b"x", w="all")
    for pod in ("kv-0", "kv-1"):
        status = json.loads(http("GET", cluster.url(pod) + "/v1/status")[2])
        peers = {p["name"]: p for p in status["peers"]}
        assert set(peers) == {"kv-0", "kv-1", "kv-2"} - {pod}
        for row in peers.values():
            assert isinstance(row["lsn"], int) and isinstance(row["lag"], int), row


# ------------------------------------------------------------------------- token
@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic x"}])
def test_peer_calls_without_the_token_are_refused(cluster: LocalCluster, headers: dict[str, str]) -> None:
    pod = cluster.pods()["kv-0"]
    base = f"http://{pod['address']}:{pod['peer_port']}"
    for method, path in (("GET", "/v1/peer/stream?after=0&epoch=0&follower=x"), ("GET", "/v1/peer/snapshot"),
                         ("GET", "/v1/peer/status"), ("PUT", "/v1/kv/sneaky"),
                         ("POST", "/v1/peer/recover")):
        status, _, body = http(method, base + path, b"x" if method == "PUT" else None, headers)
        assert status == 401 and json.loads(body)["error"] == "unauthorized", (path, status)
    assert get(cluster, "kv-0", "sneaky")[0] == 404
    log = (cluster.directory / "logs" / "kv-0.log").read_text()
    assert "peer call refused" in log


@pytest.mark.parametrize("value", [b"Bearer \xff\xfe", b"\xc3\x28", b"Bearer " + b"\x80" * 300])
def test_a_malformed_authorization_header_is_a_401_not_a_500(cluster: LocalCluster, value: bytes) -> None:
    pod = cluster.pods()["kv-0"]
    with socket.create_connection((pod["address"], pod["peer_port"]), timeout=5) as sock:
        sock.sendall(b"GET /v1/peer/status HTTP/1.1\r\nHost: kv\r\nAuthorization: " + value
                     + b"\r\nConnection: close\r\n\r\n")
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 401"), answer[:200]
    assert json.loads(body)["error"] == "unauthorized"


def test_bad_log_stream_requests_get_clear_errors(cluster: LocalCluster) -> None:
    token = (cluster.directory / "token").read_text().strip()
    auth = {"Authorization": f"Bearer {token}"}
    pod = cluster.pods()["kv-0"]
    base = f"http://{pod['address']}:{pod['peer_port']}/v1/peer/stream"
    status = json.loads(http("GET", cluster.url("kv-0") + "/v1/status")[2])
    history, lsn, lineage = status["history_id"], status["lsn"], status["lineage"]
    assert lsn > 0, "the module's earlier tests wrote"
    epoch = next(e for e in reversed(lineage) if e["start"] <= lsn)
    at_lsn = f"after={lsn}&epoch={epoch['epoch']}&epoch_id={epoch['id']}&follower=t"
    for query, code, error in (("", 400, "bad_parameter"), ("after=x&epoch=0&follower=t", 400, "bad_parameter"),
                               ("after=-1&epoch=0&follower=t", 400, "bad_parameter"),
                               ("after=0&follower=t", 400, "bad_parameter"),
                               # the follower's entry `after` is another epoch's: log matching refuses
                               (f"after={lsn}&epoch={epoch['epoch']}&epoch_id={'0' * 32}&follower=t", 409,
                                "log_mismatch"),
                               (f"after={lsn}&epoch={epoch['epoch'] + 1}&epoch_id={epoch['id']}&follower=t", 409,
                                "log_mismatch"),
                               (f"after={lsn + 5}&epoch={epoch['epoch']}&epoch_id={epoch['id']}&follower=t", 409,
                                "follower_ahead"),
                               # valid, but not a WebSocket upgrade
                               (at_lsn, 400, "bad_request")):
        got, headers, body = http("GET", f"{base}?{query}", headers=auth)
        assert (got, json.loads(body)["error"]) == (code, error), (query, got, body)
        if code == 409:
            assert headers["X-Kv-Error"] == error and headers["X-Kv-History"] == history

    async def stream(ack: str) -> tuple[int, aiohttp.WSMsgType]:
        """Open a stream at kv-0's LSN, read the first message, send ``ack``; what comes next."""
        async with aiohttp.ClientSession(headers=auth) as session:
            params = {"after": str(lsn), "epoch": str(epoch["epoch"]), "epoch_id": epoch["id"],
                      "follower": "test-client"}
            async with session.ws_connect(base, params=params) as ws:
                first = await ws.receive(timeout=5)  # a keepalive within a second: nothing is written
                assert first.type == aiohttp.WSMsgType.BINARY
                upstream_lsn, _, _, entries = decode_message(first.data)
                assert upstream_lsn == lsn and entries == []
                await ws.send_str(ack)
                while True:
                    msg = await ws.receive(timeout=5)
                    if msg.type != aiohttp.WSMsgType.BINARY:
                        return upstream_lsn, msg.type
                    if ack == f"{lsn}/0":
                        return upstream_lsn, msg.type  # a good ack keeps the stream going

    assert asyncio.run(stream(f"{lsn}/0"))[1] == aiohttp.WSMsgType.BINARY
    for bad in ("x", f"{lsn}", f"{lsn + 1000}/0", f"{lsn}/0 kv-1", ""):  # the stream is dropped, the replica goes on
        assert asyncio.run(stream(bad))[1] in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED), bad
    assert put(cluster, "kv-0", "after-bad-acks", b"ok", w="all")[0] == 200


def test_peer_calls_with_the_token_work(cluster: LocalCluster) -> None:
    token = (cluster.directory / "token").read_text().strip()
    pod = cluster.pods()["kv-1"]
    status, _, body = http("GET", f"http://{pod['address']}:{pod['peer_port']}/v1/peer/status",
                           headers={"Authorization": f"Bearer {token}"})
    assert status == 200 and json.loads(body)["name"] == "kv-1"


@pytest.mark.parametrize("path", ["/v1/peer/recover", "/v1/peer/switchover"])
@pytest.mark.parametrize("body", [b"[" * 100_000 + b"]" * 100_000, b"{", b"[]", b'{"to": 7}', b'{"to": "db-1"}',
                                  b'{"to": "kv-1", "extra": 1}'])
def test_operator_calls_with_bad_bodies_get_a_400(cluster: LocalCluster, path: str, body: bytes) -> None:
    token = (cluster.directory / "token").read_text().strip()
    pod = cluster.pods()["kv-0"]
    status, _, answer = http("POST", f"http://{pod['address']}:{pod['peer_port']}{path}", body,
                             {"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    if path == "/v1/peer/recover" and body.startswith(b"{\"to\""):
        assert status in (400, 409), answer  # a JSON object without "action"
    else:
        assert status == 400 and json.loads(answer)["error"] == "bad_request", (status, answer[:200])
