"""A failover candidate that gave up after some followers promised it must be able to win later.

Found by ``kvstore chaos`` (the node-loss and kill nemeses): a candidate asked
for epoch max(its log, its own promise) + 1; when one follower refuses
("a primary is alive": a follower that restarted less than
``KV_FAILOVER_AFTER`` ago), it gives up, but the followers that already
promised that epoch keep the promise. Its next candidacy asks for the same
epoch number with a new id, those followers answer "already holds to epoch
N", it gives up again, and so on; the others defer to it ("at least as up
to date and comes first") and refuse to follow it in its old epoch. No pod
leads until the lost primary comes back.

The same happens to a candidate that missed the newest epoch (kv-0, held
down while another pod took over, then back as a follower): it asks for the
epoch that the followers promised the acting primary, and gives up each time.

Both now pass: a candidate asks above its own earlier candidacies and the
promises it meets.
"""

from __future__ import annotations

from typing import Iterator

import pytest

from tests.local_cluster import LocalCluster, http
from kvstore.local.handle import wait_for

ENV = {"KV_FAILOVER_AFTER": "3", "KV_SWITCHOVER_ON_STOP": "true", "KV_FAILBACK": "false",
       "KV_WRITE_TIMEOUT": "2", "KV_READ_WAIT": "2", "KV_REFRESH_INTERVAL": "0.5"}


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    with LocalCluster("127.0.12.10", "127.0.12.2", replicas=5, env=ENV) as c:
        wait_for("kv-0 to take writes", c.writable, 90)
        yield c


def ready(cluster: LocalCluster, name: str) -> bool:
    """Whether the controller says the pod runs and is Ready."""
    return bool(cluster.pods()[name].get("ready"))


def test_a_pod_leads_when_the_primary_is_lost_while_a_follower_restarts(cluster: LocalCluster) -> None:
    for i in range(20):
        assert http("PUT", cluster.url("kv-0") + f"/v1/kv/k{i}?w=all", b"x")[0] in (200, 201, 204)
    cluster.control("/v1/hold", {"pod": "kv-0"})
    try:
        # kv-4 restarts now: it serves again before the followers stand, and refuses them for a while
        # ("a primary is alive": it started less than KV_FAILOVER_AFTER ago), after the others promised.
        cluster.control("/v1/kill", {"pod": "kv-4"})
        # Failover takes KV_FAILOVER_AFTER (3 s) and a round of promises; allow many times that.
        wait_for("another pod to lead while kv-0 is held down", lambda: cluster.leader() is not None, 30)
    finally:
        cluster.control("/v1/release", {"pod": "kv-0"})


def test_a_pod_leads_when_the_acting_primary_freezes_after_kv0_came_back(cluster: LocalCluster) -> None:
    wait_for("a pod to lead", lambda: cluster.leader() is not None, 60)
    # kv-0 is lost (if it led); another pod leads a new epoch that kv-0 never promised.
    cluster.control("/v1/hold", {"pod": "kv-0"})
    try:
        wait_for("another pod to lead", lambda: cluster.leader() not in (None, "kv-0"), 30)
    finally:
        cluster.control("/v1/release", {"pod": "kv-0"})
    acting = cluster.leader()
    assert acting is not None
    wait_for("kv-0 to run again", lambda: cluster.leader() == acting and ready(cluster, "kv-0"), 60)
    # The acting primary freezes (a partitioned node): kv-0, most up to date and first, must take over.
    pid = cluster.pause(acting)
    try:
        wait_for("a pod to lead while the acting primary is frozen",
                 lambda: cluster.leader(but=acting) is not None, 30)
    finally:
        cluster.resume(pid)
