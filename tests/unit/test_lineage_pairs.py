"""Every pair of small logs: where they part, and what the comparison lets a follower do, against brute force.

The logs are built from a fixed set of epochs (each incarnation has one
start, as in a real cluster), including two with the same number and
another id, verified and unverified ones, and epochs that wrote nothing yet.
A lineage whose first epoch starts past LSN 1 is one cut to its newest
epochs (MAX_EPOCHS): the epochs that wrote its first entries are unknown.
The oracle reads each log entry by entry, without the lineage's own lookup.
"""

from __future__ import annotations

from itertools import combinations

import pytest

from kvstore.lineage import (
    BEHIND, DIVERGED, DROPPABLE, MAX_EPOCHS, PREFIX, UNKNOWN, Epoch, Lineage, LineageError, Promise, common_point, compare,
)

H = "1" * 32
# Every epoch a lineage below may contain (number, start, history, id, verified).
UNIVERSE = [Epoch(1, 1, H, "a", True), Epoch(1, 1, H, "b", False),
            Epoch(2, 3, H, "a", True), Epoch(2, 2, H, "b", False),
            Epoch(3, 4, H, "a", False), Epoch(3, 3, H, "b", True), Epoch(4, 5, H, "a", True)]
MAX_LSN = 6


def lineages() -> list[Lineage]:
    """Every lineage of up to three epochs of UNIVERSE whose numbers and starts rise."""
    found = [Lineage()]
    for size in (1, 2, 3):
        for chosen in combinations(sorted(UNIVERSE, key=lambda e: (e.number, e.start)), size):
            if all(a.number < b.number and a.start < b.start for a, b in zip(chosen, chosen[1:])):
                found.append(Lineage(chosen))
    return found


def logs() -> list[tuple[Lineage, int]]:
    """Every (lineage, LSN) a replica can hold: its newest epoch begins at most one past its LSN."""
    return [(lineage, lsn) for lineage in lineages() for lsn in range(MAX_LSN + 1)
            if (lineage.last is None and lsn == 0) or (lineage.last is not None and lsn >= lineage.last.start - 1)]


def writer(lineage: Lineage, lsn: int) -> tuple[int, str] | None:
    """The epoch (number, id) that wrote entry ``lsn`` of this log, found by reading the epochs one by one."""
    covering = [e for e in lineage.epochs if e.start <= lsn]
    return (covering[-1].number, covering[-1].id) if covering else None


def same_entries_up_to(mine: tuple[Lineage, int], theirs: tuple[Lineage, int]) -> int:
    """The oracle: the longest prefix of entries both logs hold, written by the same epoch.

    Entries whose writer one side no longer knows (its older epochs were cut)
    are skipped; by log matching, the first entry both know, if the same,
    vouches for every one before it. If it differs, nothing is known in common.
    """
    common = 0
    for x in range(1, min(mine[1], theirs[1]) + 1):
        a, b = writer(mine[0], x), writer(theirs[0], x)
        if a is None or b is None:
            continue  # before one side's oldest kept epoch (never after it: a lineage covers every later LSN)
        if a != b:
            break
        common = x
    return common


ALL = logs()


def test_the_universe_is_large_enough_to_mean_something() -> None:
    assert len(lineages()) >= 30 and len(ALL) >= 100


@pytest.mark.parametrize("index", range(len(ALL)))
def test_common_point_and_compare_against_every_other_log(index: int) -> None:
    mine = ALL[index]
    for theirs in ALL:
        common = common_point(*mine, *theirs)
        assert common == same_entries_up_to(mine, theirs), (mine, theirs)
        result = compare(*mine, *theirs)
        assert result.common == common
        ours_next = writer(mine[0], common + 1)
        theirs_next = [e for e in theirs[0].epochs if e.start <= common + 1][-1:]
        if common >= mine[1]:
            assert result.relation == PREFIX and result.replacing is None
        elif not theirs[0].epochs or (theirs_next and (theirs_next[0].number, theirs_next[0].id) == ours_next):
            assert result.relation == BEHIND and result.replacing is None, (mine, theirs)
        elif not theirs_next or ours_next is None:
            # The epoch that wrote the next entry was cut from one side: nothing places the logs.
            assert result.relation == UNKNOWN and result.replacing is None, (mine, theirs)
        else:
            # Our entries past the common point were replaced by another epoch: drop them only
            # when that epoch proved it holds every majority-acknowledged write, on a shared line.
            assert result.replacing == theirs_next[0]
            dropped = theirs_next[0].verified and common > 0
            assert result.relation == (DROPPABLE if dropped else DIVERGED), (mine, theirs)


def test_up_to_date_is_the_last_entrys_epoch_then_the_lsn() -> None:
    for lineage, lsn in ALL:
        last = writer(lineage, lsn) if lsn else None
        assert lineage.up_to_date_key(lsn) == (last[0] if last else 0, lsn)


# ------------------------------------------------------------- the edges of the wire form
def entry(number: int, start: int, ident: object = "a", history: object = H) -> dict[str, object]:
    return {"epoch": number, "start": start, "history": history, "id": ident, "verified": True}


@pytest.mark.parametrize("bad", [
    [entry(1, 1), entry(1, 5, "b")],          # two epochs with one number: numbers must rise
    [entry(1, 1, ident=5)], [entry(1, 1, ident="XYZ")], [entry(1, 1, history=5)],
    [entry(2**63, 1)], [entry(1, 2**63)],
])
def test_more_malformed_lineages_are_refused(bad: object) -> None:
    with pytest.raises(LineageError):
        Lineage.from_json(bad)


def test_the_largest_lineage_and_numbers_a_peer_may_send_are_taken() -> None:
    longest = [entry(i + 1, i + 1) for i in range(MAX_EPOCHS)]
    assert len(Lineage.from_json(longest).epochs) == MAX_EPOCHS
    assert Lineage.from_json([entry(2**63 - 1, 2**63 - 1)]).number == 2**63 - 1
    # An epoch that wrote nothing is kept until the next one begins at the same LSN (starts never go down).
    assert [e.number for e in Lineage.from_json([entry(1, 3), entry(2, 3, "b")]).epochs] == [1, 2]


@pytest.mark.parametrize("good, expected", [
    (None, Promise()), ({"epoch": 0, "id": ""}, Promise()), ({"epoch": 1, "id": "ab"}, Promise(1, "ab")),
    ({"epoch": 2**63 - 1, "id": "ab"}, Promise(2**63 - 1, "ab")),
])
def test_promises_a_peer_may_send(good: object, expected: Promise) -> None:
    assert Promise.from_json(good) == expected


@pytest.mark.parametrize("bad", [{"epoch": 1, "id": ""}, {"epoch": 0, "id": "ab"}, {"epoch": 2**63, "id": "ab"},
                                 {"epoch": 1, "id": 7}, "ab"])
def test_promises_a_peer_may_not_send(bad: object) -> None:
    with pytest.raises(LineageError):
        Promise.from_json(bad)


def test_an_empty_lineage_and_the_fork_of_a_long_one() -> None:
    assert Lineage().max_number() == 0 and Lineage().number == 0 and Lineage().last is None
    h2, h3 = "2" * 32, "3" * 32
    one = Lineage().begin(1, 1, H, True, "a")
    assert one.begin(2, 5, h2, True, "b").fork() == {"parent": H, "lsn": 4}  # the fork right after the first
    three = one.begin(2, 5, h2, True, "b").begin(3, 9, h2, True, "c").begin(4, 12, h3, True, "d")
    assert three.fork() == {"parent": h2, "lsn": 11}
    assert one.begin(2, 5, h2, True, "b").begin(3, 9, h2, True, "c").fork() == {"parent": H, "lsn": 4}
    assert three.max_number() == 4
