"""Pipelining: kv-0 sends a batch to its followers while it fsyncs it; a batch it never wrote is never read.

kv-0 acknowledges a write only after its own fsync, so an entry a follower
holds but kv-0 lost in a crash before that fsync was never acknowledged. The
test builds exactly that crash with the test-only fault ``KV_TEST_HOLD_COMMIT``
(kv-0 sends the batch holding that LSN and never writes it) and real processes
(see dns_cluster.py), then checks the two guards:

- the follower that holds the entry answers no read from it (it is not known
  to be committed);
- once kv-0 restarts without that follower and begins a verified epoch, the
  follower drops the entry when it follows again (log matching), and never
  reports it as data.

A disk that refuses the batch after it was sent (a tmpfs the test fills) must
stop kv-0 from giving that LSN to another write until it restarts.
"""

from __future__ import annotations

import json
import os
import signal
import threading
from pathlib import Path

from dns_cluster import Cluster, assert_all_readable, start_all, write_many
from local_cluster import http, wait_for
from small_disk import fill, small_disk


def test_a_batch_kv0_sent_but_never_wrote_is_never_read_and_is_dropped(workdir: Path) -> None:
    # Five replicas: kv-0 can then begin a verified epoch (a quorum of three followers) without
    # kv-1, the only follower that holds the lost entry.
    with Cluster(workdir, 53, replicas=5, env={"KV_RECOVERY_WAIT": "2", "KV_READ_WAIT": "1"}) as c:
        c.start(0, KV_TEST_HOLD_COMMIT="6@1")  # the fault: the batch holding LSN 6 of epoch 1
        start_all(c)  # the others; kv-0 (already running) begins epoch 1 of a new history
        acknowledged = write_many(c, "before", 5)  # LSNs 1..5
        assert (c.status(0)["lsn"], c.status(0)["epoch"]) == (5, 1)

        # Only kv-1 may keep the batch: kv-3 and kv-4 are gone, kv-2 is paused (and killed
        # below, so what reached its socket is lost). kv-0 still heard a majority a moment ago.
        c.stop(3)
        c.stop(4)
        os.kill(c.pods[2].proc.pid, signal.SIGSTOP)
        answers: list[object] = []
        writer = threading.Thread(target=lambda: answers.append(_put_quietly(c, "lost", b"never-acknowledged")))
        writer.start()
        wait_for("kv-1 to hold the batch kv-0 is still writing", lambda: c.status(1).get("lsn") == 6, 10)
        status = c.status(0)
        assert (status["lsn"], status["appended"]) == (5, 6), status  # sent, not durable on kv-0
        assert status["committed_lsn"] == 5, status  # kv-1 holds 6, but kv-0 does not
        # kv-1 holds LSN 6 but answers no read from it: nobody acknowledged it.
        # (a read that must reflect LSN 6 waits for a majority to hold it, and times out the same way)
        for query, error in (("", b"not_confirmed"), ("?min_lsn=6", b"min_lsn_timeout")):
            code, _, body = http("GET", f"{c.url(1)}/v1/kv/lost{query}")
            assert code == 504 and error in body, (query, code, body)
        code, _, body = http("GET", f"{c.url(1)}/v1/kv?prefix=lost")
        assert code == 504 and b"not_confirmed" in body, (code, body)
        assert c.get(1, "before/4") == (200, b"before-4")  # committed keys are answered as before

        # kv-0 crashes before its fsync; kv-2 dies with the batch unread in its socket.
        c.pods[2].kill()
        c.stop(0)
        writer.join(15)
        assert answers and answers[0] != 200, answers  # the client never got an acknowledgement
        # kv-0 comes back while kv-1 is unreachable: it hears kv-2, kv-3 and kv-4 (a quorum),
        # none of which holds LSN 6, and begins a verified epoch at LSN 6.
        kv1 = c.pods[1].proc.pid
        os.kill(kv1, signal.SIGSTOP)
        try:
            for ordinal in (2, 3, 4):
                c.start(ordinal)
            c.start(0)
            c.wait_writable()
        finally:
            os.kill(kv1, signal.SIGCONT)
        assert "heard a quorum (3 of 4 followers)" in c.log(0)
        acknowledged |= write_many(c, "after", 5)  # LSNs 6.. of the new epoch

        # kv-1 follows again: its LSN 6 is another epoch's, which a verified epoch replaced: dropped.
        def converged(ordinal: int) -> bool:
            mine, primary = c.status(ordinal), c.status(0)
            return (mine.get("history_id"), mine.get("lsn")) == (primary["history_id"], primary["lsn"])
        wait_for("kv-1 to drop the lost entry and follow the new epoch", lambda: converged(1), 60)
        assert "were replaced by epoch" in c.log(1)
        assert c.status(1)["state"] == "following"
        for ordinal in range(5):
            # A follower read is local: one that came back late (kv-2) may still be catching up.
            wait_for(f"kv-{ordinal} to follow the new epoch to its end", lambda: converged(ordinal), 60)
            assert c.get(ordinal, "lost")[0] == 404, ordinal
            assert_all_readable(c, ordinal, acknowledged)


def _put_quietly(c: Cluster, key: str, value: bytes) -> int:
    """PUT that kv-0 never answers (it is killed): the status, or 0 when the connection broke."""
    try:
        return http("PUT", f"{c.url(0)}/v1/kv/{key}?w=majority", value, timeout=10)[0]
    except OSError:
        return 0


def test_a_kv0_that_crashed_mid_batch_catches_up_from_a_followers_log(workdir: Path) -> None:
    """Every follower wrote the batch kv-0 never did: the restarted kv-0 copies those entries, not a snapshot."""
    with Cluster(workdir, 54) as c:
        c.start(0, KV_TEST_HOLD_COMMIT="6@1")
        start_all(c)
        acknowledged = write_many(c, "before", 5)  # LSNs 1..5 of epoch 1
        history = c.status(0)["history_id"]
        answers: list[object] = []
        writer = threading.Thread(target=lambda: answers.append(_put_quietly(c, "unanswered", b"survives")))
        writer.start()
        for ordinal in (1, 2):
            wait_for(f"kv-{ordinal} to hold the batch kv-0 is still writing",
                     lambda: c.status(ordinal).get("lsn") == 6, 10)
        c.stop(0)  # crashed before its fsync: its disk ends at LSN 5
        writer.join(15)
        assert answers and answers[0] != 200, answers
        c.start(0)
        c.wait_writable()
        log = c.log(0)
        assert "catching up from kv-" in log and "entries 6..6" in log, log[-2000:]
        assert "installing a snapshot" not in log
        status = c.status(0)
        # Every follower was heard, so the history goes on; the unanswered write survived,
        # as an unacknowledged write may (its client must read it back to know).
        assert status["history_id"] == history and status["lsn"] == 6, status
        assert c.get(0, "unanswered", strong=True) == (200, b"survives")
        acknowledged |= write_many(c, "after", 3)
        for ordinal in range(3):
            wait_for(f"kv-{ordinal} to hold every write", lambda: c.status(ordinal).get("lsn") == 9, 30)
            assert_all_readable(c, ordinal, acknowledged)


def test_a_disk_that_refuses_a_sent_batch_stops_kv0_until_restarted_and_loses_nothing(workdir: Path) -> None:
    """kv-0's disk fills between sending a batch to its followers and writing it.

    Its followers may hold that LSN now, so kv-0 must never give it to another write: it takes
    no more writes (503 storage_unavailable, "restart the pod"), even once there is room again.
    Restarted with room, it recovers what the followers hold; nothing acknowledged is lost and
    every replica ends with the same data.
    """
    # kv-0's volume: a 16 MiB tmpfs the test can fill
    with small_disk(workdir / "data-kv-0") as disk, Cluster(workdir, 55) as c:
        start_all(c)
        acknowledged = write_many(c, "before", 10)
        filler = fill(disk)
        status, _, body = c.put(0, "refused", b"x" * 8192)
        assert status == 503 and json.loads(body)["error"] == "storage_unavailable", (status, body)
        assert b"read it back" in body  # its batch went out first: it may survive
        filler.unlink()  # room again, but the LSN may be on a follower: still no writes
        status, _, body = c.put(0, "after-room", b"y")
        assert status == 503 and b"restart the pod" in body, (status, body)

        c.stop(0)
        c.start(0)
        c.wait_writable()
        acknowledged |= write_many(c, "after", 5)
        assert_all_readable(c, 0, acknowledged, strong=True)
        lsn = c.status(0)["lsn"]
        for ordinal in (1, 2):
            wait_for(f"kv-{ordinal} to hold every write", lambda: c.status(ordinal).get("lsn") == lsn, 30)
            assert_all_readable(c, ordinal, acknowledged)
        # The refused write is in every replica or in none: never in some.
        assert len({c.get(ordinal, "refused", strong=ordinal == 0) for ordinal in range(3)}) == 1
        assert c.get(0, "after-room", strong=True)[0] == 404
