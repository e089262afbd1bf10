"""A follower whose disk filled writes again once there is room, and keeps what it acknowledged.

After LevelDB refused a write, it may refuse every later one until reopened
(its background error), or take them into a write-ahead log it can no longer
read back: every write after the refused one and before a reopen was gone
after a restart. The follower's volume here is a small tmpfs the test fills
(root only), and the follower is restarted at the end with kv-0 down, so
it cannot copy back what its own disk lost.
"""

from __future__ import annotations

from pathlib import Path

from dns_cluster import Cluster, assert_all_readable, start_all, write_many
from local_cluster import wait_for
from small_disk import fill, small_disk


def test_a_follower_whose_disk_filled_follows_again_once_there_is_room_and_loses_nothing(workdir: Path) -> None:
    with small_disk(workdir / "data-kv-1") as disk, Cluster(workdir, 98) as c:
        start_all(c)
        acknowledged = write_many(c, "before", 10)
        filler = fill(disk)
        # kv-0 and kv-2 make a majority: writes go on, and kv-1's disk refuses them.
        acknowledged |= write_many(c, "while-full", 30)
        wait_for("kv-1 to say its disk refused a write",
                 lambda: "write failed" in str((c.status(1).get("following") or {}).get("stalled")), 30)
        assert c.status(1)["lsn"] < c.status(0)["lsn"]

        filler.unlink()  # room again: kv-1 reopens its database and follows on, without a restart
        acknowledged |= write_many(c, "after-room", 30)
        lsn = c.status(0)["lsn"]
        wait_for("kv-1 to hold every write", lambda: c.status(1).get("lsn") == lsn, 30)
        assert_all_readable(c, 1, acknowledged)
        acknowledged |= write_many(c, "last", 1, w="all")  # kv-1 is told the rest is committed

        # Everything kv-1 acknowledged is on its disk: restarted without kv-0 to copy from, it still has it.
        c.stop(0)
        c.stop(1)
        c.start(1)
        assert c.status(1)["lsn"] == lsn + 1
        del acknowledged["last/0"]  # its commit may not have reached kv-1's disk before the restart
        assert_all_readable(c, 1, acknowledged)
        assert "reopened the database after a failed write" in c.log(1)
