"""A log's lineage: which primary incarnation (epoch) wrote which range of LSNs.

kv-0 begins a new *epoch* each time it becomes primary. The lineage is the
list of epochs a replica's log went through, each with the first LSN it wrote,
the history id in effect from there on, a random id unique to the incarnation
that began it, and whether that incarnation proved it held every write a
majority had acknowledged before it began (``verified``; see
``replication/recovery.py``).

Two logs hold the same entry at LSN ``x`` exactly when the epochs covering
``x`` are the same epoch (same number and id) in both lineages; then every
entry before ``x`` is the same too (Raft's log-matching property: an epoch's
primary appends to one log, and a follower adopts a lineage only after its
own log matched it). So comparing two lineages tells, without reading a
single entry, where two logs part: :func:`common_point`.

A lineage keeps only its newest ``MAX_EPOCHS`` epochs (a bound on what peers
send and store). By log matching, an epoch both lineages hold vouches for every
entry before it, so two lineages compare from the oldest epoch they share: cut
ones that are identical, or one a prefix of the other, compare as if uncut. Only
a log whose position no epoch the other still keeps covers (it missed more than
``MAX_EPOCHS`` epochs) cannot be placed: :data:`UNKNOWN`.

A history id names a line of LSNs that never names two different writes: a
primary that begins an epoch without having heard from every follower starts
a new history (a fork), because a follower it did not hear from may hold
entries past its position. The fork point is where the new history's first
epoch begins, its parent the history before it.
"""

from __future__ import annotations

import bisect
import functools
import json
import re
import uuid
from dataclasses import dataclass
from typing import Any, Iterable

MAX_EPOCHS = 1000  # kept per lineage; older ones are dropped (a bound on what peers send)
_HEX = re.compile(r"^[0-9a-f]{1,32}$")


class LineageError(ValueError):
    """A lineage received or stored is malformed."""


@dataclass(frozen=True, slots=True)
class Epoch:
    """One primary incarnation's part of the log: LSNs from ``start`` on, until the next epoch."""

    number: int
    start: int
    history: str
    id: str
    verified: bool
    leader: int = 0  # the ordinal of the pod that began it (kv-0 unless another pod led meanwhile)

    def same(self, other: "Epoch | None") -> bool:
        """Whether ``other`` is this very epoch (not just the same number)."""
        return other is not None and (self.number, self.id) == (other.number, other.id)

    def to_json(self) -> dict[str, Any]:
        """Wire and disk form (``leader`` only when not kv-0: the form older versions wrote)."""
        out = {"epoch": self.number, "start": self.start, "history": self.history, "id": self.id,
               "verified": self.verified}
        if self.leader:
            out["leader"] = self.leader
        return out


def new_id() -> str:
    """A random id for a history or an epoch."""
    return uuid.uuid4().hex


@dataclass(frozen=True, slots=True)
class Promise:
    """The newest epoch a follower has promised to follow: it helps no older one.

    A recovering kv-0 needs a quorum of these for its candidate epoch before it
    begins it, so every majority an older kv-0 process could still gather
    contains a follower that refuses it (see replication/fencing.py).
    """

    number: int = 0
    id: str = ""
    leader: int = 0  # the ordinal of the pod that asked for it (the primary of that epoch)

    def covers(self, number: int, ident: str) -> bool:
        """Whether a follower that made this promise may still help epoch (``number``, ``ident``)."""
        return number > self.number or (number == self.number and ident == self.id)

    def to_json(self) -> dict[str, Any]:
        """Wire and disk form (``leader`` only when not kv-0: the form older versions wrote)."""
        out: dict[str, Any] = {"epoch": self.number, "id": self.id}
        if self.leader:
            out["leader"] = self.leader
        return out

    @classmethod
    def from_json(cls, data: Any) -> "Promise":
        """Parse and validate; LineageError when malformed."""
        if data is None:
            return cls()
        if not isinstance(data, dict):
            raise LineageError("a promise must be an object")
        number, ident, leader = data.get("epoch"), data.get("id"), data.get("leader", 0)
        if not _uint(number) or not isinstance(ident, str) or (ident and not _HEX.match(ident)) \
                or (number > 0) != bool(ident) or not _ordinal(leader):
            raise LineageError(f"malformed promise {data!r:.200}")
        return cls(number, ident, leader)


@dataclass(frozen=True)
class Lineage:
    """The epochs of one log, oldest first (starts never go down)."""

    epochs: tuple[Epoch, ...] = ()

    # ------------------------------------------------------------------ reading
    @property
    def last(self) -> Epoch | None:
        """The newest epoch, or None for a log that never held data."""
        return self.epochs[-1] if self.epochs else None

    @property
    def number(self) -> int:
        """The newest epoch's number (0: none)."""
        return self.epochs[-1].number if self.epochs else 0

    @property
    def history(self) -> str:
        """The history id in effect now ("" for a log that never held data)."""
        return self.epochs[-1].history if self.epochs else ""

    @functools.cached_property
    def _starts(self) -> list[int]:
        return [e.start for e in self.epochs]

    def at(self, lsn: int) -> Epoch | None:
        """The epoch that wrote (or will write) LSN ``lsn``; None before the first known epoch."""
        i = bisect.bisect_right(self._starts, lsn)
        return self.epochs[i - 1] if i else None

    def fork(self) -> dict[str, Any] | None:
        """Where the current history began from its parent: {parent, lsn}; None for an original one."""
        if not self.epochs:
            return None
        history = self.history
        for i in range(len(self.epochs) - 1, 0, -1):
            if self.epochs[i - 1].history != history:
                return {"parent": self.epochs[i - 1].history, "lsn": self.epochs[i].start - 1}
        return None

    def max_number(self) -> int:
        """The highest epoch number in this lineage."""
        return max((e.number for e in self.epochs), default=0)

    def up_to_date_key(self, lsn: int) -> tuple[int, int]:
        """Raft's "at least as up to date": the epoch of the last entry, then the LSN."""
        epoch = self.at(lsn) if lsn else None
        return (epoch.number if epoch else 0, lsn)

    # ------------------------------------------------------------------ changing
    def begin(self, number: int, start: int, history: str, verified: bool, ident: str | None = None,
              keep: int = MAX_EPOCHS, leader: int = 0) -> "Lineage":
        """This lineage with a new epoch from ``start`` on (epochs that wrote nothing before it dropped).

        ``ident`` is the epoch's id (the one followers promised); a new random one when None.
        Only the newest ``keep`` epochs stay (at most ``MAX_EPOCHS``; tests lower it).
        """
        kept = tuple(e for e in self.epochs if e.start < start)
        keep = max(1, min(keep, MAX_EPOCHS))
        return Lineage((kept + (Epoch(number, start, history, ident or new_id(), verified, leader),))[-keep:])

    # ------------------------------------------------------------------ encoding
    def to_json(self) -> list[dict[str, Any]]:
        """Wire and disk form: a list of epochs."""
        return [e.to_json() for e in self.epochs]

    def dumps(self) -> bytes:
        """Compact JSON bytes."""
        return json.dumps(self.to_json(), separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: Any) -> "Lineage":
        """Parse and validate the wire form; LineageError when malformed."""
        if not isinstance(data, list) or len(data) > MAX_EPOCHS:
            raise LineageError("lineage must be a list of at most %d epochs" % MAX_EPOCHS)
        epochs = []
        for item in data:
            if not isinstance(item, dict):
                raise LineageError("lineage entries must be objects")
            number, start = item.get("epoch"), item.get("start")
            history, ident, verified = item.get("history"), item.get("id"), item.get("verified")
            leader = item.get("leader", 0)
            if (not _uint(number) or not _uint(start) or number < 1 or start < 1
                    or not isinstance(history, str) or not _HEX.match(history)
                    or not isinstance(ident, str) or not _HEX.match(ident) or not isinstance(verified, bool)
                    or not _ordinal(leader)):
                raise LineageError(f"malformed lineage entry {item!r:.200}")
            epochs.append(Epoch(number, start, history, ident, verified, leader))
        for before, after in zip(epochs, epochs[1:]):
            if after.start < before.start or after.number <= before.number:
                raise LineageError("lineage epochs must rise in number and start")
        return cls(tuple(epochs))

    @classmethod
    def loads(cls, raw: bytes | str) -> "Lineage":
        """Inverse of :meth:`dumps`; LineageError when malformed."""
        try:
            return cls.from_json(json.loads(raw))
        except (ValueError, UnicodeDecodeError) as exc:
            if isinstance(exc, LineageError):
                raise
            raise LineageError(f"lineage is not JSON: {exc}") from None


def _ordinal(value: Any) -> bool:
    """A pod ordinal as a StatefulSet numbers them."""
    return _uint(value) and value < 10**9


def _uint(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**63


def _boundaries(*lineages: Lineage) -> Iterable[int]:
    return sorted({e.start for lineage in lineages for e in lineage.epochs})


def common_point(mine: Lineage, my_lsn: int, theirs: Lineage, their_lsn: int) -> int:
    """The highest LSN up to which both logs hold the same entries (0: none in common, or unknown).

    Walks the ranges where neither lineage changes epoch; the common prefix
    ends at the first range whose epochs differ. Ranges that one side no
    longer describes (its oldest epochs were dropped) come first and are
    skipped: if the first range both describe is the same epoch in both, log
    matching vouches for every entry before it. If it differs, nothing says
    where before it the logs part: 0.
    """
    limit = min(my_lsn, their_lsn)
    if limit <= 0:
        return 0
    common = 0
    starts = [s for s in _boundaries(mine, theirs) if s <= limit]
    if not starts:
        return 0
    for i, start in enumerate(starts):
        end = starts[i + 1] - 1 if i + 1 < len(starts) else limit
        a, b = mine.at(start), theirs.at(start)
        if a is None or b is None:
            if common:
                break  # cannot happen: a lineage describes every LSN from its first epoch on
            continue  # before one side's oldest kept epoch
        if not a.same(b):
            break
        common = end
    return common


# How a replica's log stands against another's (see :func:`compare`).
PREFIX = "prefix"  # ours is a prefix of theirs: follow, or copy, freely
BEHIND = "behind"  # they hold less on our own line: wait for them
DROPPABLE = "droppable"  # our extra entries were replaced by a verified epoch: never majority-acknowledged
DIVERGED = "diverged"  # nothing proves our extra entries were never acknowledged: keep them
UNKNOWN = "unknown"  # one side no longer keeps the epochs that would place the other: keep ours


@dataclass(frozen=True)
class Comparison:
    """Where two logs part, and what that allows the first one to do."""

    common: int
    relation: str
    replacing: Epoch | None  # their epoch that replaced our entries past ``common``


def compare(mine: Lineage, my_lsn: int, theirs: Lineage, their_lsn: int) -> Comparison:
    """Our log (``mine`` up to ``my_lsn``) against theirs: the one rule for following and copying.

    Entries past the common point may be dropped only when a *verified*
    epoch replaced them, and never when nothing at all is in common (an
    unrelated history, such as a volume from another cluster).
    """
    common = common_point(mine, my_lsn, theirs, their_lsn)
    if common >= my_lsn:
        return Comparison(common, PREFIX, None)
    ours, replacing = mine.at(common + 1), theirs.at(common + 1)
    if not theirs.epochs or (ours is not None and ours.same(replacing)):
        return Comparison(common, BEHIND, None)  # same epoch (or they hold nothing): behind, not forked
    if ours is None or replacing is None:
        # The epochs that wrote LSN common + 1 were dropped from one lineage (it keeps the
        # newest MAX_EPOCHS): nothing tells whether, or where, the logs part.
        return Comparison(common, UNKNOWN, None)
    relation = DROPPABLE if replacing.verified and common > 0 else DIVERGED
    return Comparison(common, relation, replacing)


def diverging_epoch(mine: Lineage, my_lsn: int, theirs: Lineage, their_lsn: int) -> Epoch | None:
    """The epoch of ``theirs`` that replaced entries ``mine`` holds past the common point (None: none did)."""
    return compare(mine, my_lsn, theirs, their_lsn).replacing
