"""Transactions: compare, then apply one branch of key changes atomically, as one log entry.

``POST /v1/txn`` takes JSON::

    {"compare": [{"key": "a", "version": 7},      # the key's version (LSN of its last write) is 7
                 {"key": "b", "absent": true},    # the key does not exist
                 {"key": "c", "value": "x"}],     # its value is these UTF-8 bytes ("value_base64": raw bytes)
     "success": [{"op": "put", "key": "a", "value": "1"}, {"op": "delete", "key": "b"}],
     "failure": [{"op": "put", "key": "conflicts", "value_base64": "AQI=", "ttl": 60}]}

The primary evaluates every comparison against its state at the moment the
transaction's batch is built (in the committer, so no other write slips in
between) and writes the branch chosen, all of it or nothing, as ONE log entry
of kind ``TXN`` (storage/layout.py): every key it changes gets that entry's LSN as
its version, and a follower applies the entry in one LevelDB batch. A branch
with no operation writes nothing. A PUT with ``ttl`` is written as such an
entry too, with one change that carries its absolute expiry (expiry.py).

This module is the model, the entry's codec and the request parser; it
imports nothing of the store, so the storage package can use it.
"""

from __future__ import annotations

import base64
import binascii
import json
import struct
from dataclasses import dataclass
from typing import Any, Callable

from kvstore.routing import ApiError

MAX_OPERATIONS = 128  # comparisons, success operations and failure operations: each at most this many
MAX_TTL = 10 * 365 * 24 * 3600  # seconds; a ttl is a positive integer up to this
CHANGE_OVERHEAD = 17  # a change's encoded head: kind, expiry, key and value lengths

_COUNT = struct.Struct(">I")
_CHANGE = struct.Struct(">BQII")  # kind (1 put, 2 delete), expiry (ms since the epoch, 0: none), key len, value len
_PUT, _DELETE = 1, 2


@dataclass(frozen=True, slots=True)
class Change:
    """One key change: a put (``value`` set, ``expires`` the absolute expiry in ms, 0: never) or a delete."""

    key: bytes
    value: bytes | None
    expires: int = 0


@dataclass(frozen=True, slots=True)
class Compare:
    """A condition on one key: its version equals ``version``, it is ``absent``, or its value equals ``value``."""

    key: bytes
    version: int | None = None
    absent: bool = False
    value: bytes | None = None

    def holds(self, current: tuple[int, bytes] | None) -> bool:
        """Whether the key's (version, value), None when absent, meets this condition."""
        if self.absent:
            return current is None
        if current is None:
            return False
        if self.version is not None:
            return current[0] == self.version
        return current[1] == self.value


@dataclass(frozen=True, slots=True)
class Txn:
    """A transaction: the comparisons, and the changes made when all hold (success) or not (failure)."""

    compare: tuple[Compare, ...]
    success: tuple[Change, ...]
    failure: tuple[Change, ...]

    def choose(self, lookup: Callable[[bytes, bool], tuple[int, bytes] | None]) -> tuple[bool, tuple[Change, ...]]:
        """(succeeded, the branch's changes); ``lookup(key, want_value)`` gives a key's (version, value) or None."""
        ok = all(c.holds(lookup(c.key, c.value is not None)) for c in self.compare)
        return ok, self.success if ok else self.failure


@dataclass(frozen=True, slots=True)
class TxnResult:
    """What a transaction did: which branch ran, and the LSN of its entry (None: the branch was empty)."""

    succeeded: bool
    lsn: int | None
    changes: tuple[Change, ...]

    def to_json(self) -> dict[str, Any]:
        """The answer's body: the branch, the entry's LSN and every written key's new version."""
        return {"succeeded": self.succeeded, "branch": "success" if self.succeeded else "failure",
                "version": self.lsn,
                "keys": [{"key": c.key.decode("utf-8", "replace"), "version": self.lsn, "deleted": c.value is None}
                         for c in self.changes]}


# ------------------------------------------------------------------ the log entry's value
def encode_changes(changes: tuple[Change, ...] | list[Change]) -> bytes:
    """A TXN entry's value: u32 count, then per change u8 kind, u64 expiry, u32 key and value lengths, key, value."""
    parts = [_COUNT.pack(len(changes))]
    for change in changes:
        value = change.value or b""
        parts.append(_CHANGE.pack(_DELETE if change.value is None else _PUT, change.expires, len(change.key),
                                  len(value)))
        parts.append(change.key)
        parts.append(value)
    return b"".join(parts)


def decode_changes(data: bytes | memoryview) -> list[Change]:
    """Inverse of :func:`encode_changes`; ValueError on anything malformed (a torn or foreign entry)."""
    view = memoryview(data)
    if len(view) < _COUNT.size:
        raise ValueError("transaction entry too short")
    (count,) = _COUNT.unpack_from(view)
    offset = _COUNT.size
    changes = []
    for _ in range(count):
        if offset + _CHANGE.size > len(view):
            raise ValueError("torn transaction entry")
        kind, expires, key_len, value_len = _CHANGE.unpack_from(view, offset)
        offset += _CHANGE.size
        end = offset + key_len + value_len
        if kind not in (_PUT, _DELETE) or not key_len or end > len(view) \
                or (kind == _DELETE and (value_len or expires)):
            raise ValueError("malformed transaction entry")
        key = bytes(view[offset:offset + key_len])
        changes.append(Change(key, None if kind == _DELETE else bytes(view[offset + key_len:end]), expires))
        offset = end
    if not changes or offset != len(view):
        raise ValueError("malformed transaction entry")
    return changes


def encoded_size(changes: tuple[Change, ...]) -> int:
    """The bytes :func:`encode_changes` makes of ``changes``."""
    return _COUNT.size + sum(_CHANGE.size + len(c.key) + len(c.value or b"") for c in changes)


# ------------------------------------------------------------------ the request
def max_body_bytes(max_key_bytes: int, max_value_bytes: int) -> int:
    """The largest ``POST /v1/txn`` body read: a branch's worth of keys and values, base64 and JSON around them."""
    return 3 * (max_key_bytes + max_value_bytes) + 64 * 1024


def parse(body: bytes, max_key_bytes: int, max_value_bytes: int, now_ms: int) -> Txn:
    """The transaction a request body asks for; ApiError 400 ``bad_txn`` or 413 with a clear code otherwise.

    A branch's changes must fit in one log entry of the largest PUT
    (``max_key_bytes + max_value_bytes``), so every follower takes it.
    ``now_ms`` is the wall clock a ``ttl`` counts from (the primary's).
    """
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _bad(f"the body is not JSON ({exc})") from None
    except RecursionError:
        raise _bad("the body nests too deeply to be a transaction") from None
    if not isinstance(data, dict):
        raise _bad('the body is a JSON object: {"compare": [...], "success": [...], "failure": [...]}')
    unknown = sorted(set(data) - {"compare", "success", "failure"})
    if unknown:
        raise _bad(f"unknown field {unknown[0]!r}; a transaction has compare, success and failure")
    lists = {}
    for name in ("compare", "success", "failure"):
        items = data.get(name, [])
        if not isinstance(items, list):
            raise _bad(f"{name} must be a list")
        if len(items) > MAX_OPERATIONS:
            raise ApiError(413, "too_many_operations",
                           f"{name} has {len(items)} items; a transaction takes at most {MAX_OPERATIONS} "
                           "comparisons and as many operations in each branch")
        lists[name] = items
    limits = (max_key_bytes, max_value_bytes)
    compares = tuple(_compare(item, i, limits) for i, item in enumerate(lists["compare"]))
    branches = []
    for name in ("success", "failure"):
        # A key changed twice in a branch: the last change counts (a key is written once per entry).
        last = {c.key: c for c in (_change(item, f"{name}[{i}]", limits, now_ms)
                                   for i, item in enumerate(lists[name]))}
        changes = tuple(last.values())
        size = encoded_size(changes)
        limit = max_key_bytes + max_value_bytes
        if size - _COUNT.size - CHANGE_OVERHEAD * len(changes) > limit:
            raise ApiError(413, "txn_too_large",
                           f"{name}'s keys and values take {size} bytes; a branch holds at most {limit} "
                           "(KV_MAX_KEY_BYTES + KV_MAX_VALUE_BYTES)")
        branches.append(changes)
    return Txn(compares, branches[0], branches[1])


def _bad(message: str) -> ApiError:
    return ApiError(400, "bad_txn", message)


def _key(item: dict[str, Any], where: str, max_key_bytes: int) -> bytes:
    key = item.get("key")
    if not isinstance(key, str) or not key:
        raise _bad(f"{where}: key must be a non-empty string")
    raw = key.encode("utf-8", "surrogatepass")
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        raise _bad(f"{where}: key is not valid UTF-8") from None
    if len(raw) > max_key_bytes:
        raise ApiError(413, "key_too_large", f"{where}: the key is {len(raw)} bytes; the limit is {max_key_bytes}")
    return raw


def _value(item: dict[str, Any], where: str, max_value_bytes: int) -> bytes | None:
    """``value`` (UTF-8 text) or ``value_base64``; None when neither is given."""
    if "value" in item and "value_base64" in item:
        raise _bad(f"{where}: give value or value_base64, not both")
    if "value" in item:
        if not isinstance(item["value"], str):
            raise _bad(f"{where}: value must be a string (value_base64 for bytes)")
        try:
            raw = item["value"].encode("utf-8")
        except UnicodeEncodeError:
            raise _bad(f"{where}: value is not valid UTF-8") from None
    elif "value_base64" in item:
        if not isinstance(item["value_base64"], str):
            raise _bad(f"{where}: value_base64 must be a string")
        try:
            raw = base64.b64decode(item["value_base64"], validate=True)
        except (binascii.Error, ValueError):
            raise _bad(f"{where}: value_base64 is not base64") from None
    else:
        return None
    if len(raw) > max_value_bytes:
        raise ApiError(413, "value_too_large",
                       f"{where}: the value is {len(raw)} bytes; the limit is {max_value_bytes}")
    return raw


def _object(item: Any, where: str, allowed: set[str]) -> dict[str, Any]:
    if not isinstance(item, dict):
        raise _bad(f"{where} must be a JSON object")
    unknown = sorted(set(item) - allowed)
    if unknown:
        raise _bad(f"{where}: unknown field {unknown[0]!r} (it takes {', '.join(sorted(allowed))})")
    return item


def _compare(item: Any, index: int, limits: tuple[int, int]) -> Compare:
    where = f"compare[{index}]"
    item = _object(item, where, {"key", "version", "absent", "value", "value_base64"})
    key = _key(item, where, limits[0])
    given = [name for name in ("version", "absent", "value", "value_base64") if name in item]
    if len(given) != 1 and given != ["value", "value_base64"]:
        raise _bad(f"{where}: give exactly one of version, absent (true), value or value_base64")
    if "version" in item:
        version = item["version"]
        if not isinstance(version, int) or isinstance(version, bool) or not 0 < version < 2**63:
            raise _bad(f"{where}: version must be a positive integer (a version a read or write answered)")
        return Compare(key, version=version)
    if "absent" in item:
        if item["absent"] is not True:
            raise _bad(f"{where}: absent must be true")
        return Compare(key, absent=True)
    return Compare(key, value=_value(item, where, limits[1]))


def _change(item: Any, where: str, limits: tuple[int, int], now_ms: int) -> Change:
    item = _object(item, where, {"op", "key", "value", "value_base64", "ttl"})
    op = item.get("op")
    key = _key(item, where, limits[0])
    if op == "delete":
        if {"value", "value_base64", "ttl"} & set(item):
            raise _bad(f"{where}: a delete takes only op and key")
        return Change(key, None)
    if op != "put":
        raise _bad(f'{where}: op must be "put" or "delete"')
    value = _value(item, where, limits[1])
    if value is None:
        raise _bad(f"{where}: a put needs value or value_base64")
    expires = 0
    if "ttl" in item:
        ttl = item["ttl"]
        if not isinstance(ttl, int) or isinstance(ttl, bool) or not 0 < ttl <= MAX_TTL:
            raise _bad(f"{where}: ttl must be whole seconds from 1 to {MAX_TTL}")
        expires = now_ms + ttl * 1000
    return Change(key, value, expires)
