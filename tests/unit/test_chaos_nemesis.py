"""The nemesis's commands and rules, checked without running them (kubectl cannot run here)."""

from __future__ import annotations

import asyncio
import json
import subprocess

import pytest

from kvstore.chaos.nemesis import (
    KubernetesBackend, LoopbackPartitioner, Nemesis, NemesisConfig, NemesisUnavailable,
    kubectl_base, kubectl_delete_pod, kubectl_get_pods,
)


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
