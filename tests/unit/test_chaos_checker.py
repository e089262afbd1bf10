"""The chaos checker on small hand-made histories: it passes good ones and reports each bad one.

Times are seconds; an operation is (call, ret). Values are unique, as the
workload makes them; versions are the LSNs the store would answer.
"""

from __future__ import annotations

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
        return self.add("put", call, ret, outcome, value=value, version=version, status=200 if outcome == OK else None,
                        **kw)

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
    assert kinds(report) == {"non_linearizable"}
    assert report.violations[0].ops == [2]


def test_stale_local_read_is_allowed_but_stale_strong_is_not() -> None:
    h = H()
    h.put("a", 1, 0, 1)
    h.put("b", 2, 2, 3)
    h.read("a", 1, 4, 5, consistency="local", pod="kv-2")  # a secondary may lag: fine
    assert checker.check(h.ops, final("b", 2)).verdict == "PASS"


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
    # Process 1 asks for its own write (version 2) and gets version 1.
    h.read("a", 1, 4, 5, consistency="min_lsn", min_lsn=2, own_version=2, own_deleted=False, lsn=2,
           process=1, pod="kv-1")
    report = checker.check(h.ops, final("b", 2))
    assert kinds(report) == {"stale_min_lsn"}


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
    h.read("zzz", 1, 2, 3, consistency="local")          # nobody wrote zzz; and version 1 is a's
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
    assert classify_write(504, "write_concern_timeout") == OK     # durable on the primary
    assert classify_write(504, "primary_timeout") == UNKNOWN
    assert classify_write(503, "no_primary") == FAILED
    assert classify_write(503, "storage_unavailable") == UNKNOWN
    assert classify_write(500, "internal") == UNKNOWN
    assert classify_read(404) == OK and classify_read(504) == FAILED
    assert classify_exception(TimeoutError()) == UNKNOWN


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
