"""An empty kv-0 restores from the *most advanced* peer, not from any peer.

kv-1 is down while majority writes go to kv-0 and kv-2, so the followers
differ: kv-2 has every acknowledged write, kv-1 misses them. Then kv-0 loses
its volume. Restoring from kv-1 (the first peer, or a random one) would lose
acknowledged writes; the test reads every one of them back from kv-0.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import urllib.parse

from local_cluster import LocalCluster, http, wait_for
from kvstore.local.state import running_pid

WRITES = 20


def test_empty_primary_restores_from_the_most_advanced_follower() -> None:
    cluster = LocalCluster("127.0.68.10", "127.0.68.2", replicas=3, env={"KV_WRITE_TIMEOUT": "2"}).up()
    controller = running_pid(cluster.directory)
    assert controller
    paused_controller = False
    try:
        assert http("PUT", cluster.url("kv-0") + "/v1/kv/base?w=all", b"everywhere")[0] == 200
        # The controller restarts nothing until kv-0's volume is gone; kv-1 is killed (not
        # paused: a paused follower still reads what was pushed into its socket when it resumes).
        os.kill(controller, signal.SIGSTOP)
        paused_controller = True
        behind = cluster.pid("kv-1")
        os.kill(behind, signal.SIGKILL)
        for i in range(WRITES):
            status, _, body = http("PUT", f"{cluster.url('kv-0')}/v1/kv/acked%2F{i}?w=majority", b"v%d" % i)
            assert status == 200, body           # kv-0 and kv-2 hold it, kv-1 does not
        lsn = json.loads(http("GET", cluster.url("kv-0") + "/v1/status")[2])["lsn"]
        killed = cluster.pid("kv-0")
        os.kill(killed, signal.SIGKILL)
        wait_for("kv-0 and kv-1 to die", lambda: not _alive(killed) and not _alive(behind), 10)
        data = cluster.directory / "data-kv-0"
        assert data.is_dir(), sorted(p.name for p in cluster.directory.iterdir())
        shutil.rmtree(data)
        data.mkdir()
        os.kill(controller, signal.SIGCONT)       # it restarts kv-0 (empty) and kv-1 (behind)
        paused_controller = False
        cluster.wait_restarted("kv-0", killed, timeout=90)
        status = json.loads(http("GET", cluster.url("kv-0") + "/v1/status")[2])
        assert status["lsn"] >= lsn, (status, lsn, cluster.logs())
        for i in range(WRITES):
            s, _, value = http("GET", f"{cluster.url('kv-0')}/v1/kv/{urllib.parse.quote(f'acked/{i}', safe='')}")
            assert (s, value) == (200, b"v%d" % i), (i, s, cluster.logs())
        # And the follower that was behind gets them from the restored primary.
        s, _, value = http("GET", f"{cluster.url('kv-1')}/v1/kv/acked%2F{WRITES - 1}?min_lsn={lsn}")
        assert (s, value) == (200, b"v%d" % (WRITES - 1))
    finally:
        if paused_controller:
            os.kill(controller, signal.SIGCONT)
        cluster.down()


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); its state says it is gone.
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False
