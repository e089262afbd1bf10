"""`kvstore cluster`: real controllers, real `kvstore serve` pods, real SIGKILLs.

Each cluster here uses its own temp dir and its own loopback range
(127.0.3.x … 127.0.6.x), so a user's cluster on 127.0.0.10+ is never touched.
Every fixture stops what it started: `cluster down`, then SIGKILL of the
controller if it is still there (its pods die with it: PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import dns.message
import dns.query
import pytest

from kvstore import config as config_mod
from kvstore.discovery import PeerDirectory
from kvstore.local.handle import LocalCluster, wait_for
from kvstore.local.handle import run_cli as kvstore  # the real command line
from kvstore.local.state import ClusterError, read_state, running_pid


def pods(directory: Path) -> dict[str, dict[str, Any]]:
    return {p["name"]: p for p in read_state(directory)["pods"]}


def all_ready(directory: Path, count: int) -> bool:
    try:
        current = pods(directory)
    except ClusterError:  # the controller holds its lock but has not written its state yet
        return False
    return len(current) == count and all(p["ready"] for p in current.values())


def stop_cluster(directory: Path) -> None:
    """`down`, and if that fails, SIGKILL the controller; never leave one running."""
    LocalCluster(directory).down()


def one_line_error(result: subprocess.CompletedProcess[str], code: int, text: str) -> None:
    assert result.returncode == code, result
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert text in lines[-1]
    if code == 1:
        assert len(lines) == 1, lines
    else:  # argparse: the usage, then one error line
        assert lines[0].startswith("usage:") and sum("error:" in line for line in lines) == 1


def http(method: str, url: str, body: bytes | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, method=method)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@pytest.fixture
def cluster_dir() -> Iterator[Path]:
    directory = Path(tempfile.mkdtemp(prefix="kvc-"))
    try:
        yield directory
    finally:
        stop_cluster(directory)
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Path]:
    """A 3-replica OrderedReady cluster shared by the module's tests, detached."""
    directory = Path(tempfile.mkdtemp(prefix="kvc-"))
    try:
        result = kvstore("cluster", "up", "--detach", "--dir", str(directory), "--replicas", "3",
                         "--base-address", "127.0.3.10", "--dns-address", "127.0.3.2",
                         "--grace", "5", "--timeout", "60")
        assert result.returncode == 0, result.stderr
        yield directory
    finally:
        stop_cluster(directory)
        shutil.rmtree(directory, ignore_errors=True)


# -- one shared cluster ----------------------------------------------------------------------

def test_up_starts_pods_in_order_with_their_identity(cluster: Path) -> None:
    current = pods(cluster)
    assert sorted(current) == ["kv-0", "kv-1", "kv-2"]
    for ordinal in (1, 2):
        pod, previous = current[f"kv-{ordinal}"], current[f"kv-{ordinal - 1}"]
        assert pod["created_at"] >= previous["ready_at"], "OrderedReady: created after its predecessor was Ready"
    for name, pod in current.items():
        ordinal = int(name.split("-")[1])
        assert pod["address"] == f"127.0.3.{10 + ordinal}" and pod["http_port"] == 8080
        assert Path(pod["data_dir"]) == cluster / f"data-{name}"
        status, body = http("GET", f"http://{pod['address']}:8080/v1/status")
        assert status == 200
        info = json.loads(body)
        assert info["name"] == name and info["role"] == ("primary" if ordinal == 0 else "secondary")
    token = cluster / "token"
    assert token.stat().st_mode & 0o777 == 0o600 and len(token.read_text().strip()) >= 32
    state = read_state(cluster)
    assert state["replicas"] == 3 and state["policy"] == "OrderedReady"


def test_a_healthy_start_shows_no_fault_on_the_dashboard(cluster: Path) -> None:
    # kv-1 starts while kv-0 still waits to hear kv-2 (OrderedReady): waiting for a recovering
    # kv-0 is part of every start, not a stalled follower (a red event on the dashboard).
    status, body = http("GET", "http://127.0.3.11:8080/v1/events?limit=500")
    assert status == 200
    events = json.loads(body)["events"]
    kinds = [event["kind"] for event in events]
    assert "waiting" in kinds, events
    assert not {"stalled", "diverged", "upstream_lost", "down"} & set(kinds), events


def test_status_prints_a_kubectl_like_table(cluster: Path) -> None:
    result = kvstore("cluster", "status", "--dir", str(cluster))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[0].split() == ["STATEFULSET", "READY", "POLICY", "UPDATE-STRATEGY", "CURRENT-REVISION",
                                "UPDATE-REVISION", "ROLLOUT"]
    revision = read_state(cluster)["rollout"]["update_revision"]
    assert lines[1].split() == ["kv", "3/3", "OrderedReady", "RollingUpdate", revision, "(1)", revision, "(1)",
                                "complete"]
    assert lines[2] == ""
    assert lines[3].split() == ["NAME", "READY", "STATUS", "RESTARTS", "AGE", "ADDRESS", "ROLE", "LSN", "REVISION"]
    rows = [line.split() for line in lines[4:]]
    assert [r[8] for r in rows] == [revision] * 3
    assert [r[0] for r in rows] == ["kv-0", "kv-1", "kv-2"]
    assert [r[1:3] for r in rows] == [["1/1", "Running"]] * 3
    assert [r[5] for r in rows] == ["127.0.3.10:8080", "127.0.3.11:8080", "127.0.3.12:8080"]
    assert [r[6] for r in rows] == ["primary", "secondary", "secondary"]
    assert all(r[7].isdigit() for r in rows)


def test_dns_publishes_every_pod(cluster: Path) -> None:
    host, port = read_state(cluster)["dns"].rsplit(":", 1)
    query = dns.message.make_query("_peer._tcp.kv.default.svc.cluster.local.", "SRV")
    reply = dns.query.udp(query, host, port=int(port), timeout=2)
    targets = sorted((r.target.to_text(), r.port) for r in reply.answer[0])
    assert targets == [(f"kv-{o}.kv.default.svc.cluster.local.", 8081) for o in range(3)]


def test_killed_pod_comes_back_with_its_name_and_data(cluster: Path) -> None:
    before = pods(cluster)["kv-0"]
    status, _ = http("PUT", "http://127.0.3.10:8080/v1/kv/survivor?w=1", b"still here")
    assert status == 200
    result = kvstore("cluster", "kill", "kv-0", "--dir", str(cluster))
    assert result.returncode == 0, result.stderr
    seen = set()

    def restarted() -> dict[str, Any] | None:
        pod = pods(cluster)["kv-0"]
        seen.add(pod["status"])
        return pod if pod["restarts"] > before["restarts"] and pod["ready"] else None

    after = wait_for("kv-0 to restart and be Ready", restarted, interval=0.02)
    # Like `kubectl delete pod`: a new pod (Pending), not a crash loop.
    assert "CrashLoopBackOff" not in seen and "Pending" in seen, seen
    assert after["pid"] != before["pid"]
    assert after["last_exit"] == -signal.SIGKILL
    assert (after["address"], after["data_dir"]) == (before["address"], before["data_dir"])
    status, body = http("GET", "http://127.0.3.10:8080/v1/kv/survivor")
    assert (status, body) == (200, b"still here")


def test_scale_up_and_down_is_seen_by_discovery_and_keeps_data(cluster: Path) -> None:
    state = read_state(cluster)
    cfg = config_mod.load(env={"POD_NAME": "kv-1", "KV_DNS_SERVER": state["dns"]})
    directory = PeerDirectory(cfg, timeout=0.5, lifetime=1.0)

    def peers() -> list[str]:
        import asyncio
        return sorted(p.name for p in asyncio.run(directory.refresh()).values())

    assert peers() == ["kv-0", "kv-2"]
    result = kvstore("cluster", "scale", "4", "--wait", "--timeout", "60", "--dir", str(cluster))
    assert result.returncode == 0, result.stderr
    assert peers() == ["kv-0", "kv-2", "kv-3"]  # a peer that joined later
    assert pods(cluster)["kv-3"]["created_at"] >= pods(cluster)["kv-2"]["ready_at"]
    result = kvstore("cluster", "scale", "3", "--wait", "--timeout", "60", "--dir", str(cluster))
    assert result.returncode == 0, result.stderr
    assert peers() == ["kv-0", "kv-2"]  # ...and one that left
    assert sorted(pods(cluster)) == ["kv-0", "kv-1", "kv-2"]
    assert (cluster / "data-kv-3").is_dir(), "scale-down keeps the volume"


def test_commands_refuse_bad_input_against_a_running_cluster(cluster: Path) -> None:
    one_line_error(kvstore("cluster", "up", "--dir", str(cluster), "--base-address", "127.0.3.110"),
                   1, "already running")
    one_line_error(kvstore("cluster", "kill", "kv-9", "--dir", str(cluster)), 1, "kv-9 not found")
    one_line_error(kvstore("cluster", "scale", "-1", "--dir", str(cluster)), 2, "expected an integer")
    one_line_error(kvstore("cluster", "scale", "abc", "--dir", str(cluster)), 2, "expected an integer")
    assert all_ready(cluster, 3)


# -- no cluster at all -------------------------------------------------------------------------

def test_commands_without_a_cluster_say_so(cluster_dir: Path) -> None:
    for command in (["status"], ["down"], ["kill", "kv-0"], ["scale", "2"]):
        one_line_error(kvstore("cluster", *command, "--dir", str(cluster_dir)), 1, "no cluster is running")
    one_line_error(kvstore("cluster", "status", "--dir", str(cluster_dir / "nowhere")), 1, "no cluster")


def test_up_refuses_bad_flags(cluster_dir: Path) -> None:
    d = str(cluster_dir)
    one_line_error(kvstore("cluster", "up", "--dir", d, "--replicas", "abc"), 2, "expected an integer")
    one_line_error(kvstore("cluster", "up", "--dir", d, "--replicas", "-3"), 2, "expected an integer")
    one_line_error(kvstore("cluster", "up", "--dir", d, "--base-address", "10.0.0.1"), 2, "127.0.0.0/8")
    one_line_error(kvstore("cluster", "up", "--dir", d, "--runtime", "podman"), 2, "invalid choice")
    one_line_error(kvstore("cluster", "up", "--dir", d, "--base-address", "127.255.255.254"),
                   1, "past the loopback range")
    blocker = cluster_dir / "a-file"
    blocker.write_text("")
    one_line_error(kvstore("cluster", "up", "--dir", str(blocker / "cluster")), 1, "not a writable directory")
    assert running_pid(cluster_dir) is None


def test_up_refuses_a_port_in_use(cluster_dir: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.4.11", 8081))
        taken.listen()
        result = kvstore("cluster", "up", "--dir", str(cluster_dir), "--base-address", "127.0.4.10")
    one_line_error(result, 1, "127.0.4.11:8081 for kv-1 is in use")
    assert running_pid(cluster_dir) is None


# -- pod management policies, with a pod that cannot start -------------------------------------

def _broken_kv0(directory: Path) -> Path:
    # A file where kv-0's volume should be: its container fails until the file goes.
    blocker = directory / "data-kv-0"
    blocker.write_text("not a directory")
    return blocker


def test_ordered_ready_waits_for_each_pod(cluster_dir: Path) -> None:
    blocker = _broken_kv0(cluster_dir)
    result = kvstore("cluster", "up", "--detach", "--dir", str(cluster_dir), "--replicas", "2",
                     "--base-address", "127.0.5.10", "--dns-address", "127.0.5.2", "--timeout", "1")
    assert result.returncode == 1 and "not all pods Ready" in result.stderr
    wait_for("kv-0 to be restarted", lambda: pods(cluster_dir)["kv-0"]["restarts"] >= 1)
    assert list(pods(cluster_dir)) == ["kv-0"], "kv-1 must wait for kv-0 to be Ready"
    blocker.unlink()
    wait_for("both pods Ready", lambda: all_ready(cluster_dir, 2), 60)
    current = pods(cluster_dir)
    assert current["kv-1"]["created_at"] >= current["kv-0"]["ready_at"]


def test_parallel_starts_pods_without_waiting(cluster_dir: Path) -> None:
    _broken_kv0(cluster_dir)
    result = kvstore("cluster", "up", "--detach", "--parallel", "--dir", str(cluster_dir),
                     "--replicas", "3", "--base-address", "127.0.6.10", "--dns-address", "127.0.6.2",
                     "--timeout", "1")
    assert result.returncode == 1
    wait_for("kv-1 and kv-2 Ready", lambda: all(
        pods(cluster_dir).get(n, {}).get("ready") for n in ("kv-1", "kv-2")), 60)
    current = pods(cluster_dir)
    assert not current["kv-0"]["ready"] and current["kv-0"]["status"] in ("CrashLoopBackOff", "Running")
    assert read_state(cluster_dir)["policy"] == "Parallel"


def test_foreground_up_stops_in_reverse_order_on_ctrl_c(cluster_dir: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "kvstore", "cluster", "up", "--dir", str(cluster_dir), "--replicas", "2",
         "--base-address", "127.0.10.10", "--dns-address", "127.0.10.2"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL,
    )
    try:
        wait_for("both pods Ready", lambda: running_pid(cluster_dir) and all_ready(cluster_dir, 2), 60)
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == 0, output
    lines = output.splitlines()
    assert any(line.split()[:3] == ["kv-1", "1/1", "Running"] for line in lines if line.strip())
    deleted = [line.split()[0] for line in lines if line.endswith("deleted")]
    assert deleted == ["kv-1", "kv-0"]
    assert running_pid(cluster_dir) is None
    assert not (cluster_dir / "cluster.json").exists()
