"""A follower resumed from a long pause says it has not heard kv-0 lately, never that it is current.

While kv-1 is stopped (SIGSTOP) kv-0 and kv-2 go on taking writes. Once
resumed, kv-1 holds only what it had, plus what waited in its socket; the
LSN it last heard from kv-0 is as old as the pause. Every /readyz answer
from then on that states a lag as current must state at least the true one.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path

from dns_cluster import Cluster, start_all, write_many
from local_cluster import http

PAUSE = 8.0  # seconds: longer than kv-0 keeps a silent follower's stream (5 s)


def test_a_follower_resumed_from_a_long_pause_never_claims_to_be_current(workdir: Path) -> None:
    with Cluster(workdir, 99) as c:
        start_all(c)
        write_many(c, "before", 5)
        kv1 = c.pods[1].proc.pid
        os.kill(kv1, signal.SIGSTOP)
        try:
            end, count = time.monotonic() + PAUSE, 0
            while time.monotonic() < end and count < 100_000:  # bounded in time and count
                status, _, body = c.put(0, f"during/{count}", b"x")
                assert status == 200, body
                count += 1
            primary = c.status(0)["lsn"]  # no writes from here on: kv-1's true lag is primary - its LSN
        finally:
            os.kill(kv1, signal.SIGCONT)
        claims = []
        for _ in range(3000):
            code, _, body = http("GET", f"{c.url(1)}/readyz", timeout=10)
            lsn = c.status(1)["lsn"]  # at least kv-1's LSN when it answered
            answer = json.loads(body)
            reason = answer.get("reason") or answer.get("message", "")
            claims.append((code, reason, lsn))
            stated = re.search(r"(\d+) entries behind", reason)
            if stated and "last heard" not in reason:  # a lag it states as current
                assert int(stated.group(1)) >= primary - lsn, (reason, primary, lsn, claims[-5:])
            if lsn == primary:
                break
        assert claims[-1][2] == primary, claims[-5:]  # caught up
        assert claims[0][2] < primary, claims[0]  # and the first answer came while it was behind


def test_a_restarted_follower_is_not_ready_before_its_upstream_answered_or_failed(workdir: Path) -> None:
    # A pod is Ready only once it knows whether it can follow at all (the peer protocol, the
    # lineage): a rolling update that moved on sooner would replace the next pod too.
    with Cluster(workdir, 99) as c:
        start_all(c)
        write_many(c, "before", 3)
        c.stop(1)
        kv0 = c.pods[0].proc.pid
        os.kill(kv0, signal.SIGSTOP)  # kv-1's first question to kv-0 waits out its timeout (1 s)
        try:
            c.start(1, wait=False)
            answers: list[tuple[int, str]] = []
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and len(answers) < 20_000:  # bounded in time and count
                try:
                    code, _, body = http("GET", f"{c.url(1)}/readyz", timeout=5)
                except OSError:  # not listening yet
                    time.sleep(0.005)
                    continue
                answer = json.loads(body)
                answers.append((code, answer.get("reason") or answer.get("message", "")))
                if code == 200:
                    break
        finally:
            os.kill(kv0, signal.SIGCONT)
        assert answers, "kv-1 never answered /readyz"
        assert answers[0][0] == 503 and "starting" in answers[0][1], answers[:3]
        # Once its question timed out it is Ready, serving what it has (OrderedReady goes on).
        assert answers[-1][0] == 200, answers[-3:]
