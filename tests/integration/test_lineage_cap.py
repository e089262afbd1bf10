"""A lineage keeps only its newest epochs: kv-0 starting again and again must not stop its followers.

Each kv-0 start that writes begins an epoch, and a lineage keeps the newest
1000. With the cap lowered (the test-only ``KV_TEST_MAX_EPOCHS``) to 5, twelve
real kv-0 starts, a write in each, cut the lineage at seven of them; the
followers compare their cut lineages with kv-0's at every start and must go on
following, holding every write. Each start waits until both followers hold
its write: a follower that missed more epochs than the cap cannot tell
whether its entries are in kv-0's history and stops (DIVERGED, by design).
"""

from __future__ import annotations

from pathlib import Path

from dns_cluster import Cluster, assert_all_readable, start_all
from local_cluster import wait_for

CAP = 5
STARTS = 12


def test_followers_follow_a_kv0_that_started_many_more_times_than_a_lineage_keeps(workdir: Path) -> None:
    with Cluster(workdir, 97, env={"KV_TEST_MAX_EPOCHS": str(CAP), "KV_RECOVERY_WAIT": "5"}) as c:
        start_all(c)
        acknowledged: dict[str, bytes] = {}
        for start in range(STARTS):
            c.stop(0)
            c.start(0)
            c.wait_writable()
            key, value = f"start/{start}", b"epoch-%d" % start
            status, _, body = c.put(0, key, value)  # w=majority: a follower holds it too
            assert status == 200, (start, body)
            acknowledged[key] = value
            lsn = c.status(0)["lsn"]
            for ordinal in (1, 2):
                wait_for(f"kv-{ordinal} to follow start {start}", lambda: c.status(ordinal).get("lsn") == lsn, 30)
        primary = c.status(0)
        assert primary["epoch"] > STARTS and len(primary["lineage"]) == CAP, primary["lineage"]
        assert primary["lineage"][0]["start"] > 1  # the cap was crossed: LSN 1's epoch is gone
        for ordinal in (1, 2):
            wait_for(f"kv-{ordinal} to hold every write", lambda: c.status(ordinal).get("lsn") == primary["lsn"], 30)
            status = c.status(ordinal)
            assert status["state"] == "following" and status["epoch"] == primary["epoch"], status
            assert status["lineage"] == primary["lineage"]
            assert_all_readable(c, ordinal, acknowledged)
            assert "DIVERGED" not in c.log(ordinal) and "not following it until" not in c.log(ordinal)
        assert_all_readable(c, 0, acknowledged, strong=True)
