"""The history of a chaos run: one record per client operation and per line a watcher read, and how an answer is classified.

Outcomes follow the API's contract:

- ``ok``: it happened (for writes: applied, with its version);
- ``failed``: definitely not applied (503 ``no_primary``, ``recovering``
  or ``not_primary``: a kv-0 that its followers do not confirm refuses a
  write before applying it; a connection that was never made; a 412/404
  that is itself an observation; a 504 ``not_confirmed``: kv-0 refused a
  conditional write, 412 or 404, and could not confirm in time that a
  majority still follows it, so it answered neither);
- ``unknown``: may or may not have applied (timeouts, a cut connection,
  504 ``primary_timeout``, 503 ``storage_unavailable``, a 500, and a 504
  ``write_concern_timeout``: durable on kv-0 but held by no majority, so
  kv-0 losing its volume before a follower has it undoes it, and its
  version may then name another write).

A transaction (``POST /v1/txn``) is one operation ``txn`` classified like a
PUT; :func:`per_key` turns it into the per-key writes the per-key checks
judge: the branch that ran writes its keys at the transaction's version, the
other branch's puts are writes that did not apply, and a transaction of
unknown outcome may have written any key of either branch.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Iterable

import aiohttp

OK = "ok"
FAILED = "failed"
UNKNOWN = "unknown"

# "txn" is a whole transaction as the workload recorded it; "txn-put" one key it puts (see per_key).
WRITE_KINDS = ("put", "cas", "create", "delete", "txn", "txn-put")
READ_KINDS = ("read",)


@dataclass
class Op:
    """One client operation: invocation and completion (seconds since the run started), arguments, outcome."""

    id: int
    process: int
    key: str
    f: str                       # put | cas | create | delete | read | txn (txn-put: see per_key)
    pod: str                     # the pod the request was sent to
    call: float
    ret: float | None = None     # None while in flight; kept for unknown outcomes too
    outcome: str = UNKNOWN
    value: str | None = None     # what a write writes
    expect_version: int | None = None   # If-Match of a cas
    consistency: str = "local"   # reads: local | strong | min_lsn
    min_lsn: int | None = None
    status: int | None = None    # HTTP status, None when no answer
    error: str | None = None     # the error code or exception
    version: int | None = None   # a write's version, or the version a read saw
    observed: str | None = None  # a read's value (None: absent)
    found: bool | None = None    # a read: 200 (True) or 404 (False)
    current_version: int | None = None  # from a 412
    lsn: int | None = None       # X-Kv-Lsn of the answering replica
    answered_by: str | None = None
    # For min_lsn reads: this process's own last acknowledged write on the key.
    own_version: int | None = None
    own_deleted: bool | None = None
    # Transactions (``key`` is the first of ``keys``): the request, and the answer.
    keys: list[str] | None = None            # every key it compares or changes
    compare: list[dict[str, Any]] | None = None   # {"key", "version"} or {"key", "absent": true}
    success: list[dict[str, Any]] | None = None   # {"op": "put", "key", "value"} or {"op": "delete", "key"}
    failure: list[dict[str, Any]] | None = None
    succeeded: bool | None = None            # the answer's succeeded
    changed: list[dict[str, Any]] | None = None   # the answer's keys: {"key", "version", "deleted"}
    branch: str | None = None                # a txn: the branch it answered; a per-key write: its branch

    @property
    def is_write(self) -> bool:
        """A put, cas, create, delete or transaction."""
        return self.f in WRITE_KINDS

    def to_json(self) -> str:
        """One JSON line."""
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Op":
        """The inverse of ``to_json`` (unknown fields are ignored)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def branch_writes(op: Op) -> list[tuple[str, dict[str, Any]]]:
    """A transaction's changes: (branch, change) for each change of its success, then its failure branch."""
    return [(name, change) for name, changes in (("success", op.success), ("failure", op.failure))
            for change in changes or ()]


def per_key(history: Iterable[Op]) -> list[Op]:
    """The history with every transaction replaced by the writes it made or may have made, one per key.

    Each keeps the transaction's id, process, pod, times, status and answer.
    Acknowledged: the branch that ran puts its keys (``txn-put``) and deletes
    those the answer lists (a delete of an absent key writes nothing), at the
    transaction's version; the other branch's puts did not apply (``failed``).
    Failed: no put applied. Unknown: every change of either branch may have
    applied (version unknown). Other operations are kept as they are.
    """
    out: list[Op] = []
    for op in history:
        if op.f != "txn":
            out.append(op)
            continue
        ran = "success" if op.succeeded else "failure"
        written = {c.get("key") for c in op.changed or ()}
        for name, change in branch_writes(op):
            delete = change.get("op") == "delete"
            outcome, version = op.outcome, None
            if op.outcome == OK:
                if name != ran or (delete and change.get("key") not in written):
                    outcome = FAILED
                else:
                    version = op.version
            if delete and outcome == FAILED:
                continue  # a delete that did not happen shows nowhere: nothing to check
            out.append(replace(op, key=str(change.get("key")), f="delete" if delete else "txn-put",
                               value=None if delete else change.get("value"), version=version,
                               outcome=outcome, branch=name))
    return out


@dataclass
class WatchRecord:
    """One line a chaos watcher read (``start``, ``put``, ``delete``, ``keepalive``), or what it did.

    ``end``: the stream ended (``error`` is the error line's code, the refusal's,
    or the exception's name; ``resumable`` whether it went on from its
    position); ``resync``: after a non-resumable end it re-read the prefix on
    ``pod`` and watches again from that read's ``lsn`` plus one.
    """

    watcher: int
    type: str                    # start | put | delete | keepalive | end | resync
    time: float
    pod: str
    prefix: str = ""
    key: str | None = None       # put, delete
    version: int | None = None   # put, delete: the entry's LSN
    value: str | None = None     # put
    lsn: int | None = None       # start, keepalive, end: the stream's position; resync: the read's X-Kv-Lsn
    history: str | None = None   # start, keepalive, resync
    from_lsn: int | None = None  # start: what was asked for (None: from now)
    status: int | None = None    # end: the refusal's HTTP status (200: an error line)
    error: str | None = None     # end, resync: why
    resumable: bool | None = None

    @property
    def is_event(self) -> bool:
        """A put or a delete."""
        return self.type in ("put", "delete")

    def to_json(self) -> str:
        """One JSON line, without the fields left empty."""
        return json.dumps({k: v for k, v in asdict(self).items() if v is not None}, separators=(",", ":"))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "WatchRecord":
        """The inverse of ``to_json``."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def classify_exception(exc: BaseException) -> str:
    """Outcome of a request that got no HTTP answer."""
    # No connection was ever made: the request was never sent.
    not_sent: tuple[type[BaseException], ...] = (aiohttp.ClientConnectorError,)
    connect_timeout = getattr(aiohttp, "ConnectionTimeoutError", None)
    if connect_timeout is not None:
        not_sent += (connect_timeout,)
    return FAILED if isinstance(exc, not_sent) else UNKNOWN


def classify_write(status: int, error: str | None) -> str:
    """Outcome of a write from its HTTP status and error code."""
    if status == 200:
        return OK
    if status == 504:
        # not_confirmed: a refusal (412, 404) kv-0 could not confirm in time; nothing was written.
        # write_concern_timeout: durable on kv-0 only, so a lost volume can still undo it.
        return FAILED if error == "not_confirmed" else UNKNOWN
    if status == 503:
        return UNKNOWN if error == "storage_unavailable" else FAILED
    if status in (412, 404, 400, 413):
        return FAILED
    return UNKNOWN  # 500 and anything unexpected: it may have been applied


def classify_read(status: int) -> str:
    """Outcome of a read: 200 and 404 are observations, anything else tells nothing."""
    if status in (200, 404):
        return OK
    if status == 412:  # min_lsn_ahead: an observation the checker judges
        return OK
    return FAILED if status in (503, 504, 400) else UNKNOWN


def write_jsonl(path: Path, records: Iterable[Any]) -> None:
    """Write records (with ``to_json`` or plain dicts) as JSON lines."""
    with open(path, "w", encoding="utf-8") as handle:
        for record in records:
            line = record.to_json() if hasattr(record, "to_json") else json.dumps(record, separators=(",", ":"))
            handle.write(line + "\n")


def read_history(path: Path) -> list[Op]:
    """Read a history written by ``write_jsonl``."""
    with open(path, encoding="utf-8") as handle:
        return [Op.from_dict(json.loads(line)) for line in handle if line.strip()]


def read_watch_log(path: Path) -> list[WatchRecord]:
    """Read the watchers' records written by ``write_jsonl`` (none when the file is missing: an older run)."""
    if not path.exists():
        return []
    with open(path, encoding="utf-8") as handle:
        return [WatchRecord.from_dict(json.loads(line)) for line in handle if line.strip()]
