"""The checker: after the faults stop and the cluster heals, prove nothing was lost or reordered.

Checks (each violation names its kind, key and the operations involved):

1. ``lost_write``: per key, the final value is the last acknowledged write or
   a later write whose outcome was unknown; an acknowledged delete stays deleted.
2. ``divergence``: every replica ends with identical contents and LSN.
3. ``non_linearizable``: strong reads and (conditional) writes, per key, by the
   WGL search (:mod:`kvstore.chaos.linearizability`); a search past its step
   cap is reported as undecided, never as a pass.
4. ``version_order``: per key, the versions of acknowledged writes rise in
   real-time order, and every strong read and 412 ``current_version`` fits
   that order (what a forked or rolled-back primary breaks first); a strong
   404 after an acknowledged put needs a delete that could explain it.
5. ``stale_min_lsn``: a ``min_lsn`` read answered below its ``min_lsn`` (or
   without ``X-Kv-Lsn``), older than the client's own acknowledged write
   (taken from the history as well as from what the workload recorded), or
   absent with no newer delete that started before the read ended to explain
   it (``min_lsn_ahead``: the primary lacks the client's write).
6. ``stale_read``: a read of any consistency misses a write that its
   ``X-Kv-Lsn`` (a lower bound: the replica's LSN before it read) says it
   reflects: older than a version <= that LSN that a majority held before
   the read started (an acknowledged write's, or one a strong read or a 412
   saw), or absent after one with no delete to explain it.
7. ``missing_final_view``: a pod the clients used, or kv-0, has no final
   view (the lost-write and convergence checks would have nothing to read).
   A zombie of kv-0 (``kv-0-zombie``, see the ``zombie-primary`` nemesis) is
   gone by the end and has none: its answers are judged like any pod's
   against the other pods' histories and kv-0's final view.
8. Also: ``phantom_value`` (a value no write wrote), ``failed_write_visible``
   (a write answered as not applied was seen), ``version_conflict`` (one value,
   two versions: replicas disagree) and ``server_error`` (a 500).
9. The watch streams: ``watch_order``, ``watch_duplicate``, ``watch_gap``,
   ``watch_phantom`` and ``watch_txn``, by :mod:`kvstore.chaos.watchcheck`.
10. Transactions join checks 1-8 as the per-key writes they made
    (:func:`kvstore.chaos.history.per_key`); ``txn_torn`` (not all of one
    transaction's keys at its version) and ``txn_compare`` (a branch its
    comparisons could not have chosen) are :mod:`kvstore.chaos.txncheck`'s.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any, Iterable

from kvstore.chaos import linearizability as lin
from kvstore.chaos.history import FAILED, OK, UNKNOWN, Op, per_key
from kvstore.chaos.nemesis import FAULTS
from kvstore.local.zombie import ZOMBIE_SUFFIX


# Every kind of violation, in the order the summary lists them.
KINDS = ("lost_write", "divergence", "missing_final_view", "non_linearizable", "version_order",
         "stale_min_lsn", "stale_read", "phantom_value", "failed_write_visible", "version_conflict",
         "server_error", "txn_torn", "txn_compare", "watch_order", "watch_duplicate", "watch_gap",
         "watch_phantom", "watch_txn")


@dataclass
class Violation:
    """One thing the store got wrong."""

    kind: str
    key: str | None
    message: str
    ops: list[int] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """For the JSON report."""
        return {"kind": self.kind, "key": self.key, "message": self.message, "ops": self.ops}


@dataclass
class ReplicaView:
    """One replica's final contents: its LSN and every key with (value, version)."""

    lsn: int
    contents: dict[str, tuple[str, int]]


@dataclass
class Report:
    """Everything the checker found."""

    violations: list[Violation] = field(default_factory=list)
    undecided: list[str] = field(default_factory=list)  # keys whose search hit its cap
    keys_checked: int = 0
    search_steps: int = 0
    watchers: int = 0
    watch_events: int = 0      # events the watch checks judged (kvstore.chaos.watchcheck)
    watch_covered: int = 0     # acknowledged writes inside a watched range, each required once
    watch_resyncs: int = 0     # re-reads after a non-resumable end: no event is owed across one
    watch_reconnects: int = 0  # resumable ends, each resumed from its position
    watch_partial: int = 0     # a session cut inside a transaction's lines: that LSN is not owed in full
    txns: Counter[str] = field(default_factory=Counter)  # transactions by outcome, and what was judged

    @property
    def verdict(self) -> str:
        """PASS, FAIL (any violation) or UNKNOWN (no violation, but not everything decided)."""
        if self.violations:
            return "FAIL"
        return "UNKNOWN" if self.undecided else "PASS"

    def counts(self) -> Counter[str]:
        """Violations by kind."""
        return Counter(v.kind for v in self.violations)


# ------------------------------------------------------------------------------ helpers
def _by_key(history: Iterable[Op]) -> dict[str, list[Op]]:
    keys: dict[str, list[Op]] = defaultdict(list)
    for op in history:
        keys[op.key].append(op)
    return keys


def _applied(op: Op) -> bool:
    """A write that took effect for sure."""
    return op.is_write and op.outcome == OK


def is_zombie(pod: str) -> bool:
    """Whether ``pod`` names a zombie (a second process of a pod, e.g. ``kv-0-zombie``)."""
    return pod.endswith(ZOMBIE_SUFFIX)


def _replica(name: str) -> str:
    """The pod a name stands for: a zombie of kv-0 speaks as kv-0."""
    return name[:-len(ZOMBIE_SUFFIX)] if is_zombie(name) else name


def _committed_observation(op: Op) -> bool:
    """Whether a read can only have seen what a majority holds.

    A strong read waits for that; a follower holds only what kv-0 sent it (with
    kv-0, a majority of three). A local or ``min_lsn`` read answered by kv-0 may
    show a write no follower holds yet, which kv-0 losing its volume undoes and
    whose version a later write may then carry.
    """
    return op.consistency == "strong" or not _replica(op.answered_by or op.pod or "").endswith("-0")


def build_versions(history: Iterable[Op], views: dict[str, ReplicaView] | None = None) -> tuple[
        dict[str, lin.VersionMap], list[Violation]]:
    """Per key: value <-> version from every acknowledged write and every read; conflicts are violations."""
    maps: dict[str, lin.VersionMap] = defaultdict(lin.VersionMap)
    out: list[Violation] = []
    seen_conflicts: set[tuple[str, str]] = set()

    def note(key: str, problem: str | None, op_id: int | None) -> None:
        if problem and (key, problem) not in seen_conflicts:
            seen_conflicts.add((key, problem))
            out.append(Violation("version_conflict", key, problem, [op_id] if op_id is not None else []))

    def add(key: str, value: str, version: int, op_id: int | None) -> None:
        note(key, maps[key].add(value, version), op_id)

    for op in history:
        if _applied(op) and op.f == "delete" and op.version is not None:
            note(op.key, maps[op.key].add_delete(op.version), op.id)
        elif _applied(op) and op.version is not None and op.value is not None:
            add(op.key, op.value, op.version, op.id)
        elif (op.f == "read" and op.outcome == OK and op.found and op.version is not None
              and op.observed is not None and _committed_observation(op)):
            add(op.key, op.observed, op.version, op.id)
    for pod, view in sorted((views or {}).items()):
        for key, (value, version) in view.contents.items():
            add(key, value, version, None)
    return maps, out


# -------------------------------------------------------------------------------- checks
def check_server_errors(history: Iterable[Op]) -> list[Violation]:
    """No input produces a 500."""
    return [Violation("server_error", op.key, f"{op.f} on {op.pod} answered 500 ({op.error})", [op.id])
            for op in history if op.status == 500]


def check_values(history: list[Op], views: dict[str, ReplicaView] | None = None) -> list[Violation]:
    """Every value seen was written by a write not known to have failed."""
    written: dict[tuple[str, str], Op] = {}
    for op in history:
        if op.is_write and op.value is not None:
            written[(op.key, op.value)] = op
    out: list[Violation] = []

    def seen(key: str, value: str, where: str, op_id: int | None) -> None:
        writer = written.get((key, value))
        ids = [op_id] if op_id is not None else []
        if writer is None:
            out.append(Violation("phantom_value", key, f"{where} saw {value!r}, which no write wrote", ids))
        elif writer.outcome == FAILED:
            out.append(Violation("failed_write_visible", key,
                                 f"{where} saw {value!r}, written by op {writer.id} that answered "
                                 f"{writer.status} {writer.error} (not applied)", ids + [writer.id]))

    for op in history:
        if op.f == "read" and op.outcome == OK and op.found and op.observed is not None:
            seen(op.key, op.observed, f"read {op.id} ({op.consistency}, {op.pod})", op.id)
    for pod, view in sorted((views or {}).items()):
        for key, (value, _) in sorted(view.contents.items()):
            if key.startswith("chaos/"):
                seen(key, value, f"final contents of {pod}", None)
    return out


def check_lost_writes(history: list[Op], final: dict[str, tuple[str, int]]) -> list[Violation]:
    """Per key: the final state is the last acknowledged write or a later write of unknown outcome."""
    out: list[Violation] = []
    keys = _by_key(history)
    for key, ops in sorted(keys.items()):
        acked = [op for op in ops if _applied(op) and op.version is not None]
        last = max(acked, key=lambda op: op.version) if acked else None
        if last is None:
            continue
        state = final.get(key)
        unknown_deletes = [op for op in ops if op.f == "delete" and op.outcome == UNKNOWN]
        if state is None:
            if last.f != "delete" and not unknown_deletes:
                out.append(Violation(
                    "lost_write", key, f"acknowledged {last.f} of {last.value!r} (version {last.version}, "
                    f"op {last.id}) is gone: the key is absent at the end and no delete could explain it",
                    [last.id]))
            continue
        value, version = state
        if version < last.version:
            what = "delete" if last.f == "delete" else f"{last.f} of {last.value!r}"
            out.append(Violation(
                "lost_write", key, f"acknowledged {what} (version {last.version}, op {last.id}) is lost: "
                f"the final value is {value!r} at version {version}", [last.id]))
        elif version == last.version and value != last.value:
            did = "deleted the key" if last.f == "delete" else f"wrote {last.value!r}"
            out.append(Violation("lost_write", key, f"version {version} holds {value!r}, but op {last.id} "
                                 f"{did} there", [last.id]))
        elif version > last.version:
            later = [op for op in ops if op.is_write and op.value == value]
            if not later or later[0].outcome != UNKNOWN:
                out.append(Violation("lost_write", key, f"final {value!r} at version {version} is after the "
                                     f"last acknowledged write (op {last.id}, version {last.version}) but was "
                                     "not written by a write of unknown outcome", [last.id]))
    return out


def check_convergence(views: dict[str, ReplicaView]) -> list[Violation]:
    """All replicas hold the same LSN and contents."""
    if len(views) < 2:
        return []
    reference_pod = sorted(views)[0]
    reference = views[reference_pod]
    out: list[Violation] = []
    for pod, view in sorted(views.items()):
        if pod == reference_pod:
            continue
        differing = sorted(k for k in set(reference.contents) | set(view.contents)
                           if reference.contents.get(k) != view.contents.get(k))
        if view.lsn != reference.lsn or differing:
            sample = ", ".join(f"{k}: {reference.contents.get(k)} vs {view.contents.get(k)}" for k in differing[:3])
            out.append(Violation("divergence", None,
                                 f"{pod} (lsn {view.lsn}) differs from {reference_pod} (lsn {reference.lsn}) "
                                 f"on {len(differing)} keys{': ' + sample if sample else ''}"))
    return out


def delete_explains(ops: list[Op], ended: float, version: int) -> bool:
    """Could a delete have made a key absent for a read that ended at ``ended``, after ``version``?

    Only a delete not known to have failed, that started before the read
    ended (touching intervals count as concurrent, as in the search) and,
    when its version is known, is newer than ``version``.
    """
    return any(d.f == "delete" and d.outcome != FAILED and d.call <= ended
               and (d.version is None or d.version > version) for d in ops)


def _own_write(op: Op, ops: list[Op]) -> tuple[int | None, bool]:
    """The client's own last acknowledged write on the key before ``op`` started: (version, was a delete).

    Taken from the history itself (a process is sequential) and from what the
    workload recorded, whichever is newer.
    """
    own, deleted = op.own_version, bool(op.own_deleted)
    for w in ops:
        if (w.process == op.process and _applied(w) and w.version is not None and w.ret is not None
                and w.ret <= op.call and (own is None or w.version > own)):
            own, deleted = w.version, w.f == "delete"
    return own, deleted


def check_min_lsn_reads(history: list[Op]) -> list[Violation]:
    """``min_lsn`` reads against ``min_lsn`` and the client's own acknowledged writes.

    ``X-Kv-Lsn`` must reach ``min_lsn`` (what it says about the value is
    :func:`check_lsn_bound_reads`'s). The value must be at least the client's
    own write, which may be newer than ``min_lsn``; absence needs a newer
    delete that started before the read ended.
    """
    out: list[Violation] = []
    keys = _by_key(history)
    for op in history:
        if op.f != "read" or op.consistency != "min_lsn" or op.outcome != OK or op.min_lsn is None:
            continue
        if op.status == 412:
            out.append(Violation("stale_min_lsn", op.key, f"read {op.id} on {op.pod}: min_lsn {op.min_lsn} "
                                 "(the client's own acknowledged write) is ahead of the primary", [op.id]))
            continue
        if op.lsn is None or op.lsn < op.min_lsn:
            out.append(Violation("stale_min_lsn", op.key, f"read {op.id} on {op.pod} answered at lsn {op.lsn} "
                                 f"< min_lsn {op.min_lsn}", [op.id]))
            continue
        own, own_deleted = _own_write(op, keys[op.key])
        own = max(own if own is not None else 0, op.min_lsn)
        if op.found:
            if op.version is not None and op.version < own:
                out.append(Violation("stale_min_lsn", op.key, f"read {op.id} on {op.pod} saw version "
                                     f"{op.version}, older than the client's own write (version {own})", [op.id]))
        elif not own_deleted and op.ret is not None:
            if not delete_explains(keys[op.key], op.ret, own):
                out.append(Violation("stale_min_lsn", op.key, f"read {op.id} on {op.pod} found the key absent "
                                     f"after the client's own write (version {own}) and no delete explains it",
                                     [op.id]))
    return out


def check_lsn_bound_reads(history: list[Op]) -> list[Violation]:
    """Reads against the ``X-Kv-Lsn`` they were answered with, a lower bound on what they reflect.

    The replica takes its LSN before it reads, and a version is the LSN of the
    write that made it, so an answer at ``L`` reflects every write with a
    version <= ``L`` on the replica's line of LSNs. A version names the same
    write there when a majority held it before the read started: an
    acknowledged write, or what a strong read or a 412 saw (kv-0 answers them
    only once a majority holds that state), that ended before the read
    started. (A newer one may not: kv-0 that loses its volume hands the LSNs
    of writes only it held, which a local read there may have shown, to new
    writes.) With ``v`` the highest such version <= ``L``: a value must be at
    least ``v`` (a delete at or below ``L`` after the value makes it stale
    too, as ``v`` is then at least that delete's), and absence when ``v``
    held a value needs a delete newer than ``v`` that started before the read
    ended. Writes of unknown outcome can only have made the answer newer, so
    they bound nothing; a delete of unknown outcome (its version unknown) may
    explain absence. A read without ``X-Kv-Lsn`` is not judged; a replica
    left on another history (diverged) is reported at the end anyway.
    """
    out: list[Violation] = []
    for key, ops in sorted(_by_key(history).items()):
        known = _order_points(ops)
        for r in ops:
            if r.found is None or r.lsn is None or r.ret is None:  # only a read answered 200 or 404 has found
                continue
            below = [(v, w, write) for w, v, write in known
                     if v <= r.lsn and w.ret is not None and w.ret < r.call]
            if not below:
                continue
            v, w, write = max(below, key=lambda p: p[0])
            where = f"read {r.id} ({r.consistency}, {r.pod}) answered at X-Kv-Lsn {r.lsn}"
            what = f"{w.f} {w.id} {'wrote' if write else 'saw'} version {v}"
            if r.found and r.version is not None and r.version < v:
                out.append(Violation("stale_read", key, f"{where} saw version {r.version}, but {what}",
                                     [w.id, r.id]))
            elif not r.found and w.f != "delete" and not delete_explains(ops, r.ret, v):
                out.append(Violation("stale_read", key, f"{where} found the key absent, but {what}, and no "
                                     "delete explains it", [w.id, r.id]))
    return out


def _order_points(ops: list[Op]) -> list[tuple[Op, int, bool]]:
    """(operation, version, is a write) for each operation that pins the key's version inside its interval."""
    points: list[tuple[Op, int, bool]] = []
    for op in ops:
        if op.ret is None:
            continue
        if _applied(op) and op.version is not None:
            points.append((op, op.version, True))
        elif (op.f == "read" and op.consistency == "strong" and op.outcome == OK and op.found
              and op.version is not None):
            points.append((op, op.version, False))
        elif op.f in ("cas", "create") and op.status == 412 and op.current_version is not None:
            points.append((op, op.current_version, False))
    return points


def check_version_order(history: list[Op]) -> list[Violation]:
    """Per key, versions never go back in real time: what ended before ``b`` started is not newer than ``b``.

    A write must be strictly newer than everything that ended before it
    started; a strong read or a 412's ``current_version`` at least as new.
    A strong 404 after an acknowledged put needs a delete, started before the
    read ended, newer than that put.
    """
    out: list[Violation] = []
    for key, ops in sorted(_by_key(history).items()):
        points = _order_points(ops)
        for b, vb, b_write in points:
            before = [(a, va) for a, va, _ in points if a.ret is not None and a.ret < b.call]
            if not before:
                continue
            a, va = max(before, key=lambda p: p[1])
            if vb < va or (b_write and vb == va):
                what = f"{b.f} {b.id} got" if b_write else f"{b.f} {b.id} saw"
                out.append(Violation("version_order", key, f"{what} version {vb}, but {a.f} {a.id}, which ended "
                                     f"before it started, had version {va}", [a.id, b.id]))
        for r in ops:
            if not (r.f == "read" and r.consistency == "strong" and r.outcome == OK and r.found is False
                    and r.ret is not None):
                continue
            before = [(a, va) for a, va, write in points if write and a.ret is not None and a.ret < r.call]
            if not before:
                continue
            a, va = max(before, key=lambda p: p[1])
            if a.f == "delete":
                continue
            if not delete_explains(ops, r.ret, va):
                out.append(Violation("version_order", key, f"strong read {r.id} found the key absent after "
                                     f"{a.f} {a.id} (version {va}) was acknowledged, and no delete explains it",
                                     [a.id, r.id]))
    return out


def check_final_views(history: list[Op], views: dict[str, ReplicaView], final_pod: str) -> list[Violation]:
    """Every pod the clients used, and the primary, has a final view: no check is skipped silently.

    A zombie is killed before the end, so it has none; kv-0 stands for it.
    """
    expected = {_replica(op.pod) for op in history} | ({final_pod} if history else set())
    missing = sorted(expected - set(views))
    if not missing:
        return []
    return [Violation("missing_final_view", None, f"no final view of {', '.join(missing)} "
                      f"(views of {sorted(views) or 'no pod'}): lost writes and convergence cannot be checked")]


def register_ops(ops: list[Op]) -> list[lin.RegisterOp]:
    """The operations of one key that the linearizability search considers."""
    out: list[lin.RegisterOp] = []
    for op in ops:
        ret = None if op.outcome == UNKNOWN else op.ret
        if op.f == "read":
            if op.consistency == "strong" and op.outcome == OK and op.status in (200, 404):
                out.append(lin.RegisterOp(op.id, lin.READ, op.call, op.ret,
                                          observed=op.observed if op.found else None))
            continue
        if op.outcome == FAILED:
            # A 412 / a 404 on delete is an observation; any other failure did nothing.
            if op.status == 412 and op.f in ("cas", "create"):
                out.append(lin.RegisterOp(op.id, op.f, op.call, op.ret, value=op.value,
                                          expect_version=op.expect_version, succeeded=False,
                                          current_version=op.current_version))
            elif op.status == 404 and op.f == "delete":
                out.append(lin.RegisterOp(op.id, lin.DELETE, op.call, op.ret, succeeded=False))
            continue
        # A transaction's put is a plain put of its key (its comparisons are txncheck's).
        kind = lin.PUT if op.f == "txn-put" else op.f
        out.append(lin.RegisterOp(op.id, kind, op.call, ret, value=op.value, expect_version=op.expect_version))
    return out


def check_linearizable(history: list[Op], final: dict[str, tuple[str, int]] | None,
                       versions: dict[str, lin.VersionMap], max_steps: int = lin.DEFAULT_MAX_STEPS,
                       report: Report | None = None) -> list[Violation]:
    """Per key WGL over strong reads and writes; with ``final``, the end state is one more strong read."""
    out: list[Violation] = []
    for key, ops in sorted(_by_key(history).items()):
        reg = register_ops(ops)
        end_read, end_state = None, None
        if final is not None:
            # The end state is a read after everything (unknown outcomes too may precede it).
            end_state = final.get(key)
            end_read = lin.RegisterOp(-2, lin.READ, math.inf, math.inf,
                                      observed=end_state[0] if end_state else None)
            reg.append(end_read)
        result = lin.check(reg, versions.get(key), max_steps=max_steps)
        if report is not None:
            report.keys_checked += 1
            report.search_steps += result.steps
        if result.verdict == lin.UNKNOWN:
            if report is not None:
                report.undecided.append(key)
            continue
        if result.verdict == lin.VIOLATION:
            blocked = result.blocked
            assert blocked is not None  # a violation always names the operation it could not place
            if blocked is end_read:
                what, ids = f"the final state {end_state}", []
            else:
                what, ids = f"op {blocked.id} ({blocked.kind}", [blocked.id]
                what += f" -> {blocked.observed!r})" if blocked.kind == lin.READ else f" {blocked.value!r})"
            out.append(Violation("non_linearizable", key, f"no linearization of {len(reg)} operations can "
                                 f"place {what}", ids))
    return out


def primary_pod(history: Iterable[Op], views: dict[str, ReplicaView]) -> str:
    """The primary's name: ordinal 0 of the StatefulSet the clients used (``kv-0`` when none is seen)."""
    for name in sorted({op.pod for op in history} | set(views)):
        statefulset, _, ordinal = name.rpartition("-")
        if statefulset and ordinal.isdigit():
            return f"{statefulset}-0"
    return "kv-0"


def check(history: list[Op], views: dict[str, ReplicaView], final_pod: str | None = None,
          max_steps: int = lin.DEFAULT_MAX_STEPS) -> Report:
    """Every per-key check over a finished run: ``views`` are the healed replicas' contents.

    Transactions take part as the per-key writes they made (:func:`per_key`);
    what holds across their keys is :mod:`kvstore.chaos.txncheck`'s.
    ``final_pod`` is the replica whose contents are the end state (default: the primary).
    """
    final_pod = final_pod or primary_pod(history, views)
    report = Report()
    raw, history = history, per_key(history)  # a transaction is judged per key as the writes it made
    versions, conflicts = build_versions(history, views)
    final = views[final_pod].contents if final_pod in views else None
    report.violations = [
        *check_final_views(raw, views, final_pod),
        *check_server_errors(raw),
        *conflicts,
        *check_values(history, views),
        *(check_lost_writes(history, final) if final is not None else []),
        *check_convergence(views),
        *check_min_lsn_reads(history),
        *check_lsn_bound_reads(history),
        *check_version_order(history),
        *check_linearizable(history, final, versions, max_steps, report),
    ]
    return report


# -------------------------------------------------------------------------------- figures
def outcome_table(history: Iterable[Op]) -> dict[str, Counter[str]]:
    """Operations by kind (reads split by consistency) and outcome."""
    table: dict[str, Counter[str]] = defaultdict(Counter)
    for op in history:
        kind = f"read/{op.consistency}" if op.f == "read" else op.f
        outcome = op.outcome
        if op.f != "read" and op.outcome == FAILED and op.status in (412, 404):
            outcome = "rejected"  # a condition not met: an answer, not a fault
        if op.f == "txn" and op.outcome == OK and op.succeeded is False:
            outcome = "rejected"  # its comparisons did not hold: the failure branch ran
        table[kind][outcome] += 1
    return table


def fault_counts(faults: Iterable[dict[str, Any]]) -> Counter[str]:
    """Faults injected by kind (those on kv-0 counted apart as well, as ``<kind>_primary``)."""
    counts: Counter[str] = Counter()
    for entry in faults:
        if entry["fault"] in FAULTS:
            counts[entry["fault"]] += 1
            if entry["pod"].endswith("-0"):
                counts[entry["fault"] + "_primary"] += 1
    return counts


def longest_write_gap_after_primary_kill(history: list[Op], faults: list[dict[str, Any]],
                                         end: float) -> tuple[float, bool]:
    """The longest time from a kill of kv-0 to the next successful write invoked after it.

    Returns (seconds, open): ``open`` when no write succeeded before ``end``.
    """
    writes = sorted((op.call, op.ret) for op in history if _applied(op) and op.ret is not None)
    longest, still_open = 0.0, False
    for entry in faults:
        if entry["fault"] != "kill" or not entry["pod"].endswith("-0"):
            continue
        t = entry["time"]
        done = next((ret for call, ret in writes if call >= t), None)
        gap = (done if done is not None else end) - t
        if gap > longest:
            longest, still_open = gap, done is None
    return longest, still_open
