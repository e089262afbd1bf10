"""Storage: one LevelDB per replica holding data, replication log and metadata.

Everything else in kvstore uses :class:`Store` (and the records and errors
below); the store is a thin facade over its parts, one module each:

- ``layout.py``: what is stored under which key, and how log entries and
  records are encoded (``d/`` data, ``l/`` log, ``m/`` metadata, changed
  together in one atomic WriteBatch);
- ``database.py``: the open LevelDB, the metadata read from it and the LSNs
  reached (durable, appended), shared by the parts; the data dir's files;
- ``commit_queue.py``: group commit through one committer on one thread,
  acknowledgement only after the batch's fsync, pipelining on the primary,
  and poisoning after a published batch failed to be written;
- ``retained_log.py``: the entries after an LSN (in-memory tail, else disk)
  and the truncation beyond the retention bound;
- ``snapshot_swap.py``: reads counted behind the swap gate, and installing a
  snapshot as a new LevelDB that replaces the live one atomically;
- ``commit_hook.py``: the commit queue's test seam (``KV_TEST_HOLD_COMMIT``).

No networking lives here.
"""

from kvstore.storage.commit_hook import CommitHook, HoldCommit, commit_hook
from kvstore.storage.layout import (CONFIG, DELETE, ENTRY_FRAMING, PUT, TXN, LogEntry, LogTruncated, Mutation,
                                    NotFound, PreconditionFailed, Record, StorageError, changes_of, entry_lsn,
                                    entry_size_limit, is_txn_entry, record_version, unpack_record)
from kvstore.storage.snapshot_swap import Snapshot
from kvstore.storage.store import Store

__all__ = [
    "CONFIG", "DELETE", "ENTRY_FRAMING", "PUT", "TXN", "CommitHook", "HoldCommit", "LogEntry", "LogTruncated",
    "Mutation", "NotFound", "PreconditionFailed", "Record", "Snapshot", "StorageError", "Store", "changes_of",
    "commit_hook", "entry_lsn", "entry_size_limit", "is_txn_entry", "record_version", "unpack_record",
]
