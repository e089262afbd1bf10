"""The rolling update's rules and the template's revisions, without processes."""

from __future__ import annotations

import pytest

from kvstore.local.rollout import (
    HISTORY_LIMIT, ON_DELETE, ROLLING_UPDATE, History, PodView, Rollout, Template, created_revision, next_step,
    parse_env_changes, stale, undo_target,
)
from kvstore.replication.versions import FROM_HEADER, HEADER, PeerProtocolMismatch, Versions, parse_range


def pods(*revisions: str, healthy: bool = True) -> list[PodView]:
    return [PodView(o, r, healthy, False, f"kv-{o}") for o, r in enumerate(revisions)]


def test_highest_ordinal_first_one_at_a_time() -> None:
    assert next_step(pods("a", "a", "a"), ROLLING_UPDATE, 0, "b") == ("delete", 2)
    assert next_step(pods("a", "a", "b"), ROLLING_UPDATE, 0, "b") == ("delete", 1)
    waiting = pods("a", "a", "b")
    waiting[2] = PodView(2, "b", False, False, "kv-2")  # replaced, not Ready yet: the next waits
    assert next_step(waiting, ROLLING_UPDATE, 0, "b") == ("wait", 2)
    terminating = pods("a", "a", "a")
    terminating[2] = PodView(2, "a", False, True, "kv-2")
    assert next_step(terminating, ROLLING_UPDATE, 0, "b") == ("wait", 2)
    assert next_step(pods("b", "b", "b"), ROLLING_UPDATE, 0, "b") == ("done", None)


def test_partition_and_on_delete() -> None:
    assert next_step(pods("a", "a", "b"), ROLLING_UPDATE, 2, "b") == ("done", None)
    assert next_step(pods("a", "a", "a"), ROLLING_UPDATE, 3, "b") == ("done", None)
    assert next_step(pods("a", "a", "a"), ON_DELETE, 0, "b") == ("done", None)
    # A pod created now: below the partition it keeps the current revision.
    assert created_revision(1, ROLLING_UPDATE, 2, "a", "b") == "a"
    assert created_revision(2, ROLLING_UPDATE, 2, "a", "b") == "b"
    assert created_revision(0, ON_DELETE, 0, "a", "b") == "b"


def test_a_pod_a_broken_rollout_left_is_stale() -> None:
    assert stale(PodView(2, "bad", False, False), current="a", update="a")
    assert not stale(PodView(2, "bad", True, False), current="a", update="a")  # Ready: the rollout replaces it
    assert not stale(PodView(2, "b", False, False), current="a", update="b")  # the update: wait for it


def test_template_hash_and_history() -> None:
    base = Template.make({"KV_READ_WAIT": "4"}, "process")
    assert base.hash() == Template.make({"KV_READ_WAIT": "4"}, "process").hash()
    assert base.hash() != Template.make({"KV_READ_WAIT": "4"}, "kvstore:0.2.0").hash()
    assert base.restarted(0).hash() != base.hash()
    rollout = Rollout("kv", base)
    first = rollout.current
    second = rollout.change(base.with_env({"KV_READ_WAIT": "5"}, []), "set env", set())
    assert (first.number, second.number) == (1, 2) and rollout.current is first
    back, changed = rollout.undo(None, {first.name})
    assert changed and back.name == first.name and back.number == 3  # renumbered, like a ControllerRevision
    assert [r.number for r in rollout.history.revisions] == [2, 3]
    assert rollout.undo(3, set()) == (back, False)
    with pytest.raises(ValueError, match="unable to find revision 1"):
        undo_target(rollout.history, rollout.update, 1)
    with pytest.raises(ValueError, match="partition must be from 0 to 3"):
        rollout.set_partition(4, 3)


def test_history_keeps_revisions_in_use() -> None:
    history = History("kv")
    kept = history.record(Template.make({}, "i0"), "up", set())
    for n in range(1, HISTORY_LIMIT + 5):
        history.record(Template.make({}, f"i{n}"), "change", {kept.name})
    assert len(history.revisions) == HISTORY_LIMIT and history.revisions[0] is kept


def test_rollout_status_says_halted_with_the_reason() -> None:
    rollout = Rollout("kv", Template.make({}, "process"))
    update = rollout.change(Template.make({"KV_WRITE_CONCERN": "bogus"}, "process"), "set env", set())
    views = pods(rollout.current.name, rollout.current.name, update.name)
    views[2] = PodView(2, update.name, False, False, "kv-2", crashed=True, age=2.0, why="CrashLoopBackOff: bogus")
    status = rollout.status(views, 3)
    assert status["state"] == "halted" and status["pod"] == "kv-2" and "bogus" in status["message"]
    views[2] = PodView(2, update.name, False, False, "kv-2", age=90.0, why="Running: not following")
    assert rollout.status(views, 3)["state"] == "halted"  # not Ready for too long
    views[2] = PodView(2, update.name, False, False, "kv-2", age=90.0, copying=True)
    assert rollout.status(views, 3)["state"] == "progressing"  # slow, copying a snapshot: not halted
    views[2] = PodView(2, update.name, True, False, "kv-2")
    assert rollout.status(views, 3)["state"] == "progressing"
    assert rollout.status(pods(update.name, update.name, update.name), 3)["state"] == "complete"
    assert rollout.current is update


@pytest.mark.parametrize("items, error", [
    (["KV_WRITE_CONCERN"], "expected NAME=VALUE"),
    (["1BAD=x"], "not one of the KV_. settings"),
    (["KV_NOPE=1"], "not one of the KV_. settings"),
    (["KV_DATA_DIR=/x"], "set by the controller"),
    (["KV_READ_WAIT=1\0"], "NUL"),
    (["KV_READ_WAIT=1", "KV_READ_WAIT-"], "both set and removed"),
    ([], "at least one"),
])
def test_bad_env_changes(items: list[str], error: str) -> None:
    with pytest.raises(ValueError, match=error):
        parse_env_changes(items)


def test_env_changes() -> None:
    # A value the pods would refuse is taken: the rollout halts on it, as with kubectl set env.
    assert parse_env_changes(["KV_WRITE_CONCERN=bogus", "KV_READ_WAIT-"]) == ({"KV_WRITE_CONCERN": "bogus"},
                                                                              ["KV_READ_WAIT"])


def test_peer_protocol_versions() -> None:
    assert parse_range("2") == (2, 2) and parse_range("2-3") == (2, 3)
    for bad in ("", "x", "3-2", "2-", "-2", "1" * 30):
        with pytest.raises(ValueError):
            parse_range(bad)
    old, both, new = Versions("kv-0", (2, 2)), Versions("kv-1", (2, 3)), Versions("kv-2", (3, 3))
    assert old.check_call(both.headers, None) is None and both.check_call(new.headers, None) is None
    assert old.check_call({}, "127.0.0.1") is None  # a build older than the header spoke 2
    refused = old.check_call(new.headers, None)
    assert refused == "kv-2 speaks peer protocol 3, this pod 2"
    assert old.mismatches() == {"kv-2": refused}
    with pytest.raises(PeerProtocolMismatch, match="kv-0 speaks peer protocol 2, this pod 3"):
        new.check_answer("kv-0", 409, {"X-Kv-Error": "peer_protocol", "X-Kv-Peer-Protocol": "2"})
    new.check_answer("kv-0", 409, {"X-Kv-Error": "log_mismatch"})  # another refusal: not ours to judge


def test_a_peer_that_cannot_read_a_configuration_entry_is_noted_for_kv0_to_wait() -> None:
    kv0 = Versions("kv-0", (2, 3))
    assert kv0.older_peers() == []
    assert kv0.check_call({HEADER: "3", FROM_HEADER: "kv-1"}, None) is None
    assert kv0.check_call(Versions("kv-1", (2, 3)).headers, None) is None
    assert kv0.older_peers() == []  # both read configuration entries
    assert kv0.check_call({HEADER: "2", FROM_HEADER: "kv-2"}, None) is None  # accepted, but noted
    assert kv0.check_call({}, "127.0.0.13") is None  # a build older than the header
    assert kv0.older_peers() == ["127.0.0.13", "kv-2"]
