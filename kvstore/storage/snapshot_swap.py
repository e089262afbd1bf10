"""The snapshot swap: install a snapshot as a new LevelDB and swap to it, with no read inside the old one.

A swap closes the live database, so every read that enters LevelDB is counted
and passes a gate first: :meth:`SnapshotSwap.quiesce` shuts the gate and waits
until the count is zero; the swap itself runs in the committer (no batch is
being built or written meanwhile), then the gate opens. A reopen after a
failed write (commit_queue.py) shuts the same gate. Point reads that arrive in
the same loop iteration share one trip to a reader thread. :class:`Snapshot`
is the other direction: a point-in-time view read in chunks for a transfer.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import shutil
import uuid
from typing import Any, AsyncIterator, Awaitable, Callable

import plyvel

from kvstore.lineage import Lineage
from kvstore.membership import Configuration
from kvstore.storage.database import Database, fsync_tree, remove_stale_dbs, set_active_db
from kvstore.storage.layout import (DATA, ENTRY_FRAMING, FORMAT, META_CONFIG, META_FORMAT, META_LINEAGE,
                                    META_LOG_START, META_LSN, META_PROMISE, Record, StorageError, _U64,
                                    _parse_membership, _unpack_version, unpack_record)


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



class SnapshotSwap:
    """The swap gate, the count of reads inside LevelDB, and snapshot installation."""

    def __init__(self, database: Database) -> None:
        self._database = database
        # Reads are counted so a snapshot install can swap the database only
        # when none is running inside LevelDB (closing under a reader crashes).
        self._reads = 0
        self._reads_done = asyncio.Event()
        # Point reads that arrive in the same loop iteration share one trip to a
        # reader thread: the hop, not LevelDB, is most of a GET's cost.
        self._pending_gets: list[tuple[bytes, asyncio.Future[bytes | None]]] = []
        self._swap_gate = asyncio.Event()
        self._swap_gate.set()

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
            task = asyncio.ensure_future(self.read(self._multi_get, [key for key, _ in batch]))
            task.add_done_callback(lambda t: self._deliver_gets(batch, t))
            return
        loop = asyncio.get_running_loop()
        self._reads += 1
        try:
            work = self._database.readers.submit(self._multi_get, [key for key, _ in batch])
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
        get = self._database.db.get
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

    async def read(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run blocking LevelDB work on a reader thread, counted so a swap waits for it."""
        await self._swap_gate.wait()
        self._reads += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._database.readers, fn, *args)
        finally:
            self._reads -= 1
            if self._reads == 0:
                self._reads_done.set()

    async def install(self, lineage: Lineage, lsn: int, chunks: "AsyncIterator[list[tuple[bytes, bytes]]]",
                      membership: Configuration | None, switch: Callable[[str], Awaitable[None]]) -> int:
        """Replace this replica's data with a snapshot, atomically.

        The records go into a new LevelDB next to the live one; only when the
        last chunk is in and synced does the ACTIVE pointer move to it. An
        interrupted transfer leaves the old database in place and usable.
        Every file of the new database and its directory are fsynced before
        the switch, so after a power cut the recorded LSN never claims records
        the disk lost. ``switch`` runs :meth:`do_swap` in the committer.
        Returns the number of records installed.
        """
        loop = asyncio.get_running_loop()
        name = f"db-{uuid.uuid4().hex[:12]}"
        path = os.path.join(self._database.data_dir, name)
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
                    batch.put(META_PROMISE, json.dumps(self._database.promise.to_json()).encode())
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
        await self._swap(name, switch)
        return count

    async def _swap(self, name: str, switch: Callable[[str], Awaitable[None]]) -> None:
        """Point the data dir at database ``name`` and reopen, with no read or write running."""
        try:
            await self.quiesce()
            await switch(name)
        finally:
            self._swap_gate.set()

    async def quiesce(self) -> None:
        """Hold new reads at the gate and wait until none runs inside LevelDB (closing under one crashes)."""
        self._swap_gate.clear()
        while self._reads:
            self._reads_done.clear()
            await self._reads_done.wait()

    def open_gate(self) -> None:
        """Let reads into LevelDB again (after a reopen)."""
        self._swap_gate.set()

    def do_swap(self, name: str) -> int:
        """Close the live database, point ACTIVE at ``name`` and open it; its LSN (committer's thread)."""
        database = self._database
        old = os.path.basename(database.path)
        database.db.close()
        set_active_db(database.data_dir, name)
        database.path = os.path.join(database.data_dir, name)
        database.db = plyvel.DB(database.path)
        remove_stale_dbs(database.data_dir, name, [old])
        database.lineage_version += 1
        return database.load_meta()
