"""Transaction entries in the store: the codec, one entry per transaction, a batch's own writes compared,
a follower's replay, and expiries kept with the key."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from kvstore import storage
from kvstore.lineage import Lineage
from kvstore.storage import TXN, LogEntry, Mutation, Store
from kvstore.txn import Change, Compare, Txn, decode_changes, encode_changes


@pytest.fixture
async def store(tmp_path: Path):
    s = Store.open(str(tmp_path / "data"))
    await s.start()
    await s.set_lineage(Lineage().begin(1, 1, "a" * 32, True))
    try:
        yield s
    finally:
        await s.close()


def test_the_codec_round_trips_and_refuses_what_is_torn() -> None:
    changes = [Change(b"a", b"1"), Change(b"b", None), Change(b"c", b"", 1234)]
    raw = encode_changes(changes)
    assert decode_changes(raw) == changes
    for bad in (raw[:-1], raw + b"x", raw[:4], encode_changes([]), b"\0\0\0\1" + b"\3" + raw[5:]):
        with pytest.raises(ValueError):
            decode_changes(bad)
    entry = LogEntry(7, 1, TXN, b"", raw)
    assert LogEntry.decode(entry.encode()) == entry
    with pytest.raises(ValueError):
        LogEntry.decode(LogEntry(7, 1, TXN, b"", raw[:-1]).encode())
    with pytest.raises(ValueError):
        LogEntry.decode(LogEntry(7, 1, TXN, b"k", raw).encode())  # a TXN entry has no key of its own


async def test_a_transaction_is_one_entry_and_compares_what_the_same_batch_wrote(store: Store) -> None:
    first = asyncio.ensure_future(store.write(Mutation(storage.PUT, b"k", b"v1")))
    txn = Txn((Compare(b"k", value=b"v1"),), (Change(b"k", b"v2"), Change(b"j", b"x")), ())
    result, lsn = await asyncio.gather(store.transact(txn), first)
    assert result.succeeded and result.lsn == lsn + 1 and store.lsn == lsn + 1
    assert (await store.get(b"k")).version == result.lsn and (await store.get(b"j")).value == b"x"
    [raw] = await store.log_after(lsn, 10, 1 << 20)
    assert [c.key for c in storage.changes_of(LogEntry.decode(raw))] == [b"k", b"j"]


async def test_a_follower_replays_a_transaction_entry_with_its_expiry(store: Store, tmp_path: Path) -> None:
    await store.write(Mutation(storage.PUT, b"gone", b"x"))
    result = await store.transact(Txn((), (Change(b"t", b"v", 99_000), Change(b"gone", None)), ()))
    assert (await store.get(b"t")).expires == 99_000
    raws = await store.log_after(0, 10, 1 << 20)
    follower = Store.open(str(tmp_path / "follower"))
    await follower.start()
    try:
        await follower.set_lineage(store.lineage)
        await follower.apply_nowait([LogEntry.decode(raw) for raw in raws])
        record = await follower.get(b"t")
        assert (record.value, record.version, record.expires) == (b"v", result.lsn, 99_000)
        assert await follower.get(b"gone") is None
        assert await follower.scan(b"", None, 10) == [(b"t", result.lsn)]
    finally:
        await follower.close()


def test_a_peer_that_cannot_read_a_transaction_entry_is_noted_for_kv0_to_wait() -> None:
    from kvstore.replication.versions import FROM_HEADER, HEADER, TXN_PROTOCOL, Versions
    kv0 = Versions("kv-0", (2, 4))
    assert kv0.check_call({HEADER: "2-4", FROM_HEADER: "kv-1"}, None) is None
    assert kv0.check_call({HEADER: "2-3", FROM_HEADER: "kv-2"}, None) is None  # accepted, but noted
    assert kv0.older_peers(TXN_PROTOCOL) == ["kv-2"]
    assert kv0.older_peers() == []  # kv-2 reads configuration entries
