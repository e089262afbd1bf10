"""Transactions in the chaos checker, on hand-made histories: whole ones pass, torn ones and wrong
comparisons are reported, per key and across keys, in the operations and in the watch streams.

Times are seconds, an operation is (call, ret); versions are LSNs, and a
transaction's keys all carry its LSN.
"""

from __future__ import annotations

from typing import Any

from kvstore.chaos import checker, watchcheck
from kvstore.chaos.cli import check, txn_text
from kvstore.chaos.history import FAILED, OK, UNKNOWN, Op, WatchRecord, per_key

A, B = "chaos/a", "chaos/b"


class H:
    """A history builder: single-key operations and transactions."""

    def __init__(self) -> None:
        self.ops: list[Op] = []

    def add(self, f: str, key: str, call: float, ret: float | None, outcome: str = OK, **kw: Any) -> Op:
        kw.setdefault("status", 200 if outcome == OK else None)
        op = Op(id=len(self.ops), process=0, key=key, f=f, pod=kw.pop("pod", "kv-0"), call=call, ret=ret,
                outcome=outcome, **kw)
        self.ops.append(op)
        return op

    def put(self, key: str, value: str, version: int | None, call: float, ret: float | None,
            outcome: str = OK) -> Op:
        return self.add("put", key, call, ret, outcome, value=value, version=version)

    def read(self, key: str, value: str | None, version: int | None, call: float, ret: float,
             consistency: str = "strong", lsn: int | None = None, pod: str = "kv-0") -> Op:
        return self.add("read", key, call, ret, consistency=consistency, observed=value, version=version,
                        found=value is not None, status=200 if value is not None else 404, lsn=lsn, pod=pod)

    def txn(self, call: float, ret: float | None, compare: list[dict[str, Any]], success: dict[str, str | None],
            failure: dict[str, str | None] | None = None, outcome: str = OK, succeeded: bool | None = None,
            version: int | None = None, changed: list[dict[str, Any]] | None = None) -> Op:
        """``success``/``failure``: key -> value (None: a delete)."""
        def branch(changes: dict[str, str | None]) -> list[dict[str, Any]]:
            return [{"op": "delete", "key": k} if v is None else {"op": "put", "key": k, "value": v}
                    for k, v in changes.items()]
        failure = failure or {}
        kw: dict[str, Any] = {}
        if outcome == OK:
            ran = success if succeeded else failure
            kw = {"succeeded": succeeded, "branch": "success" if succeeded else "failure", "version": version,
                  "changed": changed if changed is not None else [
                      {"key": k, "version": version, "deleted": v is None} for k, v in ran.items()]}
        keys = list(dict.fromkeys([c["key"] for c in compare] + list(success) + list(failure)))
        return self.add("txn", keys[0], call, ret, outcome, keys=keys, compare=compare,
                        success=branch(success), failure=branch(failure), **kw)


def views(lsn: int, **contents: tuple[str, int]) -> dict[str, checker.ReplicaView]:
    state = {f"chaos/{k}": v for k, v in contents.items()}
    return {pod: checker.ReplicaView(lsn, dict(state)) for pod in ("kv-0", "kv-1", "kv-2")}


def kinds(report: checker.Report) -> list[str]:
    return sorted(v.kind for v in report.violations)


def good() -> H:
    """Two keys: a put, a transaction that succeeds, one whose comparison fails (its failure branch
    writes), and one of unknown outcome that was applied and seen whole."""
    h = H()
    h.put(A, "p0-1", 1, 0, 1)
    h.txn(2, 3, [{"key": A, "version": 1}, {"key": B, "absent": True}], {A: "t1", B: "t2"}, {A: "f1"},
          succeeded=True, version=3)
    h.read(A, "t1", 3, 4, 5, lsn=3)
    h.txn(6, 7, [{"key": A, "version": 1}], {A: "t3", B: "t4"}, {B: "f2"}, succeeded=False, version=5)
    h.read(B, "f2", 5, 8, 9, lsn=5)
    h.txn(10, 11, [{"key": B, "version": 5}], {A: "u1", B: "u2"}, outcome=UNKNOWN)
    h.read(A, "u1", 7, 12, 13, lsn=7)
    h.read(B, "u2", 7, 14, 15, lsn=7, consistency="local", pod="kv-1")
    return h


def good_final() -> dict[str, checker.ReplicaView]:
    return views(7, a=("u1", 7), b=("u2", 7))


# ------------------------------------------------------------------------------- passes
def test_whole_transactions_with_true_and_false_comparisons_pass() -> None:
    h = good()
    report = check(h.ops, [], good_final(), max_steps=100_000)
    assert report.verdict == "PASS", report.violations
    assert report.txns["ok"] == 2 and report.txns["unknown"] == 1 and report.txns["unknown_seen"] == 1
    assert report.txns["succeeded"] == 1 and report.txns["not_succeeded"] == 1
    assert report.txns["compares_judged"] == 3
    assert report.keys_checked == 2
    assert "transactions: 3 checked: ok 2 (succeeded 1, failure branch 1), failed 0, unknown 1" in txn_text(report)


def test_per_key_makes_each_branch_a_write_of_its_keys() -> None:
    h = good()
    h.txn(16, 17, [{"key": A, "version": 7}], {A: "x1"}, {B: "x2"}, outcome=FAILED)
    flat = per_key(h.ops)
    acked = [(op.key, op.value, op.version, op.outcome) for op in flat if op.id == 1]
    assert acked == [(A, "t1", 3, OK), (B, "t2", 3, OK), (A, "f1", None, FAILED)]
    assert [(op.key, op.value, op.outcome) for op in flat if op.id == 5] == [(A, "u1", UNKNOWN), (B, "u2", UNKNOWN)]
    assert [(op.key, op.outcome) for op in flat if op.id == 8] == [(A, FAILED), (B, FAILED)]
    # The record survives its JSON line.
    assert Op.from_dict(__import__("json").loads(h.ops[1].to_json())) == h.ops[1]


def test_a_delete_of_an_absent_key_in_a_transaction_writes_nothing() -> None:
    h = H()
    h.put(A, "p0-1", 1, 0, 1)
    h.txn(2, 3, [{"key": A, "version": 1}], {A: "t1", B: None}, succeeded=True, version=3,
          changed=[{"key": A, "version": 3, "deleted": False}])
    assert [(op.key, op.f) for op in per_key(h.ops) if op.id == 1] == [(A, "txn-put")]
    report = check(h.ops, [], views(3, a=("t1", 3)), max_steps=100_000)
    assert report.verdict == "PASS", report.violations


def test_a_write_of_unknown_version_leaves_a_failed_comparison_undecided() -> None:
    h = H()
    h.put(A, "p0-1", 1, 0, 1)
    h.put(A, "p0-2", None, 1.5, None, outcome=UNKNOWN)  # may have landed before the transaction
    h.txn(2, 3, [{"key": A, "version": 1}], {A: "t1", B: "t2"}, {B: "f1"}, succeeded=False, version=3)
    report = check(h.ops, [], views(3, a=("p0-1", 1), b=("f1", 3)), max_steps=100_000)
    assert report.verdict == "PASS", report.violations


# ----------------------------------------------------------------------------- torn
def test_an_answer_listing_a_key_at_another_version_is_torn() -> None:
    h = H()
    h.txn(0, 1, [{"key": A, "absent": True}], {A: "t1", B: "t2"}, succeeded=True, version=3,
          changed=[{"key": A, "version": 3, "deleted": False}, {"key": B, "version": 4, "deleted": False}])
    report = check(h.ops, [], views(4, a=("t1", 3), b=("t2", 3)), max_steps=100_000)
    assert "txn_torn" in kinds(report)
    assert "lists chaos/b at version 4" in next(v.message for v in report.violations if v.kind == "txn_torn")


def test_an_unknown_transaction_seen_on_one_key_but_missing_on_the_other_at_the_end_is_torn() -> None:
    h = good()
    del h.ops[7]  # nobody read b's u2 ...
    report = check(h.ops, [], views(7, a=("u1", 7), b=("f2", 5)), max_steps=100_000)  # ... and it is not there
    assert kinds(report) == ["txn_torn"]
    assert "chaos/b ends as 'f2' at version 5" in report.violations[0].message


def test_an_unknown_transaction_seen_at_two_versions_is_torn() -> None:
    h = good()
    h.ops[7].version = 8  # b's u2 at 8, a's u1 at 7: two entries
    report = check(h.ops, [], views(8, a=("u1", 7), b=("u2", 8)), max_steps=100_000)
    assert kinds(report) == ["txn_torn"]
    assert "different versions" in report.violations[0].message


def test_both_branches_of_an_unknown_transaction_seen_is_torn() -> None:
    h = H()
    h.txn(0, None, [{"key": A, "absent": True}], {A: "u1"}, {B: "u2"}, outcome=UNKNOWN)
    h.read(A, "u1", 3, 1, 2)
    report = check(h.ops, [], views(4, a=("u1", 3), b=("u2", 4)), max_steps=100_000)
    assert "txn_torn" in kinds(report) and "both branches" in report.violations[0].message


def test_a_read_older_than_a_transaction_another_of_whose_keys_was_seen_is_torn() -> None:
    h = good()
    # After the strong read of a's u1 (at 7) ended, a follower at lsn 8 still had b's f2 (version 5).
    h.read(B, "f2", 5, 13.5, 14, lsn=8, consistency="local", pod="kv-1")
    report = check(h.ops, [], good_final(), max_steps=100_000)
    assert kinds(report) == ["txn_torn"]
    assert "saw version 5, older than the transaction's 7" in report.violations[0].message
    # The same read before anything showed the transaction applied proves nothing.
    h.ops[-1].call, h.ops[-1].ret = 11.5, 12
    assert check(h.ops, [], good_final(), max_steps=100_000).verdict == "PASS"


def test_a_key_of_an_acknowledged_transaction_read_older_is_not_linearizable() -> None:
    h = H()
    h.put(A, "p0-1", 1, 0, 1)
    h.txn(2, 3, [{"key": A, "version": 1}], {A: "t1", B: "t2"}, succeeded=True, version=3)
    h.read(A, "p0-1", 1, 4, 5, lsn=3)
    report = check(h.ops, [], views(3, a=("t1", 3), b=("t2", 3)), max_steps=100_000)
    assert "non_linearizable" in kinds(report) and "stale_read" in kinds(report)


# ---------------------------------------------------------------------------- compares
def test_success_while_a_compared_version_was_overwritten_is_a_compare_violation() -> None:
    h = H()
    h.put(A, "p0-1", 1, 0, 1)
    h.put(A, "p0-2", 3, 2, 3)
    h.txn(4, 5, [{"key": A, "version": 1}], {A: "t1", B: "t2"}, succeeded=True, version=5)
    report = check(h.ops, [], views(5, a=("t1", 5), b=("t2", 5)), max_steps=100_000)
    assert kinds(report) == ["txn_compare"]
    assert "written at version 3, after 1 and before 5" in report.violations[0].message


def test_success_of_an_absent_compare_on_a_present_key_is_a_compare_violation() -> None:
    h = H()
    h.put(B, "p0-1", 1, 0, 1)
    h.txn(2, 3, [{"key": B, "absent": True}], {A: "t1", B: "t2"}, succeeded=True, version=3)
    report = check(h.ops, [], views(3, a=("t1", 3), b=("t2", 3)), max_steps=100_000)
    assert kinds(report) == ["txn_compare"]
    # A delete that may lie between makes it undecided, not a violation.
    h.add("delete", B, 1.5, None, outcome=UNKNOWN)
    assert check(h.ops, [], views(3, a=("t1", 3), b=("t2", 3)), max_steps=100_000).verdict == "PASS"


def test_failure_while_every_comparison_held_is_a_compare_violation() -> None:
    h = H()
    h.put(A, "p0-1", 1, 0, 1)
    h.txn(2, 3, [{"key": A, "version": 1}, {"key": B, "absent": True}], {A: "t1", B: "t2"}, {B: "f1"},
          succeeded=False, version=3)
    report = check(h.ops, [], views(3, a=("p0-1", 1), b=("f1", 3)), max_steps=100_000)
    assert kinds(report) == ["txn_compare"]
    assert "took its failure branch at 3, but every comparison held" in report.violations[0].message


def test_an_unknown_transaction_seen_applied_has_its_comparisons_judged() -> None:
    h = good()
    h.ops[5].compare = [{"key": B, "version": 3}]  # b was f2 at 5 by then: the success branch could not run
    report = check(h.ops, [], good_final(), max_steps=100_000)
    assert kinds(report) == ["txn_compare"]


# ------------------------------------------------------------------------------- watches
def line(kind: str, watcher: int = 0, **kw: Any) -> WatchRecord:
    return WatchRecord(watcher=watcher, type=kind, time=0.0, pod="kv-1", prefix="chaos/", **kw)


def test_watch_events_of_a_transaction_at_one_lsn_pass_and_its_writes_are_the_watchers() -> None:
    h = good()
    records = [line("start", lsn=0), line("put", key=A, value="p0-1", version=1),
               line("put", key=A, value="t1", version=3), line("put", key=B, value="t2", version=3),
               line("put", key=B, value="f2", version=5), line("put", key=A, value="u1", version=7),
               line("put", key=B, value="u2", version=7), line("keepalive", lsn=7)]
    written = [(w.key, w.value, w.version) for w in watchcheck.writes(h.ops) if w.op.outcome == OK]
    assert written == [(A, "p0-1", 1), (A, "t1", 3), (B, "t2", 3), (B, "f2", 5)]
    report = checker.Report()
    assert watchcheck.check_watches(h.ops, records, report) == []
    assert report.watch_covered == 4 and report.watch_events == 6


def test_a_transaction_shown_at_two_lsns_or_in_part_is_a_watch_violation() -> None:
    h = good()
    split = [line("start", lsn=5), line("put", key=A, value="u1", version=7),
             line("put", key=B, value="u2", version=8), line("keepalive", lsn=8)]
    assert [v.kind for v in watchcheck.check_watches(h.ops, split)] == ["watch_txn"]
    half = [line("start", lsn=5), line("put", key=A, value="u1", version=7), line("keepalive", lsn=9)]
    violations = watchcheck.check_watches(h.ops, half)
    assert [v.kind for v in violations] == ["watch_txn"] and "not its put of chaos/b" in violations[0].message


def test_a_stream_cut_inside_a_transactions_lines_is_resumed_from_that_lsn() -> None:
    h = good()
    # Cut after a's t1 at 3; resumed from 3 (b's t2 is shown, a's is not again): nothing is missing.
    cut = [line("start", lsn=2), line("put", key=A, value="t1", version=3), line("end", error="EOF", resumable=True),
           line("start", lsn=2, from_lsn=3), line("put", key=B, value="t2", version=3),
           line("put", key=B, value="f2", version=5), line("keepalive", lsn=5)]
    report = checker.Report()
    assert watchcheck.check_watches(h.ops, cut, report) == []
    assert report.watch_partial == 0
    # Resumed after it instead (from 4): b's t2 at 3 was skipped, a gap.
    skipped = cut[:3] + [line("start", lsn=3, from_lsn=4), line("put", key=B, value="f2", version=5),
                         line("keepalive", lsn=5)]
    assert [v.kind for v in watchcheck.check_watches(h.ops, skipped)] == ["watch_gap"]
    # Cut at its deadline (it never comes back): only what it read of that LSN is owed.
    report = checker.Report()
    assert watchcheck.check_watches(h.ops, cut[:3], report) == []
    assert report.watch_partial == 1
