"""A snapshot copy logs how far it got every few seconds, and hands every chunk on unchanged."""

from __future__ import annotations

import logging
from typing import AsyncIterator

import pytest

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
