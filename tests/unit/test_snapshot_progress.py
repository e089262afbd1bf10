"""A snapshot copy logs how far it got every few seconds, and `kvstore cluster scale --wait` shows it."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import AsyncIterator

import pytest

from kvstore.local.cli import scale_progress, snapshot_progress
from kvstore.replication.follower import logging_progress

Chunk = list[tuple[bytes, bytes]]


async def _chunks(chunks: list[Chunk]) -> AsyncIterator[Chunk]:
    for chunk in chunks:
        yield chunk


async def test_keys_and_bytes_so_far_are_logged_every_few_seconds(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]

    def clock() -> float:
        return now[0]

    sent = [[(b"k%d" % i, b"v" * 998)] * 100 for i in range(10)]  # 100 keys, 0.1 MB each
    received = []
    with caplog.at_level(logging.INFO, logger="kvstore.replication"):
        async for chunk in logging_progress(_chunks(sent), "kv-0", every=5.0, clock=clock):
            received.append(chunk)
            now[0] += 2.0  # chunk n arrives at 2n s: lines at 6 s (4th chunk), 12 s and 18 s
    assert received == sent
    lines = [r.getMessage() for r in caplog.records if "so far" in r.getMessage()]
    assert lines == ["snapshot from kv-0: 400 keys (0.4 MB) copied so far",
                     "snapshot from kv-0: 700 keys (0.7 MB) copied so far",
                     "snapshot from kv-0: 1000 keys (1.0 MB) copied so far"]


def test_cluster_scale_reads_the_copy_s_progress_from_the_pod_log(tmp_path: Path) -> None:
    log = tmp_path / "kv-3.log"
    assert snapshot_progress(log) is None  # no log yet
    lines = ["2026-11-29 20:00:00 kv-3 INFO kvstore.replication: following kv-0",
             "2026-11-29 20:00:01 kv-3 INFO kvstore.replication: installing a snapshot from kv-0 at lsn 9 (new)"]
    log.write_text("\n".join(lines) + "\n")
    assert snapshot_progress(log) == "installing a snapshot from kv-0 at lsn 9 (new)"
    lines.append("2026-11-29 20:00:06 kv-3 INFO kvstore.replication: snapshot from kv-0: 400 keys (0.4 MB) "
                 "copied so far")
    log.write_text("\n".join(lines) + "\n")
    assert snapshot_progress(log) == "snapshot from kv-0: 400 keys (0.4 MB) copied so far"
    pods = [{"name": "kv-3", "ordinal": 3, "ready": False, "status": "Running"},
            {"name": "kv-0", "ordinal": 0, "ready": True, "status": "Running"}]
    assert scale_progress(tmp_path.parent, 4, pods) == "1/4 Ready; kv-3: Running"  # logs/ is elsewhere
    (tmp_path / "logs").mkdir()
    log.rename(tmp_path / "logs" / "kv-3.log")
    assert scale_progress(tmp_path, 4, pods) == \
        "1/4 Ready; kv-3: snapshot from kv-0: 400 keys (0.4 MB) copied so far"
    lines.append("2026-11-29 20:00:09 kv-3 INFO kvstore.replication: installed a snapshot of 900 keys at lsn 9 "
                 "from kv-0 in 8.0s")
    (tmp_path / "logs" / "kv-3.log").write_text("\n".join(lines) + "\n")
    assert snapshot_progress(tmp_path / "logs" / "kv-3.log") is None  # done: the copy is over
