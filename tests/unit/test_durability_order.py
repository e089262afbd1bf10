"""Storage acknowledges nothing before its batch is synced: the order of fsync and acknowledgement.

A real LevelDB, with every write of a batch held at a gate the test opens:
while it is held, nothing in the batch may be acknowledged, counted in the
store's LSN or shown to a reader (pipelining may only *send* it).
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest

from kvstore import storage
from kvstore.lineage import Lineage, Promise
from kvstore.storage import LogEntry, Mutation, StorageError, Store

EPOCH = Lineage().begin(1, 1, "1" * 32, True, "ab")


class GatedBatch:
    """A real WriteBatch whose write waits at the gate (and may then fail, as a full disk does)."""

    def __init__(self, db: "GatedDB", batch: Any, sync: bool) -> None:
        self._db, self._batch, self.sync = db, batch, sync

    def __getattr__(self, name: str) -> Any:
        return getattr(self._batch, name)

    def write(self) -> None:
        self._db.threads.add(threading.current_thread().name)
        self._db.writing.set()
        assert self._db.gate.wait(10), "the test never opened the gate"
        if self._db.fail:
            raise OSError(28, "No space left on device")
        self._batch.write()
        self._db.synced.append(self.sync)


class GatedDB:
    """The store's plyvel.DB with its batches gated and the sync flag of every write recorded."""

    def __init__(self, db: Any) -> None:
        self._db = db
        self.gate = threading.Event()
        self.writing = threading.Event()
        self.fail = False
        self.synced: list[bool] = []  # each batch's sync flag, in the order they were written
        self.puts: list[tuple[bytes, bool]] = []
        self.threads: set[str] = set()  # the threads every write ran on

    def __getattr__(self, name: str) -> Any:
        return getattr(self._db, name)

    def write_batch(self, sync: bool = False) -> GatedBatch:
        return GatedBatch(self, self._db.write_batch(sync=sync), sync)

    def put(self, key: bytes, value: bytes, sync: bool = False) -> None:
        self.threads.add(threading.current_thread().name)
        self.puts.append((key, sync))
        self._db.put(key, value, sync=sync)


@pytest.fixture
async def gated(tmp_path: Path):
    store = Store.open(str(tmp_path / "data"))
    db = GatedDB(store._database.db)
    store._database.db = db
    await store.start()
    db.gate.set()
    await store.set_lineage(EPOCH)
    db.gate.clear()
    try:
        yield store, db
    finally:
        db.gate.set()
        await store.close()


async def held(db: GatedDB) -> None:
    """Return once the committer is inside a batch's write, held at the gate."""
    assert await asyncio.to_thread(db.writing.wait, 5), "no batch was written"
    for _ in range(5):
        await asyncio.sleep(0)  # anything that would (wrongly) resolve now gets its turn


def put(key: str, **kw: Any) -> Mutation:
    return Mutation(storage.PUT, key.encode(), b"v", **kw)


@pytest.mark.parametrize("pipeline", [False, True])
@pytest.mark.parametrize("conditional", [False, True])
async def test_a_write_is_acknowledged_only_after_its_batch_is_synced(gated: tuple[Store, GatedDB], pipeline: bool,
                                                                     conditional: bool) -> None:
    store, db = gated
    store.pipeline = pipeline
    # A conditional write reads versions on the writer thread; a plain one is built in the loop.
    write = asyncio.ensure_future(store.write(put("a", if_none_match=True) if conditional else put("a")))
    await held(db)
    assert not write.done() and store.lsn == 0 and await store.get(b"a") is None
    assert not await store.wait_for_lsn(1, 0.01)
    # Pipelining sends a plain batch to followers before it is durable here; never anything else.
    sent = pipeline and not conditional
    assert store.appended == (1 if sent else 0) and await store.wait_for_lsn(1, 0.01, appended=True) == sent
    db.gate.set()
    assert await write == 1
    assert store.lsn == 1 and db.synced == [True]
    assert db.threads == {"kv-commit_0"}  # one thread writes everything, so batches stay in order


async def test_replicated_entries_are_acknowledged_only_after_their_sync(gated: tuple[Store, GatedDB]) -> None:
    store, db = gated
    applied = store.apply_nowait([LogEntry(1, 1, storage.PUT, b"k", b"v"), LogEntry(2, 1, storage.PUT, b"j", b"w")],
                                 committed=1)
    await held(db)
    # Queued meanwhile: one batch, one sync; an entry already held (a retried fetch) is not applied twice.
    again = store.apply_nowait([LogEntry(2, 1, storage.PUT, b"j", b"w"), LogEntry(3, 1, storage.DELETE, b"k", None)])
    later = store.apply_nowait([LogEntry(4, 1, storage.PUT, b"i", b"x")])
    assert not applied.done() and store.lsn == 0 and store.appended == 0
    db.gate.set()
    await applied
    assert store.lsn == 2 and store.committed_on_disk == 1 and db.synced == [True]
    await asyncio.wait_for(asyncio.gather(again, later), 5)
    assert store.lsn == store.appended == 4 and db.synced == [True, True]
    assert store.committed_on_disk == 1  # entries that came without a committed LSN do not lower or raise it
    assert [e.lsn for e in map(LogEntry.decode, await store.log_after(0, 10, 1 << 20))] == [1, 2, 3, 4]


@pytest.mark.parametrize("pipeline", [False, True])
async def test_a_batch_the_disk_refused_acknowledges_nothing(gated: tuple[Store, GatedDB], pipeline: bool) -> None:
    store, db = gated
    store.pipeline = pipeline
    write = asyncio.ensure_future(store.write(put("a")))
    await held(db)
    db.fail = True
    db.gate.set()
    with pytest.raises(StorageError) as refused:
        await write
    assert store.lsn == 0 and await store.get(b"a") is None
    assert "write failed: [Errno 28] No space left on device" in str(refused.value)
    assert ("followers were sent it first" in str(refused.value)) == pipeline
    db.fail = False
    if pipeline:
        # Followers were sent LSN 1: giving it to another write would make it name two writes.
        assert store.failed is not None
        with pytest.raises(StorageError, match="restart the pod"):
            await store.write(put("b"))
    else:
        assert store.failed is None and await store.write(put("b")) == 1


async def test_lineage_and_promises_are_synced_before_they_count(gated: tuple[Store, GatedDB],
                                                                 tmp_path: Path) -> None:
    store, db = gated
    db.gate.set()
    version = store.lineage_version
    await store.set_promise(Promise(2, "cd"))
    await store.set_lineage(EPOCH.begin(2, 1, "1" * 32, True, "cd"))
    assert store.lineage_version == version + 1  # log streams notice the new epoch
    await store.set_lineage(EPOCH.begin(3, 1, "1" * 32, True, "ef"))
    assert store.lineage_version == version + 2
    assert [sync for _, sync in db.puts] == [True, True, True, True]  # the fixture's lineage too
    assert db.threads == {"kv-commit_0"}
    assert store.promise == Promise(2, "cd") and store.lineage.number == 3
    await store.close()
    reopened = Store.open(str(tmp_path / "data"))  # what was promised holds after a restart
    try:
        assert reopened.promise == Promise(2, "cd") and reopened.lineage.number == 3
    finally:
        await reopened.close()


async def test_a_closed_store_takes_nothing(gated: tuple[Store, GatedDB]) -> None:
    store, db = gated
    db.gate.set()
    await store.close()
    with pytest.raises(StorageError, match="shutting down"):
        await store.write(put("a"))


async def test_without_fsync_batches_are_not_synced(tmp_path: Path) -> None:
    """KV_FSYNC=false (benchmarks only) is the one way to turn the sync off."""
    store = Store.open(str(tmp_path / "data"), fsync=False)
    db = GatedDB(store._database.db)
    db.gate.set()
    store._database.db = db
    await store.start()
    try:
        await store.set_lineage(EPOCH)
        assert await store.write(put("a")) == 1 and db.synced == [False]
    finally:
        await store.close()


async def test_conditions_within_one_batch_see_the_writes_before_them(gated: tuple[Store, GatedDB]) -> None:
    """Writes queued while a batch is synced share the next one: each is checked against those before it."""
    store, db = gated
    first = asyncio.ensure_future(store.write(put("other")))
    await held(db)
    queued = [store.write(put("k", if_none_match=True)), store.write(put("k", if_none_match=True)),
              store.write(put("k", if_match=(2,))), store.write(Mutation(storage.DELETE, b"k")),
              store.write(put("k", if_match="*")), store.write(put("k", if_none_match=True))]
    answers = asyncio.ensure_future(asyncio.gather(*queued, return_exceptions=True))
    await asyncio.sleep(0)
    db.gate.set()
    assert await first == 1
    results = await answers
    assert results[0] == 2 and isinstance(results[1], storage.PreconditionFailed)
    assert results[2:4] == [3, 4] and isinstance(results[4], storage.PreconditionFailed) and results[5] == 5
    assert db.synced == [True, True]  # the six in one batch


async def test_entries_without_a_committed_lsn_leave_it_alone(gated: tuple[Store, GatedDB]) -> None:
    store, db = gated
    db.gate.set()
    await store.apply_nowait([LogEntry(1, 1, storage.PUT, b"k", b"v")])
    assert store.lsn == 1 and store.committed_on_disk == 0
