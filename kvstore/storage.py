"""Storage: one LevelDB per replica holding data, replication log and metadata.

Key layout (distinct prefixes in one database, so all three change together in
one atomic WriteBatch):

- ``d/<key>``       -> 8-byte version (LSN of the key's last write) + value; a key with
  a ttl has the version's top bit set and its 8-byte absolute expiry (ms) before the value
- ``l/<8-byte LSN>`` -> encoded :class:`LogEntry`
- ``m/<name>``      -> metadata: applied LSN, lineage (epochs and history ids,
  see lineage.py), the newest epoch this replica promised to follow, first
  retained LSN, format version, and on a follower the committed LSN its
  upstream last announced

Writes go through a single committer task (group commit): every mutation that
arrives while a batch is being fsynced joins the next batch, so concurrent
writers share one fsync. The committer's disk work runs on a dedicated thread,
never on the event loop. On the primary a batch of plain PUTs is published to
the log stream (``appended``) before its fsync (pipelining). No networking
lives here.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import json
import os
import shutil
import struct
import time
import uuid
from dataclasses import dataclass
from typing import Any, AsyncIterator, Callable, Iterable

import plyvel

from kvstore.aio import Watermark, cancel_and_wait
from kvstore.lineage import Lineage, LineageError, Promise
from kvstore.membership import Configuration
from kvstore.txn import Change, Txn, TxnResult, decode_changes, encode_changes

log = logging.getLogger(__name__)

DATA = b"d/"
LOG = b"l/"
META = b"m/"
META_LSN = META + b"lsn"
META_LINEAGE = META + b"lineage"
META_LOG_START = META + b"log_start"
META_FORMAT = META + b"format"
META_PROMISE = META + b"promise"
META_COMMITTED = META + b"committed"  # a follower: the committed LSN its upstream last announced
META_CONFIG = META + b"config"  # the newest configuration entry applied here (membership.py)
META_OLD_HISTORY = META + b"history"  # format 1 (no epochs) kept its history id here
FORMAT = b"2"  # entries carry their epoch

PUT = 1
DELETE = 2
CONFIG = 3  # a configuration entry: no key, the voters as JSON (membership.py)
TXN = 4  # several key changes at one LSN, no key: a transaction's branch or a PUT with a ttl (txn.py)

_U64 = struct.Struct(">Q")
_ENTRY_HEAD = struct.Struct(">QIBI")  # lsn, epoch, op, key length

ENTRY_FRAMING = 4  # the u32 length in front of each entry or record on the wire
ACTIVE_FILE = "ACTIVE"  # names the live LevelDB directory inside the data dir
MAX_BATCH = 1024  # mutations per group commit
# The newest log entries stay in memory (encoded) so followers that keep up
# are served without a LevelDB read or a thread.
TAIL_ENTRIES = 20_000
TAIL_BYTES = 16 * 1024 * 1024
ROOM_PROBE = ".room-probe"  # written in the data dir to learn whether the disk has room again
ROOM_MARGIN = 4 * 1024 * 1024  # besides LevelDB's log: its new log, manifest and table overhead


class StorageError(Exception):
    """The disk refused a write or the database could not be opened."""


class PreconditionFailed(Exception):
    """An If-Match / If-None-Match condition did not hold."""

    def __init__(self, current_version: int | None) -> None:
        super().__init__("precondition failed")
        self.current_version = current_version


class NotFound(Exception):
    """The key to delete does not exist."""


class LogTruncated(Exception):
    """The requested log position is older than the retained log."""


@dataclass(frozen=True, slots=True)
class LogEntry:
    """One replicated write, stamped with the epoch of the primary that made it; ``value`` is None for a delete.

    A CONFIG entry has no key; its value names the voters from its LSN on. A TXN
    entry has no key either; its value holds its key changes (:func:`changes_of`).
    """

    lsn: int
    epoch: int
    op: int
    key: bytes
    value: bytes | None

    def encode(self) -> bytes:
        """Wire and disk form: lsn, epoch, op, key length, key, value."""
        return _ENTRY_HEAD.pack(self.lsn, self.epoch, self.op, len(self.key)) + self.key + (self.value or b"")

    @classmethod
    def decode(cls, data: bytes | memoryview) -> "LogEntry":
        """Inverse of :meth:`encode`; raises ValueError on a malformed entry."""
        if len(data) < _ENTRY_HEAD.size:
            raise ValueError("log entry too short")
        lsn, epoch, op, key_len = _ENTRY_HEAD.unpack_from(data)
        start = _ENTRY_HEAD.size
        if op not in (PUT, DELETE, CONFIG, TXN) or start + key_len > len(data) \
                or (op == DELETE and start + key_len != len(data)) or (op in (CONFIG, TXN) and key_len):
            raise ValueError("malformed log entry")
        if op == TXN:
            decode_changes(data[start:])  # ValueError: a follower refuses it before writing anything
        key = bytes(data[start:start + key_len])
        value = None if op == DELETE else bytes(data[start + key_len:])
        return cls(lsn, epoch, op, key, value)


def entry_size_limit(max_key_bytes: int, max_value_bytes: int) -> int:
    """The largest encoded entry the limits allow."""
    return _ENTRY_HEAD.size + max_key_bytes + max_value_bytes


@dataclass(frozen=True, slots=True)
class Mutation:
    """A client write with its optional conditions.

    ``if_match`` is None (no condition), ``"*"`` (key must exist) or a tuple
    of acceptable versions; ``if_none_match`` means create only. A PUT with
    ``expires`` (ms since the epoch) is written as a TXN entry of one change;
    op TXN carries its ``txn`` and resolves to a :class:`TxnResult`.
    """

    op: int
    key: bytes
    value: bytes | None = None
    if_match: tuple[int, ...] | str | None = None
    if_none_match: bool = False
    expires: int = 0
    txn: Txn | None = None


@dataclass(frozen=True, slots=True)
class Record:
    """A stored value, its version (the LSN of its last write) and its expiry (ms since the epoch, 0: none)."""

    value: bytes
    version: int
    expires: int = 0


@dataclass
class _Job:
    mutations: list[Mutation] | None
    entries: list[LogEntry] | None
    future: asyncio.Future[Any]
    swap_to: str | None = None
    reopen: bool = False  # reopen LevelDB if a write failed (and nothing else)
    committed: int = 0  # replicated entries: the LSN a majority held as the upstream last said


class Snapshot:
    """A LevelDB snapshot with the LSN and lineage it stands for; read it in chunks."""

    def __init__(self, snapshot: Any, lineage: Lineage) -> None:
        self._snapshot = snapshot
        raw = snapshot.get(META_LSN)
        self.lsn = _unpack_version(raw) if raw else 0
        self.lineage = lineage
        self.membership = _parse_membership(snapshot.get(META_CONFIG), "a snapshot")
        self._iterator = snapshot.iterator(prefix=DATA)

    def next_chunk(self, max_records: int, max_bytes: int) -> list[tuple[bytes, bytes]]:
        """The next (key, raw record) pairs, bounded; empty when done (blocking)."""
        out: list[tuple[bytes, bytes]] = []
        size = 0
        for raw_key, raw in self._iterator:
            out.append((raw_key[len(DATA):], raw))
            size += 2 * ENTRY_FRAMING + len(raw_key) - len(DATA) + len(raw)
            # The size counts the wire framing, so a chunk's frame is at most
            # max_bytes plus one record (what the receiver allows for).
            if len(out) >= max_records or size >= max_bytes:
                break
        return out

    def close(self) -> None:
        """Release the iterator and the snapshot (blocking)."""
        self._iterator.close()
        self._snapshot.close()


EXPIRING = 1 << 63  # set in a record's version: an 8-byte expiry follows (LSNs stay below it)


def _pack_record(version: int, value: bytes, expires: int = 0) -> bytes:
    if expires:
        return _U64.pack(version | EXPIRING) + _U64.pack(expires) + value
    return _U64.pack(version) + value


def _unpack_version(raw: bytes) -> int:
    return _U64.unpack_from(raw)[0] & ~EXPIRING


def unpack_record(raw: bytes) -> Record:
    """A ``d/`` record (as stored, and as snapshots and backups carry it) as a :class:`Record`."""
    head = _U64.unpack_from(raw)[0]
    if head & EXPIRING:
        return Record(raw[2 * _U64.size:], head & ~EXPIRING, _U64.unpack_from(raw, _U64.size)[0])
    return Record(raw[_U64.size:], head)


def record_version(raw: bytes) -> int:
    """The version of a ``d/`` record."""
    return _unpack_version(raw)


def is_txn_entry(raw: bytes) -> bool:
    """Whether an encoded entry is a TXN entry, without decoding it."""
    return _ENTRY_HEAD.unpack_from(raw)[2] == TXN


def entry_lsn(raw: bytes) -> int:
    """The LSN of an encoded entry, without decoding it."""
    return _U64.unpack_from(raw)[0]


def changes_of(entry: LogEntry) -> list[Change]:
    """The key changes an entry makes: one for a PUT or DELETE, a TXN's list, none for a CONFIG entry."""
    if entry.op == TXN:
        return decode_changes(entry.value or b"")
    if entry.op in (PUT, DELETE):
        return [Change(entry.key, entry.value if entry.op == PUT else None)]
    return []


class Store:
    """A replica's LevelDB with group commit, LSNs and a retained log."""

    def __init__(self, db: plyvel.DB, path: str, fsync: bool = True,
                 log_retention: int = 100_000,
                 on_commit: Callable[[int, float], None] | None = None,
                 hold_commit: tuple[int, int] | None = None) -> None:
        self._db = db
        self.path = path
        self.fsync = fsync
        # The primary sets this: a batch of client writes is published to the log
        # stream (``appended``) before its fsync, so followers write it meanwhile.
        self.pipeline = False
        self._hold_commit = hold_commit  # (lsn, epoch): a test's crash before that batch's fsync
        self.failed: str | None = None  # set when a published batch could not be written: no more writes
        # Why the last write failed, until LevelDB is reopened. After a failed write LevelDB may
        # refuse every write (its background error), or take them into a log it can no longer
        # read back: measured, every write after an ENOSPC and before a reopen was gone after one.
        self.write_error: str | None = None
        self.fatal = asyncio.Event()  # LevelDB could not be reopened: the process must restart
        self._last_failure: str | None = None  # the last failed commit's message (logged once)
        self.log_retention = log_retention
        self._on_commit = on_commit
        self._durable = Watermark(self._meta_int(META_LSN))
        self._appended = Watermark(self._durable.value)
        self._log_start = self._meta_int(META_LOG_START) or 1
        self.committed_on_disk = self._meta_int(META_COMMITTED)
        self.lineage = _read_lineage(db, path)
        self.promise = _read_promise(db, path)
        # The newest configuration this log holds (None: none recorded, KV_REPLICAS is the initial one).
        self.membership = _parse_membership(db.get(META_CONFIG), path)
        self._staged_membership: Configuration | None = None  # in the batch being written
        self.lineage_version = 0  # bumped on every change, so log streams notice
        self._queue: asyncio.Queue[_Job] | None = None
        self._committer: asyncio.Task[None] | None = None
        self._truncator: asyncio.Task[None] | None = None
        # One thread owns every write so batches stay ordered; reads use others.
        self._writer = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="kv-commit")
        self._readers = concurrent.futures.ThreadPoolExecutor(4, thread_name_prefix="kv-read")
        self._closed = False
        self.data_dir = os.path.dirname(path)
        # Reads are counted so a snapshot install can swap the database only
        # when none is running inside LevelDB (closing under a reader crashes).
        self._reads = 0
        self._reads_done = asyncio.Event()
        # Point reads that arrive in the same loop iteration share one trip to a
        # reader thread: the hop, not LevelDB, is most of a GET's cost.
        self._pending_gets: list[tuple[bytes, asyncio.Future[bytes | None]]] = []
        self._swap_gate = asyncio.Event()
        self._swap_gate.set()
        self._tail: list[bytes] = []  # encoded entries _tail_first, _tail_first + 1, ...
        self._tail_first = self.lsn + 1
        self._tail_bytes = 0

    # ----------------------------------------------------------------- opening
    @classmethod
    def open(cls, data_dir: str, **kwargs: Any) -> "Store":
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
            return cls(db, path, **kwargs)
        except StorageError:
            db.close()
            raise

    def _meta_int(self, key: bytes) -> int:
        raw = self._db.get(key)
        return _unpack_version(raw) if raw else 0

    async def start(self) -> None:
        """Start the committer and the background log truncation."""
        self._queue = asyncio.Queue()
        self._committer = asyncio.create_task(self._commit_loop(), name="kv-committer")
        self._truncator = asyncio.create_task(self._truncate_loop(), name="kv-truncator")

    async def close(self) -> None:
        """Finish queued writes, stop background work and close LevelDB."""
        if self._closed:
            return
        self._closed = True
        await cancel_and_wait(self._truncator, self._committer)
        if self._queue is not None:
            while not self._queue.empty():
                job = self._queue.get_nowait()
                if not job.future.done():
                    job.future.set_exception(StorageError("replica is shutting down"))
        self._writer.shutdown(wait=True)
        self._readers.shutdown(wait=True)
        self._db.close()

    # --------------------------------------------------------------- positions
    @property
    def lsn(self) -> int:
        """The last LSN durable here and visible to reads (written on the primary, applied on a secondary)."""
        return self._durable.value

    @property
    def appended(self) -> int:
        """The last LSN in the log stream: ``lsn``, or beyond it while a pipelined batch is being written."""
        return self._appended.value

    @property
    def log_start(self) -> int:
        """The first LSN still in the retained log."""
        return self._log_start

    @property
    def history_id(self) -> str:
        """The history in effect ("" while this replica never held data)."""
        return self.lineage.history

    @property
    def epoch(self) -> int:
        """The newest epoch this replica's log knows (0: none)."""
        return self.lineage.number

    async def set_lineage(self, lineage: Lineage) -> None:
        """Persist a new lineage durably (a primary's new epoch, or a follower adopting its upstream's)."""
        raw = lineage.dumps()
        await self._put_meta(META_LINEAGE, raw)
        self.lineage = lineage
        self.lineage_version += 1

    async def set_promise(self, promise: Promise) -> None:
        """Persist durably the newest epoch this follower promised to (it must survive a restart)."""
        raw = json.dumps(promise.to_json()).encode()
        await self._put_meta(META_PROMISE, raw)
        self.promise = promise

    async def _put_meta(self, key: bytes, raw: bytes) -> None:
        """One durable metadata write, on the writer thread; StorageError if the disk refuses it."""
        if self.write_error is not None:
            await self._through_committer(_Job(None, None, asyncio.get_running_loop().create_future(), reopen=True))
        try:
            await asyncio.get_running_loop().run_in_executor(self._writer, lambda: self._db.put(key, raw, sync=True))
        except plyvel.Error as exc:
            self.write_error = str(exc)
            raise StorageError(f"write failed: {exc}") from None

    async def wait_for_lsn(self, lsn: int, timeout: float, appended: bool = False) -> bool:
        """Wait until this replica has reached ``lsn`` (durable; or only ``appended``); False on timeout."""
        return await (self._appended if appended else self._durable).wait_for(lsn, timeout)

    def _advance(self, lsn: int) -> None:
        self._durable.set(lsn)
        if lsn > self._appended.value:
            self._appended.set(lsn)

    # ------------------------------------------------------------------ reads
    async def get(self, key: bytes) -> Record | None:
        """The key's value and version, or None."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[bytes | None] = loop.create_future()
        self._pending_gets.append((DATA + key, future))
        if len(self._pending_gets) == 1:
            loop.call_soon(self._send_gets)
        raw = await future
        if raw is None:
            return None
        return unpack_record(raw)

    def _send_gets(self) -> None:
        """Hand every pending point read to one reader thread (on the loop)."""
        batch, self._pending_gets = self._pending_gets, []
        if not self._swap_gate.is_set():  # a snapshot swap is closing the database: wait for it
            task = asyncio.ensure_future(self._read(self._multi_get, [key for key, _ in batch]))
            task.add_done_callback(lambda t: self._deliver_gets(batch, t))
            return
        loop = asyncio.get_running_loop()
        self._reads += 1
        try:
            work = self._readers.submit(self._multi_get, [key for key, _ in batch])
        except RuntimeError as exc:  # the pool is shut down: the store is closing
            self._read_finished()
            for _, future in batch:
                if not future.done():
                    future.set_exception(StorageError(f"replica is shutting down ({exc})"))
            return

        def finished(work: concurrent.futures.Future[list[bytes | None]]) -> None:
            self._read_finished()
            self._deliver_gets(batch, work)
        work.add_done_callback(lambda w: loop.call_soon_threadsafe(finished, w))

    def _multi_get(self, keys: list[bytes]) -> list[bytes | None]:
        get = self._db.get
        return [get(key) for key in keys]

    def _read_finished(self) -> None:
        self._reads -= 1
        if self._reads == 0:
            self._reads_done.set()

    @staticmethod
    def _deliver_gets(batch: list[tuple[bytes, asyncio.Future[bytes | None]]],
                      work: "asyncio.Future[list[bytes | None]] | concurrent.futures.Future[list[bytes | None]]") -> None:
        exc = work.exception() if not work.cancelled() else StorageError("read cancelled")
        values = work.result() if exc is None else [None] * len(batch)
        for (_, future), value in zip(batch, values):
            if future.done():  # its request went away meanwhile
                continue
            if exc is not None:
                future.set_exception(exc)
            else:
                future.set_result(value)

    async def scan(self, prefix: bytes, start_after: bytes | None, limit: int) -> list[tuple[bytes, int]]:
        """Up to ``limit`` (key, version) pairs with ``prefix``, in key order."""
        return await self._read(self._scan, prefix, start_after, limit)

    def _scan(self, prefix: bytes, start_after: bytes | None, limit: int) -> list[tuple[bytes, int]]:
        out: list[tuple[bytes, int]] = []
        start = DATA + start_after if start_after is not None and start_after >= prefix else DATA + prefix
        with self._db.iterator(start=start, include_start=start_after is None
                               or start_after < prefix) as it:
            for raw_key, raw in it:
                key = raw_key[len(DATA):]
                if not raw_key.startswith(DATA) or not key.startswith(prefix):
                    break
                out.append((key, _unpack_version(raw)))
                if len(out) >= limit:
                    break
        return out

    async def log_after(self, after: int, max_entries: int, max_bytes: int) -> list[bytes]:
        """Encoded log entries with LSN > ``after``, bounded in count and bytes (at least one).

        The byte bound counts a 4-byte length per entry (the stream's framing)
        and is never crossed, except by a single entry that is larger alone.

        From the in-memory tail when it has them, else from disk. Raises
        LogTruncated when entries after ``after`` are no longer retained.
        """
        if after + 1 < self._log_start and after < self._durable.value:
            raise LogTruncated(after)
        if after + 1 >= self._tail_first:
            return self._from_tail(after, max_entries, max_bytes)
        return await self._read(self._log_after, after, max_entries, max_bytes)

    def _from_tail(self, after: int, max_entries: int, max_bytes: int) -> list[bytes]:
        start = after + 1 - self._tail_first
        return _bounded(self._tail[start:start + max_entries], max_bytes)

    def _log_after(self, after: int, max_entries: int, max_bytes: int) -> list[bytes]:
        if after + 1 < self._log_start and after < self._durable.value:
            raise LogTruncated(after)
        out: list[bytes] = []
        size = 0
        with self._db.iterator(start=LOG + _U64.pack(after + 1), stop=LOG + b"\xff" * 8,
                               include_key=False) as it:
            for raw in it:
                size += ENTRY_FRAMING + len(raw)
                if out and size > max_bytes:
                    break
                out.append(raw)
                if len(out) >= max_entries:
                    break
        if out and _U64.unpack_from(out[0])[0] != after + 1:  # truncated under us
            raise LogTruncated(after)
        return out

    def _remember(self, encoded: list[bytes], first_lsn: int) -> None:
        """Keep newly committed entries in the in-memory tail, bounded."""
        if first_lsn != self._tail_first + len(self._tail):  # a gap (snapshot): start over
            self._tail, self._tail_first, self._tail_bytes = [], first_lsn, 0
        self._tail.extend(encoded)
        self._tail_bytes += sum(map(len, encoded))
        if len(self._tail) > 2 * TAIL_ENTRIES or self._tail_bytes > TAIL_BYTES:
            # Trim to half the bounds at once, so trimming is rare (amortized O(1)).
            drop, freed = 0, 0
            while drop < len(self._tail) and (len(self._tail) - drop > TAIL_ENTRIES
                                              or self._tail_bytes - freed > TAIL_BYTES // 2):
                freed += len(self._tail[drop])
                drop += 1
            del self._tail[:drop]
            self._tail_first += drop
            self._tail_bytes -= freed

    def open_snapshot(self) -> "Snapshot":
        """A consistent point-in-time view (data plus its LSN) for a snapshot transfer."""
        return Snapshot(self._db.snapshot(), self.lineage)

    async def _read(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run blocking LevelDB work on a reader thread, counted so a swap waits for it."""
        await self._swap_gate.wait()
        self._reads += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._readers, fn, *args)
        finally:
            self._reads -= 1
            if self._reads == 0:
                self._reads_done.set()

    async def run_blocking(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run a blocking function that reads this database (snapshot serving) off the loop."""
        return await self._read(fn, *args)

    # -------------------------------------------------------------- snapshots
    async def install_snapshot(self, lineage: Lineage, lsn: int,
                               chunks: "AsyncIterator[list[tuple[bytes, bytes]]]",
                               membership: Configuration | None = None) -> int:
        """Replace this replica's data with a snapshot, atomically.

        The records go into a new LevelDB next to the live one; only when the
        last chunk is in and synced does the ACTIVE pointer move to it. An
        interrupted transfer leaves the old database in place and usable.
        Every file of the new database and its directory are fsynced before
        the switch, so after a power cut the recorded LSN never claims records
        the disk lost. Returns the number of records installed.
        """
        loop = asyncio.get_running_loop()
        name = f"db-{uuid.uuid4().hex[:12]}"
        path = os.path.join(self.data_dir, name)
        staging = await loop.run_in_executor(None, lambda: plyvel.DB(path, create_if_missing=True))
        count = 0
        try:
            async for chunk in chunks:
                def write(chunk: list[tuple[bytes, bytes]] = chunk) -> None:
                    with staging.write_batch() as batch:
                        for key, raw in chunk:
                            batch.put(DATA + key, raw)
                await loop.run_in_executor(None, write)
                count += len(chunk)

            def seal() -> None:
                with staging.write_batch(sync=True) as batch:
                    batch.put(META_LSN, _U64.pack(lsn))
                    batch.put(META_LOG_START, _U64.pack(lsn + 1))
                    batch.put(META_LINEAGE, lineage.dumps())
                    batch.put(META_PROMISE, json.dumps(self.promise.to_json()).encode())
                    batch.put(META_FORMAT, FORMAT)
                    if membership is not None:
                        batch.put(META_CONFIG, membership.dumps())
                staging.close()
                fsync_tree(path)
            await loop.run_in_executor(None, seal)
        except BaseException:
            if not staging.closed:
                staging.close()
            shutil.rmtree(path, ignore_errors=True)
            raise
        await self._swap(name)
        return count

    async def _swap(self, name: str) -> None:
        """Point the data dir at database ``name`` and reopen, with no read or write running."""
        try:
            await self._quiesce()
            await self._through_committer(_Job(None, None, asyncio.get_running_loop().create_future(), swap_to=name))
        finally:
            self._swap_gate.set()

    async def _quiesce(self) -> None:
        """Hold new reads at the gate and wait until none runs inside LevelDB (closing under one crashes)."""
        self._swap_gate.clear()
        while self._reads:
            self._reads_done.clear()
            await self._reads_done.wait()

    async def _through_committer(self, job: _Job) -> Any:
        """Run a swap or a reopen in the committer, so no batch is being built or written meanwhile."""
        if self._queue is None or self._closed:
            raise StorageError("replica is shutting down")
        self._queue.put_nowait(job)
        return await job.future

    def _do_swap(self, name: str) -> int:
        old = os.path.basename(self.path)
        self._db.close()
        set_active_db(self.data_dir, name)
        self.path = os.path.join(self.data_dir, name)
        self._db = plyvel.DB(self.path)
        remove_stale_dbs(self.data_dir, name, [old])
        self.lineage_version += 1
        return self._load_meta()

    def _load_meta(self) -> int:
        """Read the metadata of the database just opened; its LSN (writer thread)."""
        self.lineage = _read_lineage(self._db, self.path)
        self.promise = _read_promise(self._db, self.path)
        self.membership = _parse_membership(self._db.get(META_CONFIG), self.path)
        self._log_start = self._meta_int(META_LOG_START) or 1
        self.committed_on_disk = self._meta_int(META_COMMITTED)
        return self._meta_int(META_LSN)

    # ----------------------------------------------------------------- writes
    async def write(self, mutation: Mutation) -> int:
        """Commit one mutation durably and return its LSN (the key's new version).

        Raises PreconditionFailed, NotFound (delete of an absent key) or
        StorageError.
        """
        results = await self._submit(_Job([mutation], None, asyncio.get_running_loop().create_future()))
        result = results[0]
        if isinstance(result, Exception):
            raise result
        return result

    async def transact(self, txn: Txn) -> TxnResult:
        """Evaluate a transaction's comparisons and commit its chosen branch durably, as one entry.

        The comparisons read the state the batch is built on: no other write
        lands between them and the branch. Raises StorageError.
        """
        results = await self._submit(_Job([Mutation(TXN, b"", txn=txn)], None,
                                          asyncio.get_running_loop().create_future()))
        return results[0]

    def apply_nowait(self, entries: list[LogEntry], committed: int = 0) -> "asyncio.Future[Any]":
        """Queue replicated entries for the next group commit; the future resolves once durable.

        A follower queues what arrives while the previous batch is being
        written, so everything that came in meanwhile shares the next fsync.
        ``committed`` (what the upstream said a majority holds) is kept with
        them: after a restart, the entries past it are not known to be
        committed (see ``committed_on_disk``).
        """
        return self._submit(_Job(None, entries, asyncio.get_running_loop().create_future(), committed=committed))

    def _submit(self, job: _Job) -> "asyncio.Future[Any]":
        if self._queue is None or self._closed:
            raise StorageError("replica is shutting down")
        if self.failed is not None:
            raise StorageError(self.failed)
        self._queue.put_nowait(job)
        return job.future

    async def _commit_loop(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        carried: _Job | None = None
        while True:
            first, carried = carried or await self._queue.get(), None
            if first.reopen:
                try:
                    if self.write_error is not None:
                        await self._reopen()
                except Exception as exc:
                    first.future.set_exception(exc if isinstance(exc, StorageError) else StorageError(str(exc)))
                else:
                    first.future.set_result(None)
                continue
            if first.swap_to is not None:
                try:
                    new_lsn = await loop.run_in_executor(self._writer, self._do_swap, first.swap_to)
                except Exception as exc:
                    first.future.set_exception(StorageError(f"database swap failed: {exc}"))
                    continue
                self._advance(new_lsn)
                self._appended.set(new_lsn)  # a snapshot may put a follower back
                self._tail, self._tail_first, self._tail_bytes = [], new_lsn + 1, 0
                first.future.set_result(None)
                continue
            jobs = [first]
            count = len(first.mutations or first.entries or ())
            # Everything queued while the previous fsync ran shares this one.
            while not self._queue.empty() and count < MAX_BATCH:
                job = self._queue.get_nowait()
                if job.swap_to is not None or job.reopen:  # never shares a batch: it goes next
                    carried = job
                    break
                jobs.append(job)
                count += len(job.mutations or job.entries or ())
            started = time.perf_counter()
            published = False
            try:
                if self.failed is not None:
                    raise StorageError(self.failed)
                if self.write_error is not None:
                    await self._reopen()
                if any(_needs_read(job) for job in jobs):
                    new_lsn, results, encoded = await loop.run_in_executor(self._writer, self._commit, jobs)
                else:
                    # Plain PUTs and replicated entries read nothing: the batch is built
                    # here and the writer thread only writes it (LevelDB releases the
                    # GIL). Python work on that thread had to win the GIL from the
                    # busy loop first, which made a 0.2 ms fsync a 2 ms commit.
                    batch, new_lsn, results, encoded = self._build(jobs, read_versions=False)
                    if self.pipeline and encoded and all(job.mutations is not None for job in jobs):
                        # Pipelined: the log stream sends the batch now and followers write it
                        # while we do. Nobody is acknowledged before our own fsync, so a
                        # crash here loses only unacknowledged entries (design.md, pipelining).
                        self._remember(encoded, new_lsn - len(encoded) + 1)
                        self._appended.set(new_lsn)
                        published = True
                        await self._maybe_hold(new_lsn - len(encoded) + 1, new_lsn)
                    await loop.run_in_executor(self._writer, batch.write)
            except Exception as exc:  # the disk refused: nobody is acknowledged
                self._staged_membership = None
                why = f"write failed: {exc}"
                if published:
                    self._fail(exc)
                    why += ("; followers were sent it first, so it may still survive kv-0's restart: "
                            "read it back before retrying")
                elif self.failed is None and self.write_error is None:
                    self.write_error = str(exc)  # reopened before the next write
                if why != self._last_failure:  # once, not at every retry while the disk is full
                    log.error("commit failed: %s", exc)
                    self._last_failure = why
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(StorageError(why))
                continue
            self._last_failure = None
            if self._on_commit is not None:
                self._on_commit(count, time.perf_counter() - started)
            if self._staged_membership is not None:
                # In force once durable here (Raft: a server uses the newest configuration in its log).
                self.membership, self._staged_membership = self._staged_membership, None
            if encoded and not published:
                self._remember(encoded, new_lsn - len(encoded) + 1)
            if new_lsn != self._durable.value:
                self._advance(new_lsn)
            for job, result in zip(jobs, results):
                if not job.future.done():
                    job.future.set_result(result)

    async def _maybe_hold(self, first: int, last: int) -> None:
        """The test-only fault KV_TEST_HOLD_COMMIT: sent but never written, until the test kills us."""
        if self._hold_commit is not None and first <= self._hold_commit[0] <= last \
                and self._hold_commit[1] == self.lineage.number:
            log.warning("KV_TEST_HOLD_COMMIT: entries %d..%d were sent to followers and are never written", first,
                        last)
            await asyncio.Event().wait()

    async def _reopen(self) -> None:
        """Reopen LevelDB after a failed write, once the disk has room again (StorageError until then).

        In the committer, before the next write. Reads wait at the gate meanwhile. If LevelDB cannot
        be opened even so, the process must restart (``fatal``): its handle is closed by then.
        """
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._writer, self._probe_room)
        try:
            await self._quiesce()
            lsn = await loop.run_in_executor(self._writer, self._do_reopen)
        except StorageError:
            log.critical("%s", self.failed)
            self.fatal.set()  # and the gate stays shut: there is no database to read
            raise
        finally:
            if not self.fatal.is_set():
                self._swap_gate.set()
        log.warning("reopened the database after a failed write (%s): writes go on at lsn %d", self.write_error,
                    lsn)
        self.write_error = None
        if lsn != self._durable.value:  # the failed batch was written after all (its fsync failed)
            self._advance(lsn)
            self._appended.set(max(lsn, self._appended.value))
            self._tail, self._tail_first, self._tail_bytes = [], lsn + 1, 0

    def _probe_room(self) -> None:
        """StorageError unless the disk has room to reopen LevelDB (writer thread).

        Opening replays LevelDB's write-ahead log into a new table: as much room as the
        log files take, and a margin for the new log and manifest.
        """
        need = ROOM_MARGIN + sum(entry.stat().st_size for entry in os.scandir(self.path)
                                 if entry.name.endswith(".log"))
        probe = os.path.join(self.data_dir, ROOM_PROBE)
        block = b"\0" * (1024 * 1024)
        try:
            with open(probe, "wb", buffering=0) as out:
                for _ in range(0, need, len(block)):
                    out.write(block)
                os.fsync(out.fileno())
        except OSError as exc:
            raise StorageError(f"{self.write_error}; not reopening the database before {need // 2**20} MiB "
                               f"are free on its disk ({exc.strerror})") from None
        finally:
            _remove(probe)

    def _do_reopen(self) -> int:
        lineage = self.lineage
        self._db.close()
        try:
            self._db = plyvel.DB(self.path)
        except plyvel.Error as exc:
            self.failed = (f"the database could not be reopened after a failed write ({exc}); "
                           "this process exits so that it restarts")
            raise StorageError(self.failed) from None
        lsn = self._load_meta()
        if self.lineage != lineage:  # a lineage write whose fsync failed was written after all
            self.lineage_version += 1
        return lsn

    def _fail(self, exc: Exception) -> None:
        """A published batch was not written: its LSNs may be on followers, so none may be reused."""
        self.failed = (f"a write failed on this disk after followers were sent it ({exc}); this replica "
                       "takes no more writes: restart the pod (it then recovers what the followers hold)")
        log.critical("%s", self.failed)

    def _commit(self, jobs: list[_Job]) -> tuple[int, list[Any], list[bytes]]:
        """Build and write one batch (writer thread); the new LSN, each job's result, the encoded entries."""
        batch, lsn, results, encoded = self._build(jobs, read_versions=True)
        batch.write()
        return lsn, results, encoded

    def _build(self, jobs: list[_Job], read_versions: bool) -> tuple[Any, int, list[Any], list[bytes]]:
        """The WriteBatch for ``jobs`` (not written yet), with the new LSN, results and encoded entries.

        Without ``read_versions`` every key counts as absent: only right for
        jobs that :func:`_needs_read` says need no read.
        """
        lsn = self._durable.value
        epoch = self.lineage.number
        self._staged_membership = None
        overlay: dict[bytes, tuple[int, bytes] | None] = {}  # keys this batch wrote: (version, value), None: deleted

        def lookup(key: bytes, want_value: bool) -> tuple[int, bytes] | None:
            if key in overlay:
                return overlay[key]
            raw = self._db.get(DATA + key) if read_versions else None
            if raw is None:
                return None
            return _unpack_version(raw), unpack_record(raw).value if want_value else b""
        results: list[Any] = []
        encoded: list[bytes] = []
        batch = self._db.write_batch(sync=self.fsync)
        for job in jobs:
            if job.entries is not None:
                for entry in job.entries:
                    if entry.lsn <= lsn:
                        continue  # already applied (a retried fetch)
                    encoded.append(self._put_entry(batch, entry))
                    lsn = entry.lsn
                    if entry.op == CONFIG:
                        self._staged_membership = Configuration.loads(entry.value or b"", entry.lsn)
                results.append(None)
                continue
            job_results: list[Any] = []
            if job.mutations and not epoch:
                raise StorageError("no epoch begun: only a primary that finished its start-up writes")
            for mutation in job.mutations or ():
                if mutation.op == TXN:
                    lsn, result = self._put_changes(batch, mutation, lsn, epoch, lookup, overlay, encoded)
                    job_results.append(result)
                    continue
                current = lookup(mutation.key, False)
                failure = _check(mutation, None if current is None else current[0])
                if failure is not None:
                    job_results.append(failure)
                    continue
                if mutation.expires:
                    lsn, _ = self._put_changes(batch, mutation, lsn, epoch, lookup, overlay, encoded)
                    job_results.append(lsn)
                    continue
                lsn += 1
                encoded.append(self._put_entry(batch, LogEntry(lsn, epoch, mutation.op, mutation.key,
                                                               mutation.value)))
                if mutation.op == CONFIG:
                    self._staged_membership = Configuration.loads(mutation.value or b"", lsn)
                    job_results.append(lsn)
                    continue
                overlay[mutation.key] = (lsn, mutation.value or b"") if mutation.op == PUT else None
                job_results.append(lsn)
            results.append(job_results)
        if lsn != self._durable.value:
            batch.put(META_LSN, _U64.pack(lsn))
            committed = max(job.committed for job in jobs)
            if committed > self.committed_on_disk:
                batch.put(META_COMMITTED, _U64.pack(committed))
                self.committed_on_disk = committed
        return batch, lsn, results, encoded

    def _put_changes(self, batch: Any, mutation: Mutation, lsn: int, epoch: int,
                     lookup: Callable[[bytes, bool], tuple[int, bytes] | None],
                     overlay: dict[bytes, tuple[int, bytes] | None],
                     encoded: list[bytes]) -> tuple[int, TxnResult]:
        """A transaction (its comparisons decide the branch) or a PUT with a ttl, as one TXN entry.

        Returns the batch's new last LSN and what the transaction did (a branch that changes nothing
        writes nothing).
        """
        if mutation.txn is not None:
            succeeded, chosen = mutation.txn.choose(lookup)
            # A delete of an absent key changes nothing: left out, so no watcher sees it.
            changes = tuple(c for c in chosen if c.value is not None or lookup(c.key, False) is not None)
        else:
            succeeded, changes = True, (Change(mutation.key, mutation.value or b"", mutation.expires),)
        if not changes:
            return lsn, TxnResult(succeeded, None, ())
        lsn += 1
        encoded.append(self._put_entry(batch, LogEntry(lsn, epoch, TXN, b"", encode_changes(changes))))
        for change in changes:
            overlay[change.key] = None if change.value is None else (lsn, change.value)
        return lsn, TxnResult(succeeded, lsn, tuple(changes))

    @staticmethod
    def _put_entry(batch: Any, entry: LogEntry) -> bytes:
        if entry.op == PUT:
            batch.put(DATA + entry.key, _pack_record(entry.lsn, entry.value or b""))
        elif entry.op == TXN:
            for change in decode_changes(entry.value or b""):
                if change.value is None:
                    batch.delete(DATA + change.key)
                else:
                    batch.put(DATA + change.key, _pack_record(entry.lsn, change.value, change.expires))
        elif entry.op == CONFIG:
            # ValueError on a malformed one: the stream that brought it is dropped, nothing written.
            batch.put(META_CONFIG, Configuration.loads(entry.value or b"", entry.lsn).dumps())
        else:
            batch.delete(DATA + entry.key)
        raw = entry.encode()
        batch.put(LOG + _U64.pack(entry.lsn), raw)
        return raw

    # ------------------------------------------------------------- truncation
    async def truncate_log(self) -> int:
        """Drop log entries beyond the retention bound; return how many."""
        return await asyncio.get_running_loop().run_in_executor(self._writer, self._truncate)

    def _truncate(self) -> int:
        keep_from = self._durable.value - self.log_retention + 1
        if keep_from <= self._log_start:
            return 0
        dropped = 0
        # Chunks keep each batch small; the start marker moves first so a reader
        # never sees a gap it was not told about.
        while self._log_start < keep_from:
            end = min(keep_from, self._log_start + 10_000)
            with self._db.write_batch() as batch:
                batch.put(META_LOG_START, _U64.pack(end))
                for lsn in range(self._log_start, end):
                    batch.delete(LOG + _U64.pack(lsn))
            dropped += end - self._log_start
            self._log_start = end
        return dropped

    async def _truncate_loop(self) -> None:
        while True:
            await asyncio.sleep(5)
            try:
                dropped = await self.truncate_log()
            except Exception as exc:  # keep serving; retry next round
                log.warning("log truncation failed: %s", exc)
                if isinstance(exc, plyvel.Error) and self.write_error is None:
                    self.write_error = f"log truncation failed: {exc}"  # reopened before the next write
                continue
            if dropped:
                log.debug("truncated %d log entries", dropped)


def _bounded(raws: list[bytes], max_bytes: int) -> list[bytes]:
    """The first of ``raws`` that fit in ``max_bytes`` with their framing (always at least one)."""
    size = 0
    for i, raw in enumerate(raws):
        size += ENTRY_FRAMING + len(raw)
        if i and size > max_bytes:
            return raws[:i]
    return raws


def _needs_read(job: _Job) -> bool:
    """Whether the job's outcome depends on a key's current version (conditions, deletes)."""
    return job.mutations is not None and any(
        m.op != PUT or m.if_match is not None or m.if_none_match for m in job.mutations)


def _check(mutation: Mutation, current: int | None) -> Exception | None:
    if mutation.if_none_match and current is not None:
        return PreconditionFailed(current)
    if mutation.if_match is not None:
        if current is None:
            return PreconditionFailed(None)
        if mutation.if_match != "*" and current not in mutation.if_match:
            return PreconditionFailed(current)
    if mutation.op == DELETE and current is None:
        return NotFound()
    return None


def _read_lineage(db: plyvel.DB, path: str) -> Lineage:
    raw = db.get(META_LINEAGE)
    if raw is None:
        return Lineage()
    try:
        return Lineage.loads(raw)
    except LineageError as exc:
        raise StorageError(f"{path}: the stored lineage is corrupt ({exc})") from None


def _parse_membership(raw: bytes | None, where: str) -> Configuration | None:
    """The m/config record, or None when there is none; StorageError when it is unreadable."""
    if raw is None:
        return None
    try:
        return Configuration.loads(raw)
    except ValueError as exc:
        raise StorageError(f"{where}: the recorded configuration is unreadable ({exc})") from None


def _read_promise(db: plyvel.DB, path: str) -> Promise:
    raw = db.get(META_PROMISE)
    if raw is None:
        return Promise()
    try:
        return Promise.from_json(json.loads(raw))
    except (ValueError, UnicodeDecodeError) as exc:
        raise StorageError(f"{path}: the stored epoch promise is corrupt ({exc})") from None


def _check_format(db: plyvel.DB, path: str) -> None:
    """Stamp a new database with this format; refuse one written in another."""
    stamped = db.get(META_FORMAT)
    if stamped == FORMAT:
        return
    if stamped is not None:
        raise StorageError(f"{path} has storage format {stamped.decode(errors='replace')!r}; "
                           f"this kvstore reads format {FORMAT.decode()}")
    if db.get(META_OLD_HISTORY) is not None or db.get(META_LSN) is not None:
        raise StorageError(f"{path} was written by a kvstore without log epochs (format 1); "
                           "move it aside and let this replica copy its data from its peers")
    db.put(META_FORMAT, FORMAT, sync=True)


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
