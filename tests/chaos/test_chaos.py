"""`kvstore chaos` for real: processes, SIGKILL (kv-0 included), SIGSTOP, an iptables partition.

The bounded run (~75 s of faults) is part of the default suite; the 10-minute
soak runs with ``pytest --soak tests/chaos``.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import pytest

import needs
from local_cluster import LocalCluster, http, wait_for
from kvstore.chaos.cli import free_loopback_range
from kvstore.chaos.nemesis import LoopbackPartitioner

needs_root = pytest.mark.usefixtures("as_root")


@pytest.fixture
def as_root() -> None:
    """Partitions need root (iptables, net_cls): a skip without it, a failure in CI."""
    needs.root("a partition (iptables, net_cls)")
ROOT = os.geteuid() == 0
NET_CLS = Path("/sys/fs/cgroup/net_cls")

# What a bounded run must have done, at least, to prove anything: writes, compare-and-sets,
# creates, deletes, transactions whose comparisons held and each kind of read that succeeded
# (a run where every write failed proves nothing about lost writes).
MIN_OK = {"put": 200, "cas": 20, "create": 5, "delete": 20, "read/strong": 200, "read/min_lsn": 50,
          "read/local": 50, "txn": 20}


def chaos(out: Path, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kvstore", "chaos", "--out", str(out), *args],
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def tagged_rules(tag: str) -> list[str]:
    """iptables rules carrying ``tag`` (a run's own: runs beside this one keep theirs).

    Without iptables nothing can be listed: callers check ``shutil.which("iptables")`` first
    and say so instead of passing on an empty list.
    """
    iptables = shutil.which("iptables")
    assert iptables, "iptables is not installed: rules cannot be listed"
    listing = subprocess.run([iptables, "-w", "5", "-S", "OUTPUT"], capture_output=True, text=True, timeout=30)
    assert listing.returncode == 0, f"iptables -S failed: {listing.stderr}"
    return [line for line in listing.stdout.splitlines() if f"{tag} " in line + " "]


def leftovers(run: str) -> list[str]:
    """What a run left behind that it should have removed: tagged iptables rules, its net_cls cgroup."""
    found = []
    if shutil.which("iptables"):
        found += tagged_rules(run)
    else:
        warnings.warn(f"iptables is not installed: rules left by {run} were not looked for")
    if (NET_CLS / run).exists():
        found.append(f"cgroup {NET_CLS / run}")
    return found


def assert_clean_run(out: Path, result: subprocess.CompletedProcess[str], kills: int,
                     nemesis: tuple[str, ...]) -> dict[str, Any]:
    report = json.loads((out / "report.json").read_text())
    assert result.returncode == 0, result.stdout + result.stderr
    assert report["verdict"] == "PASS", report["violations"][:5]
    faults = report["faults"]
    assert faults.get("kill", 0) >= kills and faults.get("kill_primary", 0) >= 1, faults
    for kind in nemesis:
        assert faults.get(kind, 0) >= 1, (kind, faults)
    succeeded = {kind: row.get("ok", 0) for kind, row in report["outcomes"].items()}
    short = {kind: (succeeded.get(kind, 0), least) for kind, least in MIN_OK.items()
             if succeeded.get(kind, 0) < least}
    assert not short, f"too few successful operations (got, wanted): {short}"
    # The watchers read and the checker judged their events (every acknowledged write in a watched range).
    assert report["watch"]["events"] > 0 and report["watch"]["covered_writes"] > 0, report["watch"]
    # Transactions were checked: acknowledged ones on both branches, their comparisons judged.
    txns = report["transactions"]
    assert txns.get("succeeded", 0) > 0 and txns.get("not_succeeded", 0) > 0, txns
    assert txns.get("compares_judged", 0) > 0, txns
    assert "transactions: " in result.stdout
    # The history and fault log are JSON lines with what the report counted.
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert {op["outcome"] for op in history} <= {"ok", "failed", "unknown"}
    fault_log = [json.loads(line) for line in (out / "faults.jsonl").read_text().splitlines()]
    assert sum(1 for f in fault_log if f["fault"] == "kill") == faults["kill"]
    # Every pause was resumed and every partition healed.
    for fault, undo in (("pause", "resume"), ("partition", "heal")):
        assert (sum(1 for f in fault_log if f["fault"] == fault)
                == sum(1 for f in fault_log if f["fault"] == undo)), fault_log
    # Nothing left behind: no rule, no cgroup, no process of the cluster it started.
    assert leftovers(report["run"]) == []
    directory = next((line.rsplit(" in ", 1)[1].strip() for line in result.stderr.splitlines()
                      if "starting a" in line), None)
    if directory is not None:
        assert not Path(directory).exists() and processes_in(directory) == []
    assert "verdict: PASS" in result.stdout
    return report


def test_bounded_chaos_run_kills_pauses_partitions_and_passes(tmp_path: Path) -> None:
    # Partitions need root; without it the run still kills and pauses, and says what it left out.
    nemesis = ("kill", "pause", "partition") if ROOT else ("kill", "pause")
    if not ROOT:
        warnings.warn("not root: the bounded chaos run has no partitions (iptables and net_cls need root)")
    result = chaos(tmp_path, "--duration", "75", "--nemesis", ",".join(nemesis), "--seed", "20261122",
                   timeout=420)
    assert_clean_run(tmp_path, result, kills=5, nemesis=nemesis)
    assert (tmp_path / "logs" / "kv-0.log").exists()  # pod logs of the cluster it made, kept
    # The saved run checks the same offline; with one acknowledged write removed from every
    # replica's final state, the checker reports it lost.
    again = chaos(tmp_path, "--recheck", str(tmp_path), timeout=120)
    assert again.returncode == 0 and "verdict: PASS" in again.stdout, again.stdout + again.stderr
    history = [json.loads(line) for line in (tmp_path / "history.jsonl").read_text().splitlines()]
    # With one acknowledged write's event taken out of a watcher's stream, the checker reports a gap.
    watch_lines = (tmp_path / "watch.jsonl").read_text().splitlines()
    acked = {(op["key"], op["version"]) for op in history if op["outcome"] == "ok" and op["version"] is not None}
    cut = next(i for i, line in enumerate(watch_lines)
               if json.loads(line)["type"] == "put" and (json.loads(line)["key"], json.loads(line)["version"]) in acked)
    (tmp_path / "watch.jsonl").write_text("\n".join(watch_lines[:cut] + watch_lines[cut + 1:]) + "\n")
    gap = chaos(tmp_path, "--recheck", str(tmp_path), timeout=120)
    assert gap.returncode == 1 and "watch_gap 1" in gap.stdout, gap.stdout + gap.stderr
    (tmp_path / "watch.jsonl").write_text("\n".join(watch_lines) + "\n")
    # With one acknowledged transaction's answer listing a key a version off, it is torn.
    history_lines = (tmp_path / "history.jsonl").read_text().splitlines()
    at = next(i for i, op in enumerate(history) if op["f"] == "txn" and op["outcome"] == "ok"
              and len(op["changed"] or ()) >= 2)
    torn = dict(history[at], changed=[*history[at]["changed"][:-1],
                                      dict(history[at]["changed"][-1], version=history[at]["version"] + 1)])
    (tmp_path / "history.jsonl").write_text("\n".join(
        history_lines[:at] + [json.dumps(torn)] + history_lines[at + 1:]) + "\n")
    broken = chaos(tmp_path, "--recheck", str(tmp_path), timeout=120)
    assert broken.returncode == 1 and "txn_torn 1" in broken.stdout, broken.stdout + broken.stderr
    (tmp_path / "history.jsonl").write_text("\n".join(history_lines) + "\n")
    final = json.loads((tmp_path / "final.json").read_text())
    # A key an unanswered delete or transaction may have removed is allowed to be gone: not a victim.
    maybe_deleted = {op["key"] for op in history if op["f"] == "delete" and op["outcome"] == "unknown"}
    maybe_deleted |= {key for op in history if op["f"] == "txn" and op["outcome"] == "unknown"
                      for key in op.get("keys") or ()}
    victim = next(op["key"] for op in reversed(history)
                  if op["f"] == "put" and op["outcome"] == "ok" and op["key"] in final["kv-0"]["contents"]
                  and op["key"] not in maybe_deleted)
    for replica in final.values():
        del replica["contents"][victim]
    (tmp_path / "final.json").write_text(json.dumps(final))
    lost = chaos(tmp_path, "--recheck", str(tmp_path), timeout=120)
    assert lost.returncode == 1 and "verdict: FAIL" in lost.stdout, lost.stdout + lost.stderr
    assert f"lost_write: {victim}" in lost.stdout
    # A final state with a replica missing, or none at all, is no pass either.
    del final["kv-2"]
    (tmp_path / "final.json").write_text(json.dumps(final))
    missing = chaos(tmp_path, "--recheck", str(tmp_path), timeout=120)
    assert missing.returncode == 1 and "missing_final_view" in missing.stdout, missing.stdout + missing.stderr
    (tmp_path / "final.json").write_text("{}")
    empty = chaos(tmp_path, "--recheck", str(tmp_path), timeout=120)
    assert empty.returncode == 1 and "verdict: FAIL" in empty.stdout, empty.stdout + empty.stderr


@needs_root
def test_leftover_rules_and_cgroups_are_detected() -> None:
    # The leftover check must be able to fail: a rule and a cgroup left on purpose are found.
    run = f"kvstore-chaos-leftover-{os.getpid()}"
    iptables = shutil.which("iptables")
    rule = ["OUTPUT", "-d", "127.0.64.1", "-m", "comment", "--comment", run, "-j", "DROP"]
    try:
        if iptables:
            subprocess.run([iptables, "-w", "5", "-A", *rule], check=True, timeout=30)
        if NET_CLS.exists():
            (NET_CLS / run).mkdir()
        found = leftovers(run)
        if iptables:
            assert any(line.startswith("-A OUTPUT") and run in line for line in found), found
        else:
            warnings.warn("iptables is not installed: only leftover cgroups were looked for")
        if NET_CLS.exists():
            assert f"cgroup {NET_CLS / run}" in found, found
        assert found, "nothing could be checked: neither iptables nor net_cls is available"
    finally:
        if iptables:
            subprocess.run([iptables, "-w", "5", "-D", *rule], timeout=30)
        if (NET_CLS / run).exists():
            (NET_CLS / run).rmdir()
    assert leftovers(run) == []


@pytest.mark.soak
@pytest.mark.timeout(1500)
@needs_root
def test_soak_ten_minutes(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    if not request.config.getoption("--soak"):
        pytest.skip("the 10-minute soak runs with --soak")
    result = chaos(tmp_path, "--duration", "600", "--nemesis", "kill,pause,partition", timeout=1200)
    report = assert_clean_run(tmp_path, result, kills=100, nemesis=("kill", "pause", "partition"))
    assert report["faults"]["kill_primary"] * 3 >= report["faults"]["kill"], report["faults"]
    print(result.stdout)


@needs_root
def test_partition_cuts_a_pod_off_its_peers_but_not_off_the_client() -> None:
    x = free_loopback_range(random.Random(), 3)  # not a fixed range: benchmarks and tests may run beside
    cluster = LocalCluster(f"127.0.{x}.10", f"127.0.{x}.2", replicas=3, env={"KV_WRITE_TIMEOUT": "1"}).up()
    partitioner = LoopbackPartitioner(f"test-partition-{os.getpid()}", f"127.0.{x}.250", 0x77)
    try:
        check_partition(cluster, partitioner)
    finally:
        cluster.down()


def check_partition(cluster: LocalCluster, partitioner: LoopbackPartitioner) -> None:
    try:
        partitioner.isolate(cluster.pods()["kv-2"]["address"], cluster.pid("kv-2"))
        assert len(tagged_rules(partitioner.tag)) >= 2
        # A push kv-0 sent just before the cut may still arrive (a message in flight);
        # after that, nothing: kv-2's own packets are dropped.
        assert http("PUT", cluster.url("kv-0") + "/v1/kv/in-flight?w=1", b"maybe")[0] == 200
        time.sleep(1)
        assert http("PUT", cluster.url("kv-0") + "/v1/kv/cut?w=1", b"while-cut")[0] == 200
        # kv-0 cannot hear from kv-2 either: w=all times out (the write is applied on kv-0).
        assert http("PUT", cluster.url("kv-0") + "/v1/kv/cut2?w=all", b"x")[0] == 504
        # The partition is real, not a dead process: kv-2 still answers a client bound to the
        # chaos client's address, and it is behind: it never got the write.
        assert shutil.which("curl"), "curl is needed to bind the client address"
        answer = subprocess.run(
            ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--interface", partitioner.client_address,
             "--max-time", "5", cluster.url("kv-2") + "/v1/kv/cut"], capture_output=True, text=True, timeout=15)
        assert answer.stdout == "404", answer
        # Anybody else (here: this test's own unbound connections) cannot reach it.
        with pytest.raises(OSError):
            http("GET", cluster.url("kv-2") + "/healthz", timeout=2)
    finally:
        partitioner.cleanup()
    assert tagged_rules(partitioner.tag) == []
    wait_for("kv-2 to catch up after the heal",
             lambda: http("GET", cluster.url("kv-2") + "/v1/kv/cut", timeout=2)[2] == b"while-cut", 30)


def test_a_run_against_a_running_cluster_keeps_its_pod_logs_and_leaves_it_running(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with LocalCluster("127.0.30.10", "127.0.30.2", replicas=1) as cluster:  # one pod: the quickest to start
        result = chaos(out, "--dir", str(cluster.directory), "--nemesis", "none", "--duration", "2",
                       "--clients", "2", timeout=240)
        assert result.returncode == 0, result.stdout + result.stderr
        assert f"the pod logs in {out / 'logs'}" in result.stderr
        for name in ("kv-0", "controller"):
            assert (out / "logs" / f"{name}.log").stat().st_size > 0, name
        assert all(pod["ready"] for pod in cluster.pods().values())  # left running


def test_bad_flags_are_one_line_errors_with_status_2(tmp_path: Path) -> None:
    for args in (["--duration", "soon"], ["--nemesis", "kill,flood"], ["--runtime", "vm"]):
        result = chaos(tmp_path, *args, timeout=60)
        assert result.returncode == 2, (args, result.stderr)
        errors = [line for line in result.stderr.splitlines() if "error:" in line]
        assert len(errors) == 1, result.stderr
    result = chaos(tmp_path, "--dir", str(tmp_path / "none"), "--duration", "5", timeout=60)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr


def _sigint_as_in_a_terminal() -> None:
    """The child takes SIGINT as a KeyboardInterrupt even when the suite runs as a background job
    (a shell starts those with SIGINT ignored, and Python then keeps ignoring it)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@needs_root
def test_ctrl_c_heals_everything_and_stops_the_cluster(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "kvstore", "chaos", "--out", str(tmp_path), "--duration", "120",
                             "--nemesis", "pause,partition", "--interval", "0.3"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL,
                            preexec_fn=_sigint_as_in_a_terminal)
    try:
        lines = []
        for _ in range(20):  # bounded: the tool says where its cluster is, then that it runs
            lines.append(proc.stderr.readline())
            if "running" in lines[-1] or not lines[-1]:
                break
        directory = next(line.rsplit(" in ", 1)[1].strip() for line in lines if "starting a" in line)
        time.sleep(12)  # faults come every ~0.3 s and last seconds: some are in place now
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    faults = [json.loads(line) for line in (tmp_path / "faults.jsonl").read_text().splitlines()]
    injected = [f for f in faults if f["fault"] in ("pause", "partition")]
    healed = [f for f in faults if f["fault"] in ("resume", "heal")]
    assert injected and len(healed) == len(injected), faults
    run = next(line.rsplit(" run ", 1)[1].strip() for line in lines if " run kvstore-chaos-" in line)
    assert leftovers(run) == []
    assert not Path(directory).exists()
    assert processes_in(directory) == [], "processes of the chaos cluster are still running"


def processes_in(directory: str) -> list[int]:
    """Pids whose command line or working directory (a pod runs in its data dir) is in ``directory``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cwd = os.readlink(entry / "cwd")
            cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if cwd.startswith(directory) or directory in cmdline:
            found.append(int(entry.name))
    return found
