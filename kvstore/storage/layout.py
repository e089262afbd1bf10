"""What a replica's LevelDB holds and how it is encoded: key layout, log entries, records, metadata.

Key layout (distinct prefixes in one database, so all three change together in
one atomic WriteBatch):

- ``d/<key>``       -> 8-byte version (LSN of the key's last write) + value; a key with
  a ttl has the version's top bit set and its 8-byte absolute expiry (ms) before the value
- ``l/<8-byte LSN>`` -> encoded :class:`LogEntry`
- ``m/<name>``      -> metadata: applied LSN, lineage (epochs and history ids,
  see lineage.py), the newest epoch this replica promised to follow, first
  retained LSN, format version, and on a follower the committed LSN its
  upstream last announced

No state and no I/O beyond reading a database handle it is given.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass

import plyvel

from kvstore.lineage import Lineage, LineageError, Promise
from kvstore.membership import Configuration
from kvstore.txn import Change, Txn, decode_changes

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
    op TXN carries its ``txn`` and resolves to a :class:`~kvstore.txn.TxnResult`.
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
