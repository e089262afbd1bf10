"""Cascade replication (``KV_REPLICATE_FROM=previous``) re-forms its chain from whichever pod leads.

The chain is the primary, then the other pods in ordinal order: with kv-0
leading kv-0 -> kv-1 -> kv-2 -> kv-3, with kv-1 leading kv-1 -> kv-0 -> kv-2
-> kv-3. Real processes; the change of primary is a switchover.
"""

from __future__ import annotations

import json
from typing import Iterator

import pytest

from tests.local_cluster import LocalCluster, http
from kvstore.local.handle import run_cli, wait_for

BASE, DNS = "127.0.77.10", "127.0.77.2"
ENV = {"KV_REPLICATE_FROM": "previous", "KV_FAILBACK": "false", "KV_REFRESH_INTERVAL": "0.5"}


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    with LocalCluster(BASE, DNS, replicas=4, env=ENV) as c:
        wait_for("kv-0 to take writes", c.writable, 60)
        yield c


def upstreams(cluster: LocalCluster) -> dict[str, str | None]:
    """Each pod's upstream as its /v1/status says (the primary: None)."""
    found: dict[str, str | None] = {}
    for pod in cluster.pods():
        code, _, body = http("GET", cluster.url(pod) + "/v1/status", timeout=5)
        following = json.loads(body).get("following") if code == 200 else None
        found[pod] = following.get("upstream") if following else None
    return found


def switchover(cluster: LocalCluster, to: str) -> None:
    result = run_cli("switchover", "--to", to, "--dir", str(cluster.directory), timeout=30)
    assert result.returncode == 0, result.stderr
    wait_for(f"{to} to lead", lambda: cluster.leader() == to, 15)


def test_the_chain_starts_at_the_pod_that_leads(cluster: LocalCluster) -> None:
    chain_of_kv0 = {"kv-0": None, "kv-1": "kv-0", "kv-2": "kv-1", "kv-3": "kv-2"}
    wait_for("the chain from kv-0", lambda: upstreams(cluster) == chain_of_kv0, 30)
    switchover(cluster, "kv-1")
    try:
        chain_of_kv1 = {"kv-1": None, "kv-0": "kv-1", "kv-2": "kv-0", "kv-3": "kv-2"}
        wait_for("the chain from kv-1", lambda: upstreams(cluster) == chain_of_kv1, 30)
        # Through the chain: a w=all write reaches the end of it, relayed by kv-0.
        code, _, body = http("PUT", cluster.url("kv-1") + "/v1/kv/chained?w=all", b"through-kv-0", timeout=15)
        assert code in (200, 201), body
        assert http("GET", cluster.url("kv-3") + "/v1/kv/chained")[::2] == (200, b"through-kv-0")
    finally:
        switchover(cluster, "kv-0")
    wait_for("the chain from kv-0 again", lambda: upstreams(cluster) == chain_of_kv0, 30)
