"""A replica's open LevelDB and what the parts of the store share about it.

One :class:`Database` per :class:`~kvstore.storage.store.Store`: the handle,
the metadata read from it (lineage, promise, configuration, first retained
LSN, committed LSN), the LSNs reached (durable, appended) and the threads
that run LevelDB work. A snapshot swap and a reopen after a failed write
replace the handle, so the parts always go through ``database.db`` and never
keep one of their own. The files of the data dir (the ACTIVE pointer, stale
databases, fsync of a tree) are here too.
"""

from __future__ import annotations

import concurrent.futures
import os
import shutil
from typing import Iterable

import plyvel

from kvstore.aio import Watermark
from kvstore.storage.layout import (META_COMMITTED, META_CONFIG, META_LOG_START, META_LSN, StorageError,
                                    _check_format, _parse_membership, _read_lineage, _read_promise,
                                    _unpack_version)

ACTIVE_FILE = "ACTIVE"  # names the live LevelDB directory inside the data dir
ROOM_PROBE = ".room-probe"  # written in the data dir to learn whether the disk has room again


class Database:
    """The open LevelDB with its metadata and positions; every part of the store shares one."""

    def __init__(self, db: plyvel.DB, path: str, fsync: bool = True) -> None:
        self.db = db
        self.path = path
        self.data_dir = os.path.dirname(path)
        self.fsync = fsync
        # Why the last write failed, until LevelDB is reopened. After a failed write LevelDB may
        # refuse every write (its background error), or take them into a log it can no longer
        # read back: measured, every write after an ENOSPC and before a reopen was gone after one.
        self.write_error: str | None = None
        self.durable = Watermark(self.meta_int(META_LSN))
        self.appended = Watermark(self.durable.value)
        self.log_start = self.meta_int(META_LOG_START) or 1
        self.committed_on_disk = self.meta_int(META_COMMITTED)
        self.lineage = _read_lineage(db, path)
        self.promise = _read_promise(db, path)
        # The newest configuration this log holds (None: none recorded, KV_REPLICAS is the initial one).
        self.membership = _parse_membership(db.get(META_CONFIG), path)
        self.lineage_version = 0  # bumped on every change, so log streams notice
        # One thread owns every write so batches stay ordered; reads use others.
        self.writer = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="kv-commit")
        self.readers = concurrent.futures.ThreadPoolExecutor(4, thread_name_prefix="kv-read")

    @classmethod
    def open(cls, data_dir: str, fsync: bool = True) -> "Database":
        """Open (creating if needed) the replica's database under ``data_dir``.

        Raises StorageError with a one-line reason: unwritable directory, or
        the LevelDB lock held by another replica.
        """
        try:
            os.makedirs(data_dir, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot create data dir {data_dir}: {exc.strerror}") from None
        if not os.access(data_dir, os.W_OK | os.X_OK):
            raise StorageError(f"data dir {data_dir} is not writable")
        path = os.path.join(data_dir, active_db_name(data_dir))
        try:
            db = plyvel.DB(path, create_if_missing=True)
        except plyvel.IOError as exc:
            text = str(exc)
            if "lock" in text.lower():
                raise StorageError(
                    f"data dir {data_dir} is in use by another replica (LevelDB lock held)"
                ) from None
            raise StorageError(f"cannot open LevelDB in {path}: {text}") from None
        except plyvel.Error as exc:
            raise StorageError(f"cannot open LevelDB in {path}: {exc}") from None
        # Left by a snapshot install that was interrupted: the ACTIVE one is whole.
        remove_stale_dbs(data_dir, os.path.basename(path), os.listdir(data_dir))
        _remove(os.path.join(data_dir, ROOM_PROBE))  # left by a crash while probing for room
        try:
            _check_format(db, path)
            return cls(db, path, fsync)
        except StorageError:
            db.close()
            raise

    def close(self) -> None:
        """Wait for the threads' work to end, then close LevelDB (blocking)."""
        self.writer.shutdown(wait=True)
        self.readers.shutdown(wait=True)
        self.db.close()

    def meta_int(self, key: bytes) -> int:
        """A metadata number (an LSN), 0 when absent."""
        raw = self.db.get(key)
        return _unpack_version(raw) if raw else 0

    def advance(self, lsn: int) -> None:
        """``lsn`` is durable here (and so appended too)."""
        self.durable.set(lsn)
        if lsn > self.appended.value:
            self.appended.set(lsn)

    def load_meta(self) -> int:
        """Read the metadata of the database just opened; its LSN (writer thread)."""
        self.lineage = _read_lineage(self.db, self.path)
        self.promise = _read_promise(self.db, self.path)
        self.membership = _parse_membership(self.db.get(META_CONFIG), self.path)
        self.log_start = self.meta_int(META_LOG_START) or 1
        self.committed_on_disk = self.meta_int(META_COMMITTED)
        return self.meta_int(META_LSN)


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def fsync_tree(path: str) -> None:
    """fsync every file under ``path``, then each directory (blocking)."""
    for root, _dirs, files in os.walk(path):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(root)
    _fsync_dir(os.path.dirname(path) or ".")


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def active_db_name(data_dir: str) -> str:
    """The name of the live database directory (swapped atomically by snapshots)."""
    try:
        with open(os.path.join(data_dir, ACTIVE_FILE), encoding="ascii") as handle:
            name = handle.read().strip()
    except FileNotFoundError:
        return "db"
    if not name or "/" in name or name.startswith("."):
        raise StorageError(f"{data_dir}/{ACTIVE_FILE} is corrupt: {name!r}")
    return name


def set_active_db(data_dir: str, name: str) -> None:
    """Point the data dir at another database directory, atomically and durably."""
    tmp = os.path.join(data_dir, ACTIVE_FILE + ".tmp")
    with open(tmp, "w", encoding="ascii") as handle:
        handle.write(name)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, os.path.join(data_dir, ACTIVE_FILE))
    _fsync_dir(data_dir)


def remove_stale_dbs(data_dir: str, keep: str, names: Iterable[str]) -> None:
    """Delete database directories other than ``keep`` (left by interrupted snapshots)."""
    for name in names:
        if name != keep and (name == "db" or name.startswith("db-")):
            shutil.rmtree(os.path.join(data_dir, name), ignore_errors=True)
