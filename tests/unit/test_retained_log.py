"""The retained log alone, on a real LevelDB: its in-memory tail, reads after an LSN from disk, truncation."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, AsyncIterator

import plyvel
import pytest

from kvstore.storage import retained_log
from kvstore.storage.database import Database
from kvstore.storage.layout import LOG, META_LOG_START, META_LSN, PUT, LogEntry, LogTruncated, _U64
from kvstore.storage.retained_log import RetainedLog
from kvstore.storage.snapshot_swap import SnapshotSwap


@pytest.fixture
async def parts(tmp_path: Path) -> AsyncIterator[tuple[Database, RetainedLog]]:
    database = Database.open(str(tmp_path / "data"))
    try:
        yield database, RetainedLog(database, SnapshotSwap(database), log_retention=5)
    finally:
        database.close()


def commit(database: Database, retained: RetainedLog, first: int, count: int, remember: bool = True) -> None:
    """Write entries ``first``.. to the log keys as a committed batch does, and remember them (or not)."""
    encoded = [LogEntry(lsn, 1, PUT, b"k%d" % lsn, b"v" * (lsn % 7)).encode() for lsn in range(first, first + count)]
    with database.db.write_batch() as batch:
        for lsn, raw in enumerate(encoded, first):
            batch.put(LOG + _U64.pack(lsn), raw)
        batch.put(META_LSN, _U64.pack(first + count - 1))
    database.advance(first + count - 1)
    if remember:
        retained.remember(encoded, first)


def lsns(raws: list[bytes]) -> list[int]:
    return [LogEntry.decode(raw).lsn for raw in raws]


async def test_the_tail_and_the_disk_serve_the_same_entries(parts: tuple[Database, RetainedLog],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    database, retained = parts
    monkeypatch.setattr(retained_log, "TAIL_ENTRIES", 4)  # trimmed during the test
    for first in range(1, 30, 3):
        commit(database, retained, first, 3)
    assert retained._tail_first > 1 and len(retained._tail) <= 2 * 4
    for after in range(0, 31):
        for limit in (1, 2, 100):
            assert await retained.log_after(after, limit, 1 << 20) == retained._log_after(after, limit, 1 << 20)
    assert lsns(await retained.log_after(25, 100, 1 << 20)) == [26, 27, 28, 29, 30]


async def test_entries_it_was_not_told_of_come_from_disk(parts: tuple[Database, RetainedLog]) -> None:
    database, retained = parts
    commit(database, retained, 1, 5)
    commit(database, retained, 6, 5, remember=False)  # e.g. written before a restart
    commit(database, retained, 11, 2)  # a gap: the tail starts over at 11
    assert retained._tail_first == 11
    assert lsns(await retained.log_after(3, 100, 1 << 20)) == list(range(4, 13))
    retained.forget(13)  # after a swap or a reopen: everything from disk
    assert lsns(await retained.log_after(10, 100, 1 << 20)) == [11, 12]


async def test_truncation_moves_the_start_before_it_deletes(parts: tuple[Database, RetainedLog]) -> None:
    database, retained = parts
    commit(database, retained, 1, 30, remember=False)
    retained.forget(31)  # as after a restart: the tail holds nothing yet
    assert await retained.truncate_log() == 25
    assert database.log_start == 26 and database.meta_int(META_LOG_START) == 26
    assert database.db.get(LOG + _U64.pack(25)) is None and database.db.get(LOG + _U64.pack(26)) is not None
    with pytest.raises(LogTruncated):
        await retained.log_after(24, 100, 1 << 20)
    assert lsns(await retained.log_after(25, 100, 1 << 20)) == [26, 27, 28, 29, 30]
    assert await retained.truncate_log() == 0  # nothing beyond the bound any more


async def test_a_disk_read_that_meets_a_gap_says_truncated(parts: tuple[Database, RetainedLog]) -> None:
    """Entries gone under a reader (a truncation that ran meanwhile) are never skipped silently."""
    database, retained = parts
    commit(database, retained, 1, 10, remember=False)
    retained.forget(11)
    for lsn in (1, 2, 3):
        database.db.delete(LOG + _U64.pack(lsn))
    with pytest.raises(LogTruncated):
        await retained.log_after(0, 100, 1 << 20)


async def test_a_failed_truncation_has_the_database_reopened(parts: tuple[Database, RetainedLog],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    database, retained = parts
    commit(database, retained, 1, 30, remember=False)

    async def refused() -> int:
        raise plyvel.IOError("IO error: refused by the test")
    monkeypatch.setattr(retained, "truncate_log", refused)
    real_sleep = asyncio.sleep

    async def no_wait(_seconds: float, *args: Any) -> None:
        await real_sleep(0)
    monkeypatch.setattr(retained_log.asyncio, "sleep", no_wait)
    loop = asyncio.ensure_future(retained.truncate_loop())
    try:
        for _ in range(100):
            if database.write_error is not None:
                break
            await real_sleep(0)
        assert database.write_error == "log truncation failed: IO error: refused by the test"
        assert not loop.done()  # it goes on serving and tries again
    finally:
        loop.cancel()
        with pytest.raises(asyncio.CancelledError):
            await loop
