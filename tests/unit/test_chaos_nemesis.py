"""The nemesis's commands, choices and rules, checked without running them (kubectl cannot run here).

The faults themselves run against a real cluster in tests/chaos/test_nemeses.py.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import subprocess
from pathlib import Path
from typing import Any

import dns.flags
import dns.message
import dns.rcode
import pytest

from kvstore.chaos import checker
from kvstore.chaos.cli import _nemesis, default_nemesis, summary, zombie_text
from kvstore.chaos.history import Op
from kvstore.chaos.nemesis import (
    FAULTS, SIGNAL_FAULTS, FaultFailed, KubernetesBackend, LocalBackend, LoopbackPartitioner, Nemesis,
    NemesisConfig, NemesisUnavailable, PodInfo, kubectl_base, kubectl_delete_pod, kubectl_get_pods,
)
from kvstore.local.dns import DnsServer, Endpoint, HeadlessService


def test_kubectl_uses_the_current_context_and_namespace_unless_given() -> None:
    assert kubectl_base() == ["kubectl"]
    assert kubectl_base("k", "chaos", "kind-kind") == ["k", "--context", "kind-kind", "--namespace", "chaos"]


def test_kubectl_delete_is_a_forced_immediate_delete() -> None:
    assert kubectl_delete_pod(["kubectl"], "kv-0") == [
        "kubectl", "delete", "pod", "kv-0", "--grace-period=0", "--force", "--wait=false"]
    assert kubectl_get_pods(["kubectl", "--namespace", "db"], "app.kubernetes.io/name=kvstore") == [
        "kubectl", "--namespace", "db", "get", "pods", "--selector", "app.kubernetes.io/name=kvstore",
        "--output", "json"]


def test_kubernetes_backend_pods_and_kill_through_a_recorded_runner() -> None:
    calls: list[list[str]] = []
    listing = {"items": [
        {"metadata": {"name": "kv-1", "namespace": "db"},
         "status": {"conditions": [{"type": "Ready", "status": "False"}]}},
        {"metadata": {"name": "kv-0", "namespace": "db"},
         "status": {"conditions": [{"type": "Ready", "status": "True"}]}},
    ]}

    def runner(argv: list[str]) -> subprocess.CompletedProcess[str]:
        calls.append(argv)
        return subprocess.CompletedProcess(argv, 0, json.dumps(listing), "")

    backend = KubernetesBackend(namespace="db", runner=runner)
    pods = backend.pods()
    assert [(p.name, p.ready) for p in pods] == [("kv-0", True), ("kv-1", False)]
    assert pods[0].url == "http://kv-0.kv.db.svc.cluster.local:8080"
    assert asyncio.run(backend.kill(pods[0]))
    assert calls[-1] == ["kubectl", "--namespace", "db", "delete", "pod", "kv-0", "--grace-period=0",
                         "--force", "--wait=false"]


def test_kubernetes_supports_kill_only() -> None:
    backend = KubernetesBackend(runner=lambda argv: subprocess.CompletedProcess(argv, 0, "{}", ""))
    with pytest.raises(NemesisUnavailable, match="kill"):
        Nemesis(backend, NemesisConfig(faults=("kill", "pause")), clock=lambda: 0.0)
    Nemesis(backend, NemesisConfig(faults=("kill",)), clock=lambda: 0.0)


def test_no_faults_leave_the_workload_alone_until_the_deadline() -> None:
    # --nemesis none: nothing to choose from, nothing injected (not an IndexError from choices()).
    now = [0.0]
    backend = KubernetesBackend(runner=lambda argv: subprocess.CompletedProcess(argv, 0, "{}", ""))
    nemesis = Nemesis(backend, NemesisConfig(faults=()), clock=lambda: now[0])
    assert asyncio.run(nemesis.run(deadline=0.5)) == []


def test_partition_rules_are_tagged_and_spare_the_chaos_client() -> None:
    p = LoopbackPartitioner("123-4", "127.0.150.250", 7)
    rules = p.rules("127.0.150.11")
    assert all(r[r.index("--comment") + 1] == "kvstore-chaos-123-4" for r in rules)
    # The pod's own sockets may only talk to the client; only the client may talk to the pod.
    assert rules[0][:8] == ["-m", "cgroup", "--cgroup", hex(0x4B560007), "!", "-d", "127.0.150.250", "-m"]
    assert rules[1][:5] == ["-d", "127.0.150.11", "!", "-s", "127.0.150.250"]
    assert all(r[-2:] == ["-j", "DROP"] for r in rules)


def test_kubectl_failure_is_a_one_line_error() -> None:
    def runner(argv: list[str]) -> subprocess.CompletedProcess[str]:
        raise subprocess.CalledProcessError(1, argv, "", "error: no context\nThe connection was refused")

    with pytest.raises(NemesisUnavailable, match="The connection was refused"):
        KubernetesBackend(runner=runner).pods()


# ------------------------------------------------------------------ choosing faults
def test_nemesis_flag_takes_every_fault_and_rejects_others_in_one_line() -> None:
    every = ("kill,pause,partition,freeze-primary,volume-loss,volume-rollback,dns,restart-all,zombie-primary,scale,"
             "rolling-restart,node-loss,switchover")
    assert _nemesis(every) == FAULTS
    assert _nemesis(" dns , restart-all,dns") == ("dns", "restart-all")
    assert _nemesis("none") == ()
    for bad in ("volume", "kill,volume_loss", "", ","):
        with pytest.raises(argparse.ArgumentTypeError) as info:
            _nemesis(bad)
        assert every.replace(",", ", ") in str(info.value) and "\n" not in str(info.value)


def test_controller_faults_need_the_process_runtime() -> None:
    process = LocalBackend(Path("/nonexistent"), "process", "t", "127.0.100.250")
    docker = LocalBackend(Path("/nonexistent"), "docker", "t", None)
    assert process.supports == set(FAULTS)
    assert docker.supports == set(SIGNAL_FAULTS)
    with pytest.raises(NemesisUnavailable, match="does not support: dns, volume-loss"):
        Nemesis(docker, NemesisConfig(faults=("kill", "volume-loss", "dns")), clock=lambda: 0.0)


class Recorder:
    """A controller backend that records calls; each restart gives the pods new pids, Ready."""

    supports = frozenset(FAULTS)

    def __init__(self, replicas: int = 3) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.replicas = replicas
        self.pids = itertools.count(100)
        self._pods = self._fresh()
        self.leader = "kv-0"  # the pod whose /v1/status says it is the writable primary
        self.failover_after = 3.0  # what the followers' /v1/status says
        self.switchover_answer = (True, "kv-1 takes over from kv-0 in epoch 4")

    def status(self, pod: PodInfo) -> dict[str, Any]:
        """What ``pod``'s /v1/status says about who leads."""
        lead = pod.name == self.leader
        return {"role": "primary" if lead else "secondary", "writable": True if lead else None, "epoch": 3,
                "lsn": 10, "primary": {"name": self.leader, **({} if lead else {"failover_after": self.failover_after})},
                "membership": {"voters": [p.name for p in self._pods]}}

    def pause(self, pod: PodInfo) -> int | None:
        self.calls.append(("pause", pod.name))
        return pod.pid

    def resume(self, token: int) -> None:
        self.calls.append(("resume", token))

    def partition(self, pod: PodInfo) -> None:
        self.calls.append(("partition", pod.name))

    def heal(self, pod: PodInfo) -> None:
        self.calls.append(("heal", pod.name))

    async def switchover(self, to: str | None, via: str | None) -> tuple[bool, str]:
        self.calls.append(("switchover", to, via))
        return self.switchover_answer

    def _fresh(self) -> list[PodInfo]:
        return [PodInfo(f"kv-{n}", n, f"http://127.0.100.{10 + n}:1", f"127.0.100.{10 + n}", next(self.pids), True)
                for n in range(self.replicas)]

    def pods(self) -> list[PodInfo]:
        return list(self._pods)

    async def kill(self, pod: PodInfo) -> bool:
        self.calls.append(("kill", pod.name))
        self._pods = self._fresh()
        return True

    async def hold(self, pod: str) -> int | None:
        self.calls.append(("hold", pod))
        return next(p.pid for p in self._pods if p.name == pod)

    async def release(self, pod: str) -> None:
        self.calls.append(("release", pod))
        self._pods = self._fresh()

    async def stop_pods(self) -> list[str]:
        self.calls.append(("stop_pods",))
        return [p.name for p in reversed(self._pods)]

    async def start_pods(self) -> None:
        self.calls.append(("start_pods",))
        self._pods = self._fresh()

    async def set_dns(self, drop: bool, hide: list[str]) -> None:
        self.calls.append(("set_dns", drop, tuple(hide)))

    def remove_volume(self, pod: str) -> bool:
        self.calls.append(("remove_volume", pod))
        return True

    def snapshot_volume(self, pod: str) -> Path:
        self.calls.append(("snapshot_volume", pod))
        return Path("/copy")

    def restore_volume(self, pod: str, snapshot: Path) -> None:
        self.calls.append(("restore_volume", pod, snapshot))

    async def zombie(self, action: str) -> dict[str, Any]:
        self.calls.append(("zombie", action))
        return {"address": "127.0.100.249", "url": "http://127.0.100.249:1", "pid": 4242,
                "exit_code": -9 if action == "stop" else None}

    async def rollout_restart(self) -> str:
        self.calls.append(("rollout_restart",))
        self.rollout_polls = 0
        return "kv-new"

    def rollout(self) -> dict[str, Any]:
        """One more pod updated per poll; complete once all are."""
        self.rollout_polls += 1
        updated = min(self.rollout_polls, self.replicas)
        return {"state": "complete" if updated == self.replicas else "progressing", "updated": updated,
                "update_revision": "kv-new", "message": f"{updated} updated"}

    async def scale(self, replicas: int) -> None:
        self.calls.append(("scale", replicas))
        self.replicas = replicas
        self._pods = self._fresh()

    def cleanup(self) -> None:
        self.calls.append(("cleanup",))


def nemesis(backend: Recorder, faults: tuple[str, ...], **config: Any) -> Nemesis:
    config = {"rollback_age": (0.01, 0.01), "dns_seconds": (0.01, 0.01), **config}
    n = Nemesis(backend, NemesisConfig(faults=faults, seed=7, **config), clock=asyncio.get_running_loop().time)
    n._lsn = lambda pod: asyncio.sleep(0, result=None)  # type: ignore[method-assign]  # no HTTP here
    n._status = lambda pod: asyncio.sleep(0, result=backend.status(pod))  # type: ignore[method-assign]
    return n


async def test_every_enabled_fault_comes_once_first_then_chance_decides() -> None:
    n = nemesis(Recorder(), FAULTS)
    assert [n._choose() for _ in FAULTS] == list(FAULTS)
    assert {n._choose() for _ in range(200)} == set(FAULTS)


async def test_volume_faults_hit_kv0_first_then_follow_the_primary_bias() -> None:
    backend = Recorder()
    n = nemesis(backend, ("volume-loss",), primary_bias=0.0, full_stop_chance=0.0)
    pods = backend.pods()
    assert n._target("volume-loss", pods).name == "kv-0"
    assert {n._target("volume-loss", pods).name for _ in range(50)} == {"kv-1", "kv-2"}
    assert n._target("volume-rollback", pods).name == "kv-0"  # each fault's first choice


async def test_volume_loss_of_a_held_pod_removes_its_volume_between_hold_and_release() -> None:
    backend = Recorder()
    n = nemesis(backend, ("volume-loss",), full_stop_chance=0.0)
    await n._inject("volume-loss", backend.pods(), deadline=60)
    assert backend.calls == [("hold", "kv-0"), ("remove_volume", "kv-0"), ("release", "kv-0")]
    assert [e["fault"] for e in n.log] == ["hold", "volume-loss", "release", "ready"]
    assert n.log[1]["mode"] == "held" and n.focus is None


async def test_volume_loss_during_a_full_stop_removes_it_while_every_pod_is_stopped() -> None:
    backend = Recorder()
    n = nemesis(backend, ("volume-loss",), full_stop_chance=1.0)
    seen: list[dict[str, str]] = []
    start = backend.start_pods

    async def start_pods() -> None:
        seen.append(n.aim({"kv-0": "u0", "kv-1": "u1"}))
        await start()
    backend.start_pods = start_pods  # type: ignore[method-assign]
    await n._inject("volume-loss", backend.pods(), deadline=60)
    assert backend.calls == [("stop_pods",), ("remove_volume", "kv-0"), ("start_pods",)]
    assert [e["fault"] for e in n.log] == ["stop-pods", "volume-loss", "start-pods", "ready"]
    assert n.log[0]["stopped"] == ["kv-2", "kv-1", "kv-0"] and n.log[1]["mode"] == "full-stop"
    # Clients aim at kv-0 alone while the pods come back, and at every pod again after.
    assert seen == [{"kv-0": "u0"}] and n.aim({"kv-0": "u0", "kv-1": "u1"}) == {"kv-0": "u0", "kv-1": "u1"}


async def test_restart_all_stops_and_starts_every_pod() -> None:
    backend = Recorder()
    n = nemesis(backend, ("restart-all",))
    await n._inject("restart-all", backend.pods(), deadline=60)
    assert backend.calls == [("stop_pods",), ("start_pods",)]
    assert [e["fault"] for e in n.log] == ["restart-all", "stop-pods", "start-pods", "ready"]
    assert sorted(n.log[-1]["pids"]) == ["kv-0", "kv-1", "kv-2"]


async def test_volume_rollback_copies_then_puts_the_same_copy_back() -> None:
    backend = Recorder()
    n = nemesis(backend, ("volume-rollback",))
    await n._inject("volume-rollback", backend.pods(), deadline=60)
    assert backend.calls == [("hold", "kv-0"), ("snapshot_volume", "kv-0"), ("release", "kv-0"),
                             ("hold", "kv-0"), ("restore_volume", "kv-0", Path("/copy")), ("release", "kv-0")]
    assert [e["fault"] for e in n.log] == ["hold", "release", "ready", "snapshot", "hold", "volume-rollback",
                                           "release", "ready"]


async def test_dns_faults_drop_or_hide_some_pods_and_always_heal() -> None:
    backend = Recorder()
    n = nemesis(backend, ("dns",), dns_restart_chance=0.0)
    for _ in range(30):
        await n._inject("dns", backend.pods(), deadline=1e9)
    broken = [c for c in backend.calls if c[0] == "set_dns" and (c[1] or c[2])]
    heals = [c for c in backend.calls if c == ("set_dns", False, ())]
    assert len(broken) == len(heals) == 30
    assert {c[1] for c in broken} == {True, False}  # both kinds
    for _, drop, hidden in broken:
        # Dropping hides nothing more; hiding leaves out some pods, never all of them.
        assert (not hidden) if drop else 1 <= len(hidden) <= 2 and set(hidden) <= {"kv-0", "kv-1", "kv-2"}
    assert [e["fault"] for e in n.log].count("dns") == 30 == [e["fault"] for e in n.log].count("dns-heal")


async def test_dns_fault_can_restart_kv0_while_dns_is_broken() -> None:
    backend = Recorder()
    n = nemesis(backend, ("dns",), dns_restart_chance=1.0, dns_drop_chance=1.0)
    await n._inject("dns", backend.pods(), deadline=1e9)
    assert backend.calls == [("set_dns", True, ()), ("kill", "kv-0"), ("set_dns", False, ())]
    assert n.log[0]["restart"] == "kv-0"
    assert [e["fault"] for e in n.log] == ["dns", "dns-heal", "ready"]


def test_dns_server_drops_queries_or_hides_pods_until_healed() -> None:
    service = HeadlessService("kv", "default", "cluster.local", {"peer": 8081})
    server = DnsServer(service)
    for n in range(3):
        service.set_endpoint(f"kv-{n}", Endpoint(f"127.0.100.{10 + n}", f"kv-{n}"))
    srv = dns.message.make_query("_peer._tcp.kv.default.svc.cluster.local", "SRV").to_wire()
    one = dns.message.make_query("kv-1.kv.default.svc.cluster.local", "A").to_wire()

    def targets() -> list[str]:
        answer = dns.message.from_wire(server.handle(srv, None))  # type: ignore[arg-type]
        return sorted(str(r.target).split(".")[0] for r in answer.answer[0])
    assert targets() == ["kv-0", "kv-1", "kv-2"]
    server.set_fault(drop=True)
    assert server.handle(srv, 512) is None and server.handle(one, None) is None
    assert server.fault == {"drop": True, "hidden": []}
    server.set_fault(hide=["kv-1", "kv-2"])
    assert targets() == ["kv-0"]
    assert dns.message.from_wire(server.handle(one, None)).rcode() == dns.rcode.NXDOMAIN  # type: ignore[arg-type]
    server.set_fault()
    assert targets() == ["kv-0", "kv-1", "kv-2"] and server.fault is None
    assert dns.message.from_wire(server.handle(one, None)).flags & dns.flags.AA  # type: ignore[arg-type]


def test_fault_counts_and_the_report_line_count_every_kind() -> None:
    faults = [{"fault": f, "pod": p, "time": 0} for f, p in [
        ("kill", "kv-0"), ("restarted", "kv-0"), ("kill", "kv-2"), ("volume-loss", "kv-0"), ("hold", "kv-0"),
        ("volume-loss", "kv-1"), ("volume-rollback", "kv-0"), ("dns", ""), ("dns-heal", ""),
        ("restart-all", ""), ("stop-pods", ""), ("ready", "kv-0,kv-1,kv-2")]]
    counts = checker.fault_counts(faults)
    assert {k: v for k, v in counts.items() if v} == {
        "kill": 2, "kill_primary": 1, "volume-loss": 2, "volume-loss_primary": 1, "volume-rollback": 1,
        "volume-rollback_primary": 1, "dns": 1, "restart-all": 1}
    args = argparse.Namespace(duration=1.0, nemesis=("kill", "volume-loss", "volume-rollback", "dns", "restart-all"),
                              runtime="process", replicas=3, clients=1)
    text = summary(args, 1, [], faults, checker.Report(), {}, True, 1.0)
    assert ("faults: kill 2 (on kv-0: 1), volume-loss 2 (on kv-0: 1), volume-rollback 1 (on kv-0: 1), dns 1, "
            "restart-all 1\n") in text


URLS = {"kv-0": "u0", "kv-1": "u1", "kv-2": "u2"}


def aimed(n: Nemesis, draws: int = 300) -> float:
    """The share of ``draws`` client operations that ``aim`` sends to the zombie alone."""
    answers = [n.aim(URLS) for _ in range(draws)]
    assert all(a == URLS or a == {"kv-0-zombie": "http://127.0.100.249:1"} for a in answers), answers[:5]
    return sum(a != URLS for a in answers) / draws


async def test_zombie_primary_runs_beside_kv0_then_in_its_place_then_beside_it_and_is_stopped() -> None:
    backend = Recorder()
    n = nemesis(backend, ("zombie-primary",), zombie_seconds=(0.01, 0.01))
    shares: dict[str, float] = {}
    call = backend.zombie

    async def zombie(action: str) -> dict[str, Any]:
        shares[action] = aimed(n)  # where the clients aim as each phase ends
        return await call(action)
    backend.zombie = zombie  # type: ignore[method-assign]
    await n._inject("zombie-primary", backend.pods(), deadline=60)
    assert backend.calls == [("zombie", "start"), ("zombie", "takeover"), ("zombie", "giveback"),
                             ("zombie", "stop")]
    assert [e["fault"] for e in n.log] == ["zombie-primary", "zombie-takeover", "zombie-giveback", "zombie-stop"]
    assert n.log[0] == {**n.log[0], "pod": "kv-0", "zombie": "kv-0-zombie", "address": "127.0.100.249",
                        "pid": 4242}
    assert n.log[-1]["exit_code"] == -9 and checker.fault_counts(n.log)["zombie-primary"] == 1
    # No client reaches it before it runs or once it is being stopped; about a third meanwhile.
    assert shares["start"] == 0 == shares["stop"] == aimed(n)
    assert 0.2 < shares["takeover"] < 0.45 and 0.2 < shares["giveback"] < 0.45, shares


async def test_zombie_primary_is_stopped_when_a_phase_fails() -> None:
    backend = Recorder()
    n = nemesis(backend, ("zombie-primary",), zombie_seconds=(0.01, 0.01))
    call = backend.zombie

    async def zombie(action: str) -> dict[str, Any]:
        if action == "takeover":
            raise FaultFailed("/v1/zombie: the controller does not answer")
        return await call(action)
    backend.zombie = zombie  # type: ignore[method-assign]
    with pytest.raises(FaultFailed):
        await n._inject("zombie-primary", backend.pods(), deadline=60)
    assert backend.calls == [("zombie", "start"), ("zombie", "stop")]
    assert [e["fault"] for e in n.log] == ["zombie-primary", "zombie-stop"] and n.zombie_target is None


async def test_zombie_primary_is_in_the_default_set_for_processes_only() -> None:
    assert "zombie-primary" in LocalBackend(Path("/nonexistent"), "process", "t", "127.0.100.250").supports
    with pytest.raises(NemesisUnavailable, match="does not support: zombie-primary"):
        Nemesis(LocalBackend(Path("/nonexistent"), "docker", "t", None),
                NemesisConfig(faults=("zombie-primary",)), clock=lambda: 0.0)
    assert "zombie-primary" in default_nemesis("process")
    assert "zombie-primary" not in default_nemesis("docker") + default_nemesis("kubernetes")


def test_the_report_counts_what_the_zombie_answered() -> None:
    history = [Op(id=i, process=0, key="chaos/k", f="put", pod=pod, call=0, ret=1, outcome=outcome, status=status,
                  error=error)
               for i, (pod, outcome, status, error) in enumerate([
                   ("kv-0-zombie", "failed", 503, "not_primary"), ("kv-0-zombie", "failed", 503, "recovering"),
                   ("kv-0-zombie", "unknown", 504, "write_concern_timeout"), ("kv-0-zombie", "ok", 200, None),
                   ("kv-0", "failed", 503, "not_primary")])]
    assert zombie_text(history) == ("4 (ok 1, failed 2, unknown 1; 503 not_primary 1; 503 recovering 1; "
                                    "504 write_concern_timeout 1)")
    args = argparse.Namespace(duration=1.0, nemesis=("zombie-primary",), runtime="process", replicas=3, clients=1)
    faults = [{"fault": "zombie-primary", "pod": "kv-0", "time": 0}]
    text = summary(args, 1, history, faults, checker.Report(), {}, True, 1.0)
    assert "faults: zombie-primary 1\n" in text and "operations sent to a zombie kv-0: 4 (ok 1," in text


async def test_rolling_restart_waits_for_the_rollout_and_sometimes_kills_a_pod_midway() -> None:
    backend = Recorder()
    n = nemesis(backend, ("rolling-restart",), rollout_kill_chance=1.0)
    await n._inject("rolling-restart", backend.pods(), deadline=60)
    assert backend.calls[0] == ("rollout_restart",) and backend.calls[1][0] == "kill"
    assert [e["fault"] for e in n.log] == ["rolling-restart", "rollout-kill", "rolled"]
    backend = Recorder()
    n = nemesis(backend, ("rolling-restart",), rollout_kill_chance=0.0)
    await n._inject("rolling-restart", backend.pods(), deadline=60)
    assert backend.calls == [("rollout_restart",)] and n.log[-1]["fault"] == "rolled"

async def test_a_scale_keeps_a_majority_of_the_voters_and_the_run_ends_with_the_most_pods() -> None:
    backend = Recorder(replicas=5)
    n = nemesis(backend, ("scale",), settle_wait=0.01, ready_wait=1.0)
    voters = {"count": 5}
    n._voters = lambda primary: asyncio.sleep(0, result=voters["count"])  # type: ignore[method-assign]
    for _ in range(40):
        before = backend.replicas
        await n.scale(backend.pods())
        after = backend.replicas
        assert 3 <= after <= 7 and after != before
        assert after > before or after >= before // 2 + 1, (before, after)  # a majority of 5 is 3
        voters["count"] = after  # kv-0 caught up with the pods
    voters["count"] = None  # kv-0 does not say: only up
    before = backend.replicas
    if before < 7:
        await n.scale(backend.pods())
        assert backend.replicas > before
    n.most_pods = 7
    await backend.scale(3)
    await n._scale_back()
    assert backend.replicas == 7 and n.log[-1]["fault"] == "scale-unsettled"


# ------------------------------------------------------------ faults that move the primary's role
async def test_node_loss_holds_the_current_primary_down_then_releases_it() -> None:
    assert NemesisConfig().node_loss_seconds == (10.0, 40.0)
    backend = Recorder()
    backend.leader = "kv-2"  # after a failover: the primary is not kv-0
    n = nemesis(backend, ("node-loss",), node_loss_seconds=(0.05, 0.05))
    aimed: list[dict[str, str]] = []
    hold = backend.hold

    async def holding(pod: str) -> int | None:
        pid = await hold(pod)
        aimed.append(n.aim(URLS))
        return pid
    backend.hold = holding  # type: ignore[method-assign]
    await n._inject("node-loss", backend.pods(), deadline=60)
    assert backend.calls == [("hold", "kv-2"), ("release", "kv-2")]
    assert [e["fault"] for e in n.log] == ["node-loss", "release", "ready"]
    assert n.log[0]["seconds"] == 0.05 and n.log[0]["pid"] == 102
    assert aimed == [URLS]  # clients keep every pod: they must find the new primary themselves


async def test_node_loss_is_skipped_when_no_pod_says_who_leads() -> None:
    backend = Recorder()
    n = nemesis(backend, ("node-loss",))
    n._status = lambda pod: asyncio.sleep(0, result=None)  # type: ignore[method-assign]
    await n._inject("node-loss", backend.pods(), deadline=60)
    assert backend.calls == [] and n.log[0]["fault"] == "skipped" and "who leads" in n.log[0]["reason"]


async def test_freeze_primary_stops_the_current_primary_for_longer_than_the_failover_time() -> None:
    assert NemesisConfig().freeze_extra == (2.0, 8.0)
    backend = Recorder()
    backend.leader, backend.failover_after = "kv-1", 0.1
    n = nemesis(backend, ("freeze-primary",), freeze_extra=(0.02, 0.05))
    await n._inject("freeze-primary", backend.pods(), deadline=60)
    assert backend.calls == [("pause", "kv-1"), ("resume", 101)]
    assert [e["fault"] for e in n.log] == ["freeze-primary", "resume"]
    assert n.log[0]["failover_after"] == 0.1 and 0.12 <= n.log[0]["seconds"] <= 0.15


async def test_switchover_hands_over_to_a_random_voter_or_to_none() -> None:
    backend = Recorder()
    backend.leader = "kv-1"
    n = nemesis(backend, ("switchover",))
    for _ in range(30):
        await n._inject("switchover", backend.pods(), deadline=60)
    asked = [c for c in backend.calls if c[0] == "switchover"]
    assert len(asked) == 30 and {via for _, _, via in asked} == {"kv-1"}  # asked of the primary itself
    assert {to for _, to, _ in asked} == {None, "kv-0", "kv-2"}  # never to the primary itself
    assert [e["fault"] for e in n.log][:2] == ["switchover", "switched"]
    backend.switchover_answer = (False, "kvstore switchover: 409 kv-2 is 40 entries behind")
    await n._inject("switchover", backend.pods(), deadline=60)
    assert n.log[-1] == {**n.log[-1], "fault": "switchover-refused", "answer": backend.switchover_answer[1]}


async def test_kills_pauses_and_partitions_aim_at_kv0_and_at_the_current_primary_alike() -> None:
    backend = Recorder()
    backend.leader = "kv-2"
    pods = backend.pods()
    for fault in ("kill", "pause", "partition"):
        n = nemesis(backend, (fault,), primary_bias=1.0)
        assert (await n._victim(fault, pods)).name == "kv-0"  # the first choice, as before
        chosen = [(await n._victim(fault, pods)).name for _ in range(200)]
        assert set(chosen) == {"kv-0", "kv-2"} and 60 < chosen.count("kv-2") < 140, fault
        n = nemesis(backend, (fault,), primary_bias=0.0)
        await n._victim(fault, pods)
        assert {(await n._victim(fault, pods)).name for _ in range(50)} == {"kv-1", "kv-2"}


async def test_the_failover_faults_are_in_the_default_set() -> None:
    for fault in ("node-loss", "freeze-primary", "switchover"):
        assert fault in default_nemesis("process")
    assert "freeze-primary" in default_nemesis("docker")  # a signal, like pause
    assert not {"node-loss", "switchover"} & set(default_nemesis("docker") + default_nemesis("kubernetes"))


async def test_each_fault_ends_with_an_entry_naming_it_and_when_it_began() -> None:
    backend = Recorder()
    n = nemesis(backend, ("switchover", "freeze-primary"), interval=0.05, freeze_extra=(0.01, 0.01))
    backend.failover_after = 0.01
    await n.run(deadline=n.clock() + 1.0)
    ends = [e for e in n.log if e["fault"] == "end"]
    assert {e["of"] for e in ends} == {"switchover", "freeze-primary"}
    for end in ends:
        assert end["began"] <= end["time"]
        started = [e for e in n.log if e["fault"] == end["of"] and end["began"] <= e["time"] <= end["time"]]
        assert started, (end, n.log)


async def test_a_fault_that_fails_is_logged_as_skipped_and_the_run_goes_on() -> None:
    backend = Recorder()
    n = nemesis(backend, ("node-loss",), interval=0.05, node_loss_seconds=(0.01, 0.01))

    async def hold(pod: str) -> int | None:
        raise FaultFailed("/v1/hold: the controller does not answer")
    backend.hold = hold  # type: ignore[method-assign]
    await n.run(deadline=n.clock() + 0.5)
    skipped = [e for e in n.log if e["fault"] == "skipped"]
    assert skipped and skipped[0] == {**skipped[0], "of": "node-loss", "reason": "/v1/hold: the controller does "
                                      "not answer"}
    assert checker.fault_counts(n.log)["node-loss"] == 0  # a skip is not counted as the fault
