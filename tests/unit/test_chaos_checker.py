"""The chaos checker on small hand-made histories: it passes good ones and reports each bad one.

Times are seconds; an operation is (call, ret). Values are unique, as the
workload makes them; versions are the LSNs the store would answer.
"""

from __future__ import annotations

import pytest

from kvstore.chaos import checker
from kvstore.chaos import linearizability as lin
from kvstore.chaos.history import FAILED, OK, UNKNOWN, Op, classify_exception, classify_read, classify_write


class H:
    """A tiny history builder."""

    def __init__(self) -> None:
        self.ops: list[Op] = []

    def add(self, f: str, call: float, ret: float | None, outcome: str = OK, key: str = "chaos/k",
            process: int = 0, **kw: object) -> Op:
        op = Op(id=len(self.ops), process=process, key=key, f=f, pod=str(kw.pop("pod", "kv-0")), call=call,
                ret=ret, outcome=outcome, **kw)
        self.ops.append(op)
        return op

    def put(self, value: str, version: int | None, call: float, ret: float | None, outcome: str = OK,
            **kw: object) -> Op:
        kw.setdefault("status", 200 if outcome == OK else None)
        return self.add("put", call, ret, outcome, value=value, version=version, **kw)

    def read(self, observed: str | None, version: int | None, call: float, ret: float,
             consistency: str = "strong", **kw: object) -> Op:
        return self.add("read", call, ret, OK, consistency=consistency, observed=observed, version=version,
                        found=observed is not None, status=200 if observed is not None else 404, **kw)


def view(lsn: int, **contents: tuple[str, int]) -> checker.ReplicaView:
    return checker.ReplicaView(lsn, {k.replace("_", "/"): v for k, v in contents.items()})


def final(value: str | None, version: int, lsn: int | None = None) -> dict[str, checker.ReplicaView]:
    contents = {"chaos/k": (value, version)} if value is not None else {}
    return {pod: checker.ReplicaView(lsn or version, dict(contents)) for pod in ("kv-0", "kv-1", "kv-2")}


def kinds(report: checker.Report) -> set[str]:
    return {v.kind for v in report.violations}


# ------------------------------------------------------------------------- known good
def test_sequential_and_concurrent_good_history_passes() -> None:
    h = H()
    h.put("a", 1, 0, 1)
    h.read("a", 1, 2, 3)
    h.put("b", 2, 4, 6)
    h.read("a", 1, 4.5, 5)          # concurrent with put b: may see the old value
    h.read("b", 2, 5.5, 7)          # also concurrent: may see the new one
    h.add("cas", 8, 9, value="c", expect_version=2, version=3, status=200)
    h.add("cas", 10, 11, FAILED, value="d", expect_version=2, status=412, current_version=3)
    h.read("c", 3, 12, 13, consistency="min_lsn", min_lsn=3, own_version=3, own_deleted=False, lsn=3)
    report = checker.check(h.ops, final("c", 3))
    assert report.verdict == "PASS", report.violations


def test_unknown_write_may_take_effect_or_not() -> None:
    for seen in ("a", "x"):
        h = H()
        h.put("a", 1, 0, 1)
        h.put("x", None, 2, None, outcome=UNKNOWN)  # a timeout: it may or may not have happened
        h.read(seen, 1 if seen == "a" else 5, 10, 11)
        report = checker.check(h.ops, final(seen, 1 if seen == "a" else 5))
        assert report.verdict == "PASS", (seen, report.violations)


def test_unknown_write_is_not_placed_before_its_invocation() -> None:
    h = H()
    h.read("x", 5, 0, 1)                             # sees x before anybody wrote it...
    h.put("x", None, 2, None, outcome=UNKNOWN)       # ...the write started later
    result = lin.check(checker.register_ops(h.ops))
    assert result.verdict == lin.VIOLATION


# -------------------------------------------------------------------------- known bad
def test_lost_acknowledged_write_is_reported() -> None:
    h = H()
    h.put("a", 1, 0, 1)
    h.put("b", 2, 2, 3)                 # acknowledged
    report = checker.check(h.ops, final("a", 1))  # but the cluster ends with the older value
    assert "lost_write" in kinds(report)
    assert "non_linearizable" in kinds(report)    # the final state is a read of the register, too
    assert report.verdict == "FAIL"


def test_lost_acknowledged_delete_is_reported() -> None:
    h = H()
    h.put("a", 1, 0, 1)
    h.add("delete", 2, 3, version=2, status=200)
    report = checker.check(h.ops, final("a", 1, lsn=2))
    assert "lost_write" in kinds(report)


def test_key_gone_without_a_delete_is_a_lost_write() -> None:
    h = H()
    h.put("a", 1, 0, 1)
    report = checker.check(h.ops, final(None, 0, lsn=1))
    assert "lost_write" in kinds(report)
    # With a delete of unknown outcome, absent is a legal end.
    h.add("delete", 2, None, UNKNOWN)
    assert "lost_write" not in kinds(checker.check(h.ops, final(None, 0, lsn=2)))


def test_diverged_replica_is_reported() -> None:
    h = H()
    h.put("a", 1, 0, 1)
    views = {"kv-0": view(1, chaos_k=("a", 1)), "kv-1": view(1, chaos_k=("a", 1)), "kv-2": view(0)}
    report = checker.check(h.ops, views)
    assert "divergence" in kinds(report)
    assert any("kv-2" in v.message for v in report.violations if v.kind == "divergence")


def test_non_linearizable_strong_read_is_reported() -> None:
    h = H()
    h.put("a", 1, 0, 1)
    h.put("b", 2, 2, 3)
    h.read("a", 1, 4, 5)                # strong read after b was acknowledged: stale
    report = checker.check(h.ops, final("b", 2))
    assert kinds(report) == {"non_linearizable", "version_order"}
    assert [v.ops for v in report.violations if v.kind == "non_linearizable"] == [[2]]
    assert [v.ops for v in report.violations if v.kind == "version_order"] == [[1, 2]]


def test_stale_local_read_is_allowed_but_stale_strong_is_not() -> None:
    h = H()
    h.put("a", 1, 0, 1)
    h.put("b", 2, 2, 3)
    h.read("a", 1, 4, 5, consistency="local", pod="kv-2")  # a secondary may lag: fine
    assert checker.check(h.ops, final("b", 2)).verdict == "PASS"
    h.read("a", 1, 6, 7, consistency="strong", pod="kv-2")  # the same answer to a strong read: not fine
    report = checker.check(h.ops, final("b", 2))
    assert kinds(report) == {"non_linearizable", "version_order"}
    assert all(3 in v.ops for v in report.violations), report.violations


def test_cas_that_succeeded_on_a_stale_version_is_reported() -> None:
    h = H()
    h.put("a", 1, 0, 1)
    h.put("b", 2, 2, 3)
    h.add("cas", 4, 5, value="c", expect_version=1, version=3, status=200)  # version 1 was gone
    report = checker.check(h.ops, final("c", 3))
    assert "non_linearizable" in kinds(report)


def test_stale_min_lsn_read_is_reported() -> None:
    h = H()
    h.put("a", 1, 0, 1, process=1)
    h.put("b", 2, 2, 3, process=1)
    # Process 1 asks for its own write (version 2) and gets version 1, at X-Kv-Lsn 2 as well.
    h.read("a", 1, 4, 5, consistency="min_lsn", min_lsn=2, own_version=2, own_deleted=False, lsn=2,
           process=1, pod="kv-1")
    report = checker.check(h.ops, final("b", 2))
    assert kinds(report) == {"stale_min_lsn", "stale_read"}


def test_min_lsn_read_of_absent_key_after_own_put_is_reported() -> None:
    h = H()
    h.put("a", 1, 0, 1)
    h.read(None, None, 2, 3, consistency="min_lsn", min_lsn=1, own_version=1, own_deleted=False, lsn=1)
    assert "stale_min_lsn" in kinds(checker.check(h.ops, final("a", 1)))


def test_write_answered_not_applied_but_visible_is_reported() -> None:
    h = H()
    h.put("a", 1, 0, 1)
    h.add("put", 2, 3, FAILED, value="b", status=503, error="no_primary")
    h.read("b", 2, 4, 5, consistency="local")
    report = checker.check(h.ops, final("b", 2))
    assert "failed_write_visible" in kinds(report)


def test_phantom_value_and_version_conflict_and_500_are_reported() -> None:
    h = H()
    h.put("a", 1, 0, 1)
    h.read("zzz", 1, 2, 3, consistency="local", pod="kv-1")  # nobody wrote zzz; and version 1 is a's
    h.add("put", 4, 5, UNKNOWN, value="c", status=500, error="internal")
    found = kinds(checker.check(h.ops, final("a", 1)))
    assert {"phantom_value", "version_conflict", "server_error"} <= found


# --------------------------------------------------------------------------- the search
def test_search_cap_reports_unknown_not_pass() -> None:
    # Many concurrent unknown writes and reads of them in an impossible order: lots of branching.
    ops = [lin.RegisterOp(i, lin.PUT, 0.0, None, value=f"v{i}") for i in range(8)]
    ops += [lin.RegisterOp(100 + i, lin.READ, 1.0 + i, 1.5 + i, observed=f"v{(i * 5) % 8}") for i in range(8)]
    ops.append(lin.RegisterOp(200, lin.READ, 30.0, 31.0, observed="nobody"))
    result = lin.check(ops, max_steps=50)
    assert result.verdict == lin.UNKNOWN
    assert lin.check(ops).verdict == lin.VIOLATION  # with room, the search decides


def test_create_and_delete_observations() -> None:
    ops = [
        lin.RegisterOp(0, lin.CREATE, 0, 1, value="a"),
        lin.RegisterOp(1, lin.CREATE, 2, 3, value="b", succeeded=False, current_version=1),
        lin.RegisterOp(2, lin.DELETE, 4, 5),
        lin.RegisterOp(3, lin.DELETE, 6, 7, succeeded=False),   # 404: absent
        lin.RegisterOp(4, lin.READ, 8, 9, observed=None),
    ]
    versions = lin.VersionMap()
    versions.add("a", 1)
    assert lin.check(ops, versions).ok
    bad = ops[:3] + [lin.RegisterOp(3, lin.DELETE, 6, 7)]        # a second successful delete: impossible
    assert lin.check(bad, versions).verdict == lin.VIOLATION


def test_outcome_classification() -> None:
    assert classify_write(200, None) == OK
    assert classify_write(504, "write_concern_timeout") == UNKNOWN  # on kv-0 alone: a lost volume undoes it
    assert classify_write(504, "primary_timeout") == UNKNOWN
    assert classify_write(503, "no_primary") == FAILED
    assert classify_write(503, "storage_unavailable") == UNKNOWN
    assert classify_write(500, "internal") == UNKNOWN
    assert classify_read(404) == OK and classify_read(504) == FAILED
    assert classify_exception(TimeoutError()) == UNKNOWN


def test_a_write_answered_504_not_confirmed_was_never_applied() -> None:
    """not_confirmed: kv-0 refused a conditional write and could not confirm the refusal; it wrote nothing."""
    h = H()
    h.put("a", 1, 0, 1)
    h.add("cas", 2, 3, classify_write(504, "not_confirmed"), value="b", expect_version=1, status=504,
          error="not_confirmed")
    h.read("b", 2, 4, 5)  # ...yet the value it would have written shows up
    assert "failed_write_visible" in kinds(checker.check(h.ops, final("b", 2)))
    h.ops[1].outcome = UNKNOWN  # counted as unknown, the write that should not exist would pass
    assert checker.check(h.ops, final("b", 2)).verdict == "PASS"


def test_failed_cas_against_a_value_whose_version_nobody_saw() -> None:
    # From a soak: an unknown put (its version never seen) is current; a cas expecting the
    # version of an earlier delete gets 412 with the current version. Legal.
    h = H()
    h.put("a", 1, 0, 1)
    h.add("delete", 2, 3, version=2, status=200)
    h.put("x", None, 4, None, outcome=UNKNOWN)
    h.read("x", None, 5, 6)
    h.add("cas", 7, 8, FAILED, value="y", expect_version=2, status=412, current_version=3)
    assert checker.check(h.ops, final("x", 3)).verdict == "PASS"
    # But a 412 naming the very version the cas expected contradicts itself.
    h.ops[-1].current_version = 2
    assert "non_linearizable" in kinds(checker.check(h.ops, final("x", 3)))


# ------------------------------------------------------------- order of versions
def test_acknowledged_versions_that_go_back_in_real_time_are_reported() -> None:
    # What a forked or rolled-back primary produces: 10, 5, 20. Every value is a plain put,
    # so only the versions can tell.
    h = H()
    h.put("a", 10, 0, 1)
    h.put("b", 5, 2, 3)
    h.put("c", 20, 4, 5)
    h.put("u", None, 6, None, outcome=UNKNOWN)
    report = checker.check(h.ops, final("c", 20))
    assert kinds(report) == {"version_order"}
    assert report.violations[0].ops == [0, 1]
    h.ops.insert(0, h.ops.pop())      # an unknown write first in the history changes nothing
    assert kinds(checker.check(h.ops, final("c", 20))) == {"version_order"}
    # Concurrent writes may take their versions in either order.
    h.ops[2].call = 0.5
    assert checker.check(h.ops, final("c", 20)).verdict == "PASS"


def test_write_with_the_same_version_as_an_earlier_one_is_reported() -> None:
    h = H()
    h.put("a", 3, 0, 1)
    h.add("delete", 2, 3, version=3, status=200)      # a second write at the same LSN
    assert "version_order" in kinds(checker.check(h.ops, final(None, 0, lsn=3)))


def test_strong_read_that_flip_flops_old_new_old_is_reported() -> None:
    h = H()
    h.put("a", 1, 0, 1)
    h.put("b", 2, 2, 20)                # slow: a strong read may see either while it runs
    h.read("b", 2, 3, 4)
    h.read("a", 1, 5, 6)                # but once b was seen, a is gone for good
    report = checker.check(h.ops, final("b", 2))
    assert {"non_linearizable", "version_order"} <= kinds(report)
    assert [v.ops for v in report.violations if v.kind == "version_order"] == [[2, 3]]
    # The same reads in the other order (old, new) are fine.
    h.ops[2].observed, h.ops[2].version, h.ops[3].observed, h.ops[3].version = "a", 1, "b", 2
    assert checker.check(h.ops, final("b", 2)).verdict == "PASS"


def test_two_successful_creates_are_reported() -> None:
    h = H()
    h.add("create", 0, 1, value="a", version=1, status=200)
    h.add("create", 2, 3, value="b", version=2, status=200)   # the key existed: must be a 412
    report = checker.check(h.ops, final("b", 2))
    assert kinds(report) == {"non_linearizable"}
    assert report.violations[0].ops == [1]
    # With a delete between them, both creates are fine.
    h.add("delete", 1.2, 1.5, version=2, status=200)
    h.ops[1].version = 3
    assert checker.check(h.ops, final("b", 3)).verdict == "PASS"


def test_strong_404_after_an_acknowledged_put_is_reported() -> None:
    h = H()
    h.put("a", 1, 0, 1)
    h.read(None, None, 2, 3)
    report = checker.check(h.ops, final("a", 1))
    assert kinds(report) == {"non_linearizable", "version_order"}
    # A delete that started only after the read ended explains nothing...
    h.add("delete", 4, None, UNKNOWN)
    assert {"non_linearizable", "version_order"} <= kinds(checker.check(h.ops, final(None, 0, lsn=2)))
    # ...one that started before it ended does.
    h.ops[-1].call = 2.5
    assert checker.check(h.ops, final(None, 0, lsn=2)).verdict == "PASS"


def test_strong_404_explained_only_by_a_delete_newer_than_the_put() -> None:
    h = H()
    h.add("delete", 0, 0.5, version=1, status=200)
    h.put("a", 2, 1, 2)
    h.read(None, None, 3, 4)
    assert "version_order" in kinds(checker.check(h.ops, final("a", 2)))
    # After an acknowledged delete, absent is what a strong read must see.
    h2 = H()
    h2.put("a", 1, 0, 1)
    h2.add("delete", 2, 3, version=2, status=200)
    h2.read(None, None, 4, 5)
    assert checker.check(h2.ops, final(None, 0, lsn=2)).verdict == "PASS"


def test_412_current_version_older_than_an_acknowledged_write_is_reported() -> None:
    h = H()
    h.put("a", 1, 0, 1)
    h.put("b", 2, 2, 3)
    h.add("cas", 4, 5, FAILED, value="c", expect_version=7, status=412, current_version=1)
    report = checker.check(h.ops, final("b", 2))
    assert "version_order" in kinds(report)
    assert any(v.ops == [1, 2] for v in report.violations if v.kind == "version_order")
    # And a write after the 412 must be newer than what the 412 named.
    h.ops[2].current_version = 2
    assert checker.check(h.ops, final("b", 2)).verdict == "PASS"
    h.put("d", 2, 6, 7)
    assert "version_order" in kinds(checker.check(h.ops, final("d", 2)))


def test_create_412_names_the_current_version() -> None:
    h = H()
    h.put("a", 4, 0, 1)
    h.add("create", 2, 3, FAILED, value="b", status=412, current_version=4)
    assert checker.check(h.ops, final("a", 4)).verdict == "PASS"
    h.ops[1].current_version = 3    # no write has version 3, and 4 was acknowledged before
    assert kinds(checker.check(h.ops, final("a", 4))) == {"non_linearizable", "version_order"}


# ------------------------------------------------------------------- min_lsn reads
def min_lsn_read(h: H, observed: str | None, version: int | None, call: float, ret: float, own: int,
                 lsn: int | None, **kw: object) -> Op:
    return h.read(observed, version, call, ret, consistency="min_lsn", min_lsn=own, own_version=own,
                  own_deleted=False, lsn=lsn, pod="kv-1", **kw)


def test_min_lsn_absent_excused_only_by_a_newer_delete_started_before_the_read_ended() -> None:
    h = H()
    h.put("a", 1, 0, 1)
    min_lsn_read(h, None, None, 2, 3, own=1, lsn=2)
    later = h.add("delete", 4, 5, version=2, status=200)       # started after the read ended
    assert "stale_min_lsn" in kinds(checker.check(h.ops, final(None, 0, lsn=2)))
    later.call = 2.5                                            # concurrent: it may be what the read saw
    assert checker.check(h.ops, final(None, 0, lsn=2)).verdict == "PASS"
    later.outcome, later.version, later.ret = UNKNOWN, None, None   # unknown outcome: also a possibility
    assert "stale_min_lsn" not in kinds(checker.check(h.ops, final(None, 0, lsn=2)))
    later.outcome, later.status, later.ret = FAILED, 503, 3.0      # not applied: no excuse
    assert "stale_min_lsn" in kinds(checker.check(h.ops, final("a", 1, lsn=1)))


def test_min_lsn_absent_not_excused_by_a_delete_older_than_the_own_write() -> None:
    h = H()
    h.add("delete", 0, 3, version=1, status=200, process=2)   # slow answer, but version 1
    h.put("a", 2, 0.5, 1)
    min_lsn_read(h, None, None, 2, 4, own=2, lsn=2)
    assert "stale_min_lsn" in kinds(checker.check(h.ops, final("a", 2)))


def test_min_lsn_read_answered_below_min_lsn_or_without_lsn_is_reported() -> None:
    for lsn in (1, None):
        h = H()
        h.put("a", 1, 0, 1)
        h.put("b", 2, 2, 3)
        min_lsn_read(h, "b", 2, 4, 5, own=2, lsn=lsn)
        assert kinds(checker.check(h.ops, final("b", 2))) == {"stale_min_lsn"}, lsn
    h.ops[-1].lsn = 2
    assert checker.check(h.ops, final("b", 2)).verdict == "PASS"


def test_min_lsn_ahead_of_the_primary_is_reported() -> None:
    h = H()
    h.put("a", 1, 0, 1)
    h.add("read", 2, 3, OK, consistency="min_lsn", min_lsn=1, own_version=1, own_deleted=False, status=412,
          error="min_lsn_ahead", pod="kv-1")
    report = checker.check(h.ops, final("a", 1))
    assert kinds(report) == {"stale_min_lsn"}
    assert "ahead of the primary" in report.violations[0].message


def test_min_lsn_own_write_is_taken_from_the_history_too() -> None:
    # The workload recorded an older own write than the history shows; the history wins.
    h = H()
    h.put("a", 1, 0, 1)
    h.put("b", 2, 2, 3)
    # Answered at X-Kv-Lsn 1, which says nothing of version 2: only the own write does.
    h.read("a", 1, 4, 5, consistency="min_lsn", min_lsn=1, own_version=1, own_deleted=False, lsn=1)
    assert kinds(checker.check(h.ops, final("b", 2))) == {"stale_min_lsn"}
    # Another client's write does not count as this client's own.
    h.ops[1].process = 9
    assert checker.check(h.ops, final("b", 2)).verdict == "PASS"
    # Nor does the client's own write that returned after the read started.
    h.ops[1].process, h.ops[1].ret = 0, 4.5
    assert "stale_min_lsn" not in kinds(checker.check(h.ops, final("b", 2)))


def test_min_lsn_absent_after_own_delete_is_fine_and_present_after_it_needs_a_newer_write() -> None:
    h = H()
    h.put("a", 1, 0, 1)
    h.add("delete", 2, 3, version=2, status=200)
    h.read(None, None, 4, 5, consistency="min_lsn", min_lsn=2, own_version=2, own_deleted=True, lsn=2)
    assert checker.check(h.ops, final(None, 0, lsn=2)).verdict == "PASS"
    h.ops[-1].found, h.ops[-1].observed, h.ops[-1].version, h.ops[-1].status = True, "a", 1, 200
    assert "stale_min_lsn" in kinds(checker.check(h.ops, final(None, 0, lsn=2)))


def test_local_and_strong_reads_are_not_judged_as_min_lsn_reads() -> None:
    h = H()
    h.put("a", 1, 0, 1)
    h.read(None, None, 2, 3, consistency="local", min_lsn=1, own_version=1, own_deleted=False, lsn=0, pod="kv-2")
    assert checker.check(h.ops, final("a", 1)).verdict == "PASS"


# ------------------------------------------------------------ reads against X-Kv-Lsn
# X-Kv-Lsn is the answering replica's LSN before it read: the answer reflects every
# write whose version (its LSN) is at most that.
def local_read(h: H, observed: str | None, version: int | None, call: float, ret: float, lsn: int | None,
               **kw: object) -> Op:
    kw.setdefault("pod", "kv-2")
    return h.read(observed, version, call, ret, consistency="local", lsn=lsn, **kw)


def test_local_read_older_than_an_acknowledged_write_at_or_below_its_lsn_is_reported() -> None:
    h = H()
    h.put("a", 1, 0, 1)
    h.put("b", 2, 2, 3)
    r = local_read(h, "a", 1, 4, 5, lsn=2)           # the replica had applied version 2, yet shows 1
    report = checker.check(h.ops, final("b", 2))
    assert violations(report) == [
        ("stale_read", "chaos/k", "read 2 (local, kv-2) answered at X-Kv-Lsn 2 saw version 1, but put 1 "
         "wrote version 2", [1, 2])]
    for lsn in (1, None):                            # behind version 2, or no header: a lagging secondary
        r.lsn = lsn
        assert checker.check(h.ops, final("b", 2)).verdict == "PASS", lsn
    r.lsn, r.version = 2, None                       # a value without a version tells nothing
    assert checker.check_lsn_bound_reads(h.ops) == []


def test_lsn_bound_counts_only_what_ended_before_the_read_started() -> None:
    h = H()
    h.put("a", 1, 0, 1)
    b = h.put("b", 2, 2, 10)
    local_read(h, None, None, 0, 0.5, lsn=0)         # within LSN 0 nothing is known: not judged
    local_read(h, "a", 1, 4, 5, lsn=2)
    # b was acknowledged after the read started: version 2 there may be another write.
    assert checker.check(h.ops, final("b", 2)).verdict == "PASS"
    b.ret = 4                                        # touching: still not before
    assert checker.check(h.ops, final("b", 2)).verdict == "PASS"
    b.ret = 3.9
    assert kinds(checker.check(h.ops, final("b", 2))) == {"stale_read"}


def test_a_version_kv0_lost_and_gave_to_a_later_write_binds_no_earlier_read() -> None:
    # kv-0 answered a local read at LSN 7, holding versions 6 and 7 (other keys' writes)
    # alone; it lost its volume, and a later put of this key got version 6 from the
    # recovered history. The read was right on the history it was on.
    h = H()
    h.put("a", 5, 0, 1)
    local_read(h, "a", 5, 2, 3, lsn=7, pod="kv-0")
    h.put("later", 6, 4, 5)
    local_read(h, "later", 6, 6, 7, lsn=7, pod="kv-0")
    assert checker.check(h.ops, final("later", 6, lsn=7)).verdict == "PASS"
    h.ops[-1].observed, h.ops[-1].version = "a", 5     # after it, version 6 binds reads at LSN 7
    assert [v.ops for v in checker.check_lsn_bound_reads(h.ops)] == [[2, 3]]


def test_lsn_bound_uses_the_newest_acknowledged_version_within_it() -> None:
    h = H()
    h.put("a", 1, 0, 1)
    h.put("b", 2, 2, 3)
    h.put("c", 4, 4, 5)
    h.put("o", 3, 4, 5, key="chaos/other")           # another key's write says nothing of this one
    r = local_read(h, "b", 2, 6, 7, lsn=3)
    assert checker.check_lsn_bound_reads(h.ops) == []    # c (version 4) is past the read's LSN
    r.lsn = 4                                        # the bound is inclusive: c is now reflected
    assert [v.ops for v in checker.check_lsn_bound_reads(h.ops)] == [[2, 4]]
    r.observed, r.version = "a", 1                   # older than b as well: named by the newest, c
    assert [v.ops for v in checker.check_lsn_bound_reads(h.ops)] == [[2, 4]]
    r.lsn = 3
    assert [v.ops for v in checker.check_lsn_bound_reads(h.ops)] == [[1, 4]]
    r.observed, r.version, r.lsn = "c", 4, 3         # newer than its LSN: the bound is a lower one
    assert checker.check_lsn_bound_reads(h.ops) == []


def test_value_after_an_acknowledged_delete_within_the_lsn_is_stale() -> None:
    h = H()
    h.put("a", 1, 0, 1)
    h.add("delete", 2, 3, version=2, status=200)
    r = local_read(h, "a", 1, 4, 5, lsn=2)
    assert [v.kind for v in checker.check_lsn_bound_reads(h.ops)] == ["stale_read"]
    r.lsn = 1                                        # the delete is past the LSN: a may still show
    assert checker.check_lsn_bound_reads(h.ops) == []
    r.observed, r.version, r.found, r.status, r.lsn = None, None, False, 404, 2   # absent: right
    assert checker.check(h.ops, final(None, 0, lsn=2)).verdict == "PASS"


def test_absent_after_an_acknowledged_put_within_the_lsn_needs_a_newer_delete() -> None:
    h = H()
    h.put("a", 1, 0, 1)
    h.add("delete", 0, 0.5, version=1, status=200, process=2, key="chaos/other")
    local_read(h, None, None, 2, 3, lsn=1)
    assert [v.kind for v in checker.check_lsn_bound_reads(h.ops)] == ["stale_read"]
    # A delete that started after the read ended cannot be what it saw.
    d = h.add("delete", 4, 5, version=2, status=200, process=1)
    assert [v.kind for v in checker.check_lsn_bound_reads(h.ops)] == ["stale_read"]
    d.call = 3                                       # touching: concurrent, it may be
    assert checker.check_lsn_bound_reads(h.ops) == []
    d.outcome, d.version, d.ret, d.status = UNKNOWN, None, None, None   # unknown outcome: may be too
    assert checker.check_lsn_bound_reads(h.ops) == []
    d.outcome, d.status, d.ret = FAILED, 503, 3.5    # known not applied: no excuse
    assert [v.kind for v in checker.check_lsn_bound_reads(h.ops)] == ["stale_read"]
    d.outcome, d.status, d.version, d.ret = OK, 200, 1, 3.5   # older than the put: no excuse
    assert [v.kind for v in checker.check_lsn_bound_reads(h.ops)] == ["stale_read"]


def test_absent_at_an_lsn_that_covers_a_put_after_a_delete_is_stale() -> None:
    h = H()
    h.put("a", 1, 0, 1)
    h.add("delete", 2, 3, version=2, status=200)
    h.put("c", 3, 4, 5)
    r = local_read(h, None, None, 6, 7, lsn=3)
    assert [v.ops for v in checker.check_lsn_bound_reads(h.ops)] == [[2, 3]]
    r.lsn = 2                                        # before c: the delete is the newest it reflects
    assert checker.check_lsn_bound_reads(h.ops) == []
    r.observed, r.version, r.found, r.status = "c", 3, True, 200   # c already: newer than the bound
    assert checker.check(h.ops, final("c", 3)).verdict == "PASS"


def test_unknown_writes_never_make_a_fresh_read_stale() -> None:
    # Writes whose outcome is unknown have no known version: they bound nothing, and a read
    # may show them (newer) or not (the acknowledged version is still the bound).
    for seen, version in (("a", 1), ("x", 5)):
        h = H()
        h.put("a", 1, 0, 1)
        h.put("x", None, 2, None, outcome=UNKNOWN)
        h.add("delete", 2, None, UNKNOWN)
        local_read(h, seen, version, 4, 5, lsn=6)
        assert checker.check_lsn_bound_reads(h.ops) == [], seen
        h.read(seen, version, 6, 7, consistency="min_lsn", min_lsn=1, own_version=1, own_deleted=False,
               lsn=6, pod="kv-1")
        assert checker.check_lsn_bound_reads(h.ops) == [], seen
    local_read(h, None, None, 8, 9, lsn=6)           # absent: the unknown delete may explain it
    assert checker.check_lsn_bound_reads(h.ops) == []


def test_versions_seen_by_strong_reads_and_412s_bound_reads_too() -> None:
    # The write of version 3 timed out (unknown outcome), but a strong read saw it: it exists.
    h = H()
    h.put("a", 1, 0, 1)
    h.put("b", None, 2, None, outcome=UNKNOWN)
    h.read("b", 3, 3, 4)
    r = local_read(h, "a", 1, 5, 6, lsn=3)
    report = checker.check(h.ops, final("b", 3))
    assert violations(report) == [
        ("stale_read", "chaos/k", "read 3 (local, kv-2) answered at X-Kv-Lsn 3 saw version 1, but read 2 "
         "saw version 3", [2, 3])]
    r.observed, r.version, r.found, r.status = None, None, False, 404   # absent: no delete explains it
    assert [v.message for v in checker.check_lsn_bound_reads(h.ops)] == [
        "read 3 (local, kv-2) answered at X-Kv-Lsn 3 found the key absent, but read 2 saw version 3, and no "
        "delete explains it"]
    r.observed, r.version, r.found, r.status = "a", 1, True, 200
    # A 412's current version is one the key had too.
    h.ops[2] = Op(id=2, process=0, key="chaos/k", f="cas", pod="kv-0", call=3, ret=4, outcome=FAILED, value="c",
                  expect_version=1, status=412, current_version=3)
    assert [v.ops for v in checker.check_lsn_bound_reads(h.ops)] == [[2, 3]]
    h.ops[2].current_version = None                  # a 412 on an absent key names no version
    assert checker.check_lsn_bound_reads(h.ops) == []
    h.ops[2] = Op(id=2, process=0, key="chaos/k", f="read", pod="kv-1", call=3, ret=4, outcome=OK,
                  consistency="local", found=True, observed="b", version=3, status=200)
    assert checker.check_lsn_bound_reads(h.ops) == []   # a local read may show what is later lost


def test_reads_without_an_answer_are_not_bound() -> None:
    h = H()
    h.put("a", 1, 0, 1)
    h.put("b", 2, 2, 3)
    h.add("read", 4, 5, FAILED, consistency="local", status=503, error="recovering", lsn=2, pod="kv-0")
    h.add("read", 4, 5, OK, consistency="min_lsn", min_lsn=2, own_version=2, own_deleted=False, status=412,
          error="min_lsn_ahead", lsn=2, pod="kv-1", observed="a", version=1)
    h.add("read", 6, None, UNKNOWN, consistency="local", lsn=2, found=True, observed="a", version=1)
    assert checker.check_lsn_bound_reads(h.ops) == []


# --------------------------------------------------------------- final views
def test_missing_or_empty_final_views_are_a_violation() -> None:
    h = H()
    h.put("a", 1, 0, 1)
    h.read("a", 1, 2, 3, consistency="local", pod="kv-2")
    for views in ({}, {"kv-1": view(1, chaos_k=("a", 1)), "kv-2": view(1, chaos_k=("a", 1))},
                  {"kv-0": view(1, chaos_k=("a", 1)), "kv-1": view(1, chaos_k=("a", 1))}):
        report = checker.check(h.ops, views)
        assert "missing_final_view" in kinds(report), views
        assert report.verdict == "FAIL"
    missing = checker.check(h.ops, {"kv-0": view(1, chaos_k=("a", 1))}).violations
    assert [v.kind for v in missing] == ["missing_final_view"] and "kv-2" in missing[0].message
    assert checker.check([], {}).verdict == "PASS"   # nothing ran, nothing to check


def test_divergence_at_the_same_lsn_is_reported() -> None:
    h = H()
    h.put("a", 1, 0, 1)
    h.put("b", 2, 2, 3, key="chaos/other")
    views = {"kv-0": view(2, chaos_k=("a", 1), chaos_other=("b", 2)),
             "kv-1": view(2, chaos_k=("a", 1), chaos_other=("b", 2)),
             "kv-2": view(2, chaos_k=("a", 1))}       # same LSN, a key missing
    report = checker.check(h.ops, views)
    assert kinds(report) == {"divergence"}
    assert "kv-2" in report.violations[0].message and "chaos/other" in report.violations[0].message
    assert "1 keys" in report.violations[0].message
    views["kv-2"] = view(3, chaos_k=("a", 1), chaos_other=("b", 2))   # same contents, another LSN
    assert kinds(checker.check(h.ops, views)) == {"divergence"}


def test_one_view_is_not_checked_for_convergence() -> None:
    assert checker.check_convergence({"kv-0": view(3)}) == []


# --------------------------------------------------------------- lost writes
def test_final_value_at_the_acknowledged_version_but_another_value_is_lost() -> None:
    h = H()
    h.put("a", 1, 0, 1)
    h.put("b", None, 1.5, None, outcome=UNKNOWN)
    lost = checker.check_lost_writes(h.ops, {"chaos/k": ("b", 1)})
    assert [v.kind for v in lost] == ["lost_write"] and "version 1 holds 'b'" in lost[0].message


def test_final_value_after_the_last_acknowledged_write_must_be_of_unknown_outcome() -> None:
    h = H()
    h.put("a", 1, 0, 1)
    h.put("b", None, 2, 3, outcome=FAILED, status=503, error="no_primary")
    assert [v.kind for v in checker.check_lost_writes(h.ops, {"chaos/k": ("b", 2)})] == ["lost_write"]
    assert [v.kind for v in checker.check_lost_writes(h.ops, {"chaos/k": ("zzz", 2)})] == ["lost_write"]
    h.ops[1].outcome = UNKNOWN
    assert checker.check_lost_writes(h.ops, {"chaos/k": ("b", 2)}) == []
    assert checker.check_lost_writes(h.ops, {"chaos/k": ("a", 1)}) == []


def test_acknowledged_delete_then_absent_is_not_lost_but_older_value_is() -> None:
    h = H()
    h.put("a", 1, 0, 1)
    h.add("delete", 2, 3, version=2, status=200)
    assert checker.check_lost_writes(h.ops, {}) == []
    lost = checker.check_lost_writes(h.ops, {"chaos/k": ("a", 1)})
    assert len(lost) == 1 and "delete" in lost[0].message and lost[0].ops == [1]


def test_keys_without_an_acknowledged_write_are_not_lost() -> None:
    h = H()
    h.put("a", None, 0, None, outcome=UNKNOWN)
    assert checker.check_lost_writes(h.ops, {}) == []


def test_phantom_and_failed_values_in_the_final_contents_are_reported() -> None:
    h = H()
    h.put("a", 1, 0, 1)
    h.add("put", 2, 3, FAILED, value="b", status=503, error="no_primary")
    found = checker.check_values(h.ops, {"kv-0": view(2, chaos_k=("b", 2))})
    assert [v.kind for v in found] == ["failed_write_visible"] and "kv-0" in found[0].message
    found = checker.check_values(h.ops, {"kv-1": view(2, chaos_k=("zzz", 2))})
    assert [v.kind for v in found] == ["phantom_value"] and "kv-1" in found[0].message
    # Keys outside the workload's prefix are not the workload's to judge.
    assert checker.check_values(h.ops, {"kv-0": view(2, other=("zzz", 2))}) == []


def test_version_map_conflicts_both_ways() -> None:
    versions = lin.VersionMap()
    assert versions.add("a", 1) is None and versions.add("a", 1) is None
    assert "versions 1 and 2" in (versions.add("a", 2) or "")
    assert "values 'a' and 'b'" in (versions.add("b", 1) or "")
    h = H()
    h.put("a", 1, 0, 1)
    h.read("a", 2, 2, 3, consistency="local", pod="kv-2")
    maps, conflicts = checker.build_versions(h.ops, {"kv-0": view(1, chaos_k=("b", 1))})
    assert [v.kind for v in conflicts] == ["version_conflict", "version_conflict"]
    assert conflicts[0].ops == [1] and conflicts[1].ops == []


# -------------------------------------------------------------- the register model
def test_create_412_when_absent_and_delete_404_when_present_are_impossible() -> None:
    versions = lin.VersionMap()
    versions.add("a", 1)
    assert lin.check([lin.RegisterOp(0, lin.CREATE, 0, 1, value="b", succeeded=False, current_version=None)],
                     versions).verdict == lin.VIOLATION
    present = [lin.RegisterOp(0, lin.PUT, 0, 1, value="a"),
               lin.RegisterOp(1, lin.DELETE, 2, 3, succeeded=False)]
    assert lin.check(present, versions).verdict == lin.VIOLATION
    assert lin.check(present[1:], versions).ok                       # absent from the start: a 404 is right
    assert lin.check([lin.RegisterOp(0, lin.DELETE, 0, 1)], versions).verdict == lin.VIOLATION
    assert lin.check(present[:1] + [lin.RegisterOp(1, lin.DELETE, 2, 3)], versions).ok


def test_cas_model() -> None:
    versions = lin.VersionMap()
    versions.add("a", 1)
    versions.add("b", 2)
    put_a = lin.RegisterOp(0, lin.PUT, 0, 1, value="a")
    ok_cas = lin.RegisterOp(1, lin.CAS, 2, 3, value="b", expect_version=1)
    assert lin.check([put_a, ok_cas], versions).ok
    assert lin.check([put_a, lin.RegisterOp(1, lin.CAS, 2, 3, value="b", expect_version=5)],
                     versions).verdict == lin.VIOLATION
    assert lin.check([lin.RegisterOp(1, lin.CAS, 2, 3, value="b", expect_version=1)],
                     versions).verdict == lin.VIOLATION           # nothing to compare with: 412 expected
    rejected = lin.RegisterOp(1, lin.CAS, 2, 3, value="b", expect_version=5, succeeded=False, current_version=1)
    assert lin.check([put_a, rejected], versions).ok
    absent = lin.RegisterOp(1, lin.CAS, 2, 3, value="b", expect_version=5, succeeded=False, current_version=None)
    assert lin.check([absent], versions).ok                          # 412 on an absent key
    assert lin.check([put_a, absent], versions).verdict == lin.VIOLATION


def test_version_map_matches() -> None:
    versions = lin.VersionMap()
    versions.add("a", 1)
    versions.add_delete(2)
    assert versions.matches(None, None) and not versions.matches("a", None)
    assert not versions.matches(None, 1)
    assert versions.matches("a", 1) and not versions.matches("a", 3)
    assert versions.matches("x", 3)                     # a value never seen with a version: any free one
    assert not versions.matches("x", 1) and not versions.matches("x", 2)


def test_unknown_step_kind_is_an_error() -> None:
    with pytest.raises(ValueError):
        lin.step(lin.RegisterOp(0, "swap", 0, 1), None, lin.VersionMap())


def test_search_reports_the_blocked_operation_and_the_linearization() -> None:
    ops = [lin.RegisterOp(0, lin.PUT, 0, 1, value="a"), lin.RegisterOp(1, lin.READ, 2, 3, observed="a"),
           lin.RegisterOp(2, lin.PUT, 4, 5, value="b"), lin.RegisterOp(3, lin.READ, 6, 7, observed="a")]
    bad = lin.check(ops)
    assert bad.verdict == lin.VIOLATION and bad.blocked is not None and bad.blocked.id == 3
    assert not bad.ok
    good = lin.check(ops[:3])
    assert good.ok and good.linearized == [0, 1, 2] and good.ops == 3 and good.steps > 0
    assert lin.check([]).ok
    assert lin.check([lin.RegisterOp(0, lin.READ, 0, 1, observed="a")], initial="a").ok
    assert lin.check([lin.RegisterOp(0, lin.READ, 0, 1, observed="a")]).verdict == lin.VIOLATION


def test_touching_intervals_are_concurrent() -> None:
    # A read that starts exactly when a put returns may still see the old value.
    ops = [lin.RegisterOp(0, lin.PUT, 0, 1, value="a"), lin.RegisterOp(1, lin.PUT, 2, 3, value="b"),
           lin.RegisterOp(2, lin.READ, 3, 4, observed="a")]
    assert lin.check(ops).ok
    ops[2] = lin.RegisterOp(2, lin.READ, 3.01, 4, observed="a")
    assert lin.check(ops).verdict == lin.VIOLATION


# ------------------------------------------------------- the report, field by field
# What an operator reads: the kind, key, message and operations of each violation, in order.
def violations(report: checker.Report) -> list[tuple[str, str | None, str, list[int]]]:
    return [(v.kind, v.key, v.message, v.ops) for v in report.violations]


def test_report_lost_and_order() -> None:
    h = H()
    h.put("a", 1, 0, 1)
    h.put("b", 3, 2, 3)
    h.put("c", 2, 4, 5, process=1)                 # goes back: version 2 after 3
    h.add("cas", 4, 5, FAILED, value="d", expect_version=9, status=503, error="no_primary")
    h.read("b", 3, 6, 7)
    h.add("put", 8, 9, UNKNOWN, value="e", status=500, error="internal", key="chaos/other")
    views = {p: view(5, chaos_k=("a", 1), chaos_other=("zzz", 4)) for p in ("kv-0", "kv-1")}
    views["kv-2"] = view(5, chaos_k=("a", 1), chaos_other=("e", 4))
    report = checker.check(h.ops, views)
    assert violations(report) == (
        [('server_error', 'chaos/other', 'put on kv-0 answered 500 (internal)', [5]),
         ('version_conflict', 'chaos/other', "version 4 seen with values 'zzz' and 'e'", []),
         ('phantom_value', 'chaos/other', "final contents of kv-0 saw 'zzz', which no write wrote", []),
         ('phantom_value', 'chaos/other', "final contents of kv-1 saw 'zzz', which no write wrote", []),
         ('lost_write',
          'chaos/k',
          "acknowledged put of 'b' (version 3, op 1) is lost: the final value is 'a' at version 1",
          [1]),
         ('divergence',
          None,
          "kv-2 (lsn 5) differs from kv-0 (lsn 5) on 1 keys: chaos/other: ('zzz', 4) vs ('e', 4)",
          []),
         ('version_order',
          'chaos/k',
          'put 2 got version 2, but put 1, which ended before it started, had version 3',
          [1, 2]),
         ('non_linearizable', 'chaos/k', "no linearization of 5 operations can place op 4 (read -> 'b')", [4]),
         ('non_linearizable',
          'chaos/other',
          "no linearization of 2 operations can place the final state ('zzz', 4)",
          [])])
    assert (report.keys_checked, report.search_steps, report.undecided) == (2, 13, [])


def test_report_min_lsn() -> None:
    h = H()
    h.put("a", 1, 0, 1)
    h.read("a", 1, 2, 3, consistency="min_lsn", min_lsn=2, own_version=2, own_deleted=False, lsn=1, pod="kv-1")
    h.put("b", 2, 2, 3)
    h.read("a", 1, 4, 5, consistency="min_lsn", min_lsn=2, own_version=2, own_deleted=False, lsn=2, pod="kv-1")
    h.read(None, None, 6, 7, consistency="min_lsn", min_lsn=2, own_version=2, own_deleted=False, lsn=2, pod="kv-2")
    h.add("read", 8, 9, OK, consistency="min_lsn", min_lsn=2, own_version=2, own_deleted=False, status=412,
          error="min_lsn_ahead", pod="kv-1")
    report = checker.check(h.ops, final("b", 2))
    assert violations(report) == (
        [('stale_min_lsn', 'chaos/k', 'read 1 on kv-1 answered at lsn 1 < min_lsn 2', [1]),
         ('stale_min_lsn',
          'chaos/k',
          "read 3 on kv-1 saw version 1, older than the client's own write (version 2)",
          [3]),
         ('stale_min_lsn',
          'chaos/k',
          "read 4 on kv-2 found the key absent after the client's own write (version 2) and no delete explains it",
          [4]),
         ('stale_min_lsn',
          'chaos/k',
          "read 5 on kv-1: min_lsn 2 (the client's own acknowledged write) is ahead of the primary",
          [5]),
         ('stale_read',
          'chaos/k',
          'read 3 (min_lsn, kv-1) answered at X-Kv-Lsn 2 saw version 1, but put 2 wrote version 2',
          [2, 3]),
         ('stale_read',
          'chaos/k',
          'read 4 (min_lsn, kv-2) answered at X-Kv-Lsn 2 found the key absent, but put 2 wrote version 2, '
          'and no delete explains it',
          [2, 4])])
    assert (report.keys_checked, report.search_steps, report.undecided) == (1, 3, [])


def test_report_strong404() -> None:
    h = H()
    h.put("a", 1, 0, 1)
    h.read(None, None, 2, 3)
    h.add("create", 4, 5, value="b", version=2, status=200)
    report = checker.check(h.ops, final("b", 2))
    assert violations(report) == (
        [('version_order',
          'chaos/k',
          'strong read 1 found the key absent after put 0 (version 1) was acknowledged, and no delete explains it',
          [0, 1]),
         ('non_linearizable', 'chaos/k', 'no linearization of 4 operations can place op 1 (read -> None)', [1])])
    assert (report.keys_checked, report.search_steps, report.undecided) == (1, 4, [])


def test_report_more() -> None:
    h = H()
    h.put("a", 1, 0, 1)
    h.add("delete", 2, 3, version=2, status=200)
    h.put("x", 4, 3.5, 3.8, key="chaos/x")
    h.put("y", None, 4, 5, outcome=FAILED, status=503, error="no_primary", key="chaos/x")
    h.read("y", 9, 6, 7, consistency="local", key="chaos/x", pod="kv-2")
    h.add("cas", 8, 9, value="z", expect_version=1, version=5, status=200, key="chaos/x")
    h.add("cas", 10, 11, FAILED, value="w", expect_version=1, status=412, current_version=3, key="chaos/x")
    views = {"kv-0": view(6, chaos_k=("a", 1), chaos_x=("z", 5),
                          p_1=("1", 1), p_2=("2", 1), p_3=("3", 1), p_4=("4", 1)),   # 4 keys: 3 in the message
             "kv-1": view(6, chaos_k=("a", 1), chaos_x=("z", 5))}
    report = checker.check(h.ops, views)
    assert violations(report) == (
        [('missing_final_view',
          None,
          "no final view of kv-2 (views of ['kv-0', 'kv-1']): lost writes and convergence cannot be checked",
          []),
         ('failed_write_visible',
          'chaos/x',
          "read 4 (local, kv-2) saw 'y', written by op 3 that answered 503 no_primary (not applied)",
          [4, 3]),
         ('lost_write',
          'chaos/k',
          "acknowledged delete (version 2, op 1) is lost: the final value is 'a' at version 1",
          [1]),
         ('divergence',
          None,
          "kv-1 (lsn 6) differs from kv-0 (lsn 6) on 4 keys: p/1: ('1', 1) vs None, p/2: ('2', 1) vs None, p/3: "
          "('3', 1) vs None",
          []),
         ('version_order',
          'chaos/x',
          'cas 6 saw version 3, but cas 5, which ended before it started, had version 5',
          [5, 6]),
         ('non_linearizable', 'chaos/k', "no linearization of 3 operations can place the final state ('a', 1)", []),
         ('non_linearizable', 'chaos/x', "no linearization of 4 operations can place op 5 (cas 'z')", [5])])
    assert (report.keys_checked, report.search_steps, report.undecided) == (2, 10, [])


def test_report_views() -> None:
    h = H()
    h.put("a", 1, 0, 1, pod="kv-1")
    report = checker.check(h.ops, {"kv-1": view(1, chaos_k=("a", 1))})
    assert violations(report) == (
        [('missing_final_view',
          None,
          "no final view of kv-0 (views of ['kv-1']): lost writes and convergence cannot be checked",
          [])])
    assert (report.keys_checked, report.search_steps, report.undecided) == (1, 1, [])


def test_violation_to_dict_and_counts() -> None:
    v = checker.Violation("lost_write", "chaos/k", "gone", [3])
    assert v.to_dict() == {"kind": "lost_write", "key": "chaos/k", "message": "gone", "ops": [3]}
    report = checker.Report([v, v, checker.Violation("divergence", None, "x")])
    assert report.counts() == {"lost_write": 2, "divergence": 1}
    assert checker.Report(undecided=["chaos/k"]).verdict == "UNKNOWN"
    assert checker.Report([v], undecided=["chaos/k"]).verdict == "FAIL"


# ---------------------------------------------------------------- boundaries
def test_touching_intervals_do_not_order_versions() -> None:
    h = H()
    h.put("a", 3, 0, 1)
    h.put("b", 2, 1, 2)               # started the instant a returned: concurrent, either order
    assert "version_order" not in kinds(checker.check(h.ops, final("a", 3)))


def test_strong_404_excused_by_a_delete_starting_as_it_ends_but_not_by_one_at_the_put_version() -> None:
    h = H()
    h.put("a", 1, 0, 1)
    h.read(None, None, 2, 3)
    h.add("delete", 3, None, UNKNOWN)                  # touching: concurrent
    assert "version_order" not in kinds(checker.check(h.ops, final(None, 0, lsn=2)))
    h.ops[-1].outcome, h.ops[-1].version, h.ops[-1].ret, h.ops[-1].call = OK, 1, 4, 2.5   # same version as the put
    assert "version_order" in kinds(checker.check(h.ops, final(None, 0, lsn=2)))


def test_strong_404_then_a_later_put_is_fine() -> None:
    h = H()
    h.read(None, None, 0, 1)
    h.put("a", 1, 2, 3)
    h.read("a", 1, 4, 5)
    h.read(None, None, 4.5, 5.5, key="chaos/other")
    assert checker.check(h.ops, final("a", 1)).verdict == "PASS"


def test_min_lsn_touching_boundaries() -> None:
    h = H()
    h.put("a", 2, 0, 1)
    h.read("a", 1, 1, 2, consistency="min_lsn", min_lsn=1, own_version=None, own_deleted=None, lsn=2)
    # The own write returned the instant the read started: it is the client's own.
    assert "stale_min_lsn" in kinds(checker.check(h.ops, final("a", 2)))
    h2 = H()
    h2.put("a", 2, 0, 1)
    min_lsn_read(h2, None, None, 2, 3, own=2, lsn=2)
    h2.add("delete", 3, None, UNKNOWN, process=1)       # touching: may be what the read saw
    assert "stale_min_lsn" not in kinds(checker.check(h2.ops, final(None, 0, lsn=3)))
    h2.ops[-1].outcome, h2.ops[-1].version, h2.ops[-1].ret = OK, 2, 4   # but not at the own write's version
    assert "stale_min_lsn" in kinds(checker.check(h2.ops, final(None, 0, lsn=3)))


def test_min_lsn_without_a_recorded_own_write_uses_the_history_and_min_lsn() -> None:
    h = H()
    h.put("a", 1, 0, 1, process=3)
    h.read(None, None, 2, 3, consistency="min_lsn", min_lsn=0, own_version=None, own_deleted=None, lsn=1)
    h.add("delete", 2, 2.5, version=1, status=200, process=4)
    assert checker.check_min_lsn_reads(h.ops) == []   # another client's put: the delete may follow it
    h.ops[0].process = 0                                  # now the put is the client's own (version 1)
    assert [v.kind for v in checker.check_min_lsn_reads(h.ops)] == ["stale_min_lsn"]


def test_own_delete_from_the_history_makes_absence_right() -> None:
    h = H()
    h.put("a", 1, 0, 1)
    h.add("delete", 2, 3, version=2, status=200)
    h.read(None, None, 4, 5, consistency="min_lsn", min_lsn=1, own_version=1, own_deleted=False, lsn=2)
    assert checker.check_min_lsn_reads(h.ops) == []


def test_failed_min_lsn_read_is_not_judged() -> None:
    h = H()
    h.put("a", 1, 0, 1)
    h.add("read", 2, 3, FAILED, consistency="min_lsn", min_lsn=1, own_version=1, status=504, error="min_lsn_timeout")
    assert checker.check_min_lsn_reads(h.ops) == []


def test_unknown_put_does_not_excuse_a_missing_key() -> None:
    h = H()
    h.put("a", 1, 0, 1)
    h.put("b", None, 2, None, outcome=UNKNOWN)
    assert [v.kind for v in checker.check_lost_writes(h.ops, {})] == ["lost_write"]


def test_cas_on_the_version_of_a_delete_cannot_match_a_value() -> None:
    # An unknown put x (its version never seen) may be current; a cas expecting the version
    # of an acknowledged delete cannot have matched x.
    h = H()
    h.put("a", 1, 0, 1)
    h.add("delete", 2, 3, version=2, status=200)
    h.put("x", None, 4, None, outcome=UNKNOWN)
    h.add("cas", 5, 6, value="y", expect_version=2, version=7, status=200)
    assert "non_linearizable" in kinds(checker.check(h.ops, final("y", 7)))


def test_two_views_that_differ_are_diverged() -> None:
    views = {"kv-0": view(1, chaos_k=("a", 1)), "kv-1": view(0)}
    assert [v.kind for v in checker.check_convergence(views)] == ["divergence"]


def test_final_views_expected_for_kv0_only_when_something_ran() -> None:
    h = H()
    h.put("a", 1, 0, 1, pod="kv-1")
    assert [v.kind for v in checker.check_final_views(h.ops, {"kv-1": view(1)}, "kv-0")] == ["missing_final_view"]
    assert checker.check_final_views([], {}, "kv-0") == []
    assert "no pod" in checker.check_final_views(h.ops, {}, "kv-0")[0].message


def test_register_ops_of_each_kind() -> None:
    h = H()
    h.put("a", 1, 0, 1)                                                          # 0: put
    h.put("b", None, 2, None, outcome=UNKNOWN)                                   # 1: unknown: no return
    h.add("cas", 3, 4, FAILED, value="c", expect_version=1, status=412, current_version=5)   # 2
    h.add("create", 5, 6, FAILED, value="d", status=412, current_version=5)      # 3
    h.add("delete", 7, 8, FAILED, status=404)                                    # 4: a 404 observes absence
    h.add("delete", 9, 10, FAILED, status=503)                                   # 5: not sent: left out
    h.add("put", 11, 12, FAILED, value="e", status=412, current_version=1)      # 6: a put cannot 412
    h.read("a", 1, 13, 14)                                                       # 7: strong read
    h.read(None, None, 15, 16)                                                   # 8: strong 404
    h.read("a", 1, 17, 18, consistency="local")                                  # 9: local: left out
    h.add("read", 19, 20, FAILED, consistency="strong", status=503)              # 10: failed read
    h.add("delete", 21, 22, version=9, status=200)                               # 11: delete
    assert checker.register_ops(h.ops) == [
        lin.RegisterOp(0, lin.PUT, 0, 1, value="a"),
        lin.RegisterOp(1, lin.PUT, 2, None, value="b"),
        lin.RegisterOp(2, lin.CAS, 3, 4, value="c", expect_version=1, succeeded=False, current_version=5),
        lin.RegisterOp(3, lin.CREATE, 5, 6, value="d", succeeded=False, current_version=5),
        lin.RegisterOp(4, lin.DELETE, 7, 8, succeeded=False),
        lin.RegisterOp(7, lin.READ, 13, 14, observed="a"),
        lin.RegisterOp(8, lin.READ, 15, 16, observed=None),
        lin.RegisterOp(11, lin.DELETE, 21, 22),
    ]


def test_delete_404_while_the_key_exists_is_reported() -> None:
    h = H()
    h.put("a", 1, 0, 1)
    h.add("delete", 2, 3, FAILED, status=404, error="not_found")
    assert kinds(checker.check(h.ops, final("a", 1))) == {"non_linearizable"}


# ----------------------------------------------------------------- the search
def test_step_cap_is_exact() -> None:
    ops = [lin.RegisterOp(0, lin.PUT, 0, 1, value="a"), lin.RegisterOp(1, lin.READ, 2, 3, observed="a")]
    steps = lin.check(ops).steps
    assert lin.check(ops, max_steps=steps).ok
    capped = lin.check(ops, max_steps=steps - 1)
    assert (capped.verdict, capped.steps, capped.ops) == (lin.UNKNOWN, steps, 2)
    assert (lin.check([]).steps, lin.check([]).ops) == (0, 0)
    assert steps == 2   # one step per call placed


def test_search_backtracks_through_concurrent_writes() -> None:
    # Three concurrent puts, then reads that fix their order as c, a, b: the search must
    # undo its first guesses (a, b, c) and keep no stale trace of them.
    ops = [lin.RegisterOp(i, lin.PUT, 0, 10, value=v) for i, v in enumerate("abc")]
    ops += [lin.RegisterOp(3, lin.READ, 1, 2, observed="c"), lin.RegisterOp(4, lin.READ, 3, 4, observed="a"),
            lin.RegisterOp(5, lin.READ, 11, 12, observed="b")]
    result = lin.check(ops)
    assert result.ok and result.linearized == [2, 3, 0, 4, 1, 5], result
    result_unknown = lin.check([op if op.id != 1 else lin.RegisterOp(1, lin.PUT, 0, None, value="b")
                                for op in ops])
    assert result_unknown.ok and result_unknown.ops == 6
    bad = ops[:5] + [lin.RegisterOp(5, lin.READ, 11, 12, observed="c")]
    verdict = lin.check(bad)
    assert verdict.verdict == lin.VIOLATION and verdict.blocked is not None and verdict.blocked.id == 5
    assert verdict.ops == 6 and verdict.steps > 6 and verdict.linearized == []


def test_unknown_step_message_names_the_kind() -> None:
    with pytest.raises(ValueError, match="swap"):
        lin.step(lin.RegisterOp(0, "swap", 0, 1), None, lin.VersionMap())


# ---------------------------------------------------------------- figures
def test_outcome_table_splits_reads_and_rejections() -> None:
    h = H()
    h.put("a", 1, 0, 1)
    h.put("a2", 2, 0, 1)
    h.add("cas", 2, 3, FAILED, value="b", status=412)
    h.add("delete", 4, 5, FAILED, status=404)
    h.add("create", 6, 7, FAILED, value="c", status=503)
    h.add("put", 8, None, UNKNOWN, value="d")
    h.read("a", 1, 9, 10, consistency="local")
    h.read("a", 1, 9, 10)
    h.add("read", 11, 12, FAILED, consistency="min_lsn", status=412)    # a read's 412 is not a rejection
    table = checker.outcome_table(h.ops)
    assert {k: dict(v) for k, v in table.items()} == {
        "put": {"ok": 2, "unknown": 1}, "cas": {"rejected": 1}, "delete": {"rejected": 1},
        "create": {"failed": 1}, "read/local": {"ok": 1}, "read/strong": {"ok": 1}, "read/min_lsn": {"failed": 1}}


def test_fault_counts() -> None:
    faults = [{"fault": "kill", "pod": "kv-0"}, {"fault": "kill", "pod": "kv-10"}, {"fault": "kill", "pod": "kv-1"},
              {"fault": "pause", "pod": "kv-0"}, {"fault": "resume", "pod": "kv-0"}, {"fault": "kill", "pod": "kv-0"},
              {"fault": "partition", "pod": "kv-2"}, {"fault": "heal", "pod": "kv-2"}]
    assert checker.fault_counts(faults) == {"kill": 4, "kill_primary": 2, "pause": 1, "pause_primary": 1,
                                            "partition": 1}


def test_longest_write_gap_after_a_primary_kill() -> None:
    h = H()
    h.put("a", 1, 0, 1)
    h.put("b", 2, 10.5, 12)           # the first write invoked after the kill at 10 that succeeded
    h.put("c", None, 10.2, 10.4, outcome=FAILED, status=503)
    h.put("d", 3, 9, 11)              # invoked before the kill: does not count
    h.put("e", 4, 31, 32)
    faults = [{"time": 10.0, "fault": "kill", "pod": "kv-0"}, {"time": 20.0, "fault": "kill", "pod": "kv-1"},
              {"time": 30.0, "fault": "pause", "pod": "kv-0"}, {"time": 40.0, "fault": "kill", "pod": "kv-0"}]
    assert checker.longest_write_gap_after_primary_kill(h.ops, faults[:3], 50.0) == (2.0, False)
    assert checker.longest_write_gap_after_primary_kill(h.ops, faults, 50.0) == (10.0, True)
    assert checker.longest_write_gap_after_primary_kill(h.ops, faults, 41.0) == (2.0, False)
    assert checker.longest_write_gap_after_primary_kill(h.ops, [], 50.0) == (0.0, False)
    # A write invoked at the very instant of the kill counts as after it.
    assert checker.longest_write_gap_after_primary_kill(h.ops, [{"time": 31.0, "fault": "kill", "pod": "kv-0"}],
                                                        50.0) == (1.0, False)
    # Of two equal gaps the first is reported: a closed one stays closed.
    tie = [{"time": 10.0, "fault": "kill", "pod": "kv-0"}, {"time": 48.0, "fault": "kill", "pod": "kv-0"}]
    assert checker.longest_write_gap_after_primary_kill(h.ops, tie, 50.0) == (2.0, False)


def test_strong_404_touching_the_put_is_concurrent_and_each_404_is_judged() -> None:
    h = H()
    h.read(None, None, 0, 0.5)                  # nothing before it: fine
    h.put("a", 1, 0, 1)
    h.read(None, None, 1, 2)                    # started as the put returned: may precede it
    assert checker.check_version_order(h.ops) == []
    h.read(None, None, 3, 4)                    # after it: needs a delete
    assert [v.ops for v in checker.check_version_order(h.ops)] == [[1, 3]]


def test_strong_404_not_excused_by_a_concurrent_delete_at_the_put_version() -> None:
    h = H()
    h.put("a", 1, 0, 1)
    h.add("delete", 0.5, 4, version=1, status=200, process=1)   # concurrent with the put, same version
    h.read(None, None, 2, 3)
    assert [v.ops for v in checker.check_version_order(h.ops)] == [[0, 2]]
    h.ops[1].version = 2
    assert checker.check_version_order(h.ops) == []


def test_a_value_at_the_version_of_a_delete_is_a_conflict_and_a_lost_delete() -> None:
    h = H()
    h.put("a", 1, 0, 1)
    h.add("delete", 2, 3, version=2, status=200)
    h.put("b", None, 2, None, outcome=UNKNOWN)
    h.read("b", 2, 4, 5, consistency="local", pod="kv-2")      # a value with the delete's version
    assert violations(checker.check(h.ops, final(None, 0, lsn=2)))[:1] == [
        ("version_conflict", "chaos/k", "version 2 is a delete's, and also holds 'b'", [3])]
    lost = checker.check_lost_writes(h.ops[:2], {"chaos/k": ("x", 2)})
    assert [(v.message, v.ops) for v in lost] == [("version 2 holds 'x', but op 1 deleted the key there", [1])]
    versions = lin.VersionMap()
    versions.add("b", 5)
    assert versions.add_delete(5) == "version 5 is a delete's, and also holds 'b'"
    assert versions.add_delete(6) is None


def test_report_lost_writes_each_way() -> None:
    h = H()
    h.put("n", None, 0, None, outcome=UNKNOWN, key="chaos/a")      # no acknowledged write: nothing to lose
    h.put("a", 1, 0, 1, key="chaos/b")                             # absent at the end
    h.put("b", 2, 0, 1, key="chaos/c")                             # another value at its version
    h.put("c", 3, 0, 1, key="chaos/d")
    h.put("d", None, 2, 3, FAILED, key="chaos/d", status=503)      # not applied, yet final
    lost = checker.check_lost_writes(h.ops, {"chaos/c": ("x", 2), "chaos/d": ("d", 7)})
    assert [(v.kind, v.key, v.message, v.ops) for v in lost] == [
        ("lost_write", "chaos/b", "acknowledged put of 'a' (version 1, op 1) is gone: the key is absent at the "
         "end and no delete could explain it", [1]),
        ("lost_write", "chaos/c", "version 2 holds 'x', but op 2 wrote 'b' there", [2]),
        ("lost_write", "chaos/d", "final 'd' at version 7 is after the last acknowledged write (op 3, version 3) "
         "but was not written by a write of unknown outcome", [3]),
    ]


def test_report_names_op_zero_and_phantoms_seen_by_reads() -> None:
    h = H()
    h.read("x", 5, 0, 1)                        # op 0 sees x before anybody wrote it
    h.put("x", None, 2, None, outcome=UNKNOWN)
    h.read("ghost", 6, 3, 4, consistency="local", key="chaos/g")
    views = {p: view(6, chaos_k=("x", 5)) for p in ("kv-0", "kv-1")}
    views["kv-2"] = view(7, chaos_k=("x", 5))      # same contents, another LSN: no sample to show
    report = checker.check(h.ops, views)
    assert violations(report) == [
        ("phantom_value", "chaos/g", "read 2 (local, kv-0) saw 'ghost', which no write wrote", [2]),
        ("divergence", None, "kv-2 (lsn 7) differs from kv-0 (lsn 6) on 0 keys", []),
        ("non_linearizable", "chaos/k", "no linearization of 3 operations can place op 0 (read -> 'x')", [0]),
    ]


def test_unknown_operation_that_can_never_apply_is_left_out() -> None:
    versions = lin.VersionMap()
    versions.add("a", 1)
    ops = [lin.RegisterOp(0, lin.PUT, 0, 1, value="a"),
           lin.RegisterOp(1, lin.CAS, 2, None, value="b", expect_version=9)]   # timed out; 9 never matched
    result = lin.check(ops, versions)
    assert (result.verdict, result.ops, result.linearized) == (lin.OK, 2, [0]) and result.steps == 3


def test_missing_final_views_are_all_named() -> None:
    h = H()
    h.put("a", 1, 0, 1, pod="kv-2")
    h.read("a", 1, 2, 3, consistency="local", pod="kv-1")
    assert violations(checker.Report(checker.check_final_views(h.ops, {}, "kv-0"))) == [
        ("missing_final_view", None, "no final view of kv-0, kv-1, kv-2 (views of no pod): lost writes and "
         "convergence cannot be checked", [])]


def test_version_conflicts_name_the_operation_once() -> None:
    h = H()
    h.put("b", None, 0, None, outcome=UNKNOWN)
    h.read("b", 2, 1, 2, consistency="local", pod="kv-1")
    h.read("b", 2, 2, 3, consistency="min_lsn", pod="kv-2")  # the same conflict again: reported once
    h.add("delete", 3, 4, version=2, status=200)          # a delete at a version a value holds
    h.put("c", 2, 5, 6)                                   # a write at a version a value holds
    _, conflicts = checker.build_versions(h.ops)
    assert [(v.key, v.message, v.ops) for v in conflicts] == [
        ("chaos/k", "version 2 is a delete's, and also holds 'b'", [3]),
        ("chaos/k", "version 2 seen with values 'b' and 'c'", [4]),
    ]


def test_keys_past_the_step_cap_are_undecided_not_passed() -> None:
    h = H()
    for key in ("chaos/a", "chaos/b"):
        h.put("a" + key, 1, 0, 1, key=key)
        h.read("a" + key, 1, 2, 3, key=key)
    views = {p: view(1, chaos_a=("achaos/a", 1), chaos_b=("achaos/b", 1)) for p in ("kv-0", "kv-1", "kv-2")}
    assert checker.check(h.ops, views).verdict == "PASS"
    capped = checker.check(h.ops, views, max_steps=1)
    assert (capped.verdict, capped.undecided, capped.violations) == ("UNKNOWN", ["chaos/a", "chaos/b"], [])


def test_the_primary_is_ordinal_zero_of_whatever_statefulset_ran() -> None:
    h = H()
    h.put("a", 1, 0, 1, pod="store-1")
    views = {p: view(1, chaos_k=("a", 1)) for p in ("store-0", "store-1")}
    assert checker.primary_pod(h.ops, views) == "store-0"
    assert checker.check(h.ops, views).verdict == "PASS"
    del views["store-0"]
    assert checker.primary_pod(h.ops, views) == "store-0"
    missing = checker.check(h.ops, views).violations
    assert [v.kind for v in missing] == ["missing_final_view"] and "of store-0 " in missing[0].message
    assert checker.primary_pod([], {}) == "kv-0" == checker.primary_pod([], {"odd": view(0), "a-b": view(0)})
    assert checker.primary_pod(h.ops, {}) == "store-0"              # from the history alone
    h.ops[0].pod = "my-store-2"
    assert checker.primary_pod(h.ops, {}) == "my-store-0"           # names may hold dashes


def test_a_value_only_kv0_showed_locally_may_give_its_version_to_another_write() -> None:
    # A 504 write_concern_timeout lived on kv-0 alone; a local read there saw it; kv-0 lost
    # its volume, and a later write got the same version. Nothing acknowledged was lost.
    h = H()
    h.put("unconfirmed", 7, 0, 1, outcome=UNKNOWN, status=504, error="write_concern_timeout")
    h.read("unconfirmed", 7, 2, 3, consistency="local", pod="kv-0")
    h.read("unconfirmed", 7, 2, 3, consistency="min_lsn", pod="kv-0")
    h.put("later", 7, 4, 5)
    assert checker.build_versions(h.ops)[1] == []
    # The same seen on a follower (held by kv-0 and it: a majority of three) is a conflict,
    # and so is a strong read on kv-0 (it waits until a majority holds what it shows).
    for pod, consistency in (("kv-1", "local"), ("kv-0", "strong")):
        h = H()
        h.read("unconfirmed", 7, 2, 3, consistency=consistency, pod=pod)
        h.put("later", 7, 4, 5)
        assert [v.kind for v in checker.build_versions(h.ops)[1]] == ["version_conflict"], (pod, consistency)


def test_each_min_lsn_read_and_strong_404_is_judged_after_one_that_needs_no_more() -> None:
    # A 412 min_lsn read is reported, and the reads after it are still judged.
    h = H()
    h.put("a", 1, 0, 1)
    h.add("read", 2, 3, OK, consistency="min_lsn", min_lsn=1, own_version=1, own_deleted=False, status=412,
          error="min_lsn_ahead", pod="kv-1")
    min_lsn_read(h, "a", 1, 4, 5, own=1, lsn=0)
    assert [v.ops for v in checker.check_min_lsn_reads(h.ops)] == [[1], [2]]
    # A strong 404 right after a delete is fine, and a later one after a put is still judged.
    h = H()
    h.put("a", 1, 0, 1)
    h.add("delete", 2, 3, version=2, status=200)
    h.read(None, None, 4, 5)
    h.put("c", 3, 6, 7)
    h.read(None, None, 8, 9)
    assert [v.ops for v in checker.check_version_order(h.ops)] == [[3, 4]]


def test_a_conflict_seen_again_is_reported_once() -> None:
    h = H()
    h.put("a", 1, 0, 1)
    h.read("zzz", 1, 2, 3, consistency="local", pod="kv-1")
    h.read("zzz", 1, 4, 5, consistency="local", pod="kv-2")
    assert [v.message for v in checker.check(h.ops, final("a", 1)).violations if v.kind == "version_conflict"] == [
        "version 1 seen with values 'a' and 'zzz'"]


# ------------------------------------------------------- a zombie kv-0 and fencing's answers
ZOMBIE = "kv-0-zombie"  # how the zombie-primary nemesis records operations sent to a second kv-0


def test_fencing_refusals_are_not_applied_and_an_unconfirmed_write_is_unknown() -> None:
    for code in ("not_primary", "recovering", "no_primary"):
        assert classify_write(503, code) == FAILED, code
    assert classify_write(504, "write_concern_timeout") == UNKNOWN
    assert classify_read(503) == FAILED and classify_read(504) == FAILED  # not_primary, not_confirmed


def test_a_write_the_zombie_refused_that_shows_up_later_is_reported() -> None:
    # 503 not_primary promises the write was refused before it was applied.
    h = H()
    h.put("a", 1, 0, 1)
    h.put("refused", None, 2, 3, outcome=classify_write(503, "not_primary"), status=503, error="not_primary",
          pod=ZOMBIE)
    h.read("refused", 2, 4, 5, pod="kv-1")
    report = checker.check(h.ops, final("refused", 2))
    assert "failed_write_visible" in kinds(report)
    assert any(v.ops == [2, 1] for v in report.violations if v.kind == "failed_write_visible"), report.violations


def test_an_unconfirmed_write_on_the_zombie_may_be_kept_or_lost() -> None:
    for kept in (True, False):
        h = H()
        h.put("a", 1, 0, 1)
        h.put("maybe", None, 2, 3, outcome=classify_write(504, "write_concern_timeout"), status=504,
              error="write_concern_timeout", pod=ZOMBIE)
        assert checker.check(h.ops, final("maybe", 2) if kept else final("a", 1)).verdict == "PASS", kept


def test_a_stale_strong_read_from_the_zombie_is_not_linearizable() -> None:
    h = H()
    h.put("a", 1, 0, 1)
    h.put("b", 2, 2, 3)                          # acknowledged by the real kv-0
    h.read("a", 1, 4, 5, pod=ZOMBIE)             # the zombie, on its old copy, answers a strong read
    report = checker.check(h.ops, final("b", 2))
    assert kinds(report) == {"non_linearizable", "version_order"}
    assert [v.ops for v in report.violations if v.kind == "non_linearizable"] == [[2]]


def test_a_write_the_zombie_acknowledged_that_is_gone_is_lost() -> None:
    h = H()
    h.put("a", 1, 0, 1)
    h.put("z", 2, 2, 3, pod=ZOMBIE)              # acknowledged (w=majority) by the zombie alone
    report = checker.check(h.ops, final("a", 1))
    assert kinds(report) == {"lost_write", "non_linearizable"}  # the end state is a read after it, too
    assert [v.ops for v in report.violations if v.kind == "lost_write"] == [[1]]


def test_the_zombie_needs_no_final_view_and_speaks_as_kv0() -> None:
    h = H()
    h.put("a", 1, 0, 1, pod=ZOMBIE)
    h.read("a", 1, 2, 3, consistency="local", pod=ZOMBIE)
    assert checker.check(h.ops, final("a", 1)).verdict == "PASS"  # it is gone by the end; kv-0 stands for it
    assert [v.kind for v in checker.check(h.ops, {"kv-1": view(1, chaos_k=("a", 1))}).violations] == [
        "missing_final_view"]
    # A value only the zombie showed in a local read (no X-Kv-Answered-By) is not held by a
    # majority: its version may go to another write, as with kv-0 itself.
    h = H()
    h.read("unconfirmed", 7, 2, 3, consistency="local", pod=ZOMBIE)
    h.put("later", 7, 4, 5)
    assert checker.build_versions(h.ops)[1] == []
