"""The controller's faults against a real local StatefulSet: each really happens, and heals.

One 3-pod cluster (127.0.95.x, or the /24 that ``KV_TEST_NEMESES_NET``
names, e.g. ``127.0.72``) serves the whole file. These tests check the fault
mechanics only: what the store makes of a lost or rolled-back volume is the
chaos checker's business, not theirs; the zombie kv-0 also runs in a short
``kvstore chaos`` against the same cluster, to see that it is reached and
judged. The full stop with kv-0's volume lost runs last, since the store may
come out of it with replicas that disagree.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import aiohttp
import dns.exception
import dns.resolver
import pytest

from local_cluster import LocalCluster, http
from kvstore.chaos.nemesis import FaultFailed, LocalBackend, Nemesis, NemesisConfig, PodInfo, local_pods
from kvstore.local import control
from kvstore.local.handle import run_cli
from kvstore.local.state import ClusterError
from kvstore.storage import Store

NET = os.environ.get("KV_TEST_NEMESES_NET", "127.0.95")
BASE, DNS_ADDRESS, CLIENT = f"{NET}.10", f"{NET}.2", f"{NET}.250"
SERVICE = "kv.default.svc.cluster.local"
ALL = ["kv-0", "kv-1", "kv-2"]
MARKER = "left-by-the-test"  # a file LevelDB ignores: gone only if the whole dir was removed


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    c = LocalCluster(BASE, DNS_ADDRESS, replicas=3,
                     env={"KV_WRITE_TIMEOUT": "2", "KV_READ_WAIT": "2", "KV_REFRESH_INTERVAL": "1"}).up()
    try:
        yield c
    finally:
        c.down()


class Observed(LocalBackend):
    """The real backend, noting what a pod's data dir holds at the moment it is let go again."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory, "process", f"test-{os.getpid()}", CLIENT)
        self.keys: tuple[str, ...] = ()
        self.at_release: list[dict[str, Any]] = []

    async def release(self, pod: str) -> None:
        self.at_release.append(await read_volume(self.directory / f"data-{pod}", self.keys, pod=pod))
        await super().release(pod)

    async def start_pods(self) -> None:
        await asyncio.sleep(1.5)  # the controller would restart a pod within this: stopped ones stay stopped
        self.at_release.append({"pods": local_pods(self.directory),
                                "volumes": sorted(p.name for p in self.directory.glob("data-kv-*"))})
        await super().start_pods()


async def read_volume(path: Path, keys: tuple[str, ...], **extra: Any) -> dict[str, Any]:
    """A stopped pod's data dir as its own store reads it: LSN and which of ``keys`` it holds."""
    if not path.exists():
        return {"exists": False, **extra}
    store = Store.open(str(path))
    try:
        held = {key: await store.get(key.encode()) is not None for key in keys}
        return {"exists": True, "marker": (path / MARKER).exists(), "lsn": store.lsn, "keys": held, **extra}
    finally:
        await store.close()


@pytest.fixture
def backend(cluster: LocalCluster) -> Iterator[Observed]:
    b = Observed(cluster.directory)
    try:
        yield b
    finally:
        b.cleanup()  # heals whatever a failed test left in place
        cluster.wait_ready(ALL, timeout=90)


def nemesis(backend: Observed) -> Nemesis:
    return Nemesis(backend, NemesisConfig(faults=("volume-loss", "volume-rollback", "dns", "restart-all"),
                                          restart_wait=45, ready_wait=60, seed=1), clock=time.monotonic)


def pod(cluster: LocalCluster, name: str) -> PodInfo:
    return next(p for p in local_pods(cluster.directory) if p.name == name)


def resolver(cluster: LocalCluster) -> dns.resolver.Resolver:
    host, port = json.loads((cluster.directory / "cluster.json").read_text())["dns"].split(":")
    r = dns.resolver.Resolver(configure=False)
    r.nameservers, r.port, r.timeout, r.lifetime, r.cache = [host], int(port), 0.5, 1.0, None
    return r


def srv_targets(cluster: LocalCluster) -> list[str] | str:
    """The pods the headless Service's SRV record lists, or what went wrong."""
    try:
        answer = resolver(cluster).resolve(f"_peer._tcp.{SERVICE}", "SRV", search=False)
    except dns.exception.Timeout:
        return "timeout"
    except dns.resolver.NXDOMAIN:
        return "nxdomain"
    return sorted(str(r.target).split(".")[0] for r in answer)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def put(cluster: LocalCluster, key: str, value: bytes) -> None:
    # kv-0 is Ready, after a fault, before it has finished recovering (503): wait for it, bounded.
    deadline = time.monotonic() + 30
    while True:
        status, _, body = http("PUT", f"{cluster.url('kv-0')}/v1/kv/{key}?w=all", value)
        if status != 503 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert status == 200, body


def controller(cluster: LocalCluster, path: str, body: dict[str, Any]) -> str:
    try:
        return json.dumps(control.call_blocking(cluster.directory, "POST", path, body))
    except ClusterError as exc:
        return f"error: {exc}"


# ----------------------------------------------------------------------------- tests
def test_a_held_pod_stays_down_in_dns_until_released_and_cleanup_heals(cluster: LocalCluster,
                                                                       backend: Observed) -> None:
    old = cluster.pid("kv-1")
    assert asyncio.run(backend.hold("kv-1")) == old
    assert not alive(old)
    for _ in range(8):  # the controller restarts a killed pod within ~1 s: not a held one
        state = cluster.pods()["kv-1"]
        assert (state["status"], state["pid"], state["ready"], state["held"]) == ("NodeLost", None, False, True)
        time.sleep(0.25)
    with pytest.raises(OSError):
        http("GET", cluster.url("kv-1") + "/healthz", timeout=2)
    # Like a pod whose node is gone: still in the StatefulSet, so still in DNS.
    assert srv_targets(cluster) == ALL
    # Its volume is left alone while it runs; a running pod's volume is refused.
    (cluster.directory / "data-kv-2" / MARKER).write_text("x")
    with pytest.raises(FaultFailed, match="kv-2 is not held down"):
        backend.remove_volume("kv-2")
    assert (cluster.directory / "data-kv-2" / MARKER).exists()
    # Bad requests are one-line errors.
    assert controller(cluster, "/v1/hold", {"pod": "kv-7"}) == "error: pod kv-7 not found (pods: kv-0, kv-1, kv-2)"
    assert controller(cluster, "/v1/release", {"pod": "kv-2"}) == "error: kv-2 is not held"
    assert controller(cluster, "/v1/dns", {"drop": "yes"}) == "error: drop must be true or false"
    assert controller(cluster, "/v1/start-pods", {}) == "error: the pods were not stopped"
    # Heal on exit releases it (and would heal DNS and start stopped pods).
    asyncio.run(backend.set_dns(True, []))
    assert srv_targets(cluster) == "timeout"
    backend.cleanup()
    assert srv_targets(cluster) == ALL
    cluster.wait_restarted("kv-1", old)
    assert not cluster.pods()["kv-1"]["held"]


def test_volume_loss_removes_kv0s_data_dir_while_it_is_held(cluster: LocalCluster, backend: Observed) -> None:
    put(cluster, "before-loss", b"1")
    (cluster.directory / "data-kv-0" / MARKER).write_text("x")
    kv0 = pod(cluster, "kv-0")
    n = nemesis(backend)
    asyncio.run(n.volume_loss(kv0))
    # When kv-0 was let go, it had no data dir at all.
    assert backend.at_release == [{"exists": False, "pod": "kv-0"}]
    assert [e["fault"] for e in n.log] == ["hold", "volume-loss", "release", "ready"], n.log
    assert n.log[1]["removed"] is True and n.log[0]["pid"] == kv0.pid
    assert not alive(kv0.pid) and cluster.pid("kv-0") == n.log[-1]["pids"]["kv-0"]
    assert not (cluster.directory / "data-kv-0" / MARKER).exists()


def test_volume_rollback_puts_back_a_copy_without_the_later_writes(cluster: LocalCluster,
                                                                   backend: Observed) -> None:
    put(cluster, "before-copy", b"1")
    backend.keys = ("before-copy", "after-copy")
    n = nemesis(backend)

    async def run() -> None:
        fault = asyncio.create_task(n.volume_rollback(pod(cluster, "kv-2"), age=4))
        for _ in range(300):  # the copy is taken and kv-2 is Ready again: write what it must lose
            if any(e["fault"] == "snapshot" for e in n.log) or fault.done():
                break
            await asyncio.sleep(0.1)
        await asyncio.to_thread(put, cluster, "after-copy", b"2")
        await fault
    asyncio.run(run())
    assert [e["fault"] for e in n.log] == ["hold", "release", "ready", "snapshot", "hold", "volume-rollback",
                                           "release", "ready"], n.log
    copied, rolled_back = backend.at_release
    assert copied["keys"] == {"before-copy": True, "after-copy": False}
    # Just before kv-2 started again, its volume was the copy: the later write is gone from it.
    assert rolled_back["keys"] == {"before-copy": True, "after-copy": False}
    assert rolled_back["lsn"] == copied["lsn"] < n.log[5]["lsn_before"]
    assert not any(backend.snapshots.iterdir())  # the copy was used up


def test_dns_times_out_while_kv0_restarts_then_answers_again(cluster: LocalCluster, backend: Observed) -> None:
    n = nemesis(backend)
    kv0 = pod(cluster, "kv-0")
    seen: list[Any] = []

    async def run() -> None:
        fault = asyncio.create_task(n.dns(True, [], 2.0, restart=kv0))
        while not fault.done():
            state = json.loads((cluster.directory / "cluster.json").read_text())
            pid = next(p["pid"] for p in state["pods"] if p["name"] == "kv-0")
            if state["dns_fault"] and pid and pid != kv0.pid:
                seen.append(await asyncio.to_thread(srv_targets, cluster))  # kv-0 runs again, DNS still down
            await asyncio.sleep(0.2)
        await fault
    asyncio.run(run())
    assert seen and all(answer == "timeout" for answer in seen), seen
    assert [e["fault"] for e in n.log] == ["dns", "dns-heal", "ready"], n.log
    assert srv_targets(cluster) == ALL


def test_dns_leaves_pods_out_then_heals(cluster: LocalCluster, backend: Observed) -> None:
    n = nemesis(backend)
    seen: list[Any] = []

    async def run() -> None:
        fault = asyncio.create_task(n.dns(False, ["kv-1", "kv-2"], 1.5))
        await asyncio.sleep(0.3)
        seen.append(await asyncio.to_thread(srv_targets, cluster))
        with pytest.raises(dns.resolver.NXDOMAIN):  # the pod's own name is gone too
            await asyncio.to_thread(resolver(cluster).resolve, f"kv-1.{SERVICE}", "A", search=False)
        await fault
    asyncio.run(run())
    assert seen == [["kv-0"]]
    assert srv_targets(cluster) == ALL
    assert resolver(cluster).resolve(f"kv-1.{SERVICE}", "A", search=False).rrset[0].address == f"{NET}.11"


# ------------------------------------------------------------------------- a zombie kv-0
ZOMBIE_COPY = "zombie-data-kv-0"


def control_raw(cluster: LocalCluster, body: bytes) -> tuple[int, Any]:
    """POST /v1/zombie with ``body`` as it is: the controller's status and JSON answer."""
    async def post() -> tuple[int, Any]:
        connector = aiohttp.UnixConnector(path=str(cluster.directory / "control.sock"))
        async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:
            async with session.post("http://controller/v1/zombie", data=body,
                                    headers={"Content-Type": "application/json"}) as response:
                return response.status, await response.json(content_type=None)
    return asyncio.run(post())


def zombie(cluster: LocalCluster, action: str) -> dict[str, Any]:
    status, answer = control_raw(cluster, json.dumps({"action": action}).encode())
    assert status == 200, answer
    return answer["zombie"]


def environ(pid: int) -> dict[str, str]:
    raw = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


def stopped(pid: int) -> bool:
    """Whether the process is stopped (SIGSTOP): state T in /proc/<pid>/stat."""
    return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] == "T"


def kv0_address(cluster: LocalCluster) -> str:
    return str(resolver(cluster).resolve(f"kv-0.{SERVICE}", "A", search=False).rrset[0].address)


def test_zombie_control_runs_a_second_kv0_and_rejects_bad_requests(cluster: LocalCluster,
                                                                   backend: Observed) -> None:
    # Bad requests: 400 with a JSON error, never a 500.
    for body, status, message in [
            (b"{", 400, "expected a JSON object"), (b"[]", 400, "expected a JSON object"),
            (b"{}", 400, "action must be one of start, takeover, giveback, stop, not null"),
            (b'{"action": "explode"}', 400, 'action must be one of start, takeover, giveback, stop, not "explode"'),
            (b'{"action": ["start"]}', 400, "action must be one of"),
            (b'{"action": "start", "pod": "kv-1"}', 400, "unknown fields: pod (expected action)"),
            *[(json.dumps({"action": a}).encode(), 409, "no zombie is running")
              for a in ("takeover", "giveback", "stop")]]:
        answer = control_raw(cluster, body)
        assert answer[0] == status and message in answer[1]["error"], (body, answer)
    kv0 = cluster.pods()["kv-0"]
    started = zombie(cluster, "start")
    try:
        assert control_raw(cluster, b'{"action": "start"}') == (409, {"error": (
            f"a zombie of kv-0 is already running (pid {started['pid']}); stop it first")})
        # kv-0's own env, but for its data dir (a copy) and its address (free, in the pods' /24).
        mine, real = environ(started["pid"]), environ(kv0["pid"])
        copy = str(Path(real["KV_DATA_DIR"]).with_name(ZOMBIE_COPY))  # beside the volumes
        assert mine == {**real, "KV_DATA_DIR": copy, "KV_BIND_ADDRESS": started["address"]}
        assert real["POD_NAME"] == "kv-0" and real["KV_CLUSTER_TOKEN_FILE"] and real["KV_DNS_SERVER"]
        assert started["address"].startswith(f"{NET}.") and started["address"] not in (
            {p["address"] for p in cluster.pods().values()} | {DNS_ADDRESS, CLIENT})
        assert started["url"] == f"http://{started['address']}:8080" and started["data_dir"] == copy
        assert json.loads((cluster.directory / "cluster.json").read_text())["zombie"]["pid"] == started["pid"]
        assert alive(kv0["pid"]) and not stopped(kv0["pid"])  # SIGSTOPped for the copy, then SIGCONT
        # It serves, as kv-0, from the copy.
        status, _, body = wait_for_answer(started["url"] + "/v1/status")
        assert status in (200, 503), body
        assert kv0_address(cluster) == BASE
        zombie(cluster, "takeover")
        assert kv0_address(cluster) == started["address"] and srv_targets(cluster) == ALL
        zombie(cluster, "giveback")
        assert kv0_address(cluster) == BASE
        zombie(cluster, "takeover")  # and stop gives the name back too
    finally:
        stop = control_raw(cluster, b'{"action": "stop"}')
    assert stop[0] == 200 and stop[1]["zombie"]["running"] is False, stop
    assert not alive(started["pid"]) and not (cluster.directory / ZOMBIE_COPY).exists()
    assert kv0_address(cluster) == BASE and srv_targets(cluster) == ALL
    assert json.loads((cluster.directory / "cluster.json").read_text())["zombie"] is None
    assert (cluster.directory / "logs" / "kv-0-zombie.log").stat().st_size > 0
    assert cluster.pods()["kv-0"]["pid"] == kv0["pid"]  # the real kv-0 was paused, never restarted


def wait_for_answer(url: str) -> tuple[int, dict[str, str], bytes]:
    """The first HTTP answer from ``url`` within 30 s (a new process takes a moment to listen)."""
    deadline = time.monotonic() + 30
    while True:
        try:
            return http("GET", url, timeout=5)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_cleanup_kills_the_zombie_and_gives_kv0_its_name_back(cluster: LocalCluster, backend: Observed) -> None:
    started = asyncio.run(backend.zombie("start"))
    asyncio.run(backend.zombie("takeover"))
    assert kv0_address(cluster) == started["address"]
    backend.cleanup()
    assert not alive(started["pid"]) and kv0_address(cluster) == BASE
    assert not (cluster.directory / ZOMBIE_COPY).exists()


def test_zombie_primary_in_a_chaos_run_is_reached_recorded_stopped_and_judged(cluster: LocalCluster,
                                                                               tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "kvstore", "chaos", "--dir", str(cluster.directory), "--out", str(out),
         "--nemesis", "zombie-primary", "--duration", "45", "--seed", "7", "--heal-timeout", "90"],
        capture_output=True, text=True, timeout=400, stdin=subprocess.DEVNULL)
    assert (out / "report.json").exists(), result.stdout + result.stderr
    report = json.loads((out / "report.json").read_text())
    faults = [json.loads(line) for line in (out / "faults.jsonl").read_text().splitlines()]
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    # Every phase of every zombie was recorded, and each zombie was stopped.
    phases = [e["fault"] for e in faults if e["fault"].startswith("zombie-")]
    runs = phases.count("zombie-primary")
    assert runs >= 1 and phases == ["zombie-primary", "zombie-takeover", "zombie-giveback", "zombie-stop"] * runs, \
        faults
    # The zombie was reached; it refused some operations as fencing says it must.
    sent = [op for op in history if op["pod"] == "kv-0-zombie"]
    refused = [op for op in sent if op["status"] == 503 and op["error"] in ("not_primary", "recovering")]
    assert sent and refused, report["zombie"]
    assert report["zombie"]["sent"] == len(sent)
    # Nothing of it is left: processes, copies, the name in DNS.
    for entry in faults:
        if entry["fault"] == "zombie-primary":
            assert not alive(entry["pid"]), entry
    assert not (cluster.directory / ZOMBIE_COPY).exists()
    assert json.loads((cluster.directory / "cluster.json").read_text())["zombie"] is None
    assert kv0_address(cluster) == BASE and srv_targets(cluster) == ALL
    # And the store came through it: nothing lost, nothing stale, replicas agree.
    assert result.returncode == 0 and report["verdict"] == "PASS", (report["summary"], report["violations"][:5])


def ordered_restart(cluster: LocalCluster, before: dict[str, dict[str, Any]]) -> None:
    """Every pod runs anew, and each was created only once the one before it was Ready."""
    after = cluster.pods()
    assert sorted(after) == ALL
    for name in after:
        assert after[name]["pid"] != before[name]["pid"] and not alive(before[name]["pid"])
    for earlier, later in (("kv-0", "kv-1"), ("kv-1", "kv-2")):
        assert after[earlier]["ready_at"] <= after[later]["created_at"], after


def test_restart_all_stops_every_pod_and_starts_them_in_order(cluster: LocalCluster, backend: Observed) -> None:
    before = cluster.pods()
    n = nemesis(backend)
    aimed: list[list[str]] = []

    async def run() -> None:
        fault = asyncio.create_task(n.restart_all())
        while not fault.done():
            aimed.append(sorted(n.aim({"kv-0": "0", "kv-1": "1", "kv-2": "2"})))
            await asyncio.sleep(0.2)
        await fault
    asyncio.run(run())
    assert [e["fault"] for e in n.log] == ["restart-all", "stop-pods", "start-pods", "ready"], n.log
    assert n.log[1]["stopped"] == ["kv-2", "kv-1", "kv-0"]
    assert backend.at_release[0] == {"pods": [], "volumes": ["data-kv-0", "data-kv-1", "data-kv-2"]}
    ordered_restart(cluster, before)
    # While the pods were coming back, clients aimed at kv-0 alone; after, at all of them.
    assert ["kv-0"] in aimed and sorted(n.aim({"kv-0": "0", "kv-1": "1"})) == ["kv-0", "kv-1"]


def voters(cluster: LocalCluster) -> list[str]:
    """kv-0's voters ([] while it does not answer)."""
    try:
        status = json.loads(http("GET", f"{cluster.url('kv-0')}/v1/status", timeout=5)[2])
    except OSError:
        return []
    return list(status.get("membership", {}).get("voters", []))


def test_scale_changes_the_pods_and_kv0_follows_with_its_voters(cluster: LocalCluster, backend: Observed) -> None:
    n = Nemesis(backend, NemesisConfig(faults=("scale",), scale_range=(3, 5), ready_wait=60, settle_wait=45,
                                       seed=3), clock=time.monotonic)
    try:
        asyncio.run(n.scale(backend.pods()))  # from 3 pods: only up
        up = len(backend.pods())
        assert up in (4, 5) and [e["fault"] for e in n.log] == ["scale", "scaled"], n.log
        assert voters(cluster) == [f"kv-{i}" for i in range(up)]
        put(cluster, "after-scale-up", b"held by every voter")  # w=all: every voter, kv-3 included
        asyncio.run(n.scale(backend.pods()))
        assert n.log[-1]["fault"] == "scaled", n.log
        now = len(backend.pods())
        assert now != up and now >= up // 2 + 1 and voters(cluster) == [f"kv-{i}" for i in range(now)]
    finally:
        controller(cluster, "/v1/scale", {"replicas": 3})
        wait_for_voters = time.monotonic() + 60
        while voters(cluster) != ALL and time.monotonic() < wait_for_voters:
            time.sleep(0.5)
        for volume in cluster.directory.glob("data-kv-*"):  # the PVCs a scale-down keeps: deleted by hand
            if int(volume.name.rsplit("-", 1)[1]) >= 3 and not any(p.name == volume.name[5:] for p in backend.pods()):
                shutil.rmtree(volume)
    assert voters(cluster) == ALL


def test_a_full_stop_interrupted_before_the_start_is_healed(cluster: LocalCluster, backend: Observed) -> None:
    before = cluster.pods()
    n = nemesis(backend)

    async def run() -> None:
        fault = asyncio.create_task(n.restart_all())
        for _ in range(300):
            if any(e["fault"] == "stop-pods" for e in n.log) or fault.done():
                break
            await asyncio.sleep(0.1)
        fault.cancel()  # what Ctrl-C does to the nemesis: the pods are stopped, not started again
        with pytest.raises(asyncio.CancelledError):
            await fault
    asyncio.run(run())
    assert n.focus is None and [e["fault"] for e in n.log] == ["restart-all", "stop-pods"]
    assert local_pods(cluster.directory) == [] and json.loads((cluster.directory / "cluster.json").read_text())[
        "suspended"]
    n.heal_all()
    cluster.wait_ready(ALL, timeout=60)
    ordered_restart(cluster, before)


def test_volume_loss_during_a_full_stop_starts_kv0_on_an_empty_volume(cluster: LocalCluster,
                                                                      backend: Observed) -> None:
    before = cluster.pods()
    (cluster.directory / "data-kv-0" / MARKER).write_text("x")
    n = nemesis(backend)
    asyncio.run(n.restart_all(lose="kv-0"))
    assert [e["fault"] for e in n.log] == ["stop-pods", "volume-loss", "start-pods", "ready"], n.log
    # Every pod was stopped and kv-0's volume gone when they were started again.
    assert backend.at_release[0] == {"pods": [], "volumes": ["data-kv-1", "data-kv-2"]}
    assert n.log[1] == {**n.log[1], "pod": "kv-0", "mode": "full-stop", "removed": True}
    ordered_restart(cluster, before)
    assert not (cluster.directory / "data-kv-0" / MARKER).exists()


def test_zombie_dies_with_the_controller_and_its_copy_is_removed(cluster: LocalCluster) -> None:
    # Last: it stops the cluster (the fixture's down() then has nothing left to stop).
    started = zombie(cluster, "start")
    result = run_cli("cluster", "down", "--dir", str(cluster.directory), "--timeout", "60", timeout=120)
    assert result.returncode == 0, result.stderr
    assert not alive(started["pid"])
    # Removed by the controller itself (a zombie that merely died with it would leave its copy).
    assert not (cluster.directory / ZOMBIE_COPY).exists()
