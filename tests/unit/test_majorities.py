"""Majorities, quorums and the ack table for every replica count from 1 to 9, checked against brute force.

Three replicas hide most counting mistakes (a majority of 3 is 2, and so is
3 - 1, 3 // 2 + 1 and the quorum of recovery): every rule here is checked for
even and odd counts, by enumerating the sets of replicas it must intersect.
"""

from __future__ import annotations

import asyncio
from itertools import combinations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvstore.replica import required_acks
from kvstore.replication.acks import AckTable
from kvstore.replication.recovery import quorum

COUNTS = range(1, 10)


def smallest_majority(replicas: int) -> int:
    """The fewest replicas that are more than half of ``replicas``."""
    return min(m for m in range(1, replicas + 1) if 2 * m > replicas)


def meets_every(sets: list[tuple[int, ...]], size: int, among: range) -> bool:
    """Whether every ``size`` members of ``among`` share one with each of ``sets``."""
    return all(set(s) & set(chosen) for chosen in combinations(among, size) for s in sets)


@pytest.mark.parametrize("replicas", COUNTS)
def test_a_majority_is_the_fewest_replicas_more_than_half(replicas: int) -> None:
    majority = required_acks("majority", replicas)
    assert majority == smallest_majority(replicas)
    assert meets_every(list(combinations(range(replicas), majority)), majority, range(replicas))
    assert required_acks("1", replicas) == 1 and required_acks("all", replicas) == replicas


@pytest.mark.parametrize("replicas", COUNTS)
def test_the_quorum_of_recovery_is_the_fewest_followers_meeting_every_majority_write(replicas: int) -> None:
    """A w=majority write is on kv-0 and M-1 followers; the followers kv-0 hears must include one of them.

    The same count fences an older kv-0: every M-1 followers it could still
    gather acks from include one that promised the new epoch.
    """
    followers = range(1, replicas)
    holders = list(combinations(followers, smallest_majority(replicas) - 1))
    q = quorum(replicas)
    assert 0 <= q <= len(followers)
    if holders == [()]:  # one replica: kv-0 alone holds every write, nobody to hear
        assert q == 0
        return
    assert meets_every(holders, q, followers), f"{q} followers of {replicas} replicas can miss a write"
    assert not meets_every(holders, q - 1, followers), f"{q} is more followers than {replicas} replicas need"


@pytest.mark.parametrize("replicas", COUNTS)
def test_quorum_and_majority_table(replicas: int) -> None:
    """The numbers themselves, as the design page's formulas give them (M = N//2+1, quorum N-M+1)."""
    expected = {1: (1, 0), 2: (2, 1), 3: (2, 2), 4: (3, 2), 5: (3, 3), 6: (4, 3), 7: (4, 4), 8: (5, 4), 9: (5, 5)}
    assert (required_acks("majority", replicas), quorum(replicas)) == expected[replicas]


# ------------------------------------------------------------------ the ack table
names = st.sampled_from([f"kv-{i}" for i in range(1, 9)])
acks = st.lists(st.tuples(names, st.integers(0, 12)), max_size=24)


def latest(recorded: list[tuple[str, int]]) -> dict[str, int]:
    """Each follower's newest direct ack (a direct ack replaces: a restored follower may go back)."""
    table: dict[str, int] = {}
    for name, lsn in recorded:
        table[name] = lsn
    return table


@settings(max_examples=150, deadline=None)
@given(acks, st.integers(0, 9))
def test_held_by_is_the_highest_lsn_that_many_followers_hold(recorded: list[tuple[str, int]], followers: int) -> None:
    table = AckTable()
    for name, lsn in recorded:
        table.record(name, lsn, via=name)
    positions = latest(recorded)
    held = [lsn for lsn in range(0, 13) if sum(p >= lsn for p in positions.values()) >= followers]
    assert table.held_by(followers) == (max(held) if held and followers > 0 else 0)
    for lsn in range(0, 13):
        assert table.confirmed(lsn) == sum(p >= lsn for p in positions.values())
        assert table.confirmed(lsn, exclude="kv-1") == sum(p >= lsn for n, p in positions.items() if n != "kv-1")


def test_a_relayed_ack_only_moves_forward_and_a_departed_follower_never_counts() -> None:
    table = AckTable()
    table.record("kv-2", 5, via="kv-1")
    table.record("kv-2", 3, via="kv-1")  # an older relay arriving late
    assert table.confirmed(5) == 1
    table.record("kv-2", 3, via="kv-2")  # kv-2 itself says 3: it was restored from a snapshot
    assert table.confirmed(4) == 0 and table.confirmed(3) == 1
    table.left("kv-2")
    table.record("kv-2", 9, via="kv-2")
    assert table.confirmed(1) == 0 and table.held_by(1) == 0
    table.joined("kv-2")
    table.record("kv-2", 9, via="kv-1")
    assert table.confirmed(9) == 1


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 9), st.permutations(range(1, 9)), st.integers(1, 4))
def test_a_majority_write_is_acknowledged_exactly_when_its_majority_holds_it(
        replicas: int, order: list[int], lsn: int) -> None:
    """Followers ack one by one: the wait ends on the ack that completes the majority, not before."""
    needed = required_acks("majority", replicas) - 1  # followers, besides kv-0

    async def run() -> None:
        table = AckTable()
        waiter = asyncio.ensure_future(table.wait(lsn, needed, timeout=5))
        await asyncio.sleep(0)
        holders = 0
        for ordinal in [o for o in order if o < replicas]:
            assert waiter.done() == (holders >= needed)
            table.record(f"kv-{ordinal}", lsn - 1, via=f"kv-{ordinal}")  # not enough yet
            await asyncio.sleep(0)
            assert waiter.done() == (holders >= needed)
            table.record(f"kv-{ordinal}", lsn, via=f"kv-{ordinal}")
            holders += 1
            await asyncio.sleep(0)
        assert holders >= needed and await waiter == needed
        assert await table.wait(lsn, replicas, timeout=0.001) == holders  # w=all needs one more than exist

    asyncio.run(run())


def test_membership_moves_on_every_change_of_the_followers_known_and_only_then() -> None:
    """Who counts is cached until this number moves: it must never come back to an earlier value."""
    table = AckTable()
    seen = [table.membership]
    for change in (lambda: table.record("kv-1", 1, "kv-1"), lambda: table.record("kv-2", 1, "kv-1"),
                   lambda: table.left("kv-1"), lambda: table.joined("kv-1"), lambda: table.record("kv-1", 2, "kv-1")):
        change()
        assert table.membership not in seen
        seen.append(table.membership)
    table.record("kv-1", 3, "kv-1")  # a known follower moving on changes nobody's count
    table.record("kv-2", 2, "kv-2")
    assert table.membership == seen[-1]


async def test_an_ack_records_when_and_through_whom_and_a_timed_out_wait_leaves_nothing_behind() -> None:
    table = AckTable()
    table.record("kv-2", 4, via="kv-1")
    first = table.positions["kv-2"].seen
    table.record("kv-2", 4, via="kv-3")  # the same LSN again, relayed by another: still heard, now
    position = table.positions["kv-2"]
    assert (position.lsn, position.via) == (4, "kv-3") and position.seen >= first > 0
    table.record("kv-3", 2, via="kv-3")
    table.record("kv-9", 5, via="kv-9")
    # What a cascade relays upstream: every follower but itself, with the newest round each echoed (0: none).
    assert table.downstream_of("kv-9", {"kv-2": 7}) == "kv-2:4/7,kv-3:2/0"
    table.left("kv-7")  # one that never acked leaves: nothing to forget, nothing fails
    assert await table.wait(6, 1, timeout=0.01) == 0
    assert not table._waiters  # a write that timed out is not woken, nor kept, later
