"""Lineages: where two logs part, what replaced what, and what a peer may send."""

from __future__ import annotations

import pytest

from kvstore.lineage import (
    BEHIND, DIVERGED, DROPPABLE, PREFIX, Epoch, Lineage, LineageError, common_point, compare, diverging_epoch,
)

H1, H2 = "1" * 32, "2" * 32


def epochs(*rows: tuple[int, int, str, str, bool]) -> Lineage:
    return Lineage(tuple(Epoch(*row) for row in rows))


BASE = epochs((1, 1, H1, "a", True), (2, 51, H1, "b", True))


def test_common_point_of_one_line_is_the_shorter_log() -> None:
    assert common_point(BASE, 80, BASE, 120) == 80
    assert common_point(BASE, 120, BASE, 80) == 80
    assert common_point(BASE, 0, BASE, 80) == 0


def test_a_fork_parts_the_logs_where_the_new_epoch_begins() -> None:
    # kv-0 lost entries 71.. and began epoch 3 at 71 under a new history.
    forked = BASE.begin(3, 71, H2, True)
    assert common_point(BASE, 90, forked, 100) == 70
    assert diverging_epoch(BASE, 90, forked, 100) == forked.last
    # A follower that had no more than 70 is on the new line already.
    assert common_point(BASE, 70, forked, 100) == 70
    assert diverging_epoch(BASE, 70, forked, 100) is None


def test_same_number_different_incarnation_is_not_the_same_epoch() -> None:
    twin = epochs((1, 1, H1, "a", True), (2, 51, H1, "OTHER", True))
    assert common_point(BASE, 90, twin, 90) == 50
    assert diverging_epoch(BASE, 90, twin, 90).id == "OTHER"


def test_an_upstream_behind_on_our_line_is_not_a_fork() -> None:
    assert diverging_epoch(BASE, 90, BASE, 60) is None
    # ... even when it already knows the epoch that comes after its position.
    assert diverging_epoch(BASE, 90, BASE.begin(3, 91, H1, True), 60) is None


def test_an_unrelated_history_has_nothing_in_common() -> None:
    other = epochs((1, 1, H2, "z", True))
    assert common_point(BASE, 90, other, 90) == 0
    assert diverging_epoch(BASE, 90, other, 90) == other.last


def test_logs_whose_first_entries_no_epoch_covers_share_nothing() -> None:
    late = epochs((5, 10, H1, "a", True))
    assert common_point(late, 20, late, 20) == 0


def test_begin_drops_epochs_that_wrote_nothing_and_keeps_order() -> None:
    restarted = BASE.begin(3, 51, H1, True)  # epoch 2 began at 51 but wrote nothing before 3 did
    assert [e.number for e in restarted.epochs] == [1, 3]
    assert restarted.at(60).number == 3 and restarted.at(50).number == 1


def test_fork_reports_parent_and_fork_point() -> None:
    assert BASE.fork() is None
    assert BASE.begin(3, 71, H2, False).fork() == {"parent": H1, "lsn": 70}
    assert Lineage().fork() is None and Lineage().history == ""


def test_up_to_date_orders_by_last_epoch_then_lsn() -> None:
    forked = BASE.begin(3, 71, H2, True)
    assert forked.up_to_date_key(75) > BASE.up_to_date_key(200)
    assert BASE.up_to_date_key(90) > BASE.up_to_date_key(60)


def test_json_round_trip() -> None:
    forked = BASE.begin(3, 71, H2, False)
    assert Lineage.loads(forked.dumps()) == forked


@pytest.mark.parametrize("bad", [
    {}, "x", [1], [{"epoch": 1}],
    [{"epoch": 0, "start": 1, "history": H1, "id": "a", "verified": True}],
    [{"epoch": 1, "start": 1, "history": "not hex!", "id": "a", "verified": True}],
    [{"epoch": 1, "start": 1, "history": H1, "id": "a", "verified": "yes"}],
    [{"epoch": True, "start": 1, "history": H1, "id": "a", "verified": True}],
    [{"epoch": 2, "start": 1, "history": H1, "id": "a", "verified": True},
     {"epoch": 1, "start": 5, "history": H1, "id": "b", "verified": True}],
    [{"epoch": 1, "start": 9, "history": H1, "id": "a", "verified": True},
     {"epoch": 2, "start": 5, "history": H1, "id": "b", "verified": True}],
    [{"epoch": i + 1, "start": i + 1, "history": H1, "id": "a", "verified": True} for i in range(1001)],
])
def test_malformed_lineages_are_refused(bad: object) -> None:
    with pytest.raises(LineageError):
        Lineage.from_json(bad)


def test_undecodable_bytes_are_refused() -> None:
    with pytest.raises(LineageError):
        Lineage.loads(b"\xff\xfe")
    with pytest.raises(LineageError):
        Lineage.loads(b"{not json")


def test_compare_says_what_a_follower_may_do() -> None:
    verified, unverified = BASE.begin(3, 71, H2, True), BASE.begin(3, 71, H2, False)
    assert compare(BASE, 60, verified, 100).relation == PREFIX
    assert compare(BASE, 90, BASE, 60).relation == BEHIND
    assert compare(BASE, 90, verified, 100).relation == DROPPABLE   # 71..90 never majority-acknowledged
    assert compare(BASE, 90, unverified, 100).relation == DIVERGED  # nothing proves that
    # An unrelated history is never dropped, however verified its own start was.
    assert compare(BASE, 90, epochs((1, 1, H2, "z", True)), 200).relation == DIVERGED
