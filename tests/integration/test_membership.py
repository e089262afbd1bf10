"""Membership as agreed state: a scale change followed by a lost kv-0 volume loses no acknowledged write.

Each test scales a 3-replica cluster (its template says ``KV_REPLICAS=3``, as
``kubectl scale`` leaves it) to 5, pauses kv-1 and kv-2 so that kv-0, kv-3
and kv-4 alone acknowledge ``w=majority`` writes (three of five), then loses
kv-0's volume. A kv-0 that counted its replicas from ``KV_REPLICAS``, DNS and
recent acks asked kv-1 and kv-2 only, copied one of them and lost every one
of those writes; the configuration in the log makes it wait for a quorum of
the five.
"""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

from dns_cluster import Cluster, assert_all_readable, start_all, write_many
from local_cluster import wait_for

ENV = {"KV_RECOVERY_WAIT": "2", "KV_WRITE_TIMEOUT": "2"}


def voters(c: Cluster, ordinal: int = 0) -> list[str]:
    """The voters kv-N's log records ([] while it does not answer)."""
    return c.status(ordinal).get("membership", {}).get("voters", [])


def scale_to_five_and_pause_two(c: Cluster) -> tuple[dict[str, bytes], dict[str, bytes]]:
    """3 pods, scaled to 5; kv-1 and kv-2 then paused while kv-0, kv-3, kv-4 acknowledge writes.

    Returns (writes every pod holds, writes only kv-0, kv-3 and kv-4 hold).
    """
    start_all(c)
    before = write_many(c, "before", 5)
    c.start(3)
    c.start(4)
    c.replicas = 5
    def five_voters() -> bool:
        # Settled too: while the change is not, a write needs a majority of the old voters as well
        # (two of kv-0, kv-1, kv-2), which the pause below would take away.
        status = c.status(0)
        membership = status.get("membership", {})
        return (status.get("replicas") == 5 and len(status.get("followers", ())) == 4
                and len(membership.get("voters", ())) == 5 and membership.get("settled") is True)
    wait_for("kv-0 to count kv-3 and kv-4 as voters", five_voters, 60)
    for ordinal in (1, 2):
        os.kill(c.pods[ordinal].proc.pid, signal.SIGSTOP)
    during = write_many(c, "during", 40)  # w=majority: three of five, kv-1 and kv-2 paused
    return before, during


def resume(c: Cluster, *ordinals: int) -> None:
    for ordinal in ordinals:
        os.kill(c.pods[ordinal].proc.pid, signal.SIGCONT)


def lose_kv0(c: Cluster) -> None:
    """SIGKILL kv-0 and remove its volume (a pod whose PVC was lost)."""
    c.stop(0)
    shutil.rmtree(c.data_dir(0))


def waits_for_new_pods(c: Cluster) -> bool:
    """Wait until an empty kv-0 heard kv-1 and kv-2: whether it then waits for kv-3 or kv-4 (False: it decided)."""
    def settled() -> bool:
        status = c.status(0)
        recovery = status.get("recovery", {})
        return bool(status.get("writable") or {"kv-1", "kv-2"} <= set(recovery.get("heard", ()))
                    and {"kv-3", "kv-4"} & set(recovery.get("waiting_for", ())))
    wait_for("kv-0 to hear kv-1 and kv-2", settled, 30)
    return not c.status(0).get("writable")


def assert_nothing_lost(c: Cluster, *writes: dict[str, bytes]) -> None:
    c.wait_writable(60)
    for acknowledged in writes:
        assert_all_readable(c, 0, acknowledged, strong=True)


def test_scale_up_then_a_lost_kv0_volume_and_a_full_ordered_restart_lose_nothing(workdir: Path) -> None:
    with Cluster(workdir, 90, env=ENV) as c:
        before, during = scale_to_five_and_pause_two(c)
        for ordinal in sorted(c.pods, reverse=True):  # the StatefulSet stopped: every pod gone
            c.stop(ordinal)
        shutil.rmtree(c.data_dir(0))
        c.list_in_dns()
        for ordinal in range(3):  # OrderedReady: each pod is created once the one before is Ready
            c.start(ordinal)
        waited = waits_for_new_pods(c)
        c.start(3)
        c.start(4)
        assert_nothing_lost(c, before, during)
        assert waited, "kv-0 decided before kv-3 and kv-4 were back, and still lost nothing?"
        assert "copying kv-3" in c.log(0) or "copying kv-4" in c.log(0), c.log(0)[-2000:]
        for ordinal in range(1, 5):
            wait_for(f"kv-{ordinal} to hold every write",
                     lambda: c.status(ordinal).get("lsn") == c.status(0).get("lsn"), 30)
            assert_all_readable(c, ordinal, during)


def test_dns_leaving_the_new_pods_out_while_an_empty_kv0_starts_loses_nothing(workdir: Path) -> None:
    with Cluster(workdir, 91, env=ENV) as c:
        before, during = scale_to_five_and_pause_two(c)
        lose_kv0(c)
        resume(c, 1, 2)
        c.list_in_dns(0, 1, 2)  # kv-3 and kv-4 run, but DNS has neither name
        c.start(0)
        waited = waits_for_new_pods(c)
        c.list_in_dns(0, 1, 2, 3, 4)
        assert_nothing_lost(c, before, during)
        assert waited, "kv-0 decided before kv-3 and kv-4 were back, and still lost nothing?"


def test_a_scale_down_before_the_new_voters_were_removed_then_a_lost_kv0_loses_nothing(workdir: Path) -> None:
    with Cluster(workdir, 92, env=ENV) as c:
        before, during = scale_to_five_and_pause_two(c)
        c.stop(4)  # kubectl scale --replicas=3: kv-4, then kv-3 deleted; their volumes stay
        c.stop(3)
        c.list_in_dns(0, 1, 2)
        lose_kv0(c)
        resume(c, 1, 2)
        c.start(0)
        waited = waits_for_new_pods(c)
        c.start(3)  # scaled back up: the pods come back with their volumes
        c.start(4)
        assert_nothing_lost(c, before, during)
        assert waited, "kv-0 decided before kv-3 and kv-4 were back, and still lost nothing?"


def test_scaling_up_and_down_changes_the_voters_one_at_a_time(workdir: Path) -> None:
    with Cluster(workdir, 93, env=ENV) as c:
        start_all(c)
        assert voters(c) == ["kv-0", "kv-1", "kv-2"]
        c.start(3)
        wait_for("kv-3 to become a voter", lambda: voters(c) == ["kv-0", "kv-1", "kv-2", "kv-3"], 30)
        for ordinal in (1, 2, 3):
            wait_for(f"kv-{ordinal} to hold the configuration",
                     lambda: voters(c, ordinal) == ["kv-0", "kv-1", "kv-2", "kv-3"], 30)
        status, _, body = c.put(0, "four", b"4", w="all")
        assert status == 200, body
        c.stop(3)
        c.list_in_dns(0, 1, 2)  # deleted by a scale down
        wait_for("kv-3 to be removed", lambda: voters(c) == ["kv-0", "kv-1", "kv-2"], 60)
        status, _, body = c.put(0, "three", b"3", w="all")  # every voter: kv-3 no longer counts
        assert status == 200, body
        assert "kv-3 is gone" in c.log(0)


def test_a_second_process_with_a_followers_name_is_refused_while_the_first_streams(workdir: Path) -> None:
    """An old kv-1 that outlived a force delete, on a copy of its volume: its acks must not count as kv-1's."""
    with Cluster(workdir, 94, env=ENV) as c:
        start_all(c)
        acknowledged = write_many(c, "before", 5)
        os.kill(c.pods[1].proc.pid, signal.SIGSTOP)  # a consistent copy of kv-1's volume
        copy = workdir / "copy-of-kv-1"
        shutil.copytree(c.data_dir(1), copy)
        os.kill(c.pods[1].proc.pid, signal.SIGCONT)
        wait_for("kv-1 to stream again", lambda: c.status(0).get("followers", {}).get("kv-1") == 5, 30)
        c.start_claimant(1, "127.0.94.31", copy, wait=False)
        wait_for("kv-0 to refuse the second kv-1", lambda: "another process named kv-1" in c.log(0), 30)
        acknowledged |= write_many(c, "after", 5)
        assert_all_readable(c, 1, acknowledged)
        c.stop(1)  # the first one dies: its stream ends and the other may take its place
        wait_for("the second kv-1 to stream", lambda: c.status(0).get("followers", {}).get("kv-1") == 10, 30)
