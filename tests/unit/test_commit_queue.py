"""The commit queue alone, on a real LevelDB: batches, pipelining through its hook, swaps, poisoning.

The hook (the queue's one test seam) holds a pipelined batch between "sent
to followers" and "written" for as long as a test wants: what the queue shows
meanwhile, and what joins the next batch, is checked there.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator

import plyvel
import pytest

from kvstore.aio import cancel_and_wait
from kvstore.lineage import Lineage
from kvstore.storage.commit_hook import CommitHook, HoldCommit, commit_hook
from kvstore.storage.commit_queue import CommitQueue
from kvstore.storage.database import Database
from kvstore.storage.layout import (DATA, FORMAT, META_FORMAT, META_LINEAGE, META_LSN, PUT, LogEntry, Mutation,
                                    StorageError, _U64)
from kvstore.storage.retained_log import RetainedLog
from kvstore.storage.snapshot_swap import SnapshotSwap

EPOCH = Lineage().begin(1, 1, "1" * 32, True, "ab")


class Gate(CommitHook):
    """Holds each pipelined batch until ``go`` is set; records the batch and the positions at that moment."""

    def __init__(self, database: Database) -> None:
        self.database = database
        self.go = asyncio.Event()
        self.go.set()
        self.seen: list[tuple[int, int, int, int, int]] = []  # first, last, epoch, durable, appended

    async def published(self, first: int, last: int, epoch: int) -> None:
        self.seen.append((first, last, epoch, self.database.durable.value, self.database.appended.value))
        await self.go.wait()


@dataclass
class Parts:
    database: Database
    queue: CommitQueue
    swap: SnapshotSwap
    gate: Gate
    retained: RetainedLog
    batches: list[int] = field(default_factory=list)  # each committed batch's size, in order


@pytest.fixture
async def parts(tmp_path: Path) -> AsyncIterator[Parts]:
    database = Database.open(str(tmp_path / "data"))
    database.db.put(META_LINEAGE, EPOCH.dumps())  # a primary's epoch begun (a reopen reads it back)
    database.lineage = EPOCH
    swap = SnapshotSwap(database)
    retained = RetainedLog(database, swap)
    gate = Gate(database)
    batches: list[int] = []
    queue = CommitQueue(database, retained, swap, lambda n, _seconds: batches.append(n), gate)
    task = queue.start()
    try:
        yield Parts(database, queue, swap, gate, retained, batches)
    finally:
        gate.go.set()
        queue.closed = True
        await cancel_and_wait(task)
        queue.fail_queued()
        database.close()


def put(key: str, **kw: Any) -> Mutation:
    return Mutation(PUT, key.encode(), b"v", **kw)


async def held(gate: Gate, count: int = 1) -> None:
    """Return once ``count`` batches reached the hook, and everything else had its turn."""
    for _ in range(1000):
        if len(gate.seen) >= count:
            break
        await asyncio.sleep(0)
    assert len(gate.seen) >= count, "no batch was published"
    for _ in range(5):
        await asyncio.sleep(0)


async def test_a_pipelined_batch_reaches_the_hook_sent_and_not_yet_written(parts: Parts) -> None:
    parts.queue.pipeline = True
    parts.gate.go.clear()
    write = asyncio.ensure_future(parts.queue.write(put("a")))
    await held(parts.gate)
    assert parts.gate.seen == [(1, 1, 1, 0, 1)]  # in the log stream (appended), not durable
    assert not write.done() and parts.database.db.get(DATA + b"a") is None
    parts.gate.go.set()
    assert await write == 1 and parts.database.durable.value == 1
    # Only plain writes are sent before their fsync: not a conditional one, nor anything unpipelined.
    assert await parts.queue.write(put("b", if_none_match=True)) == 2
    parts.queue.pipeline = False
    assert await parts.queue.write(put("c")) == 3
    assert len(parts.gate.seen) == 1


async def test_writes_queued_while_a_batch_is_held_share_the_next_one(parts: Parts) -> None:
    parts.queue.pipeline = True
    parts.gate.go.clear()
    first = asyncio.ensure_future(parts.queue.write(put("a")))
    await held(parts.gate)
    queued = asyncio.ensure_future(asyncio.gather(*(parts.queue.write(put(f"k{i}")) for i in range(5))))
    await asyncio.sleep(0)
    parts.gate.go.set()
    assert await first == 1 and await queued == [2, 3, 4, 5, 6]
    assert parts.batches == [1, 5] and parts.gate.seen[1][:2] == (2, 6)


async def test_a_swap_never_shares_a_batch_and_writes_go_on_in_the_new_database(parts: Parts,
                                                                                tmp_path: Path) -> None:
    new = plyvel.DB(str(tmp_path / "data" / "db-next"), create_if_missing=True)
    new.put(META_FORMAT, FORMAT)
    new.put(META_LINEAGE, EPOCH.dumps())
    new.put(META_LSN, _U64.pack(100))
    new.close()
    parts.queue.pipeline = True
    parts.gate.go.clear()
    first = asyncio.ensure_future(parts.queue.write(put("a")))
    await held(parts.gate)
    before = asyncio.ensure_future(parts.queue.write(put("before")))
    swap = asyncio.ensure_future(parts.queue.switch_to("db-next"))
    after = asyncio.ensure_future(parts.queue.write(put("after")))
    await asyncio.sleep(0)
    parts.gate.go.set()
    assert await first == 1 and await before == 2
    await swap
    assert await after == 101  # the new database's LSNs
    assert parts.batches == [1, 1, 1] and parts.database.path.endswith("db-next")
    assert parts.database.db.get(DATA + b"before") is None and parts.database.db.get(DATA + b"after") is not None
    assert [LogEntry.decode(raw).lsn for raw in await parts.retained.log_after(100, 10, 1 << 20)] == [101]


class RefusingDB:
    """The database with every batch write refused, as a full disk does."""

    def __init__(self, db: Any) -> None:
        self._db = db

    def __getattr__(self, name: str) -> Any:
        return getattr(self._db, name)

    def write_batch(self, sync: bool = False) -> Any:
        batch = self._db.write_batch(sync=sync)

        class Refused:
            def __getattr__(self, name: str) -> Any:
                return getattr(batch, name)

            def write(self) -> None:
                raise OSError(28, "No space left on device")
        return Refused()


@pytest.mark.parametrize("pipeline", [False, True])
async def test_a_refused_batch_poisons_the_queue_only_if_it_was_sent(parts: Parts, pipeline: bool) -> None:
    parts.queue.pipeline = pipeline
    parts.database.db = RefusingDB(parts.database.db)
    with pytest.raises(StorageError, match="No space left on device"):
        await parts.queue.write(put("a"))
    assert parts.database.durable.value == 0 and parts.database.appended.value == (1 if pipeline else 0)
    if pipeline:
        # LSN 1 may be on followers: no later write may take it, nor any other.
        assert parts.queue.failed is not None and "restart the pod" in parts.queue.failed
        with pytest.raises(StorageError, match="restart the pod"):
            await parts.queue.write(put("b"))
        with pytest.raises(StorageError, match="restart the pod"):
            parts.queue.apply_nowait([LogEntry(1, 1, PUT, b"k", b"v")])
    else:
        # Not sent: LevelDB is reopened (a real handle again) before the next write, which takes LSN 1.
        assert parts.queue.failed is None and parts.database.write_error is not None
        assert await parts.queue.write(put("b")) == 1
        assert parts.database.write_error is None and isinstance(parts.database.db, plyvel.DB)
        assert await asyncio.wait_for(parts.swap.get(b"b"), 5) is not None  # reads were let in again


async def test_kv_test_hold_commit_holds_only_the_batch_of_its_lsn_and_epoch() -> None:
    hook = commit_hook((5, 2))
    assert isinstance(hook, HoldCommit) and type(commit_hook(None)) is CommitHook
    for first, last, epoch in ((1, 4, 2), (6, 9, 2), (4, 6, 1)):
        await asyncio.wait_for(hook.published(first, last, epoch), 5)  # not that batch: goes on at once
    held = asyncio.ensure_future(hook.published(4, 6, 2))
    for _ in range(5):
        await asyncio.sleep(0)
    assert not held.done()  # sent, never written, until the test kills the process
    held.cancel()


async def test_drain_returns_once_every_write_queued_before_it_is_written(parts: Parts) -> None:
    """What a switchover waits for: a write queued but not yet in the log stream is counted before it hands over."""
    parts.queue.pipeline = True
    parts.gate.go.clear()
    first = asyncio.ensure_future(parts.queue.write(put("a")))
    await held(parts.gate)
    conditional = asyncio.ensure_future(parts.queue.write(put("b", if_none_match=True)))  # not pipelined
    await asyncio.sleep(0)
    drained = asyncio.ensure_future(parts.queue.drain())
    for _ in range(20):
        await asyncio.sleep(0)
    assert not drained.done() and parts.database.appended.value == 1  # "b" is queued, in no LSN yet
    parts.gate.go.set()
    await asyncio.wait_for(drained, 5)
    assert parts.database.durable.value == parts.database.appended.value == 2  # both written by then
    assert await first == 1 and await conditional == 2
