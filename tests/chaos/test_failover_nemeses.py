"""The nemeses that move the primary's role, against a real local StatefulSet with failover on.

One 3-pod cluster (127.0.96.x) with ``KV_FAILOVER_AFTER=2`` and failback
off, so the primary stays wherever a test left it: each test starts from
whichever pod leads, as the nemeses do. These tests check that each fault
really happens to the current primary and that another pod takes over; what
the store makes of it is the chaos checker's business.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any, Iterator

import pytest

from local_cluster import LocalCluster
from kvstore.chaos.nemesis import LocalBackend, Nemesis, NemesisConfig, local_pods
from kvstore.local.handle import wait_for

NET = "127.0.96"
ENV = {"KV_FAILOVER_AFTER": "2", "KV_SWITCHOVER_ON_STOP": "true", "KV_FAILBACK": "false",
       "KV_WRITE_TIMEOUT": "2", "KV_READ_WAIT": "2", "KV_REFRESH_INTERVAL": "0.5"}
ALL = ["kv-0", "kv-1", "kv-2"]


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    c = LocalCluster(f"{NET}.10", f"{NET}.2", replicas=3, env=ENV).up()
    try:
        wait_for("kv-0 to take writes", c.writable, 60)
        yield c
    finally:
        c.down()


@pytest.fixture
def backend(cluster: LocalCluster) -> Iterator[LocalBackend]:
    b = LocalBackend(cluster.directory, "process", f"test-{os.getpid()}", f"{NET}.250")
    try:
        wait_for("a pod to lead", lambda: cluster.leader() is not None, 60)
        yield b
    finally:
        b.cleanup()  # heals whatever a failed test left in place
        cluster.wait_ready(ALL, timeout=90)


def nemesis(backend: LocalBackend, **config: Any) -> Nemesis:
    return Nemesis(backend, NemesisConfig(faults=("node-loss", "freeze-primary", "switchover"), restart_wait=45,
                                          seed=5, **config), clock=time.monotonic)


def watch(cluster: LocalCluster, fault: Any, but: str) -> list[str | None]:
    """Run the fault's coroutine, noting every 0.3 s which pod other than ``but`` (the victim) leads."""
    async def run() -> list[str | None]:
        task, seen = asyncio.create_task(fault), []
        while not task.done():
            seen.append(await asyncio.to_thread(cluster.leader, but))
            await asyncio.sleep(0.3)
        await task
        return seen
    return asyncio.run(run())


def test_switchover_asks_the_current_primary_and_the_role_moves(cluster: LocalCluster,
                                                                backend: LocalBackend) -> None:
    before = cluster.leader()
    to = next(p for p in ALL if p != before)
    done, answer = asyncio.run(backend.switchover(to, None))  # asked of kv-0, which passes it on
    assert done and to in answer, answer
    wait_for(f"{to} to lead", lambda: cluster.leader() == to, 15)
    n = nemesis(backend)
    assert asyncio.run(n._leadership(local_pods(cluster.directory))).primary.name == to  # type: ignore[union-attr]
    refused = asyncio.run(backend.switchover("kv-7", to))
    assert refused[0] is False and "not a voter" in refused[1], refused
    asyncio.run(n.switchover(local_pods(cluster.directory)))
    assert [e["fault"] for e in n.log] in (["switchover", "switched"], ["switchover", "switchover-refused"]), n.log
    assert n.log[0]["pod"] == to
    if n.log[1]["fault"] == "switched":
        wait_for("another pod to lead", lambda: cluster.leader() not in (None, to), 15)


def test_node_loss_holds_the_current_primary_down_while_another_pod_takes_over(cluster: LocalCluster,
                                                                               backend: LocalBackend) -> None:
    before = cluster.leader()
    n = nemesis(backend, node_loss_seconds=(8.0, 8.0))
    seen = watch(cluster, n.node_loss(local_pods(cluster.directory), deadline=1e9), before)
    assert [e["fault"] for e in n.log] == ["node-loss", "release", "ready"], n.log
    assert n.log[0]["pod"] == before and n.log[0]["seconds"] == 8.0
    others = set(ALL) - {before}
    assert others & set(seen), seen  # another pod led while the primary's node was gone
    assert n.log[1]["led_by"] in others, n.log


def stopped(pid: int) -> bool:
    """Whether the process is stopped (SIGSTOP): state T in /proc/<pid>/stat."""
    return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] == "T"


def test_freeze_primary_stops_the_current_primary_past_the_failover_time(cluster: LocalCluster,
                                                                        backend: LocalBackend) -> None:
    # Whether another pod takes over meanwhile is the store's part: tests/integration/test_failover_liveness.py.
    before = cluster.leader()
    pid = cluster.pods()[before]["pid"]
    n = nemesis(backend, freeze_extra=(3.0, 3.0))
    states: list[bool] = []

    async def run() -> None:
        task = asyncio.create_task(n.freeze_primary(local_pods(cluster.directory)))
        while not task.done():
            states.append(stopped(pid))
            await asyncio.sleep(0.2)
        await task
    asyncio.run(run())
    assert [e["fault"] for e in n.log] == ["freeze-primary", "resume"], n.log
    assert n.log[0]["pod"] == before and n.log[0]["failover_after"] == 2.0 and n.log[0]["seconds"] == 5.0
    assert n.log[1]["time"] - n.log[0]["time"] >= 5.0
    assert states.count(True) >= 20 and not stopped(pid), states  # stopped throughout, running again after
    assert cluster.pods()[before]["pid"] == pid  # the same process: frozen, never restarted
    wait_for("a pod to lead after the freeze", lambda: cluster.leader() is not None, 30)
