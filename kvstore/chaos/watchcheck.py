"""The watch checks: what the chaos watchers read against what the clients wrote.

A watcher's records split into *runs*: from a start line to a re-sync (a
non-resumable end, then a re-read). Within a run the watcher resumed after
every cut from its last position, so the run covers every LSN from its first
start line's ``lsn`` (exclusive) to the highest position it reached (an
event's version, a keepalive's or a start line's ``lsn``). For each run:

- ``watch_order``: events come in log order: each version above the last
  one (and above the run's first position), so each key's events follow the
  order of its writes' versions, which the checker proves in real time;
- ``watch_duplicate``: no (key, version) is shown twice;
- ``watch_gap``: every acknowledged write (put, compare-and-set, create,
  delete) to a key under the prefix whose version lies in the covered range
  appears;
- ``watch_phantom``: every event was made by a client's write that is not
  known to have failed (acknowledged or of unknown outcome), to that key,
  at that version when its version is known; a put event carries the write's
  value, a delete event names a delete; and no event is outside the prefix;
- ``watch_txn``: a transaction is one entry, so every event of its puts
  carries one version, and a run that shows one of them shows every put of
  that branch.

A transaction's keys are one line each at the same LSN, so a cut may fall
between them. The watcher then resumes from that LSN (skipping the keys it
read there), so the rest is owed like any write; only where it never comes
back (its deadline, a re-sync) is the rest of that entry not owed: such an
LSN is *partial* and counted apart.

Across a re-sync nothing is required: the watcher read the keys again.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Iterable

from kvstore.chaos.checker import Report, Violation
from kvstore.chaos.history import FAILED, OK, Op, WatchRecord, per_key

@dataclass
class Run:
    """One watcher's stream between re-syncs: the LSNs it covers and the events it read."""

    watcher: int
    prefix: str
    lo: int   # events follow from lo + 1
    hi: int   # every LSN up to hi was scanned
    events: list[WatchRecord] = field(default_factory=list)
    sessions: int = 1  # connections: 1 + reconnects without a re-sync
    partial: set[int] = field(default_factory=set)  # a session's last event's LSN, not read past before a cut


@dataclass
class Write:
    """One key written by a client operation (a transaction makes one per key, all with its id)."""

    key: str
    value: str | None  # None: a delete
    version: int | None
    op: Op             # the operation, or for a transaction its write of this key (per_key)


def writes(history: Iterable[Op]) -> list[Write]:
    """Every key each write operation writes, a transaction's as :func:`~kvstore.chaos.history.per_key` says."""
    return [Write(op.key, None if op.f == "delete" else op.value, op.version, op)
            for op in per_key(history) if op.is_write]


def runs(records: Iterable[WatchRecord]) -> list[Run]:
    """The records split per watcher into runs (records of no run, like a failed re-read, are skipped)."""
    out: list[Run] = []
    current: dict[int, Run] = {}
    tail: dict[int, int] = {}  # per watcher: its session's last event's LSN, until the stream reads past it
    last_cut: dict[int, int] = {}  # per watcher: the LSN its last session was cut inside, until it resumes

    def cut(watcher: int, run: Run | None) -> None:
        if watcher in tail and run is not None:
            last_cut[watcher] = tail.pop(watcher)
            run.partial.add(last_cut[watcher])

    for r in records:
        run = current.get(r.watcher)
        if r.type == "start" and r.lsn is not None:
            # A new session of the run: the watcher resumes from where it was cut, so what it
            # had not read of that LSN is owed again.
            tail.pop(r.watcher, None)
            if run is not None and r.watcher in last_cut:
                run.partial.discard(last_cut.pop(r.watcher))
            if run is None:
                current[r.watcher] = run = Run(r.watcher, r.prefix, r.lsn, r.lsn)
                out.append(run)
            else:
                run.sessions += 1
                run.hi = max(run.hi, r.lsn)  # past what it had reached: what lies between was skipped
        elif run is None:
            continue
        elif r.is_event and r.version is not None:
            run.events.append(r)
            run.hi = max(run.hi, r.version)
            tail[r.watcher] = r.version
        elif r.type == "keepalive" and r.lsn is not None:
            run.hi = max(run.hi, r.lsn)
            tail.pop(r.watcher, None)  # every change up to it was scanned
        elif r.type == "end":
            if r.lsn is not None and r.lsn >= tail.get(r.watcher, r.lsn):
                tail.pop(r.watcher, None)  # its error line says it scanned that far
            cut(r.watcher, run)
            if r.resumable is False:
                del current[r.watcher]
        elif r.type == "resync":
            cut(r.watcher, run)
            del current[r.watcher]
    for watcher, run in current.items():  # the records end inside a session: its last LSN is as cut
        cut(watcher, run)
    return out


def _phantom(e: WatchRecord, run: Run, by_value: dict[tuple[str, str], Write],
             by_key: dict[str, list[Write]]) -> str | None:
    """Why the event cannot be a client's write (None: it can)."""
    where = f"watcher {e.watcher} on {e.pod}: {e.type} {e.key} at version {e.version}"
    if e.key is None or not e.key.startswith(run.prefix):
        return f"{where} is outside its prefix {run.prefix!r}"
    if e.type == "put":
        w = by_value.get((e.key, e.value or ""))
        if w is None:
            return f"{where} carries {e.value!r}, which no write to the key wrote"
        if w.op.outcome == FAILED:
            return (f"{where} carries {e.value!r}, written by op {w.op.id} that answered {w.op.status} "
                    f"{w.op.error} (not applied)")
        if w.op.outcome == OK and w.version is not None and w.version != e.version:
            return f"{where} carries {e.value!r}, which op {w.op.id} wrote at version {w.version}"
        return None
    ops = by_key.get(e.key, [])
    deletes = [w for w in ops if w.value is None and w.op.outcome != FAILED]
    put = next((w for w in ops if w.value is not None and w.op.outcome == OK and w.version == e.version), None)
    if put is not None:
        return f"{where}, but op {put.op.id} wrote {put.value!r} at that version"
    if not any(w.op.outcome != OK or w.version in (None, e.version) for w in deletes):
        return f"{where}, but no delete of the key that may have applied has that version"
    return None


def check_watches(history: list[Op], records: list[WatchRecord],
                  report: Report | None = None) -> list[Violation]:
    """Every run's events against the history (the violations); counts events and re-syncs into ``report``."""
    written = writes(history)
    by_value = {(w.key, w.value): w for w in written if w.value is not None}
    by_key: dict[str, list[Write]] = defaultdict(list)
    for w in written:
        by_key[w.key].append(w)
    acked = sorted((w for w in written if w.op.outcome == OK and w.version is not None),
                   key=lambda w: w.version or 0)
    out: list[Violation] = []
    txn_versions: dict[int, dict[int, WatchRecord]] = defaultdict(dict)  # txn id -> version -> an event
    by_txn: dict[tuple[int, str | None], list[Write]] = defaultdict(list)  # a transaction's puts per branch
    for w in written:
        if w.op.branch is not None and w.value is not None:
            by_txn[(w.op.id, w.op.branch)].append(w)
    for run in runs(records):
        seen: dict[tuple[str | None, int | None], WatchRecord] = {}
        last: WatchRecord | None = None
        last_of_key: dict[str | None, WatchRecord] = {}
        for e in run.events:
            where = f"watcher {e.watcher} on {e.pod}: {e.type} {e.key} at version {e.version}"
            assert e.version is not None  # runs() keeps only events with a version
            if (e.key, e.version) in seen:
                out.append(Violation("watch_duplicate", e.key, f"{where} was shown before (on "
                                     f"{seen[(e.key, e.version)].pod}), in the same run"))
                continue
            seen[(e.key, e.version)] = e
            before = last_of_key.get(e.key)
            if before is not None and before.version is not None and e.version < before.version:
                out.append(Violation("watch_order", e.key, f"{where} came after the key's event at version "
                                     f"{before.version}"))
            elif last is not None and last.version is not None and e.version < last.version:
                out.append(Violation("watch_order", e.key, f"{where} came after {last.key} at version "
                                     f"{last.version}: not in log order"))
            elif e.version <= run.lo:
                out.append(Violation("watch_order", e.key, f"{where} is at or before the position the run "
                                     f"started from ({run.lo})"))
            if last is None or (last.version or 0) < e.version:
                last = e
            last_of_key[e.key] = e
            problem = _phantom(e, run, by_value, by_key)
            if problem:
                out.append(Violation("watch_phantom", e.key, problem))
        out += _txn_events(run, seen, by_value, by_txn, txn_versions)
        for w in acked:
            if w.version is None or not run.lo < w.version <= run.hi or not w.key.startswith(run.prefix):
                continue
            shown = seen.get((w.key, w.version))
            if shown is None and w.version in run.partial:
                if report is not None:
                    report.watch_partial += 1
                continue  # cut inside its transaction's lines, and the watcher never came back
            if report is not None:
                report.watch_covered += 1
            if shown is None or shown.value != w.value or (shown.type == "delete") != (w.value is None):
                what = "delete" if w.value is None else f"{w.op.f} of {w.value!r}"
                out.append(Violation("watch_gap", w.key, f"watcher {run.watcher} scanned lsn {run.lo + 1} to "
                                     f"{run.hi} without a re-sync but never showed the acknowledged {what} "
                                     f"at version {w.version}", [w.op.id]))
        if report is not None:
            report.watch_events += len(run.events)
    if report is not None:
        report.watch_resyncs += sum(1 for r in records if r.type == "resync")
        report.watch_reconnects += sum(1 for r in records if r.type == "end" and r.resumable
                                       and r.error != "deadline")
        report.watchers = len({r.watcher for r in records})
    return out


def _txn_events(run: Run, seen: dict[tuple[str | None, int | None], WatchRecord],
                by_value: dict[tuple[str, str], Write], by_txn: dict[tuple[int, str | None], list[Write]],
                txn_versions: dict[int, dict[int, WatchRecord]]) -> list[Violation]:
    """``watch_txn``: one version per transaction, and a run that shows one of its puts shows them all."""
    out: list[Violation] = []
    shown: dict[tuple[int, str | None], int] = {}  # (txn id, branch) -> the version a run showed it at
    torn: set[int] = set()  # shown at two versions: reported once, not again as a missing key
    for e in run.events:
        w = by_value.get((e.key or "", e.value or "")) if e.type == "put" else None
        if w is None or w.op.branch is None or e.version is None:
            continue
        versions = txn_versions[w.op.id]
        if versions and e.version not in versions:
            other = next(iter(versions.values()))
            out.append(Violation("watch_txn", e.key, f"watcher {e.watcher} on {e.pod}: put {e.key} of txn "
                                 f"{w.op.id} at version {e.version}, but watcher {other.watcher} on {other.pod} "
                                 f"showed its {other.key} at {other.version}: one transaction, one LSN",
                                 [w.op.id]))
            torn.add(w.op.id)
        versions.setdefault(e.version, e)
        shown.setdefault((w.op.id, w.op.branch), e.version)
    for (txn, branch), version in sorted(shown.items(), key=lambda item: item[1]):
        if version in run.partial or txn in torn:
            continue  # cut inside its lines: the rest is not owed
        # An acknowledged one's missing key is a watch_gap already.
        missing = sorted(w.key for w in by_txn[(txn, branch)]
                         if w.op.outcome != OK and w.key.startswith(run.prefix) and (w.key, version) not in seen)
        if missing:
            out.append(Violation("watch_txn", missing[0], f"watcher {run.watcher} showed txn {txn} at version "
                                 f"{version} but not its put of {', '.join(missing)} (one entry, every key)",
                                 [txn]))
    return out
