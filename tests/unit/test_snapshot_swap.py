"""The snapshot swap alone, on a real LevelDB: the gate, the count of reads inside LevelDB, installation."""

from __future__ import annotations

import asyncio
import json
import os
import threading
from pathlib import Path
from typing import AsyncIterator

import pytest

from kvstore.lineage import Lineage, Promise
from kvstore.storage.database import ACTIVE_FILE, Database
from kvstore.storage.layout import DATA, META_LSN, META_PROMISE, _U64, _pack_record
from kvstore.storage.snapshot_swap import SnapshotSwap

LINEAGE = Lineage().begin(1, 1, "c" * 32, True)


@pytest.fixture
async def parts(tmp_path: Path) -> AsyncIterator[tuple[Database, SnapshotSwap]]:
    database = Database.open(str(tmp_path / "data"))
    database.db.put(DATA + b"old", _pack_record(1, b"O"))
    database.db.put(META_LSN, _U64.pack(1))
    database.db.put(META_PROMISE, json.dumps(Promise(7, "ab").to_json()).encode())
    database.promise = Promise(7, "ab")
    try:
        yield database, SnapshotSwap(database)
    finally:
        database.close()


async def turns(n: int = 5) -> None:
    """Give everything that would (wrongly) go on now its turn on the loop."""
    for _ in range(n):
        await asyncio.sleep(0)


async def chunks(records: list[list[tuple[bytes, bytes]]], fail_after: int | None = None
                 ) -> AsyncIterator[list[tuple[bytes, bytes]]]:
    for i, chunk in enumerate(records):
        if i == fail_after:
            raise ConnectionResetError("upstream went away mid-snapshot")
        yield chunk


async def test_the_gate_waits_for_reads_inside_leveldb_and_holds_new_ones(
        parts: tuple[Database, SnapshotSwap]) -> None:
    database, swap = parts
    inside, release = threading.Event(), threading.Event()

    def slow_read() -> bytes | None:
        inside.set()
        assert release.wait(10), "the test never released the read"
        return database.db.get(DATA + b"old")
    running = asyncio.ensure_future(swap.read(slow_read))
    assert await asyncio.to_thread(inside.wait, 5)
    quiet = asyncio.ensure_future(swap.quiesce())
    await turns()
    assert not quiet.done()  # a read is inside LevelDB: closing it now would crash
    later_read = asyncio.ensure_future(swap.read(database.db.get, DATA + b"old"))
    later_get = asyncio.ensure_future(swap.get(b"old"))
    release.set()
    assert await running is not None
    await asyncio.wait_for(quiet, 5)
    await turns()
    assert not later_read.done() and not later_get.done()  # held at the gate while the swap runs
    swap.open_gate()
    assert await asyncio.wait_for(later_read, 5) is not None
    record = await asyncio.wait_for(later_get, 5)
    assert record is not None and record.value == b"O" and record.version == 1


async def test_install_switches_with_no_read_inside_and_reads_the_new_database(
        parts: tuple[Database, SnapshotSwap], tmp_path: Path) -> None:
    database, swap = parts
    data_dir = tmp_path / "data"
    version = database.lineage_version
    at_switch: list[tuple[bool, int, str]] = []

    async def switch(name: str) -> None:  # what the committer does, here on the loop
        at_switch.append((swap._swap_gate.is_set(), swap._reads, (data_dir / ACTIVE_FILE).exists()
                          and (data_dir / ACTIVE_FILE).read_text()))
        swap.do_swap(name)
    records = [[(b"a", _pack_record(3, b"A")), (b"b", _pack_record(5, b"B"))], [(b"c", _pack_record(9, b"C"))]]
    assert await swap.install(LINEAGE, 9, chunks(records), None, switch) == 3
    assert at_switch == [(False, 0, False)]  # gate shut, no read inside, ACTIVE not moved yet
    active = (data_dir / ACTIVE_FILE).read_text()
    assert database.path == str(data_dir / active) and sorted(os.listdir(data_dir)) == [ACTIVE_FILE, active]
    assert database.meta_int(META_LSN) == 9 and database.log_start == 10 and database.lineage == LINEAGE
    assert database.promise == Promise(7, "ab")  # what this replica promised survives the copy
    assert database.lineage_version == version + 1  # log streams notice
    assert await swap.get(b"old") is None
    record = await swap.get(b"c")
    assert record is not None and (record.value, record.version) == (b"C", 9)


async def test_an_interrupted_install_leaves_the_live_database_and_no_staging(
        parts: tuple[Database, SnapshotSwap], tmp_path: Path) -> None:
    database, swap = parts
    switched: list[str] = []

    async def switch(name: str) -> None:
        switched.append(name)
    with pytest.raises(ConnectionResetError):
        await swap.install(LINEAGE, 9, chunks([[(b"a", _pack_record(3, b"A"))]] * 3, fail_after=2), None, switch)
    assert switched == [] and sorted(os.listdir(tmp_path / "data")) == ["db"]
    record = await swap.get(b"old")  # the gate never shut
    assert record is not None and record.value == b"O"
