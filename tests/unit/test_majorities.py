"""Majorities, quorums, the counts over a configuration and the ack table for 1 to 9 voters, against brute force.

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

from kvstore.membership import MAX_VOTERS, Configuration, agreed, all_hold, majority, recovery_quorum
from kvstore.replication.acks import AckTable

COUNTS = range(1, 10)


def smallest_majority(replicas: int) -> int:
    """The fewest replicas that are more than half of ``replicas``."""
    return min(m for m in range(1, replicas + 1) if 2 * m > replicas)


def meets_every(sets: list[tuple[int, ...]], size: int, among: range) -> bool:
    """Whether every ``size`` members of ``among`` share one with each of ``sets``."""
    return all(set(s) & set(chosen) for chosen in combinations(among, size) for s in sets)


@pytest.mark.parametrize("replicas", COUNTS)
def test_a_majority_is_the_fewest_replicas_more_than_half(replicas: int) -> None:
    m = majority(replicas)
    assert m == smallest_majority(replicas)
    assert meets_every(list(combinations(range(replicas), m)), m, range(replicas))


@pytest.mark.parametrize("replicas", COUNTS)
def test_the_quorum_of_recovery_is_the_fewest_followers_meeting_every_majority_write(replicas: int) -> None:
    """A w=majority write is on kv-0 and M-1 followers; the followers kv-0 hears must include one of them.

    The same count fences an older kv-0: every M-1 followers it could still
    gather acks from include one that promised the new epoch.
    """
    followers = range(1, replicas)
    holders = list(combinations(followers, smallest_majority(replicas) - 1))
    q = recovery_quorum(replicas)
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
    assert (majority(replicas), recovery_quorum(replicas)) == expected[replicas]


# ------------------------------------------------------- counts over a configuration
ordinals = st.integers(1, 8)
held_maps = st.dictionaries(ordinals, st.integers(0, 12), max_size=8)


def brute_agreed(groups: tuple[tuple[int, ...], ...], held: dict[int, int], own: int, quorum: bool) -> int:
    """The highest value v <= own such that, in every group, enough followers hold v (by enumeration)."""
    def enough(group: tuple[int, ...], value: int) -> bool:
        followers = [o for o in group if o != 0]
        needed = recovery_quorum(len(group)) if quorum else majority(len(group)) - 1
        return sum(held.get(o, 0) >= value for o in followers) >= needed
    return max(v for v in range(0, own + 1) if all(enough(g, v) for g in groups))


voter_sets = st.sets(ordinals, max_size=8).map(lambda s: tuple(sorted({0, *s})))


@settings(max_examples=200, deadline=None)
@given(st.lists(voter_sets, min_size=1, max_size=2).map(tuple), held_maps, st.integers(0, 12), st.booleans())
def test_agreed_is_the_highest_value_a_majority_of_every_group_holds(
        groups: tuple[tuple[int, ...], ...], held: dict[int, int], own: int, quorum: bool) -> None:
    """What w=majority, the committed LSN and a confirmation round count; a quorum while an epoch is unfenced."""
    assert agreed(groups, held, own, quorum) == brute_agreed(groups, held, own, quorum)


@settings(max_examples=200, deadline=None)
@given(st.lists(voter_sets, min_size=1, max_size=2).map(tuple), held_maps, st.integers(0, 12))
def test_all_hold_needs_every_newest_voter_and_a_majority_of_the_previous(
        groups: tuple[tuple[int, ...], ...], held: dict[int, int], own: int) -> None:
    """What w=all counts: every voter of the configuration, and a majority of one not yet settled."""
    newest = min([own, *(held.get(o, 0) for o in groups[0] if o != 0)])
    expected = min(newest, brute_agreed(groups[1:], held, own, False)) if len(groups) > 1 else newest
    assert all_hold(groups, held, own) == expected


@pytest.mark.parametrize("replicas", COUNTS)
def test_a_change_counts_both_configurations_until_it_settles(replicas: int) -> None:
    """Adding a voter to N: a write needs a majority of the N and of the N+1 until a majority of both hold it."""
    before = Configuration.initial(replicas)
    assert before.voters == tuple(range(replicas)) and before.groups(False) == (before.voters,)
    after = before.change(7, range(replicas + 1))
    assert (after.lsn, after.previous) == (7, before.voters)
    assert after.groups(False) == (after.voters, before.voters) and after.groups(True) == (after.voters,)
    groups, old = after.groups(False), majority(replicas) - 1  # followers of an old majority
    # An old majority's followers: enough for the new configuration only when its majority is no larger.
    assert agreed(groups, {o: 5 for o in range(1, old + 1)}, 5) == (
        5 if majority(replicas + 1) == majority(replicas) else 0)
    # The new voter instead of one of them: a majority of the new, never of the old (bar kv-0 alone).
    assert agreed(groups, {o: 5 for o in range(1, old)} | {replicas: 5}, 5) == (5 if replicas == 1 else 0)
    assert agreed(groups, {o: 5 for o in range(1, old + 1)} | {replicas: 5}, 5) == 5
    with pytest.raises(ValueError):
        before.change(8, range(replicas + 2))  # two voters at once
    with pytest.raises(ValueError):
        after.change(9, range(1, replicas + 1))  # kv-0 always votes


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
@given(acks, st.sets(st.integers(1, 8)))
def test_holders_and_by_ordinal_are_each_followers_newest_ack(
        recorded: list[tuple[str, int]], chosen: set[int]) -> None:
    table = AckTable()
    for name, lsn in recorded:
        table.record(name, lsn, via=name)
    positions = latest(recorded)
    assert table.by_ordinal == {int(n.split("-")[1]): lsn for n, lsn in positions.items()}
    for lsn in range(0, 13):
        assert table.holders(lsn, chosen) == sum(positions.get(f"kv-{o}", 0) >= lsn for o in chosen)


def test_a_relayed_ack_only_moves_forward_and_a_forgotten_follower_never_counts() -> None:
    table = AckTable()
    table.record("kv-2", 5, via="kv-1")
    table.record("kv-2", 3, via="kv-1")  # an older relay arriving late
    assert table.holders(5, [2]) == 1
    table.record("kv-2", 3, via="kv-2")  # kv-2 itself says 3: it was restored from a snapshot
    assert table.holders(4, [2]) == 0 and table.holders(3, [2]) == 1
    table.forget("kv-2")
    assert table.holders(1, [2]) == 0 and "kv-2" not in table.positions and 2 not in table.by_ordinal
    table.record("kv-2", 9, via="kv-1")
    assert table.holders(9, [2]) == 1
    table.record("witness", 9, via="witness")  # no ordinal in its name: known, counted for nothing
    assert "witness" in table.positions and table.by_ordinal == {2: 9}
    table.forget("witness")
    assert "witness" not in table.positions and table.by_ordinal == {2: 9}


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 9), st.permutations(range(1, 9)), st.integers(1, 4))
def test_a_majority_write_is_acknowledged_exactly_when_its_majority_holds_it(
        replicas: int, order: list[int], lsn: int) -> None:
    """Followers ack one by one: the wait ends on the ack that completes the majority, not before."""
    groups = Configuration.initial(replicas).groups(True)
    needed = majority(replicas) - 1  # followers, besides kv-0

    async def run() -> None:
        table = AckTable()
        met = lambda: agreed(groups, table.by_ordinal, lsn)  # noqa: E731
        waiter = asyncio.ensure_future(table.wait(lsn, met, timeout=5))
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
        assert holders >= needed and await waiter
        everyone = (tuple(range(replicas + 1)),)  # w=all with one voter more than acked
        assert not await table.wait(lsn, lambda: all_hold(everyone, table.by_ordinal, lsn), timeout=0.001)

    asyncio.run(run())


def test_membership_moves_on_every_change_of_the_followers_known_and_only_then() -> None:
    """Who counts is cached until this number moves: it must never come back to an earlier value."""
    table = AckTable()
    seen = [table.membership]
    for change in (lambda: table.record("kv-1", 1, "kv-1"), lambda: table.record("kv-2", 1, "kv-1"),
                   lambda: table.forget("kv-1"), lambda: table.record("kv-1", 2, "kv-1")):
        change()
        assert table.membership not in seen
        seen.append(table.membership)
    table.record("kv-1", 3, "kv-1")  # a known follower moving on changes nobody's count
    table.record("kv-2", 2, "kv-2")
    table.forget("kv-7")  # one never known: nothing changes
    assert table.membership == seen[-1]


async def test_an_ack_records_when_and_through_whom_and_a_timed_out_wait_leaves_nothing_behind() -> None:
    table = AckTable()
    table.record("kv-2", 4, via="kv-1")
    first = table.positions["kv-2"]
    # The same LSN again, relayed by another, says nothing new: a cascade may pass on a deleted pod's last
    # position, which must not look alive.
    table.record("kv-2", 4, via="kv-3")
    assert table.positions["kv-2"] is first and first.via == "kv-1" and first.seen > 0
    table.record("kv-2", 5, via="kv-3")  # one that moved on is heard, through whom it came
    position = table.positions["kv-2"]
    assert (position.lsn, position.via) == (5, "kv-3") and position.seen >= first.seen
    table.record("kv-3", 2, via="kv-3")
    table.record("kv-9", 5, via="kv-9")
    # What a cascade relays upstream: every follower but itself, with the newest round each echoed (0: none).
    assert table.downstream_of("kv-9", {"kv-2": 7}) == "kv-2:5/7,kv-3:2/0"
    assert not await table.wait(6, lambda: max(table.by_ordinal.values()), timeout=0.01)
    assert not table._waiters  # a write that timed out is not woken, nor kept, later
    assert await table.wait(5, lambda: max(table.by_ordinal.values()), timeout=0.01)  # met already: no wait


def test_the_edges_of_a_configuration_a_peer_may_send() -> None:
    """What the wire form takes at its bounds (lsn 0, kv-0 alone, the largest ordinal and voter count)."""
    assert Configuration.from_json({"lsn": 0, "voters": [0], "previous": None}) == Configuration(0, (0,))
    assert Configuration.from_json({"lsn": 1, "voters": [0, 2**31 - 1]}).voters == (0, 2**31 - 1)
    assert len(Configuration.from_json({"lsn": 1, "voters": list(range(MAX_VOTERS))}).voters) == MAX_VOTERS
    for bad in ({"lsn": 1, "voters": [0, 2**31]}, {"lsn": 1, "voters": list(range(MAX_VOTERS + 1))},
                {"lsn": 1, "voters": [0], "previous": []}, {"lsn": 1, "voters": [0], "previous": [1, 1]}):
        with pytest.raises(ValueError):
            Configuration.from_json(bad)
    assert agreed((), {1: 3}, 5) == 5  # no voter set to count: kv-0's own
