"""Linearizability of one key's history: the Wing–Gong / Lowe (WGL) search for a register with CAS.

The model is a register holding one value (``None``: absent). Values written by
the chaos workload are unique, so a value names the write that made it; the
versions the store answers (write LSNs) are tied to values by ``VersionMap``.

Operations whose outcome is unknown (a timeout, a cut connection) may or may
not have taken effect: they get a completion time of infinity, so the search
may linearize them anywhere after their invocation, or never. Reads that
failed are left out (they change nothing); writes that definitely failed are
left out of the search (the checker verifies separately that nobody saw them).

The search is bounded: past ``max_steps`` the answer is ``unknown``, never a
silent pass.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable

# Operation kinds of the register model.
PUT = "put"          # set the value
CAS = "cas"          # set the value if the current version is `expect_version`
CREATE = "create"    # set the value if absent
DELETE = "delete"    # make absent (ok only if present; 404 when absent)
READ = "read"        # observe the value

OK = "ok"
VIOLATION = "violation"
UNKNOWN = "unknown"

DEFAULT_MAX_STEPS = 300_000


@dataclass(frozen=True)
class RegisterOp:
    """One operation on one key, as the search sees it.

    ``succeeded`` says whether a conditional write took effect (False: the
    server answered 412 / 404, an observation that it did not apply);
    ``observed`` is what a read saw, and ``current_version`` what a 412 said.
    ``ret`` is None when the outcome is unknown.
    """

    id: int
    kind: str
    call: float
    ret: float | None
    value: str | None = None
    expect_version: int | None = None
    succeeded: bool = True
    observed: str | None = None
    current_version: int | None = None

    @property
    def unknown(self) -> bool:
        """The outcome is unknown: it may or may not have taken effect."""
        return self.ret is None


@dataclass
class VersionMap:
    """Which value each version belongs to (both ways), from every observation."""

    version_of: dict[str, int] = field(default_factory=dict)
    value_of: dict[int, str] = field(default_factory=dict)
    deletes: set[int] = field(default_factory=set)  # versions of deletes: no value has them

    def add_delete(self, version: int) -> str | None:
        """Record the version a delete answered; a description of a conflict, if any."""
        self.deletes.add(version)
        if version in self.value_of:
            return f"version {version} is a delete's, and also holds {self.value_of[version]!r}"
        return None

    def add(self, value: str, version: int) -> str | None:
        """Record that ``value`` has ``version``; a description of a conflict, if any."""
        known = self.version_of.get(value)
        other = self.value_of.get(version)
        if known is not None and known != version:
            return f"value {value!r} seen with versions {known} and {version}"
        if other is not None and other != value:
            return f"version {version} seen with values {other!r} and {value!r}"
        if version in self.deletes:
            return f"version {version} is a delete's, and also holds {value!r}"
        self.version_of[value] = version
        self.value_of[version] = value
        return None

    def matches(self, state: str | None, version: int | None) -> bool:
        """Could the register in ``state`` have version ``version`` (None: absent)?"""
        if version is None:
            return state is None
        if state is None:
            return False
        known = self.version_of.get(state)
        if known is not None:
            return known == version
        # A value nobody saw with a version (an unknown write): any version no other write owns.
        return version not in self.value_of and version not in self.deletes


def step(op: RegisterOp, state: str | None, versions: VersionMap) -> tuple[bool, str | None]:
    """Apply ``op`` to the register: (consistent with the model?, new state)."""
    if op.kind == READ:
        return op.observed == state, state
    if op.kind == PUT:
        return True, op.value
    if op.kind == CAS:
        applies = versions.matches(state, op.expect_version)
        if op.succeeded:
            return applies, op.value
        # A 412 says the current version was `current_version`, which is not the expected one.
        # (Both tests go through `current_version`: a value whose version nobody saw could
        # otherwise "match" the expected and the current version at once.)
        return versions.matches(state, op.current_version) and op.current_version != op.expect_version, state
    if op.kind == CREATE:
        if op.succeeded:
            return state is None, op.value
        return state is not None and versions.matches(state, op.current_version), state
    if op.kind == DELETE:
        if op.succeeded:
            return state is not None, None
        return state is None, state
    raise ValueError(f"unknown operation kind {op.kind!r}")


@dataclass
class Result:
    """The verdict for one key: ``ok``, ``violation`` or ``unknown`` (search cap reached)."""

    verdict: str
    steps: int
    ops: int
    # On a violation: the operation no linearization could place, at the deepest point reached.
    blocked: RegisterOp | None = None
    linearized: list[int] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True only for a proven linearizable history."""
        return self.verdict == OK


class _Entry:
    __slots__ = ("op", "is_call", "time", "prev", "next", "match")

    def __init__(self, op: RegisterOp, is_call: bool, time: float) -> None:
        self.op = op
        self.is_call = is_call
        self.time = time
        self.prev: _Entry | None = None
        self.next: _Entry | None = None
        self.match: _Entry | None = None  # a call's return entry


def _entries(ops: list[RegisterOp]) -> _Entry:
    """The doubly-linked list of call/return events, sorted by time; returns its head sentinel."""
    events: list[_Entry] = []
    for op in ops:
        call = _Entry(op, True, op.call)
        ret = _Entry(op, False, math.inf if op.ret is None else op.ret)
        call.match = ret
        events += (call, ret)
    # At equal times calls come first: touching intervals count as concurrent (the lenient reading).
    events.sort(key=lambda e: (e.time, 0 if e.is_call else 1, e.op.id))
    head = _Entry(RegisterOp(-1, READ, -math.inf, -math.inf), True, -math.inf)  # pragma: no mutate (never read)
    prev = head
    for entry in events:
        prev.next, entry.prev = entry, prev
        prev = entry
    return head


def _lift(entry: _Entry) -> None:
    """Remove a call and its return from the list."""
    for e in (entry, entry.match):
        assert e is not None and e.prev is not None
        e.prev.next = e.next
        if e.next is not None:
            e.next.prev = e.prev


def _unlift(entry: _Entry) -> None:
    """Put a lifted call and its return back (in reverse order of removal)."""
    for e in (entry.match, entry):
        assert e is not None and e.prev is not None
        e.prev.next = e
        if e.next is not None:
            e.next.prev = e


def check(ops: Iterable[RegisterOp], versions: VersionMap | None = None, initial: str | None = None,
          max_steps: int = DEFAULT_MAX_STEPS) -> Result:
    """WGL search: is there a total order of ``ops``, respecting real time, legal for the register?"""
    ops = list(ops)
    versions = versions or VersionMap()
    if not ops:
        return Result(OK, 0, 0)
    head = _entries(ops)
    state = initial
    linearized = 0  # bitset of op indexes (ids are made dense below)
    index = {op.id: i for i, op in enumerate(ops)}
    stack: list[tuple[_Entry, str | None]] = []
    cache: set[tuple[int, str | None]] = set()
    entry = head.next
    steps = 0
    deepest: tuple[int, RegisterOp | None] = (-1, None)
    while entry is not None:
        steps += 1
        if steps > max_steps:
            return Result(UNKNOWN, steps, len(ops))
        if entry.is_call:
            legal, new_state = step(entry.op, state, versions)
            if legal:
                bits = linearized | (1 << index[entry.op.id])
                if (bits, new_state) not in cache:
                    cache.add((bits, new_state))
                    stack.append((entry, state))
                    state, linearized = new_state, bits
                    _lift(entry)
                    entry = head.next
                    continue
            entry = entry.next
            continue
        # A return whose operation is not linearized yet.
        if entry.op.unknown:
            # Unknown ops return at infinity, after every known return: all of those are placed.
            return Result(OK, steps, len(ops), linearized=[e.op.id for e, _ in stack])
        if len(stack) > deepest[0]:
            deepest = (len(stack), entry.op)
        if not stack:
            return Result(VIOLATION, steps, len(ops), blocked=deepest[1])
        top, state = stack.pop()
        linearized &= ~(1 << index[top.op.id])
        _unlift(top)
        entry = top.next
    return Result(OK, steps, len(ops), linearized=[e.op.id for e, _ in stack])
