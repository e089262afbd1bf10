"""Backup files: what a backup holds, restoring it into an empty data dir, and refusing a bad file
(truncated anywhere, corrupted, malformed, not a backup) or a used volume before anything is written."""

from __future__ import annotations

import hashlib
import os
import struct
from pathlib import Path

import pytest

from kvstore import backup, storage
from kvstore.lineage import Lineage
from kvstore.replication import protocol
from kvstore.storage import Mutation, Store

HISTORY = "ab" * 16


async def make_backup(tmp_path: Path, keys: int = 50) -> tuple[Path, dict[bytes, tuple[int, bytes]]]:
    """A real store with ``keys`` keys (one deleted, one overwritten), backed up to a file; its contents."""
    store = Store.open(str(tmp_path / "source"))
    await store.start()
    try:
        await store.set_lineage(Lineage().begin(1, 1, HISTORY, True))
        for i in range(keys):
            await store.write(Mutation(storage.PUT, b"k/%03d" % i, b"value-%d" % i * 3))
        await store.write(Mutation(storage.DELETE, b"k/000"))
        await store.write(Mutation(storage.PUT, b"k/001", b""))
        expected = {key: (record.version, record.value) for key in (b"k/%03d" % i for i in range(keys))
                    if (record := await store.get(key)) is not None}
        snap = await store.run_blocking(store.open_snapshot)
        path = tmp_path / "backup.kvbackup"
        try:
            with open(path, "wb") as handle:
                async for data in backup.backup_stream(store, snap, "kv-1"):
                    handle.write(data)
        finally:
            await store.run_blocking(snap.close)
    finally:
        await store.close()
    return path, expected


async def contents(data_dir: Path) -> tuple[Store, dict[bytes, tuple[int, bytes]]]:
    store = Store.open(str(data_dir))
    await store.start()
    rows = await store.scan(b"", None, 10_000)
    found = {}
    for key, _ in rows:
        record = await store.get(key)
        assert record is not None
        found[key] = (record.version, record.value)
    return store, found


async def test_a_backup_restores_exactly_its_keys_with_a_lineage_that_names_where_they_came_from(
        tmp_path: Path) -> None:
    path, expected = await make_backup(tmp_path)
    info = backup.check(str(path))
    assert (info.lsn, info.history, info.pod, info.count) == (52, HISTORY, "kv-1", len(expected))
    assert info.sha256 == hashlib.sha256(path.read_bytes()[:-backup.CHECKSUM_FRAME_SIZE]).hexdigest()
    target = tmp_path / "restored"
    await backup.restore(str(path), str(target))
    store, found = await contents(target)
    try:
        assert found == expected
        assert store.lsn == 52 and store.log_start == 53
        # The restored volume begins a new history right after the backup's LSN.
        assert store.history_id != HISTORY
        assert store.lineage.fork() == {"parent": HISTORY, "lsn": 52}
        assert store.promise.number == 0
    finally:
        await store.close()


async def test_a_restore_into_a_fresh_filesystem_keeps_lost_and_found(tmp_path: Path) -> None:
    path, expected = await make_backup(tmp_path, keys=3)
    target = tmp_path / "pvc"
    (target / "lost+found").mkdir(parents=True)
    await backup.restore(str(path), str(target))
    store, found = await contents(target)
    await store.close()
    assert found == expected and (target / "lost+found").is_dir()


@pytest.mark.parametrize("keep", [0, 10, len(backup.MAGIC) + 3, 200, -backup.CHECKSUM_FRAME_SIZE - 1,
                                  -backup.CHECKSUM_FRAME_SIZE, -1])
async def test_a_truncated_backup_is_refused_before_anything_is_written(tmp_path: Path, keep: int) -> None:
    path, _ = await make_backup(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[:keep] if keep >= 0 else data[:len(data) + keep])
    target = tmp_path / "restored"
    with pytest.raises(backup.BackupError, match=r"is truncated \(|is not a kvstore backup"):
        await backup.restore(str(path), str(target))
    assert not target.exists()


@pytest.mark.parametrize("where", [len(backup.MAGIC) + 8, 0.5, -backup.CHECKSUM_FRAME_SIZE - 2, -3])
async def test_a_corrupted_backup_is_refused_before_anything_is_written(tmp_path: Path,
                                                                        where: float) -> None:
    path, _ = await make_backup(tmp_path)
    data = bytearray(path.read_bytes())
    offset = int(len(data) * where) if isinstance(where, float) else where
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))
    target = tmp_path / "restored"
    target.mkdir()
    with pytest.raises(backup.BackupError, match="is corrupt: its SHA-256 does not match"):
        await backup.restore(str(path), str(target))
    assert os.listdir(target) == []


def rewrite(path: Path, frames: list[bytes]) -> None:
    """A file of these frames with a checksum that matches them (a well-sealed but malformed backup)."""
    body = backup.MAGIC + b"".join(frames)
    path.write_bytes(body + protocol.frame(backup.FRAME_CHECKSUM, hashlib.sha256(body).digest()))


def header(**overrides: object) -> bytes:
    body = {"format": 1, "lsn": 5, "history": HISTORY, "pod": "kv-1", "taken_at": "now",
            "lineage": Lineage().begin(1, 1, HISTORY, True).to_json(), **overrides}
    return protocol.json_frame(protocol.FRAME_HEADER, body)


def records(version: int = 3) -> bytes:
    return protocol.frame(protocol.FRAME_RECORDS, protocol.encode_records([(b"k", struct.pack(">Q", version) + b"v")]))


END_1 = protocol.json_frame(protocol.FRAME_END, {"count": 1})


@pytest.mark.parametrize("frames, message", [
    ([header(), records()], "no end frame"),
    ([records(), END_1], "does not begin with a header"),
    ([header(), records(), protocol.json_frame(protocol.FRAME_END, {"count": 2})], "counts 2 records"),
    ([header(), records(), END_1, END_1], "frames follow its end"),
    ([header(), records(9), END_1], "newer than the backup's lsn"),
    ([header(format=2), records(), END_1], "backup format 2"),
    ([header(lsn=-1), records(), END_1], "lsn is -1"),
    ([header(history="cd" * 16), records(), END_1], "history and lineage disagree"),
    ([header(lineage="x"), records(), END_1], "its lineage"),
    ([header(), protocol.frame(protocol.FRAME_RECORDS, b"\x00\x00\x00\x09k"), END_1], "torn snapshot record"),
    ([header(), records(), protocol.frame(7, b""), END_1], "unknown kind 7"),
    ([header(), records(), protocol.frame(protocol.FRAME_END, b"{not json")], "does not parse"),
    ([header(), b"\x02\xff\xff\xff\xff"], "claims"),
])
async def test_a_well_sealed_but_malformed_backup_is_refused(tmp_path: Path, frames: list[bytes],
                                                             message: str) -> None:
    path = tmp_path / "bad.kvbackup"
    rewrite(path, frames)
    with pytest.raises(backup.BackupError, match=message):
        await backup.restore(str(path), str(tmp_path / "restored"))
    assert not (tmp_path / "restored").exists()


async def test_a_volume_that_holds_anything_is_left_alone(tmp_path: Path) -> None:
    path, _ = await make_backup(tmp_path, keys=3)
    target = tmp_path / "used"
    target.mkdir()
    (target / "ACTIVE").write_text("db")
    with pytest.raises(backup.BackupError, match="not empty .*ACTIVE.*new, empty volume"):
        await backup.restore(str(path), str(target))
    assert os.listdir(target) == ["ACTIVE"] and (target / "ACTIVE").read_text() == "db"


@pytest.mark.parametrize("content", [b"", b"hello, not a backup\n" * 10])
async def test_a_file_that_is_not_a_backup_is_named_so(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "other"
    path.write_bytes(content)
    with pytest.raises(backup.BackupError, match="is not a kvstore backup"):
        backup.check(str(path))


def test_a_missing_file_is_a_backup_error(tmp_path: Path) -> None:
    with pytest.raises(backup.BackupError, match="cannot read .*No such file"):
        backup.check(str(tmp_path / "absent"))
