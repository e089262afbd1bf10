"""Lineages: where two logs part, what replaced what, and what a peer may send."""

from __future__ import annotations

import pytest

from hypothesis import given
from hypothesis import strategies as st

from kvstore.lineage import (
    BEHIND, DIVERGED, DROPPABLE, MAX_EPOCHS, PREFIX, UNKNOWN, Epoch, Lineage, LineageError, common_point, compare,
    diverging_epoch,
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


def test_cut_lineages_compare_from_the_oldest_epoch_both_keep() -> None:
    late = epochs((5, 10, H1, "a", True))  # epochs 1..4 dropped: an epoch both hold vouches for 1..9
    assert common_point(late, 20, late, 20) == 20
    assert compare(late, 20, late, 30).relation == PREFIX
    assert compare(late, 30, late, 20).relation == BEHIND
    cut_later = epochs((6, 25, H1, "b", True))  # epoch 5 dropped too
    assert compare(late, 20, epochs((5, 10, H1, "a", True), (6, 25, H1, "b", True)), 40).relation == PREFIX
    # Epoch 6 starts past our LSN 20, and theirs no longer says who wrote 1..24: nothing places us.
    assert (compare(late, 20, cut_later, 40).common, compare(late, 20, cut_later, 40).relation) == (0, UNKNOWN)
    assert compare(cut_later, 40, late, 20).relation == UNKNOWN
    # Both cut, no epoch in common: an unrelated history (or one that parted before both cuts).
    assert compare(late, 20, epochs((5, 10, H2, "z", True)), 20).relation == UNKNOWN


def _restarts(count: int, keep: int) -> None:
    """kv-0 starts ``count`` times with a write in each epoch; a follower compares, then adopts its lineage."""
    primary, follower, lsn = Lineage().begin(1, 1, H1, True, keep=keep), Lineage(), 0
    for number in range(2, count + 2):
        lsn += 1  # the epoch's write, which the follower holds too
        assert compare(follower, lsn - 1, primary, lsn).relation == PREFIX, number
        follower = primary
        assert compare(follower, lsn, primary, lsn).relation == PREFIX, number
        primary = primary.begin(number, lsn + 1, H1, True, keep=keep)
        assert len(primary.epochs) <= keep
    assert compare(follower, lsn, primary, lsn).relation == PREFIX


def test_thousands_of_kv0_starts_leave_followers_following() -> None:
    _restarts(3000, keep=5)
    _restarts(MAX_EPOCHS + 50, keep=MAX_EPOCHS)


def test_the_cap_never_goes_below_one_epoch_nor_above_the_wire_bound() -> None:
    assert len(BASE.begin(3, 71, H1, True, keep=0).epochs) == 1
    many = Lineage()
    for number in range(1, MAX_EPOCHS + 10):
        many = many.begin(number, number, H1, True, keep=10 * MAX_EPOCHS)
    assert len(many.epochs) == MAX_EPOCHS
    assert Lineage.from_json(many.to_json()) == many


@st.composite
def _two_logs(draw: st.DrawFn) -> tuple[tuple[Lineage, int], tuple[Lineage, int]]:
    """Two logs of one cluster: A's states over time; B took one of them (at or below its LSN) and may
    have gone on alone (a fork), as a follower that kv-0 lost or a kv-0 that came back from an old disk."""
    ids = iter(range(1, 10_000))
    history, number, lsn, lineage = H1, 0, 0, Lineage()
    states: list[tuple[Lineage, int]] = []
    for _ in range(draw(st.integers(1, 12))):
        number += 1
        lineage = lineage.begin(number, lsn + 1, history, draw(st.booleans()), ident=f"{next(ids):x}")
        lsn += draw(st.integers(0, 4))
        states.append((lineage, lsn))
    b_lineage, b_top = draw(st.sampled_from(states))
    b_lsn = draw(st.integers(max(0, b_lineage.last.start - 1), b_top))  # a follower may hold less
    for _ in range(draw(st.integers(0, 4))):  # B's own epochs: numbers above A's, a new history
        number += 1
        b_lineage = b_lineage.begin(number, b_lsn + 1, H2, draw(st.booleans()), ident=f"{next(ids):x}")
        b_lsn += draw(st.integers(0, 4))
    return (lineage, lsn), (b_lineage, b_lsn)


@given(_two_logs(), st.integers(1, 14), st.integers(1, 14), st.booleans())
def test_cutting_old_epochs_never_changes_a_comparison_only_makes_it_unknown(
        logs: tuple[tuple[Lineage, int], tuple[Lineage, int]], keep_a: int, keep_b: int, a_first: bool) -> None:
    (a, a_lsn), (b, b_lsn) = logs if a_first else logs[::-1]
    full = compare(a, a_lsn, b, b_lsn)
    cut_a, cut_b = Lineage(a.epochs[-keep_a:]), Lineage(b.epochs[-keep_b:])
    cut = compare(cut_a, a_lsn, cut_b, b_lsn)
    shared = {(e.number, e.id) for e in cut_a.epochs} & {(e.number, e.id) for e in cut_b.epochs
                                                         if e.start <= min(a_lsn, b_lsn)}
    if shared or (cut_a == a and cut_b == b):
        assert cut == full  # an epoch both keep places the logs exactly as the whole lineages do
    else:
        assert cut.relation in (full.relation, UNKNOWN), (full, cut)
        assert cut.common <= full.common


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
