"""A follower that restarts promises no new epoch until the lease time has passed since it started.

Its previous process may have echoed a round of kv-0 a moment before it
died, and that kv-0 may answer strong reads from the lease the echo gave it
for LEASE_SECONDS. The wait before a promise (fencing.py) lived in memory
only: a restarted follower promised at once.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from dns_cluster import TOKEN, Cluster, start_all, write_many
from local_cluster import http, wait_for
from kvstore.replication.fencing import LEASE_SECONDS

PEER = {"Authorization": f"Bearer {TOKEN}"}


def test_a_restarted_follower_promises_once_the_lease_time_has_passed_since_it_started(workdir: Path) -> None:
    # kv-0 recovers only with promises from both followers: it waits for kv-1 (up to 30 s).
    with Cluster(workdir, 11, env={"KV_RECOVERY_WAIT": "30"}) as c:
        start_all(c)
        write_many(c, "before", 3)
        c.stop(1)
        c.stop(0)
        c.start(0, wait=False)
        peer0 = f"http://{c.host(0)}:8081/v1/peer/status"
        candidate = wait_for("kv-0 to ask for a candidate epoch", lambda: _candidate(peer0), 30)
        c.start(1)  # Ready as soon as it listens
        uptime = json.loads(http("GET", f"http://{c.host(1)}:8081/v1/peer/status", headers=PEER)[2])["uptime_seconds"]
        kv1_started = time.time() - uptime  # its uptime clock starts a moment (<10 ms) after the hold's
        c.wait_writable()
        # kv-0 began its epoch only with kv-1's promise, which kv-1 gave once the lease time had passed
        # since it started (its answer, not the promise it stored first, is what waits).
        events = json.loads(http("GET", f"http://{c.host(0)}:8080/v1/events?after=0")[2])["events"]
        began = [e for e in events if e["kind"] == "became_primary" and e["epoch"] >= candidate["epoch"]]
        assert began, events
        assert began[-1]["time"] - kv1_started >= LEASE_SECONDS - 0.02, (began[-1], kv1_started)
        assert c.put(0, "after", b"x")[0] == 200


def _candidate(url: str) -> dict | None:
    try:
        return json.loads(http("GET", url, headers=PEER, timeout=2)[2]).get("candidate")
    except (OSError, ValueError):
        return None
