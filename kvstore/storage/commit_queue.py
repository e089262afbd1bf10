"""The commit queue: every write of a replica, in LSN order, through one committer (group commit).

Every mutation that arrives while a batch is being fsynced joins the next
batch, so concurrent writers share one fsync. The committer's disk work runs
on one dedicated thread, never on the event loop, and nobody is acknowledged
before the batch holding their write is synced. On the primary a batch of
plain PUTs is published to the log stream (``appended``) before its fsync
(pipelining); if such a batch then fails to be written, its LSNs may be on
followers, so the queue is poisoned (``failed``): no more writes until a
restart. Any other failed write makes the committer reopen LevelDB, once the
disk has room again, before the next one. A snapshot swap and a reopen run in
the committer too, so no batch is being built or written meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass
from typing import Any, Callable

import plyvel

from kvstore.membership import Configuration
from kvstore.storage.commit_hook import CommitHook
from kvstore.storage.database import ROOM_PROBE, Database, _remove
from kvstore.storage.layout import (CONFIG, DATA, DELETE, LOG, META_COMMITTED, META_CONFIG, META_LSN, PUT, TXN,
                                    LogEntry, Mutation, NotFound, PreconditionFailed, StorageError, _U64,
                                    _pack_record, _unpack_version, unpack_record)
from kvstore.storage.retained_log import RetainedLog
from kvstore.storage.snapshot_swap import SnapshotSwap
from kvstore.txn import Change, Txn, TxnResult, decode_changes, encode_changes

log = logging.getLogger("kvstore.storage")

MAX_BATCH = 1024  # mutations per group commit
ROOM_MARGIN = 4 * 1024 * 1024  # besides LevelDB's log: its new log, manifest and table overhead


@dataclass
class _Job:
    mutations: list[Mutation] | None
    entries: list[LogEntry] | None
    future: asyncio.Future[Any]
    swap_to: str | None = None
    reopen: bool = False  # reopen LevelDB if a write failed (and nothing else)
    committed: int = 0  # replicated entries: the LSN a majority held as the upstream last said


class CommitQueue:
    """The queue of writes and the committer task that builds, writes and acknowledges their batches."""

    def __init__(self, database: Database, retained: RetainedLog, swap: SnapshotSwap,
                 on_commit: Callable[[int, float], None] | None = None, hook: CommitHook | None = None) -> None:
        self._database = database
        self._log = retained
        self._swap = swap
        self._on_commit = on_commit
        self._hook = hook or CommitHook()
        # The primary sets this: a batch of client writes is published to the log
        # stream (``appended``) before its fsync, so followers write it meanwhile.
        self.pipeline = False
        self.failed: str | None = None  # set when a published batch could not be written: no more writes
        self.fatal = asyncio.Event()  # LevelDB could not be reopened: the process must restart
        self._last_failure: str | None = None  # the last failed commit's message (logged once)
        self._staged_membership: Configuration | None = None  # in the batch being written
        self._queue: asyncio.Queue[_Job] | None = None
        self.closed = False

    def start(self) -> "asyncio.Task[None]":
        """Start the committer; its task (the store cancels it when it closes)."""
        self._queue = asyncio.Queue()
        return asyncio.create_task(self._commit_loop(), name="kv-committer")

    def fail_queued(self) -> None:
        """Fail every job still queued (the committer was stopped: the store is closing)."""
        if self._queue is not None:
            while not self._queue.empty():
                job = self._queue.get_nowait()
                if not job.future.done():
                    job.future.set_exception(StorageError("replica is shutting down"))

    async def put_meta(self, key: bytes, raw: bytes) -> None:
        """One durable metadata write, on the writer thread; StorageError if the disk refuses it."""
        if self._database.write_error is not None:
            await self._through_committer(_Job(None, None, asyncio.get_running_loop().create_future(), reopen=True))
        try:
            await asyncio.get_running_loop().run_in_executor(self._database.writer,
                                                             lambda: self._database.db.put(key, raw, sync=True))
        except plyvel.Error as exc:
            self._database.write_error = str(exc)
            raise StorageError(f"write failed: {exc}") from None

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
        if self._queue is None or self.closed:
            raise StorageError("replica is shutting down")
        if self.failed is not None:
            raise StorageError(self.failed)
        self._queue.put_nowait(job)
        return job.future

    async def _through_committer(self, job: _Job) -> Any:
        """Run a swap or a reopen in the committer, so no batch is being built or written meanwhile."""
        if self._queue is None or self.closed:
            raise StorageError("replica is shutting down")
        self._queue.put_nowait(job)
        return await job.future

    async def drain(self) -> None:
        """Wait until every write queued before this call is committed or failed (it goes through the committer
        after them, and reopens LevelDB if one failed); StorageError if that reopen fails."""
        await self._through_committer(_Job(None, None, asyncio.get_running_loop().create_future(), reopen=True))

    async def switch_to(self, name: str) -> None:
        """Swap to database ``name`` in the committer (see :meth:`SnapshotSwap.do_swap`); reads are held by then."""
        await self._through_committer(_Job(None, None, asyncio.get_running_loop().create_future(), swap_to=name))

    async def _commit_loop(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        carried: _Job | None = None
        while True:
            first, carried = carried or await self._queue.get(), None
            if first.reopen:
                try:
                    if self._database.write_error is not None:
                        await self._reopen()
                except Exception as exc:
                    first.future.set_exception(exc if isinstance(exc, StorageError) else StorageError(str(exc)))
                else:
                    first.future.set_result(None)
                continue
            if first.swap_to is not None:
                try:
                    new_lsn = await loop.run_in_executor(self._database.writer, self._swap.do_swap, first.swap_to)
                except Exception as exc:
                    first.future.set_exception(StorageError(f"database swap failed: {exc}"))
                    continue
                self._database.advance(new_lsn)
                self._database.appended.set(new_lsn)  # a snapshot may put a follower back
                self._log.forget(new_lsn + 1)
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
                if self._database.write_error is not None:
                    await self._reopen()
                if any(_needs_read(job) for job in jobs):
                    new_lsn, results, encoded = await loop.run_in_executor(self._database.writer, self._commit, jobs)
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
                        self._log.remember(encoded, new_lsn - len(encoded) + 1)
                        self._database.appended.set(new_lsn)
                        published = True
                        await self._hook.published(new_lsn - len(encoded) + 1, new_lsn, self._database.lineage.number)
                    await loop.run_in_executor(self._database.writer, batch.write)
            except Exception as exc:  # the disk refused: nobody is acknowledged
                self._staged_membership = None
                why = f"write failed: {exc}"
                if published:
                    self._fail(exc)
                    why += ("; followers were sent it first, so it may still survive kv-0's restart: "
                            "read it back before retrying")
                elif self.failed is None and self._database.write_error is None:
                    self._database.write_error = str(exc)  # reopened before the next write
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
                self._database.membership, self._staged_membership = self._staged_membership, None
            if encoded and not published:
                self._log.remember(encoded, new_lsn - len(encoded) + 1)
            if new_lsn != self._database.durable.value:
                self._database.advance(new_lsn)
            for job, result in zip(jobs, results):
                if not job.future.done():
                    job.future.set_result(result)

    async def _reopen(self) -> None:
        """Reopen LevelDB after a failed write, once the disk has room again (StorageError until then).

        In the committer, before the next write. Reads wait at the gate meanwhile. If LevelDB cannot
        be opened even so, the process must restart (``fatal``): its handle is closed by then.
        """
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._database.writer, self._probe_room)
        try:
            await self._swap.quiesce()
            lsn = await loop.run_in_executor(self._database.writer, self._do_reopen)
        except StorageError:
            log.critical("%s", self.failed)
            self.fatal.set()  # and the gate stays shut: there is no database to read
            raise
        finally:
            if not self.fatal.is_set():
                self._swap.open_gate()
        log.warning("reopened the database after a failed write (%s): writes go on at lsn %d",
                    self._database.write_error, lsn)
        self._database.write_error = None
        if lsn != self._database.durable.value:  # the failed batch was written after all (its fsync failed)
            self._database.advance(lsn)
            self._database.appended.set(max(lsn, self._database.appended.value))
            self._log.forget(lsn + 1)

    def _probe_room(self) -> None:
        """StorageError unless the disk has room to reopen LevelDB (writer thread).

        Opening replays LevelDB's write-ahead log into a new table: as much room as the
        log files take, and a margin for the new log and manifest.
        """
        need = ROOM_MARGIN + sum(entry.stat().st_size for entry in os.scandir(self._database.path)
                                 if entry.name.endswith(".log"))
        probe = os.path.join(self._database.data_dir, ROOM_PROBE)
        block = b"\0" * (1024 * 1024)
        try:
            with open(probe, "wb", buffering=0) as out:
                for _ in range(0, need, len(block)):
                    out.write(block)
                os.fsync(out.fileno())
        except OSError as exc:
            raise StorageError(f"{self._database.write_error}; not reopening the database before "
                               f"{need // 2**20} MiB are free on its disk ({exc.strerror})") from None
        finally:
            _remove(probe)

    def _do_reopen(self) -> int:
        lineage = self._database.lineage
        self._database.db.close()
        try:
            self._database.db = plyvel.DB(self._database.path)
        except plyvel.Error as exc:
            self.failed = (f"the database could not be reopened after a failed write ({exc}); "
                           "this process exits so that it restarts")
            raise StorageError(self.failed) from None
        lsn = self._database.load_meta()
        if self._database.lineage != lineage:  # a lineage write whose fsync failed was written after all
            self._database.lineage_version += 1
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
        lsn = self._database.durable.value
        epoch = self._database.lineage.number
        self._staged_membership = None
        overlay: dict[bytes, tuple[int, bytes] | None] = {}  # keys this batch wrote: (version, value), None: deleted

        def lookup(key: bytes, want_value: bool) -> tuple[int, bytes] | None:
            if key in overlay:
                return overlay[key]
            raw = self._database.db.get(DATA + key) if read_versions else None
            if raw is None:
                return None
            return _unpack_version(raw), unpack_record(raw).value if want_value else b""
        results: list[Any] = []
        encoded: list[bytes] = []
        batch = self._database.db.write_batch(sync=self._database.fsync)
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
        if lsn != self._database.durable.value:
            batch.put(META_LSN, _U64.pack(lsn))
            committed = max(job.committed for job in jobs)
            if committed > self._database.committed_on_disk:
                batch.put(META_COMMITTED, _U64.pack(committed))
                self._database.committed_on_disk = committed
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

