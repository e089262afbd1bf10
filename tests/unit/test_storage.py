"""Storage: LSNs, atomic conditional writes, group commit, log retention, reopening."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from kvstore import storage
from kvstore.lineage import Lineage, Promise
from kvstore.membership import Configuration
from kvstore.storage import HoldCommit, LogEntry, Mutation, Store
from kvstore.storage import layout, retained_log, snapshot_swap


def lineage_of(history: str) -> Lineage:
    """One verified epoch from LSN 1 under ``history``."""
    return Lineage().begin(1, 1, history, True)


async def started(s: Store) -> Store:
    """Start the store and, like a primary after its start-up check, begin an epoch if it has none."""
    await s.start()
    if not s.lineage.epochs:
        await s.set_lineage(lineage_of("a" * 32))
    return s


@pytest.fixture
async def store(tmp_path: Path):
    commits: list[int] = []
    s = Store.open(str(tmp_path / "data"), on_commit=lambda n, _s: commits.append(n))
    s.commits = commits  # type: ignore[attr-defined]
    await started(s)
    try:
        yield s
    finally:
        await s.close()


def put(key: str, value: bytes = b"v", **kw) -> Mutation:
    return Mutation(storage.PUT, key.encode(), value, **kw)


def delete(key: str, **kw) -> Mutation:
    return Mutation(storage.DELETE, key.encode(), None, **kw)


def decoded(raws: list[bytes]) -> list[LogEntry]:
    return [LogEntry.decode(raw) for raw in raws]


async def test_each_write_gets_the_next_lsn_and_is_readable(store: Store) -> None:
    assert store.lsn == 0
    assert await store.write(put("a", b"1")) == 1
    assert await store.write(put("b", b"2")) == 2
    assert await store.write(put("a", b"3")) == 3
    record = await store.get(b"a")
    assert record is not None and record.value == b"3" and record.version == 3
    assert store.lsn == 3
    assert await store.get(b"missing") is None


async def test_delete_removes_and_absent_delete_is_not_found(store: Store) -> None:
    await store.write(put("a"))
    assert await store.write(delete("a")) == 2
    assert await store.get(b"a") is None
    with pytest.raises(storage.NotFound):
        await store.write(delete("a"))
    assert store.lsn == 2  # the failed delete used no LSN


async def test_conditions_compare_and_set_and_create_only(store: Store) -> None:
    v1 = await store.write(put("k", b"1", if_none_match=True))
    with pytest.raises(storage.PreconditionFailed) as exc:
        await store.write(put("k", b"2", if_none_match=True))
    assert exc.value.current_version == v1
    with pytest.raises(storage.PreconditionFailed):
        await store.write(put("k", b"2", if_match=(v1 + 100,)))
    v2 = await store.write(put("k", b"2", if_match=(v1,)))
    assert v2 > v1
    with pytest.raises(storage.PreconditionFailed) as exc:
        await store.write(put("absent", if_match="*"))
    assert exc.value.current_version is None
    assert (await store.get(b"k")).value == b"2"


async def test_concurrent_compare_and_set_lets_exactly_one_win(store: Store) -> None:
    version = await store.write(put("counter", b"0"))
    results = await asyncio.gather(
        *(store.write(put("counter", str(i).encode(), if_match=(version,))) for i in range(20)),
        return_exceptions=True)
    winners = [r for r in results if isinstance(r, int)]
    assert len(winners) == 1
    assert all(isinstance(r, storage.PreconditionFailed) for r in results if not isinstance(r, int))


async def test_concurrent_writes_share_group_commits(store: Store) -> None:
    lsns = await asyncio.gather(*(store.write(put(f"k{i}")) for i in range(200)))
    assert sorted(lsns) == list(range(1, 201))
    assert sum(store.commits) == 200
    # Writes that arrive while a commit runs share the next one.
    assert len(store.commits) < 20


async def test_log_after_returns_entries_in_order_and_bounded(store: Store) -> None:
    for i in range(10):
        await store.write(put(f"k{i}", b"x" * 10))
    await store.write(delete("k0"))
    entries = decoded(await store.log_after(0, 100, 1 << 20))
    assert [e.lsn for e in entries] == list(range(1, 12))
    assert entries[-1].op == storage.DELETE and entries[-1].value is None
    assert [e.lsn for e in decoded(await store.log_after(5, 3, 1 << 20))] == [6, 7, 8]
    assert len(await store.log_after(0, 100, 1)) == 1  # byte bound, at least one entry
    assert await store.log_after(11, 100, 1 << 20) == []


async def test_the_in_memory_tail_serves_what_the_disk_would(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(retained_log, "TAIL_ENTRIES", 8)  # small, so it is trimmed during the test
    s = Store.open(str(tmp_path / "d"))
    await started(s)
    try:
        # A mix of one-write batches, a concurrent group commit, deletes and conditions.
        for i in range(5):
            await s.write(put(f"a{i}", b"%d" % i))
        await asyncio.gather(*(s.write(put(f"b{i}", b"x" * i)) for i in range(20)))
        await s.write(delete("a1"))
        await s.write(put("a2", b"new", if_match=(3,)))
        assert s.lsn == 27
        assert s._log._tail_first > 1 and len(s._log._tail) <= 2 * 8  # trimmed, still bounded
        for after in range(0, 28):
            for limit in (1, 3, 100):
                from_disk = s._log._log_after(after, limit, 1 << 20)
                assert await s.log_after(after, limit, 1 << 20) == from_disk, (after, limit)
        assert len(await s.log_after(20, 100, 1)) == 1  # the byte bound holds in memory too
        # After a snapshot the tail starts again at the snapshot's LSN.
        async def one_chunk():
            yield [(b"z", layout._pack_record(40, b"Z"))]
        await s.install_snapshot(lineage_of("c" * 32), 40, one_chunk())
        assert await s.log_after(40, 10, 1 << 20) == []
        await s.write(put("after-snapshot"))
        [raw] = await s.log_after(40, 10, 1 << 20)
        assert LogEntry.decode(raw) == LogEntry(41, 1, storage.PUT, b"after-snapshot", b"v")
    finally:
        await s.close()


async def test_replicated_entries_fill_the_tail_too(store: Store) -> None:
    entries = [LogEntry(i, 1, storage.PUT, b"r%d" % i, b"v") for i in range(1, 6)]
    await store.apply_nowait(entries[:2])
    await asyncio.gather(store.apply_nowait(entries[2:4]), store.apply_nowait(entries[4:]))
    assert store.commits[-1] == 3  # both queued batches shared one commit
    assert decoded(await store.log_after(0, 10, 1 << 20)) == entries


async def test_truncation_keeps_the_retention_bound(tmp_path: Path) -> None:
    s = Store.open(str(tmp_path / "d"), log_retention=5)
    await started(s)
    try:
        for i in range(12):
            await s.write(put(f"k{i}"))
        assert await s.truncate_log() == 7
        assert s.log_start == 8
        with pytest.raises(storage.LogTruncated):
            await s.log_after(3, 10, 1 << 20)
        assert [e.lsn for e in decoded(await s.log_after(7, 10, 1 << 20))] == [8, 9, 10, 11, 12]
        # Data is untouched by log truncation.
        assert (await s.get(b"k0")).version == 1
    finally:
        await s.close()


async def test_apply_replicated_entries_is_idempotent(store: Store) -> None:
    entries = [LogEntry(1, 1, storage.PUT, b"a", b"1"), LogEntry(2, 1, storage.PUT, b"b", b"2"),
               LogEntry(3, 1, storage.DELETE, b"a", None)]
    await store.apply_nowait(entries)
    await store.apply_nowait(entries[1:])  # a retried fetch
    assert store.lsn == 3
    assert await store.get(b"a") is None
    assert (await store.get(b"b")).version == 2
    assert [e.lsn for e in decoded(await store.log_after(0, 10, 1 << 20))] == [1, 2, 3]


async def test_scan_prefix_start_after_and_limit(store: Store) -> None:
    for key in ["a", "app/1", "app/2", "app/3", "b", "ap"]:
        await store.write(put(key))
    assert [k for k, _ in await store.scan(b"app/", None, 10)] == [b"app/1", b"app/2", b"app/3"]
    assert [k for k, _ in await store.scan(b"app/", b"app/1", 10)] == [b"app/2", b"app/3"]
    assert [k for k, _ in await store.scan(b"", None, 2)] == [b"a", b"ap"]
    assert [k for k, _ in await store.scan(b"", b"app/3", 10)] == [b"b"]
    assert await store.scan(b"app/", b"b", 10) == []
    assert [k for k, _ in await store.scan(b"app/", b"a", 10)] == [b"app/1", b"app/2", b"app/3"]


async def test_wait_for_lsn(store: Store) -> None:
    assert not await store.wait_for_lsn(1, 0.05)
    waiter = asyncio.create_task(store.wait_for_lsn(2, 5))
    await store.write(put("a"))
    assert not waiter.done()
    await store.write(put("b"))
    assert await waiter


async def test_reopen_keeps_data_lsn_and_history(tmp_path: Path) -> None:
    path = str(tmp_path / "d")
    s = Store.open(path)
    await started(s)
    await s.write(put("a", b"1"))
    history = s.history_id
    await s.close()
    s = Store.open(path)
    await started(s)
    try:
        assert s.lsn == 1 and s.history_id == history and len(history) == 32
        assert (await s.get(b"a")).value == b"1"
        assert await s.write(put("b")) == 2
    finally:
        await s.close()


async def test_second_open_of_same_dir_is_refused(tmp_path: Path) -> None:
    s = Store.open(str(tmp_path / "d"))
    try:
        with pytest.raises(storage.StorageError, match="in use by another replica"):
            Store.open(str(tmp_path / "d"))
    finally:
        await s.close()


def test_uncreatable_data_dir_is_refused() -> None:
    # /proc refuses new directories even to root, so this holds in CI too.
    with pytest.raises(storage.StorageError, match="cannot create data dir"):
        Store.open("/proc/kvstore-test/data")


def test_data_dir_that_is_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(storage.StorageError, match="cannot create data dir"):
        Store.open(str(tmp_path / "file"))


def test_log_entry_round_trip_and_malformed() -> None:
    entry = LogEntry(7, 1, storage.PUT, "ключ".encode(), b"\x00\xffvalue")
    assert LogEntry.decode(entry.encode()) == entry
    gone = LogEntry(8, 1, storage.DELETE, b"k", None)
    assert LogEntry.decode(gone.encode()) == gone
    with pytest.raises(ValueError):
        LogEntry.decode(b"short")
    with pytest.raises(ValueError):
        LogEntry.decode(entry.encode()[:18])  # key cut off


async def _chunks(records: list[list[tuple[bytes, bytes]]], fail_after: int | None = None):
    for i, chunk in enumerate(records):
        if fail_after is not None and i == fail_after:
            raise ConnectionResetError("upstream went away mid-snapshot")
        yield chunk


def _record(version: int, value: bytes) -> bytes:
    return layout._pack_record(version, value)


async def test_snapshot_install_replaces_data_atomically(tmp_path: Path) -> None:
    s = Store.open(str(tmp_path / "d"))
    await started(s)
    try:
        await s.write(put("old", b"gone after the snapshot"))
        chunks = [[(b"a", _record(5, b"A")), (b"b", _record(9, b"B"))], [(b"c", _record(12, b"C"))]]
        assert await s.install_snapshot(lineage_of("f" * 32), 12, _chunks(chunks)) == 3
        assert (s.lsn, s.history_id, s.log_start) == (12, "f" * 32, 13)
        assert await s.get(b"old") is None
        assert (await s.get(b"b")).version == 9
        assert await s.write(put("next")) == 13  # numbering continues from the snapshot
        with pytest.raises(storage.LogTruncated):
            await s.log_after(3, 10, 1 << 20)  # the log before the snapshot is not here
    finally:
        await s.close()
    reopened = Store.open(str(tmp_path / "d"))  # the ACTIVE pointer survives a restart
    try:
        assert reopened.lsn == 13 and reopened.history_id == "f" * 32
        assert len([p for p in (tmp_path / "d").iterdir() if p.name.startswith("db")]) == 1
    finally:
        await reopened.close()


async def test_interrupted_snapshot_leaves_old_data_usable(tmp_path: Path) -> None:
    s = Store.open(str(tmp_path / "d"))
    await started(s)
    try:
        await s.write(put("kept", b"still here"))
        history = s.history_id
        chunks = [[(b"a", _record(5, b"A"))], [(b"b", _record(9, b"B"))]]
        with pytest.raises(ConnectionResetError):
            await s.install_snapshot(lineage_of("e" * 32), 9, _chunks(chunks, fail_after=1))
        assert (s.lsn, s.history_id) == (1, history)
        assert (await s.get(b"kept")).value == b"still here"
        assert await s.get(b"a") is None
        assert await s.write(put("after")) == 2
        assert [p.name for p in (tmp_path / "d").iterdir() if p.name.startswith("db")] == ["db"]
    finally:
        await s.close()


async def test_a_staging_db_left_by_a_crash_is_removed_on_open(tmp_path: Path) -> None:
    s = Store.open(str(tmp_path / "d"))
    await started(s)
    await s.write(put("k"))
    await s.close()
    (tmp_path / "d" / "db-0123456789ab").mkdir()  # a snapshot install SIGKILLed midway
    (tmp_path / "d" / "db-0123456789ab" / "000001.log").write_bytes(b"partial")
    s = Store.open(str(tmp_path / "d"))
    try:
        assert not (tmp_path / "d" / "db-0123456789ab").exists()
        assert s.lsn == 1
    finally:
        await s.close()


async def test_lineage_survives_a_restart_and_entries_carry_their_epoch(tmp_path: Path) -> None:
    path = str(tmp_path / "d")
    s = await started(Store.open(path))
    await s.write(put("a"))
    await s.set_lineage(s.lineage.begin(2, s.lsn + 1, s.history_id, True))
    await s.write(put("b"))
    lineage = s.lineage
    await s.close()
    s = Store.open(path)
    try:
        assert s.lineage == lineage and s.epoch == 2
        assert [(e.lsn, e.epoch) for e in decoded(await s.log_after(0, 10, 1 << 20))] == [(1, 1), (2, 2)]
    finally:
        await s.close()


async def test_a_store_without_an_epoch_takes_no_client_write(tmp_path: Path) -> None:
    s = Store.open(str(tmp_path / "d"))
    await s.start()
    try:
        with pytest.raises(storage.StorageError, match="no epoch"):
            await s.write(put("a"))
        assert s.lsn == 0
    finally:
        await s.close()


def test_a_data_dir_of_the_format_without_epochs_is_refused_with_a_reason(tmp_path: Path) -> None:
    import plyvel
    (tmp_path / "d").mkdir()
    old = plyvel.DB(str(tmp_path / "d" / "db"), create_if_missing=True)
    old.put(b"m/history", b"f" * 32)
    old.put(b"m/lsn", (5).to_bytes(8, "big"))
    old.close()
    with pytest.raises(storage.StorageError, match="without log epochs"):
        Store.open(str(tmp_path / "d"))
    # The refusal released LevelDB's lock: a second open fails the same way, not on the lock.
    with pytest.raises(storage.StorageError, match="without log epochs"):
        Store.open(str(tmp_path / "d"))


async def test_log_after_counts_the_framing_in_its_byte_bound(store: Store) -> None:
    for i in range(10):
        await store.write(put(f"k{i}", b"x" * 100))
    one = len((await store.log_after(0, 1, 1 << 20))[0])
    for budget in (one + 4, 2 * (one + 4), 2 * (one + 4) - 1, 3 * (one + 4) + 3):
        raws = await store.log_after(0, 100, budget)
        assert sum(4 + len(r) for r in raws) <= budget, budget
        assert len(raws) == budget // (one + 4)
        assert store._log._log_after(0, 100, budget) == raws  # the disk path bounds the same way
    assert len(await store.log_after(0, 100, 1)) == 1  # one entry alone may exceed the bound


async def test_snapshot_install_fsyncs_every_file_before_the_switch(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import os
    synced: list[str] = []
    real_fsync, real_open = os.fsync, os.open
    names: dict[int, str] = {}

    def tracking_open(path, flags, *args, **kwargs):
        fd = real_open(path, flags, *args, **kwargs)
        names[fd] = str(path)
        return fd

    def tracking_fsync(fd: int) -> None:
        synced.append(names.get(fd, "?"))
        real_fsync(fd)

    switched_after: list[int] = []
    at_switch: set[str] = set()
    real_set_active = snapshot_swap.set_active_db

    def set_active(data_dir: str, name: str) -> None:
        switched_after.append(len(synced))
        at_switch.update(str(p) for p in Path(data_dir, name).iterdir() if p.is_file())
        real_set_active(data_dir, name)

    monkeypatch.setattr(os, "open", tracking_open)
    monkeypatch.setattr(os, "fsync", tracking_fsync)
    monkeypatch.setattr(snapshot_swap, "set_active_db", set_active)
    s = await started(Store.open(str(tmp_path / "d")))
    try:
        chunks = [[(b"k%d" % i, _record(i + 1, b"v" * 100)) for i in range(500)]]
        await s.install_snapshot(lineage_of("f" * 32), 500, _chunks(chunks))
        staging = Path(s.path)
        before_switch = set(synced[:switched_after[0]])
        assert at_switch and at_switch <= before_switch, at_switch - before_switch
        assert str(staging) in before_switch and str(staging.parent) in before_switch
    finally:
        await s.close()


async def test_an_epoch_promise_survives_a_restart_and_a_snapshot_install(tmp_path: Path) -> None:
    s = Store.open(str(tmp_path / "d"))
    await started(s)
    try:
        assert s.promise == Promise()
        await s.set_promise(Promise(7, "ab" * 16))
        await s.install_snapshot(lineage_of("f" * 32), 3, _chunks([[(b"a", _record(3, b"A"))]]))
        assert s.promise == Promise(7, "ab" * 16)  # a copied database does not forget what we promised
    finally:
        await s.close()
    reopened = Store.open(str(tmp_path / "d"))
    try:
        assert reopened.promise == Promise(7, "ab" * 16)
    finally:
        await reopened.close()


def test_a_corrupt_promise_is_refused_with_its_path(tmp_path: Path) -> None:
    s = Store.open(str(tmp_path / "d"))
    path = s.path
    s._database.db.put(layout.META_PROMISE, b'{"epoch": 3}')
    s._database.db.close()
    with pytest.raises(storage.StorageError, match="promise is corrupt"):
        Store.open(str(tmp_path / "d"))
    assert path


async def test_a_pipelined_batch_is_in_the_log_stream_before_it_is_durable(tmp_path: Path) -> None:
    # The test-only hold stops the batch holding LSN 3 between "sent" and "written".
    s = await started(Store.open(str(tmp_path / "data"), commit_hook=HoldCommit(3, 1)))
    s.pipeline = True
    try:
        assert await s.write(put("a")) == 1 and await s.write(put("b")) == 2
        assert (s.lsn, s.appended) == (2, 2)
        held = asyncio.ensure_future(s.write(put("c", b"held")))
        assert await s.wait_for_lsn(3, 5, appended=True)
        assert (s.lsn, s.appended) == (2, 3)  # sent, not durable, and not readable yet
        assert await s.get(b"c") is None
        assert [(e.lsn, e.key) for e in decoded(await s.log_after(2, 10, 1 << 20))] == [(3, b"c")]
        assert not await s.wait_for_lsn(3, 0.2)
        assert not held.done()
        held.cancel()
    finally:
        await s.close()
    # A crash at this point: the entry was never written, so the reopened store does not have it.
    s = await started(Store.open(str(tmp_path / "data")))
    try:
        assert (s.lsn, s.appended) == (2, 2) and await s.get(b"c") is None
    finally:
        await s.close()


async def test_a_follower_keeps_the_committed_lsn_it_heard_with_its_entries(tmp_path: Path) -> None:
    s = await started(Store.open(str(tmp_path / "data")))
    try:
        await s.apply_nowait([LogEntry(1, 1, storage.PUT, b"a", b"1"), LogEntry(2, 1, storage.PUT, b"b", b"2")],
                             committed=1)
        assert s.committed_on_disk == 1
    finally:
        await s.close()
    s = Store.open(str(tmp_path / "data"))
    try:
        assert (s.lsn, s.committed_on_disk) == (2, 1)
    finally:
        await s.close()


async def test_a_configuration_entry_takes_an_lsn_and_is_in_force_once_durable(tmp_path: Path) -> None:
    """kv-0's change of voters, and a follower applying one: recorded in m/config, across a reopen."""
    four = Configuration(0, (0, 1, 2, 3), (0, 1, 2))
    s = await started(Store.open(str(tmp_path / "primary")))
    try:
        assert s.membership is None  # KV_REPLICAS stands for the voters until a change
        assert await s.write(put("k")) == 1
        assert await s.write(Mutation(storage.CONFIG, b"", four.dumps())) == 2
        assert s.membership == Configuration(2, (0, 1, 2, 3), (0, 1, 2))
        assert await s.get(b"") is None  # no key was written
        entries = decoded(await s.log_after(0, 10, 1 << 20))
    finally:
        await s.close()
    s = await started(Store.open(str(tmp_path / "primary")))
    try:
        assert s.membership == Configuration(2, (0, 1, 2, 3), (0, 1, 2))
        snap = await s.run_blocking(s.open_snapshot)
        assert snap.membership == s.membership
        await s.run_blocking(snap.close)
    finally:
        await s.close()
    f = Store.open(str(tmp_path / "follower"))
    await f.start()
    await f.set_lineage(lineage_of("a" * 32))
    try:
        await f.apply_nowait(entries)
        assert f.membership == Configuration(2, (0, 1, 2, 3), (0, 1, 2)) and f.lsn == 2
        with pytest.raises(storage.StorageError):  # a malformed one is never written
            await f.apply_nowait([LogEntry(3, 1, storage.CONFIG, b"", b'{"voters": [1]}')])
        assert f.lsn == 2 and f.membership.voters == (0, 1, 2, 3)
    finally:
        await f.close()
    with pytest.raises(ValueError):
        LogEntry.decode(LogEntry(3, 1, storage.CONFIG, b"key", b"{}").encode())  # a configuration has no key


async def test_a_snapshot_installs_the_configuration_it_was_taken_with(tmp_path: Path) -> None:
    s = await started(Store.open(str(tmp_path / "data")))
    try:
        four = Configuration(9, (0, 1, 2, 3), (0, 1, 2))
        await s.install_snapshot(lineage_of("f" * 32), 12, _chunks([[(b"a", _record(3, b"A"))]]), four)
        assert s.membership == four and s.lsn == 12
    finally:
        await s.close()
