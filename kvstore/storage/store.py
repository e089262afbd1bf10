"""The store: one object the rest of kvstore uses, over the parts of the storage package that do the work."""

from __future__ import annotations

import asyncio
import json
from typing import Any, AsyncIterator, Callable

from kvstore.aio import cancel_and_wait
from kvstore.lineage import Lineage, Promise
from kvstore.membership import Configuration
from kvstore.storage.commit_hook import CommitHook
from kvstore.storage.commit_queue import CommitQueue
from kvstore.storage.database import Database
from kvstore.storage.layout import DATA, META_LINEAGE, META_PROMISE, LogEntry, Mutation, Record, _unpack_version
from kvstore.storage.retained_log import RetainedLog
from kvstore.storage.snapshot_swap import Snapshot, SnapshotSwap
from kvstore.txn import Txn, TxnResult


class Store:
    """A replica's LevelDB with group commit, LSNs and a retained log.

    The work is done by the parts it holds: :class:`CommitQueue` (every write,
    in order, acknowledged after its fsync), :class:`RetainedLog` (the entries
    followers fetch, and their truncation), :class:`SnapshotSwap` (reads
    counted behind a gate, snapshot installation); :class:`Database` is the
    handle and metadata they share.
    """

    def __init__(self, database: Database, log_retention: int = 100_000,
                 on_commit: Callable[[int, float], None] | None = None,
                 commit_hook: CommitHook | None = None) -> None:
        self._database = database
        self._swap = SnapshotSwap(database)
        self._log = RetainedLog(database, self._swap, log_retention)
        self._commits = CommitQueue(database, self._log, self._swap, on_commit, commit_hook)
        self._committer: asyncio.Task[None] | None = None
        self._truncator: asyncio.Task[None] | None = None

    @classmethod
    def open(cls, data_dir: str, fsync: bool = True, **kwargs: Any) -> "Store":
        """Open (creating if needed) the replica's database under ``data_dir``.

        Raises StorageError with a one-line reason: unwritable directory, or
        the LevelDB lock held by another replica. ``kwargs`` go to the store.
        """
        return cls(Database.open(data_dir, fsync), **kwargs)

    async def start(self) -> None:
        """Start the committer and the background log truncation."""
        self._committer = self._commits.start()
        self._truncator = asyncio.create_task(self._log.truncate_loop(), name="kv-truncator")

    async def close(self) -> None:
        """Finish queued writes, stop background work and close LevelDB."""
        if self._commits.closed:
            return
        self._commits.closed = True
        await cancel_and_wait(self._truncator, self._committer)
        self._commits.fail_queued()
        self._database.close()

    # --------------------------------------------------------------- positions
    @property
    def lsn(self) -> int:
        """The last LSN durable here and visible to reads (written on the primary, applied on a secondary)."""
        return self._database.durable.value

    @property
    def appended(self) -> int:
        """The last LSN in the log stream: ``lsn``, or beyond it while a pipelined batch is being written."""
        return self._database.appended.value

    @property
    def log_start(self) -> int:
        """The first LSN still in the retained log."""
        return self._database.log_start

    @property
    def committed_on_disk(self) -> int:
        """A follower: the committed LSN its upstream last announced, as recorded with its entries."""
        return self._database.committed_on_disk

    @property
    def history_id(self) -> str:
        """The history in effect ("" while this replica never held data)."""
        return self.lineage.history

    @property
    def epoch(self) -> int:
        """The newest epoch this replica's log knows (0: none)."""
        return self.lineage.number

    @property
    def lineage(self) -> Lineage:
        """The epochs and history ids of this replica's log (see lineage.py)."""
        return self._database.lineage

    @property
    def lineage_version(self) -> int:
        """Bumped on every change of the lineage, so log streams notice."""
        return self._database.lineage_version

    @property
    def promise(self) -> Promise:
        """The newest epoch this replica promised to follow."""
        return self._database.promise

    @property
    def membership(self) -> Configuration | None:
        """The newest configuration in force here (None: none recorded, KV_REPLICAS is the initial one)."""
        return self._database.membership

    @property
    def path(self) -> str:
        """The live LevelDB directory (a snapshot swap changes it)."""
        return self._database.path

    @property
    def pipeline(self) -> bool:
        """Whether a batch of client writes is published to the log stream before its fsync (the primary)."""
        return self._commits.pipeline

    @pipeline.setter
    def pipeline(self, on: bool) -> None:
        self._commits.pipeline = on

    @property
    def failed(self) -> str | None:
        """Why this replica takes no more writes (a published batch was not written), or None."""
        return self._commits.failed

    @property
    def write_error(self) -> str | None:
        """Why the last write failed, until LevelDB is reopened (before the next write)."""
        return self._database.write_error

    @property
    def fatal(self) -> asyncio.Event:
        """Set when LevelDB could not be reopened: the process must restart."""
        return self._commits.fatal

    async def set_lineage(self, lineage: Lineage) -> None:
        """Persist a new lineage durably (a primary's new epoch, or a follower adopting its upstream's)."""
        raw = lineage.dumps()
        await self._commits.put_meta(META_LINEAGE, raw)
        self._database.lineage = lineage
        self._database.lineage_version += 1

    async def set_promise(self, promise: Promise) -> None:
        """Persist durably the newest epoch this follower promised to (it must survive a restart)."""
        raw = json.dumps(promise.to_json()).encode()
        await self._commits.put_meta(META_PROMISE, raw)
        self._database.promise = promise

    async def wait_for_lsn(self, lsn: int, timeout: float, appended: bool = False) -> bool:
        """Wait until this replica has reached ``lsn`` (durable; or only ``appended``); False on timeout."""
        return await (self._database.appended if appended else self._database.durable).wait_for(lsn, timeout)

    # ------------------------------------------------------------------ reads
    async def get(self, key: bytes) -> Record | None:
        """The key's value and version, or None."""
        return await self._swap.get(key)

    async def scan(self, prefix: bytes, start_after: bytes | None, limit: int) -> list[tuple[bytes, int]]:
        """Up to ``limit`` (key, version) pairs with ``prefix``, in key order."""
        return await self._swap.read(self._scan, prefix, start_after, limit)

    def _scan(self, prefix: bytes, start_after: bytes | None, limit: int) -> list[tuple[bytes, int]]:
        out: list[tuple[bytes, int]] = []
        start = DATA + start_after if start_after is not None and start_after >= prefix else DATA + prefix
        with self._database.db.iterator(start=start, include_start=start_after is None
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
        """Encoded log entries with LSN > ``after``, bounded (see :meth:`RetainedLog.log_after`)."""
        return await self._log.log_after(after, max_entries, max_bytes)

    async def truncate_log(self) -> int:
        """Drop log entries beyond the retention bound; return how many."""
        return await self._log.truncate_log()

    def open_snapshot(self) -> Snapshot:
        """A consistent point-in-time view (data plus its LSN) for a snapshot transfer."""
        return Snapshot(self._database.db.snapshot(), self.lineage)

    async def run_blocking(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run a blocking function that reads this database (snapshot serving) off the loop."""
        return await self._swap.read(fn, *args)

    async def install_snapshot(self, lineage: Lineage, lsn: int,
                               chunks: AsyncIterator[list[tuple[bytes, bytes]]],
                               membership: Configuration | None = None) -> int:
        """Replace this replica's data with a snapshot, atomically (see :meth:`SnapshotSwap.install`)."""
        return await self._swap.install(lineage, lsn, chunks, membership, self._commits.switch_to)

    # ----------------------------------------------------------------- writes
    async def write(self, mutation: Mutation) -> int:
        """Commit one mutation durably and return its LSN (the key's new version).

        Raises PreconditionFailed, NotFound (delete of an absent key) or
        StorageError.
        """
        return await self._commits.write(mutation)

    async def transact(self, txn: Txn) -> TxnResult:
        """Evaluate a transaction's comparisons and commit its chosen branch as one entry (see
        :meth:`CommitQueue.transact`); raises StorageError."""
        return await self._commits.transact(txn)

    async def drain(self) -> None:
        """Wait until every write queued before now is committed or failed (see :meth:`CommitQueue.drain`)."""
        await self._commits.drain()

    def apply_nowait(self, entries: list[LogEntry], committed: int = 0) -> "asyncio.Future[Any]":
        """Queue replicated entries for the next group commit; the future resolves once durable.

        ``committed`` (what the upstream said a majority holds) is kept with
        them (see :meth:`CommitQueue.apply_nowait`).
        """
        return self._commits.apply_nowait(entries, committed)
