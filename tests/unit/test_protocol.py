"""The peer wire protocol: what a sender builds always fits what a receiver accepts."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest

from kvstore import storage
from kvstore.lineage import Lineage
from kvstore.replication import protocol
from kvstore.storage import Mutation, Store


@pytest.mark.parametrize("max_key,max_value", [(1024, 1024 * 1024), (64, 0), (65536, 4 * 1024 * 1024 + 7)])
async def test_stream_messages_at_the_limits_fit_what_the_follower_accepts(
        tmp_path: Path, max_key: int, max_value: int) -> None:
    """Entries of every size the limits allow, batched as the log server batches them."""
    s = Store.open(str(tmp_path / "d"), fsync=False)
    await s.start()
    await s.set_lineage(Lineage().begin(1, 1, "a" * 32, True))
    rng = random.Random(7)
    try:
        sizes = [max_value, 0, max_value, *(rng.randint(0, max_value) for _ in range(40))]
        for i, size in enumerate(sizes):
            key = (b"k%d-" % i).ljust(max_key, b"k")[:max_key]
            await s.write(Mutation(storage.PUT, key, b"v" * size))
        limit = protocol.max_stream_message(max_key, max_value)
        after, messages = 0, 0
        while after < s.lsn:
            raws = await s.log_after(after, protocol.FETCH_MAX_ENTRIES, protocol.FETCH_MAX_BYTES)
            message = protocol.encode_message(s.lsn, raws, 2**64 - 1, 2**64 - 2)
            assert len(message) <= limit
            lsn, committed, round_, entries = protocol.decode_message(message)
            assert (lsn, committed, round_) == (s.lsn, 2**64 - 2, 2**64 - 1) and entries[0].lsn == after + 1
            after = entries[-1].lsn
            messages += 1
        assert messages > 1 or max_value == 0
    finally:
        await s.close()


async def test_snapshot_chunks_at_the_limits_fit_what_the_receiver_accepts(tmp_path: Path) -> None:
    max_key, max_value = 1024, 1024 * 1024
    s = Store.open(str(tmp_path / "d"), fsync=False)
    await s.start()
    await s.set_lineage(Lineage().begin(1, 1, "a" * 32, True))
    try:
        for i in range(6):
            await s.write(Mutation(storage.PUT, (b"%d" % i).ljust(max_key, b"k"), b"v" * (max_value - i)))
        snap = s.open_snapshot()
        limit = protocol.max_snapshot_frame(max_key, max_value)
        total = 0
        while chunk := snap.next_chunk(protocol.SNAPSHOT_CHUNK_RECORDS, protocol.SNAPSHOT_CHUNK_BYTES):
            payload = protocol.encode_records(chunk)
            assert len(payload) <= limit
            assert protocol.decode_records(payload) == chunk
            total += len(chunk)
        snap.close()
        assert total == 6
    finally:
        await s.close()


async def test_a_frame_longer_than_the_bound_is_refused_before_it_is_read() -> None:
    reader = asyncio.StreamReader()
    reader.feed_data(protocol.frame(protocol.FRAME_RECORDS, b"x" * 100))
    with pytest.raises(ValueError, match="exceeds"):
        await protocol.read_frame(reader, 99)  # type: ignore[arg-type]
    reader = asyncio.StreamReader()
    reader.feed_data(protocol.frame(protocol.FRAME_RECORDS, b"x" * 100))
    assert await protocol.read_frame(reader, 100) == (protocol.FRAME_RECORDS, b"x" * 100)  # type: ignore[arg-type]


@pytest.mark.parametrize("payload", [b"\x00\x00", b"\x00\x00\x00\x05ab", b"\x00\x00\x00\x01a\x00\x00\x00\x09short",
                                     b"\x00\x00\x00\x01a\x00\x00\x00\x02ab"])
def test_torn_snapshot_records_are_refused(payload: bytes) -> None:
    with pytest.raises(ValueError):
        protocol.decode_records(payload)


@pytest.mark.parametrize("data", [b"", b"1234567", b"12345678" * 2 + b"1234567",
                                  b"12345678" * 3 + b"\x00\x00\x00\x09abc", b"12345678" * 3 + b"\x00\x00\x00\x03abc"])
def test_torn_stream_messages_are_refused(data: bytes) -> None:
    with pytest.raises(ValueError):
        protocol.decode_message(data)


def test_acks_parse_and_refuse_garbage() -> None:
    assert protocol.parse_ack("17/3") == (17, 3, {})
    assert protocol.parse_ack(protocol.encode_ack(17, 4, "")) == (17, 4, {})
    assert protocol.parse_ack(protocol.encode_ack(17, 4, "kv-2:15/4,kv-3:12/0")) == \
        (17, 4, {"kv-2": (15, 4), "kv-3": (12, 0)})
    longest = ",".join(f"{'p' * 250}{i:03d}:{2**63 - 1}/{2**64 - 1}" for i in range(64))
    assert len(protocol.parse_ack(f"{2**63 - 1}/{2**64 - 1} {longest}")[2]) == 64  # the largest ack fits
    for bad in ("", "x", "-1", "17", "17/", "/3", "17/x", "17/-1", "1/0 kv-2", "1/0 kv-2:x", "1/0 kv-2:3",
                "1/0 :3/1", "1/0 kv-2:3/x", "1/0 " + ",".join(f"p{i}:1/1" for i in range(65)), "9" * 20000,
                "1/" + "9" * 50):
        with pytest.raises(ValueError):
            protocol.parse_ack(bad)


def test_stream_params_name_the_epoch_of_the_last_entry() -> None:
    lineage = Lineage().begin(1, 1, "a" * 32, True).begin(4, 11, "a" * 32, True)
    params = protocol.stream_params(15, lineage, "kv-1", "0af3")
    assert params["after"] == "15" and params["epoch"] == "4" and params["epoch_id"] == lineage.last.id
    assert protocol.stream_params(0, Lineage(), "kv-1") == {"after": "0", "epoch": "0", "epoch_id": "",
                                                            "follower": "kv-1", "incarnation": ""}
    assert protocol.parse_stream_params(params) == (15, 4, lineage.last.id, "kv-1", "0af3")
    for bad in ({}, {**params, "after": "-1"}, {**params, "epoch": "x"}, {**params, "follower": ""},
                {**params, "epoch_id": "f" * 33}, {**params, "incarnation": "f" * 33},
                {**params, "incarnation": "not hex"}):
        with pytest.raises(ValueError):
            protocol.parse_stream_params(bad)
