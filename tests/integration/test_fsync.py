"""Every acknowledged write was synced: the replica's fdatasync/fsync calls, counted with strace.

Killing the process (the SIGKILL durability test) leaves the page cache, so
it passes with fsync off. Here the system calls themselves are counted:
writes sent one after another cannot share a group commit, so each needs a
sync of its own before its answer.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

import needs
from local_cluster import http
from wrapped_replica import WrappedReplica

HOST = "127.0.63.10"
WRITES = 20
SYNC_CALLS = ("fdatasync", "fsync", "sync_file_range", "msync")



@pytest.fixture(scope="module")
def strace() -> str:
    """strace's path: installed with apt-get when root; else a skip (a failure in CI) saying so."""
    return needs.tool("strace", "strace")


class TracedReplica(WrappedReplica):
    """A replica run under ``strace -f``, logging only the calls that make data durable."""

    def __init__(self, workdir: Path, env: dict[str, str], strace: str) -> None:
        self.trace = workdir / "strace.log"
        super().__init__(workdir, "kv-0", HOST, [strace, "-f", "-qq", "-e", f"trace={','.join(SYNC_CALLS)}",
                                                  "-o", str(self.trace)], env=env)

    def syncs(self) -> int:
        """Sync calls that returned so far (strace writes a line per finished call)."""
        text = self.trace.read_text(errors="replace") if self.trace.exists() else ""
        return sum(1 for line in text.splitlines()
                   if any(f"{call}(" in line for call in SYNC_CALLS) and "= 0" in line)


def syncs_behind_sequential_writes(tmp_path: Path, env: dict[str, str], strace: str) -> int:
    """Sync calls the replica made while answering ``WRITES`` writes one after another."""
    replica = TracedReplica(tmp_path, env, strace)
    try:
        replica.start()
        assert http("PUT", f"{replica.url}/v1/kv/warm", b"x")[0] == 200
        time.sleep(0.5)  # startup syncs are done and written out
        before = replica.syncs()
        for i in range(WRITES):
            status, _, body = http("PUT", f"{replica.url}/v1/kv/durable/{i}", b"v%d" % i)
            assert status == 200, body
        # strace may write its log a moment after the calls returned: give it a bounded while.
        for _ in range(20):
            if replica.syncs() - before >= WRITES:
                break
            time.sleep(0.1)
        return replica.syncs() - before
    finally:
        replica.stop()
        if replica.proc is not None and replica.proc.poll() is None:
            replica.kill()


def test_each_acknowledged_write_is_synced(tmp_path: Path, strace: str) -> None:
    # The default configuration (KV_FSYNC unset) must sync before every answer.
    synced = syncs_behind_sequential_writes(tmp_path, {}, strace)
    assert synced >= WRITES, f"{synced} sync calls behind {WRITES} acknowledged writes"


def test_the_count_tells_fsync_off_apart(tmp_path: Path, strace: str) -> None:
    # The control: with KV_FSYNC=false the same writes make (almost) no sync calls, so the
    # count above measures fsync and nothing else.
    synced = syncs_behind_sequential_writes(tmp_path, {"KV_FSYNC": "false"}, strace)
    assert synced < WRITES // 2, f"{synced} sync calls with KV_FSYNC=false"
