"""Every pair of small logs: where they part, and what the comparison lets a follower do, against brute force.

The logs are built from a fixed set of epochs (each incarnation has one
start, as in a real cluster), including two with the same number and
another id, verified and unverified ones, and epochs that wrote nothing yet.
The oracle reads each log entry by entry, without the lineage's own lookup.
"""

from __future__ import annotations

from itertools import combinations

import pytest

from kvstore.lineage import BEHIND, DIVERGED, DROPPABLE, PREFIX, Epoch, Lineage, common_point, compare

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
    """The oracle: the longest prefix of entries both logs hold, written by the same epoch."""
    common = 0
    for x in range(1, min(mine[1], theirs[1]) + 1):
        a, b = writer(mine[0], x), writer(theirs[0], x)
        if a is None or a != b:
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
        elif not theirs_next or (theirs_next[0].number, theirs_next[0].id) == ours_next:
            assert result.relation == BEHIND and result.replacing is None, (mine, theirs)
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
