"""A store whose disk refused a write reopens its LevelDB before the next one, once there is room.

On a real (small tmpfs) disk, root only: LevelDB, after a write failed for lack of
space, either refuses every later write or takes them into a log it cannot read
back after a restart. kv-0's own poisoning after a failed published batch is
tested in test_storage.py and stays.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import AsyncIterator

import plyvel
import pytest

from kvstore import storage
from kvstore.lineage import Lineage
from kvstore.storage import LogEntry, StorageError, Store
from kvstore.storage.database import ROOM_PROBE
from small_disk import fill, small_disk


def entries(first: int, count: int, size: int = 1000) -> list[LogEntry]:
    return [LogEntry(lsn, 1, storage.PUT, b"k%d" % lsn, os.urandom(size)) for lsn in range(first, first + count)]


@pytest.fixture
async def on_small_disk(tmp_path: Path) -> AsyncIterator[tuple[Store, Path]]:
    """A follower's store (an adopted lineage, entries applied) on a 16 MiB tmpfs."""
    with small_disk(tmp_path / "disk") as disk:
        s = Store.open(str(disk / "data"))
        await s.start()
        await s.set_lineage(Lineage().begin(1, 1, "a" * 32, True))
        await s.apply_nowait(entries(1, 20))
        try:
            yield s, disk
        finally:
            await s.close()


async def test_a_follower_store_writes_again_once_there_is_room_and_keeps_every_write(
        on_small_disk: tuple[Store, Path]) -> None:
    s, disk = on_small_disk
    filler = fill(disk)
    with pytest.raises(StorageError):
        await s.apply_nowait(entries(21, 5, size=8192))
    assert s.write_error is not None and s.lsn == 20
    with pytest.raises(StorageError) as still_full:
        await s.apply_nowait(entries(21, 5, size=8192))
    filler.unlink()
    await s.apply_nowait(entries(21, 200, size=8192))  # reopened first
    assert s.lsn == 220 and s.failed is None
    await s.close()

    again = Store.open(str(disk / "data"))  # what a restart reads: every write it acknowledged
    try:
        assert again.lsn == 220
        assert (await again.get(b"k220")) is not None and (await again.get(b"k1")) is not None
    finally:
        await again.close()
    assert "not reopening the database before" in str(still_full.value)  # it waited for room
    assert not (disk / "data" / ROOM_PROBE).exists()


async def test_a_metadata_write_after_a_failed_one_reopens_first(on_small_disk: tuple[Store, Path]) -> None:
    s, disk = on_small_disk
    filler = fill(disk)
    with pytest.raises(StorageError):
        await s.apply_nowait(entries(21, 5, size=8192))
    filler.unlink()
    lineage = s.lineage.begin(2, 21, "a" * 32, True)
    await s.set_lineage(lineage)
    await s.close()
    again = Store.open(str(disk / "data"))
    try:
        assert again.lineage == lineage and again.lsn == 20
    finally:
        await again.close()


async def test_a_database_that_cannot_be_reopened_stops_the_process(
        on_small_disk: tuple[Store, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    s, disk = on_small_disk
    filler = fill(disk)
    with pytest.raises(StorageError):
        await s.apply_nowait(entries(21, 5, size=8192))
    filler.unlink()

    def refuse(*args: object, **kwargs: object) -> None:
        raise plyvel.IOError("IO error: refused by the test")
    monkeypatch.setattr(plyvel, "DB", refuse)
    with pytest.raises(StorageError, match="could not be reopened"):
        await s.apply_nowait(entries(21, 5))
    assert s.fatal.is_set() and s.failed is not None
    with pytest.raises(StorageError, match="could not be reopened"):
        await s.apply_nowait(entries(21, 5))  # no write goes on: the process restarts
