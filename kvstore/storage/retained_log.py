"""The retained log: the entries after an LSN, from an in-memory tail or from disk, and their truncation.

Every committed batch is remembered in a bounded in-memory tail (encoded), so
followers that keep up are served without a LevelDB read or a thread; older
entries come from the ``l/`` keys on disk, read through the swap gate. A
background task drops entries beyond the retention bound, moving the first
retained LSN before deleting, so a reader never meets a gap it was not told
about (LogTruncated).
"""

from __future__ import annotations

import asyncio
import logging

import plyvel

from kvstore.storage.database import Database
from kvstore.storage.layout import ENTRY_FRAMING, LOG, META_LOG_START, LogTruncated, _U64
from kvstore.storage.snapshot_swap import SnapshotSwap

log = logging.getLogger("kvstore.storage")

# The newest log entries stay in memory (encoded) so followers that keep up
# are served without a LevelDB read or a thread.
TAIL_ENTRIES = 20_000
TAIL_BYTES = 16 * 1024 * 1024


class RetainedLog:
    """The log entries a replica still serves: an in-memory tail over the ``l/`` keys on disk."""

    def __init__(self, database: Database, swap: SnapshotSwap, log_retention: int = 100_000) -> None:
        self._database = database
        self._swap = swap
        self.log_retention = log_retention
        self._tail: list[bytes] = []  # encoded entries _tail_first, _tail_first + 1, ...
        self._tail_first = database.durable.value + 1
        self._tail_bytes = 0

    async def log_after(self, after: int, max_entries: int, max_bytes: int) -> list[bytes]:
        """Encoded log entries with LSN > ``after``, bounded in count and bytes (at least one).

        The byte bound counts a 4-byte length per entry (the stream's framing)
        and is never crossed, except by a single entry that is larger alone.

        From the in-memory tail when it has them, else from disk. Raises
        LogTruncated when entries after ``after`` are no longer retained.
        """
        if after + 1 < self._database.log_start and after < self._database.durable.value:
            raise LogTruncated(after)
        if after + 1 >= self._tail_first:
            return self._from_tail(after, max_entries, max_bytes)
        return await self._swap.read(self._log_after, after, max_entries, max_bytes)

    def _from_tail(self, after: int, max_entries: int, max_bytes: int) -> list[bytes]:
        start = after + 1 - self._tail_first
        return _bounded(self._tail[start:start + max_entries], max_bytes)

    def _log_after(self, after: int, max_entries: int, max_bytes: int) -> list[bytes]:
        if after + 1 < self._database.log_start and after < self._database.durable.value:
            raise LogTruncated(after)
        out: list[bytes] = []
        size = 0
        with self._database.db.iterator(start=LOG + _U64.pack(after + 1), stop=LOG + b"\xff" * 8,
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

    def remember(self, encoded: list[bytes], first_lsn: int) -> None:
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

    def forget(self, first_lsn: int) -> None:
        """Empty the tail; the next entries remembered start at ``first_lsn`` (after a swap or a reopen)."""
        self._tail, self._tail_first, self._tail_bytes = [], first_lsn, 0

    async def truncate_log(self) -> int:
        """Drop log entries beyond the retention bound; return how many."""
        return await asyncio.get_running_loop().run_in_executor(self._database.writer, self._truncate)

    def _truncate(self) -> int:
        keep_from = self._database.durable.value - self.log_retention + 1
        if keep_from <= self._database.log_start:
            return 0
        dropped = 0
        # Chunks keep each batch small; the start marker moves first so a reader
        # never sees a gap it was not told about.
        while self._database.log_start < keep_from:
            end = min(keep_from, self._database.log_start + 10_000)
            with self._database.db.write_batch() as batch:
                batch.put(META_LOG_START, _U64.pack(end))
                for lsn in range(self._database.log_start, end):
                    batch.delete(LOG + _U64.pack(lsn))
            dropped += end - self._database.log_start
            self._database.log_start = end
        return dropped

    async def truncate_loop(self) -> None:
        """Truncate every few seconds, for ever; a failure is logged and LevelDB reopened before the next write."""
        while True:
            await asyncio.sleep(5)
            try:
                dropped = await self.truncate_log()
            except Exception as exc:  # keep serving; retry next round
                log.warning("log truncation failed: %s", exc)
                if isinstance(exc, plyvel.Error) and self._database.write_error is None:
                    self._database.write_error = f"log truncation failed: {exc}"  # reopened before the next write
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

