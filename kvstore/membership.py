"""The configuration: which ordinals vote, as the replicated log records it, and what a majority of it is.

Every majority kvstore counts (a write concern, the committed LSN, a
confirmation round, the quorum a recovering kv-0 must hear) is computed here
from a :class:`Configuration`, never from a setting, DNS or recent acks: two
processes that hold the same log count the same replicas.

A configuration changes one voter at a time (Raft's single-server changes)
through a log entry that names the new voters and the previous ones. Until
that entry is held by a majority of *both* (the change is *settled*), every
count needs a majority of each, so a write acknowledged during the change is
on a majority of whichever configuration a later kv-0 learns (see
docs/design.md, "Membership"). kv-0, ordinal 0, is always a voter.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Iterable, Mapping

MAX_VOTERS = 255  # far beyond a StatefulSet anyone runs; bounds what a peer may send us


def majority(voters: int) -> int:
    """Voters, kv-0 included, that make a majority of ``voters``."""
    return voters // 2 + 1


def recovery_quorum(voters: int) -> int:
    """Followers (kv-0 excluded) that together hold every write a majority of ``voters`` acknowledged.

    Every acknowledged write is on kv-0 and ``majority - 1`` followers, so any
    ``voters - majority + 1`` followers include one of them; an empty kv-0
    must hear that many before it may decide without its own disk.
    """
    return min(voters - 1, voters - majority(voters) + 1)


@dataclass(frozen=True)
class Configuration:
    """The voters (ordinals) from LSN ``lsn`` on; ``previous`` the voters before this change (None: initial)."""

    lsn: int
    voters: tuple[int, ...]
    previous: tuple[int, ...] | None = None

    @classmethod
    def initial(cls, replicas: int) -> "Configuration":
        """The configuration of a log that records none: ordinals 0..replicas-1 (``KV_REPLICAS``)."""
        return cls(0, tuple(range(max(1, replicas))))

    def change(self, lsn: int, voters: Iterable[int]) -> "Configuration":
        """The next configuration, written at ``lsn``; ValueError unless it adds or removes exactly one voter."""
        new = tuple(sorted(set(voters)))
        if 0 not in new:
            raise ValueError("kv-0 is always a voter")
        if len(set(new) ^ set(self.voters)) != 1:
            raise ValueError(f"a change adds or removes exactly one voter: {list(self.voters)} -> {list(new)}")
        return Configuration(lsn, new, self.voters)

    def groups(self, settled: bool) -> tuple[tuple[int, ...], ...]:
        """The voter sets a count needs a majority of: this one, and the previous one until the change settled."""
        if settled or self.previous is None:
            return (self.voters,)
        return (self.voters, self.previous)

    def members(self) -> tuple[int, ...]:
        """Every ordinal of this configuration and of the one it replaces."""
        return tuple(sorted(set(self.voters) | set(self.previous or ())))

    def to_json(self) -> dict[str, object]:
        """For metadata, snapshots, positions and /v1/status."""
        return {"lsn": self.lsn, "voters": list(self.voters),
                "previous": None if self.previous is None else list(self.previous)}

    def dumps(self) -> bytes:
        """The encoded form (a log entry's value and the m/config record)."""
        return json.dumps(self.to_json(), separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: object) -> "Configuration":
        """Inverse of :meth:`to_json`; ValueError on anything malformed."""
        if not isinstance(data, dict):
            raise ValueError("a configuration is a JSON object")
        lsn, voters, previous = data.get("lsn"), data.get("voters"), data.get("previous")
        if not isinstance(lsn, int) or isinstance(lsn, bool) or lsn < 0:
            raise ValueError("configuration lsn must be a non-negative integer")
        parsed = _ordinals(voters, "voters")
        before = None if previous is None else _ordinals(previous, "previous")
        if 0 not in parsed:
            raise ValueError("configuration voters must include ordinal 0")
        return cls(lsn, parsed, before)

    @classmethod
    def loads(cls, raw: bytes, lsn: int | None = None) -> "Configuration":
        """Decode :meth:`dumps`; ``lsn`` overrides the recorded one (a log entry knows its own)."""
        try:
            data = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"configuration is not JSON: {exc}") from None
        if lsn is not None and isinstance(data, dict):
            data = {**data, "lsn": lsn}
        return cls.from_json(data)


def _ordinals(value: object, what: str) -> tuple[int, ...]:
    if not isinstance(value, list) or not 0 < len(value) <= MAX_VOTERS:
        raise ValueError(f"configuration {what} must be a list of 1 to {MAX_VOTERS} ordinals")
    if not all(isinstance(o, int) and not isinstance(o, bool) and 0 <= o < 2**31 for o in value):
        raise ValueError(f"configuration {what} must be ordinals (integers from 0)")
    if len(set(value)) != len(value):
        raise ValueError(f"configuration {what} lists an ordinal twice")
    return tuple(sorted(value))


def agreed(groups: Iterable[Iterable[int]], held: Mapping[int, int], own: int, quorum: bool = False,
           leader: int = 0) -> int:
    """The highest value that a majority of every group holds.

    ``held`` maps a follower's ordinal to its value (an acknowledged LSN, an
    echoed round; absent counts as 0), ``own`` is the primary's (ordinal
    ``leader``, kv-0 unless another pod leads). With ``quorum`` the followers
    of each group must make a recovery quorum instead of a majority (an epoch
    not yet fenced off, see fencing.py).
    """
    result: int | None = None
    for group in groups:
        members = tuple(group)
        followers = sorted((held.get(o, 0) for o in members if o != leader), reverse=True)
        if leader in members:
            needed = recovery_quorum(len(members)) if quorum else majority(len(members)) - 1
        else:  # a previous configuration without the primary: a majority of followers alone
            needed = majority(len(members))
        value = own if needed <= 0 else min(own, followers[needed - 1])
        result = value if result is None else min(result, value)
    return own if result is None else result


def all_hold(groups: tuple[tuple[int, ...], ...], held: Mapping[int, int], own: int, leader: int = 0) -> int:
    """The highest value every voter of the newest group holds (and a majority of an unsettled previous one)."""
    newest = min([own, *(held.get(o, 0) for o in groups[0] if o != leader)])
    return min(newest, agreed(groups[1:], held, own, leader=leader)) if len(groups) > 1 else newest
