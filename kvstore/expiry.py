"""The primary's expirer: a key written with a ttl is deleted through the log once its time is up.

A PUT with ``ttl=SECONDS`` (or a transaction's put with ``ttl``) is a TXN
entry whose change carries the key's absolute expiry: the primary's wall
clock at the write plus the ttl, in ms. Every replica stores it with the key (and
snapshots and backups carry it), so the deadline never depends on which
process counts it or when it started. The primary alone decides that the
time is up and writes an ordinary DELETE, conditional on the version that
expired, so every replica and every watcher sees the same history and a key
written again meanwhile is left alone.

:meth:`Expirer.start` scans every stored expiry (a consistent snapshot of
the data at one LSN), then follows the log from that LSN for new ones. The
coordinator starts it when this pod's epoch began and it serves, and stops
it when the pod leaves the role (fenced or handed over): so a kv-0 that
restarted, or a pod that became primary after a failover, switchover or
failback, expires exactly what its data holds. Until the delete is written
(normally within milliseconds of the deadline) a GET on the primary answers
404; conditional writes and a transaction's comparisons still see the key.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
from typing import Callable

from kvstore.aio import cancel_and_wait
from kvstore.storage import (
    DELETE, LogEntry, LogTruncated, Mutation, NotFound, PreconditionFailed, StorageError, Store, changes_of,
    entry_lsn, is_txn_entry, unpack_record,
)

log = logging.getLogger("kvstore.expiry")

MAX_SLEEP = 1.0  # seconds between looks when nothing is due sooner
RETRY_SLEEP = 0.2  # seconds before a key that is due is tried again (the primary could not write it)
DELETES_AT_ONCE = 256  # expired keys deleted together (they share group commits)
SCAN_RECORDS = 2000  # records read per step of the start-up scan
SCAN_BYTES = 1024 * 1024
FOLLOW_ENTRIES = 2000
FOLLOW_BYTES = 4 * 1024 * 1024


class Expirer:
    """Deletes expired keys on the primary; ``may_write`` says whether this process may write now."""

    def __init__(self, store: Store, may_write: Callable[[], bool],
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.may_write = may_write
        self.clock = clock
        self.expired = 0  # deletes written by this process
        self._due: list[tuple[int, bytes, int]] = []  # (expiry ms, key, version that expires), a heap
        self._position = 0  # the log is read up to here
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Scan the stored expiries and start deleting what is due (idempotent)."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="expirer")

    async def stop(self) -> None:
        """Stop; nothing is lost, the next start scans again."""
        task, self._task = self._task, None
        await cancel_and_wait(task)

    def pending(self) -> int:
        """Expiries known and not yet handled (some may be of keys written again since)."""
        return len(self._due)

    async def _run(self) -> None:
        while True:
            try:
                await self._scan()
                await self._follow()
            except asyncio.CancelledError:
                raise
            except LogTruncated:
                log.info("the expirer fell behind the retained log: scanning the stored expiries again")
            except Exception as exc:  # a closing store, a disk error: look again shortly
                log.warning("expirer: %s: %s; scanning again in %.0fs", type(exc).__name__, exc, MAX_SLEEP)
                await asyncio.sleep(MAX_SLEEP)

    async def _scan(self) -> None:
        """Every key that has an expiry, from one consistent view of the data; the log is followed from its LSN."""
        store = self.store
        self._lineage = store.lineage_version
        snap = await store.run_blocking(store.open_snapshot)
        due: list[tuple[int, bytes, int]] = []
        try:
            while chunk := await store.run_blocking(snap.next_chunk, SCAN_RECORDS, SCAN_BYTES):
                for key, raw in chunk:
                    record = unpack_record(raw)
                    if record.expires:
                        due.append((record.expires, key, record.version))
            self._position = snap.lsn
        finally:
            await store.run_blocking(snap.close)
        heapq.heapify(due)
        self._due = due
        if due:
            log.info("expirer: %d key(s) with a ttl at lsn %d; the first expires in %.1fs", len(due),
                     self._position, max(0.0, due[0][0] / 1000 - self.clock()))

    async def _follow(self) -> None:
        """Note the expiries the log brings, delete what is due; return when the data was replaced (rescan)."""
        store = self.store
        while store.lineage_version == self._lineage:
            while store.lsn > self._position:
                raws = await store.log_after(self._position, FOLLOW_ENTRIES, FOLLOW_BYTES)
                if not raws:
                    break
                for raw in raws:
                    if is_txn_entry(raw):  # only these carry an expiry; others are not decoded
                        entry = LogEntry.decode(raw)
                        for change in changes_of(entry):
                            if change.expires:
                                heapq.heappush(self._due, (change.expires, change.key, entry.lsn))
                    self._position = entry_lsn(raw)
            if not await self._expire_due():
                wait = RETRY_SLEEP
            elif self._due:  # the next deadline (at once: more were due than one round deletes)
                wait = min(MAX_SLEEP, max(0.0, self._due[0][0] / 1000 - self.clock()))
            else:
                wait = MAX_SLEEP
            await store.wait_for_lsn(self._position + 1, max(wait, 0.005))

    async def _expire_due(self) -> bool:
        """Delete the keys that are due (a bounded number); False when some could not be and wait."""
        now = self.clock() * 1000
        if not self._due or self._due[0][0] > now:
            return True
        if not self.may_write():
            return False
        due = []
        while self._due and self._due[0][0] <= now and len(due) < DELETES_AT_ONCE:
            due.append(heapq.heappop(self._due))
        retry = [item for item, done in zip(due, await asyncio.gather(*(self._expire(*item) for item in due)))
                 if not done]
        for item in retry:
            heapq.heappush(self._due, item)
        return not retry

    async def _expire(self, expires: int, key: bytes, version: int) -> bool:
        """Delete ``key`` if it still holds the version that expired; False when it must be tried again."""
        record = await self.store.get(key)
        if record is None or record.version != version or record.expires != expires:
            return True  # deleted or written again since: that write decides
        if not self.may_write():  # the role changed during the read (a switchover began): later
            return False
        try:
            await self.store.write(Mutation(DELETE, key, if_match=(version,)))
        except (PreconditionFailed, NotFound):
            return True  # written or deleted meanwhile
        except StorageError as exc:
            log.warning("expirer: the delete of an expired key was refused (%s); retrying", exc)
            return False
        self.expired += 1
        return True
