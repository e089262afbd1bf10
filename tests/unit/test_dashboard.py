"""The dashboard's pure parts: the event ring, p99 from histogram buckets, restart counting, the view."""

from __future__ import annotations

import json
from pathlib import Path

from kvstore.dashboard import PeerState, RestartCounter, assemble, histogram_quantile, pod_state
from kvstore.discovery import Peer
from kvstore.events import EventLog


def test_the_ring_keeps_the_newest_and_numbers_them() -> None:
    log = EventLog("kv-1", capacity=3)
    for i in range(5):
        log.record("joined", f"kv-{i} joined", peer=f"kv-{i}")
    assert [e["seq"] for e in log.since(0)] == [3, 4, 5]
    assert [e["seq"] for e in log.since(3)] == [4, 5]
    assert [e["seq"] for e in log.since(0, limit=1)] == [3]
    assert [e["seq"] for e in log.recent(2)] == [4, 5]
    assert log.since(5) == [] and log.recent(0) == []
    last = log.since(4)[0]
    assert (last["pod"], last["kind"], last["peer"], last["message"]) == ("kv-1", "joined", "kv-4", "kv-4 joined")


def test_p99_interpolates_within_the_bucket() -> None:
    # 100 writes: 98 under 1 ms, 2 between 1 and 2.5 ms
    buckets = [(0.001, 98.0), (0.0025, 100.0), (float("inf"), 100.0)]
    assert abs(histogram_quantile(0.99, buckets) - 0.00175) < 1e-9
    assert histogram_quantile(0.99, [(0.001, 0.0), (float("inf"), 0.0)]) is None
    assert histogram_quantile(0.99, [(0.001, 0.0), (float("inf"), 5.0)]) == 0.001  # beyond the last bound


def test_restarts_count_starts_after_an_unclean_stop(tmp_path: Path) -> None:
    counter = RestartCounter(str(tmp_path))
    assert counter.start() == 0
    assert RestartCounter(str(tmp_path)).start() == 1  # the file was left: the last run did not stop cleanly
    assert RestartCounter(str(tmp_path)).start() == 2
    RestartCounter(str(tmp_path)).clean_stop()
    assert RestartCounter(str(tmp_path)).start() == 0
    Path(counter.path).write_text("not json")
    assert RestartCounter(str(tmp_path)).start() == 1
    assert json.loads(Path(counter.path).read_text()) == {"restarts": 1}


def answer(lsn: int, upstream: str | None = None, ready: bool = True) -> dict:
    following = {"upstream": upstream, "connected": True} if upstream else None
    return {"status": {"lsn": lsn, "role": "secondary" if upstream else "primary", "history_id": "h",
                       "following": following, "epoch": 3},
            "ready": ready, "reason": "following" if ready else "catching up: 900 entries behind",
            "restarts": 0, "client_port": 8080, "samples": []}


def test_the_view_orders_pods_computes_lag_and_marks_the_silent_down() -> None:
    me = {**answer(40, "kv-1"), "name": "kv-2", "ordinal": 2, "host": "10.0.0.3"}
    primary, middle = PeerState(Peer("kv-0", 0, "10.0.0.1", 8081)), PeerState(Peer("kv-1", 1, "10.0.0.2", 8081))
    primary.answer, primary.last_ok = answer(100), 9.0
    middle.answer, middle.last_ok, middle.down_since, middle.error = answer(70, "kv-0", ready=False), 5.0, 6.0, "gone"
    view = assemble(me, [middle, primary], [{"time": 1, "pod": "kv-0", "seq": 1}, {"time": 2, "pod": "kv-1", "seq": 1}],
                    now=10.0)
    rows = {r["name"]: r for r in view["pods"]}
    assert [r["name"] for r in view["pods"]] == ["kv-0", "kv-1", "kv-2"]
    assert view["primary_lsn"] == 100 and rows["kv-2"]["lag"] == 60 and rows["kv-0"]["lag"] == 0
    assert (rows["kv-1"]["state"], rows["kv-1"]["up"], rows["kv-1"]["reason"]) == ("Down", False, "gone")
    assert rows["kv-1"]["lsn"] == 70 and rows["kv-1"]["lag"] is None  # last known, but no lag: it is stale
    assert rows["kv-1"]["last_contact_seconds"] == 5.0 and rows["kv-0"]["last_contact_seconds"] == 1.0
    assert rows["kv-2"]["follows"] == "kv-1" and rows["kv-2"]["epoch"] == 3 and rows["kv-2"]["serving"]
    assert [e["pod"] for e in view["events"]] == ["kv-1", "kv-0"]  # newest first


def test_pod_state_reads_the_pods_own_state_word_first() -> None:
    assert pod_state(True, "following, 0 entries behind", False, None) == "Ready"
    assert pod_state(False, "catching up: 5000 entries behind", False, None) == "Recovering"
    assert pod_state(False, "recovering: kv-0 must hear from kv-2", True, False) == "Recovering"
    assert pod_state(True, "primary taking writes", True, True, state="diverged") == "Diverged"
    assert pod_state(True, "following", False, None, state="stalled") == "Stalled"
    assert pod_state(False, "installing a snapshot", False, None, state="installing_snapshot") == "Recovering"
    assert pod_state(False, "something else", False, None) == "NotReady"


def test_the_view_shows_each_pods_revision_and_a_rollout_in_progress() -> None:
    def revised(lsn: int, revision: str, upstream: str | None = None) -> dict:
        body = answer(lsn, upstream)
        body["status"]["revision"] = revision
        return body
    me = {**revised(40, "kv-new", "kv-0"), "name": "kv-2", "ordinal": 2, "host": "10.0.0.3"}
    primary, middle = PeerState(Peer("kv-0", 0, "10.0.0.1", 8081)), PeerState(Peer("kv-1", 1, "10.0.0.2", 8081))
    primary.answer, primary.last_ok = revised(100, "kv-old"), 9.0
    middle.answer, middle.last_ok = revised(90, "kv-old", "kv-0"), 9.0
    view = assemble(me, [middle, primary], [], now=10.0)
    assert [r["revision"] for r in view["pods"]] == ["kv-old", "kv-old", "kv-new"]
    assert view["rollout"] == {"kv-old": ["kv-0", "kv-1"], "kv-new": ["kv-2"]}
    me["status"]["revision"] = "kv-old"
    assert assemble(me, [middle, primary], [], now=10.0)["rollout"] is None  # one revision: no rollout
