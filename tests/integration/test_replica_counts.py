"""Write concerns, strong reads and kv-0's start-up with 4 and 5 replicas, where 3's numbers would be wrong.

3 replicas: a majority is 2, the quorum of recovery 2 followers. 4: a
majority is 3 (not 2, not half), the quorum 2 of the 3 followers. 5: a
majority is 3, the quorum 3 of the 4 followers. Pods are real processes with
a DNS server the test controls (tests/dns_cluster.py); a stopped pod stays
listed in DNS and counted, as a pod that exists but is down.
"""

from __future__ import annotations

import json
from pathlib import Path

from dns_cluster import Cluster, start_all
from local_cluster import http, wait_for

ENV = {"KV_WRITE_TIMEOUT": "1", "KV_RECOVERY_WAIT": "1"}


def answer(c: Cluster, key: str, w: str) -> tuple[int, dict]:
    """PUT ``key`` on kv-0 with concern ``w``: the status and the JSON body."""
    status, _, body = c.put(0, key, b"v", w=w)
    return status, json.loads(body)


def assert_timed_out(reply: tuple[int, dict], confirmed: int, required: int) -> None:
    status, body = reply
    assert (status, body.get("error")) == (504, "write_concern_timeout"), reply
    assert (body["confirmed"], body["required"]) == (confirmed, required), body


def newest_epoch(c: Cluster) -> dict:
    return c.status(0)["lineage"][-1]


def test_five_replicas_take_majority_writes_with_two_followers_down_but_not_three(workdir: Path) -> None:
    with Cluster(workdir, 57, replicas=5, env=ENV) as c:
        start_all(c)
        assert answer(c, "five/all", "all")[0] == 200
        c.stop(4)
        c.stop(3)
        assert answer(c, "five/majority", "majority")[0] == 200  # kv-0 and two followers: 3 of 5
        assert c.get(0, "five/majority", strong=True) == (200, b"v")
        assert_timed_out(answer(c, "five/every", "all"), confirmed=3, required=5)
        c.stop(2)  # now kv-0 and kv-1: 2 of 5 (a majority of 3 replicas, not of 5)
        assert_timed_out(answer(c, "five/short", "majority"), confirmed=2, required=3)
        assert answer(c, "five/one", "1")[0] == 200  # still within the contact window
        status = c.status(0)
        assert status["committed_lsn"] < status["lsn"]  # what only two replicas hold is not committed


def test_four_replicas_need_three_for_a_majority(workdir: Path) -> None:
    with Cluster(workdir, 56, replicas=4, env=ENV) as c:
        start_all(c)
        c.stop(3)
        assert answer(c, "four/majority", "majority")[0] == 200  # kv-0, kv-1, kv-2: 3 of 4
        assert_timed_out(answer(c, "four/all", "all"), confirmed=3, required=4)
        c.stop(2)  # kv-0 and kv-1: half is not a majority
        assert_timed_out(answer(c, "four/half", "majority"), confirmed=2, required=3)


def test_kv0_restarting_among_five_is_verified_only_with_a_quorum_of_three_followers(workdir: Path) -> None:
    with Cluster(workdir, 57, replicas=5, env=ENV) as c:
        start_all(c)
        assert answer(c, "quorum/a", "all")[0] == 200
        c.stop(0)
        c.stop(4)
        c.start(0)  # hears kv-1, kv-2, kv-3: three of four followers, the quorum
        c.wait_writable()
        assert newest_epoch(c)["verified"] is True
        assert "a quorum (3 of 4 followers)" in c.status(0)["recovery"]["decision"], c.status(0)["recovery"]
        c.stop(0)
        c.stop(3)
        c.start(0)  # hears kv-1 and kv-2 only: not enough to know every majority write
        c.wait_writable()
        assert newest_epoch(c)["verified"] is False
        # Unverified, its rounds need the quorum of three followers, not a majority's two: it cannot
        # show that an older kv-0 is fenced off, so it takes no write at all.
        wait_for("kv-0 to refuse writes", lambda: answer(c, "quorum/b", "1")[1].get("error") == "not_primary", 10)
        c.start(3)
        wait_for("kv-0 to take writes with three followers", lambda: answer(c, "quorum/c", "1")[0] == 200, 30)
        assert http("GET", f"{c.url(0)}/v1/kv/quorum/a?consistency=strong")[2] == b"v"


def test_kv0_restarting_among_four_is_verified_with_two_of_its_three_followers(workdir: Path) -> None:
    with Cluster(workdir, 56, replicas=4, env=ENV) as c:
        start_all(c)
        c.stop(0)
        c.stop(3)
        c.start(0)  # kv-1 and kv-2: any 2 of the 3 followers meet every write 3 of 4 replicas hold
        c.wait_writable()
        assert newest_epoch(c)["verified"] is True
        c.stop(0)
        c.stop(2)
        c.start(0)
        c.wait_writable()
        assert newest_epoch(c)["verified"] is False
