"""The watch checks on hand-made histories: good streams pass, and each broken rule is reported.

Versions are LSNs; a watcher's records are what it read (start, put, delete,
keepalive) and what it did (end, resync), in order.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from kvstore.chaos import checker, watchcheck
from kvstore.chaos.cli import check, watch_text
from kvstore.chaos.history import FAILED, OK, UNKNOWN, Op, WatchRecord, read_watch_log, write_jsonl


class W:
    """A history of writes and one or more watchers' records."""

    def __init__(self) -> None:
        self.ops: list[Op] = []
        self.records: list[WatchRecord] = []

    def write(self, f: str, key: str, value: str | None, version: int | None, outcome: str = OK) -> Op:
        t = float(len(self.ops))
        op = Op(id=len(self.ops), process=0, key=key, f=f, pod="kv-0", call=t, ret=t + 0.5, outcome=outcome,
                value=value, version=version, status=200 if outcome == OK else None)
        self.ops.append(op)
        return op

    def line(self, kind: str, watcher: int = 0, pod: str = "kv-1", **kw: object) -> WatchRecord:
        record = WatchRecord(watcher=watcher, type=kind, time=float(len(self.records)), pod=pod,
                             prefix="chaos/", **kw)
        self.records.append(record)
        return record

    def start(self, lsn: int, **kw: object) -> None:
        self.line("start", lsn=lsn, history="h1", **kw)

    def put(self, key: str, value: str, version: int, **kw: object) -> None:
        self.line("put", key=key, value=value, version=version, **kw)

    def delete(self, key: str, version: int, **kw: object) -> None:
        self.line("delete", key=key, version=version, **kw)

    def check(self) -> tuple[list[checker.Violation], checker.Report]:
        report = checker.Report()
        return watchcheck.check_watches(self.ops, self.records, report), report


def kinds(violations: list[checker.Violation]) -> list[str]:
    return [v.kind for v in violations]


def good() -> W:
    """Three writes to two keys, a cut after the first, resumed on another pod from its position."""
    w = W()
    w.write("put", "chaos/a", "p0-1", 3)
    w.write("put", "chaos/b", "p0-2", 4)
    w.write("delete", "chaos/a", None, 5)
    w.write("cas", "chaos/b", "p0-3", 6)
    w.start(2)
    w.put("chaos/a", "p0-1", 3)
    w.line("end", error="ServerDisconnectedError", resumable=True)
    w.start(3, pod="kv-2", from_lsn=4)
    w.put("chaos/b", "p0-2", 4, pod="kv-2")
    w.delete("chaos/a", 5, pod="kv-2")
    w.put("chaos/b", "p0-3", 6, pod="kv-2")
    w.line("keepalive", pod="kv-2", lsn=6)
    return w


def test_a_resumed_stream_that_shows_every_write_once_in_order_passes() -> None:
    violations, report = good().check()
    assert violations == []
    assert (report.watch_events, report.watch_covered, report.watch_reconnects, report.watch_resyncs) == (4, 4, 1, 0)


@pytest.mark.parametrize("second, message", [("chaos/a", "after the key's event at version 4"),
                                             ("chaos/b", "after chaos/b at version 4: not in log order")])
def test_an_event_out_of_order_is_reported(second: str, message: str) -> None:
    # The key's own writes out of order, or two keys' events out of log order.
    w = W()
    w.write("put", "chaos/a", "p0-1", 3)
    w.write("put", second, "p0-2", 4)
    w.start(2)
    w.put(second, "p0-2", 4)
    w.put("chaos/a", "p0-1", 3)
    violations, _ = w.check()
    assert kinds(violations) == ["watch_order"]
    assert message in violations[0].message


def test_an_event_at_or_before_the_position_it_started_from_is_reported() -> None:
    w = W()
    w.write("put", "chaos/a", "p0-1", 3)
    w.start(3)
    w.put("chaos/a", "p0-1", 3)
    assert kinds(w.check()[0]) == ["watch_order"]


def test_an_acknowledged_write_missing_from_a_watched_range_is_a_gap() -> None:
    w = good()
    del w.records[4]  # kv-2 never showed the put of chaos/b at version 4
    violations, _ = w.check()
    assert kinds(violations) == ["watch_gap"]
    assert violations[0].key == "chaos/b" and violations[0].ops == [1]


def test_a_missing_delete_is_a_gap_too() -> None:
    w = good()
    del w.records[5]
    assert kinds(w.check()[0]) == ["watch_gap"]


def test_a_resumed_start_past_the_position_skips_writes_and_is_a_gap() -> None:
    # It asked for lsn 4 on, the pod started from 5: the write at 4 was never scanned by this watcher.
    w = W()
    w.write("put", "chaos/a", "p0-1", 3)
    w.write("put", "chaos/a", "p0-2", 4)
    w.write("put", "chaos/a", "p0-3", 5)
    w.start(2)
    w.put("chaos/a", "p0-1", 3)
    w.line("end", error="shutting_down", resumable=True)
    w.start(4, from_lsn=4)   # and was cut again before anything else came: 5 is not owed, 4 is
    assert kinds(w.check()[0]) == ["watch_gap"]


def test_writes_outside_the_watched_range_or_prefix_are_not_owed() -> None:
    w = W()
    w.write("put", "chaos/a", "p0-1", 3)   # before the start
    w.write("put", "other/x", "p0-2", 4)   # not under the prefix
    w.write("put", "chaos/a", "p0-3", 5)
    w.write("put", "chaos/a", "p0-4", 6)   # after the last position reached
    w.write("put", "chaos/a", "p0-5", None, outcome=UNKNOWN)  # unknown: may or may not be there
    w.start(3)
    w.put("chaos/a", "p0-3", 5)
    violations, report = w.check()
    assert violations == [] and report.watch_covered == 1


def test_a_value_nobody_wrote_is_a_phantom() -> None:
    w = good()
    w.put("chaos/b", "p9-99", 7, pod="kv-2")
    violations, _ = w.check()
    assert kinds(violations) == ["watch_phantom"] and "which no write to the key wrote" in violations[0].message


def test_a_value_written_to_another_key_or_by_a_failed_write_is_a_phantom() -> None:
    w = good()
    w.write("put", "chaos/c", "p0-4", None, outcome=FAILED)
    w.put("chaos/c", "p0-3", 7, pod="kv-2")   # chaos/b's value, on chaos/c
    w.put("chaos/c", "p0-4", 8, pod="kv-2")   # a write answered as not applied
    violations, _ = w.check()
    assert kinds(violations) == ["watch_phantom", "watch_phantom"]
    assert "not applied" in violations[1].message


def test_an_acknowledged_value_at_another_version_is_a_phantom() -> None:
    w = W()
    w.write("put", "chaos/a", "p0-1", 3)
    w.start(2)
    w.put("chaos/a", "p0-1", 4)
    violations, _ = w.check()
    # Shown at 4, not at 3: the write at 3 is missing as well.
    assert sorted(kinds(violations)) == ["watch_gap", "watch_phantom"]


def test_an_unknown_write_may_appear_at_any_version() -> None:
    w = W()
    w.write("put", "chaos/a", "p0-1", None, outcome=UNKNOWN)
    w.write("delete", "chaos/a", None, None, outcome=UNKNOWN)
    w.start(2)
    w.put("chaos/a", "p0-1", 3)
    w.delete("chaos/a", 4)
    assert w.check()[0] == []


def test_a_delete_nobody_sent_or_at_a_put_version_is_a_phantom() -> None:
    w = W()
    w.write("put", "chaos/a", "p0-1", 3)
    w.write("delete", "chaos/b", None, 4)
    w.start(2)
    w.put("chaos/a", "p0-1", 3)
    w.delete("chaos/b", 4)
    w.delete("chaos/a", 5)             # no delete of chaos/a was sent
    w.delete("chaos/b", 6)             # the only delete of chaos/b was acknowledged at 4
    violations, _ = w.check()
    assert kinds(violations) == ["watch_phantom", "watch_phantom"]
    w2 = W()
    w2.write("put", "chaos/a", "p0-1", 3)
    w2.write("delete", "chaos/a", None, None, outcome=UNKNOWN)
    w2.start(2)
    w2.delete("chaos/a", 3)            # the put's version
    assert sorted(kinds(w2.check()[0])) == ["watch_gap", "watch_phantom"]  # and the put was never shown


def test_an_event_outside_the_prefix_is_a_phantom() -> None:
    w = W()
    w.write("put", "other/a", "p0-1", 3)
    w.start(2)
    w.put("other/a", "p0-1", 3)
    violations, _ = w.check()
    assert kinds(violations) == ["watch_phantom"] and "outside its prefix" in violations[0].message


def test_an_event_shown_twice_is_a_duplicate() -> None:
    w = good()
    w.line("end", pod="kv-2", error="slow_watcher", resumable=True)
    w.start(5, pod="kv-0", from_lsn=6)  # resumed one too early: the cas at 6 comes again
    w.put("chaos/b", "p0-3", 6, pod="kv-0")
    violations, _ = w.check()
    assert kinds(violations) == ["watch_duplicate"]


def test_after_a_resync_nothing_is_owed_and_events_may_repeat() -> None:
    w = W()
    w.write("put", "chaos/a", "p0-1", 3)
    w.write("put", "chaos/a", "p0-2", 4)
    w.write("put", "chaos/a", "p0-3", 5)
    w.write("put", "chaos/a", "p0-4", 6)
    w.start(2)
    w.put("chaos/a", "p0-1", 3)
    w.line("end", status=410, error="log_compacted", resumable=False, lsn=6)
    w.line("end", error="re-read: ClientConnectorError", resumable=True)  # a failed re-read, retried
    w.line("resync", pod="kv-2", lsn=2, history="h1", error="log_compacted")
    w.start(2, pod="kv-2", from_lsn=3)  # the re-read was answered at lsn 2: 3 comes again
    w.put("chaos/a", "p0-1", 3, pod="kv-2")
    w.line("end", status=409, error="history_changed", resumable=False)
    w.line("resync", lsn=5, history="h2", error="history_changed")
    w.start(5, from_lsn=6)
    w.put("chaos/a", "p0-4", 6)
    violations, report = w.check()
    assert violations == [], violations  # 4 and 5 fell between runs: the watcher re-read instead
    assert (report.watch_resyncs, report.watch_events) == (2, 3)
    # Resumed instead of re-synced, the same stream owes 4 and 5.
    w.records[7] = WatchRecord(0, "end", 7.0, "kv-2", "chaos/", error="shutting_down", resumable=True)
    del w.records[8]
    assert kinds(w.check()[0]) == ["watch_gap", "watch_gap"]


def test_each_watcher_is_judged_on_its_own() -> None:
    w = good()
    w.line("start", watcher=1, pod="kv-0", lsn=4, history="h1")
    w.line("keepalive", watcher=1, pod="kv-0", lsn=6)   # scanned 5 and 6 but showed neither
    violations, report = w.check()
    assert kinds(violations) == ["watch_gap", "watch_gap"] and report.watchers == 2


def test_the_chaos_check_adds_watch_violations_and_counts_to_the_report(tmp_path: Path) -> None:
    w = good()
    del w.records[4]
    views = {pod: checker.ReplicaView(6, {"chaos/b": ("p0-3", 6)}) for pod in ("kv-0", "kv-1", "kv-2")}
    report = check(w.ops, w.records, views, max_steps=10_000)
    assert report.verdict == "FAIL" and "watch_gap" in report.counts()
    assert watch_text(report).startswith("watch: 1 watchers, 3 events checked, 4 acknowledged writes")
    # What the run writes, it reads back (the recheck uses it); an older run without the file has none.
    write_jsonl(tmp_path / "watch.jsonl", w.records)
    assert read_watch_log(tmp_path / "watch.jsonl") == w.records
    assert read_watch_log(tmp_path / "missing.jsonl") == []
