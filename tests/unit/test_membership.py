"""The configuration and the counts over it: majorities, quorums, joint changes, the wire form."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kvstore.membership import Configuration, agreed, all_hold, majority, recovery_quorum


def test_majority_and_the_recovery_quorum_for_one_to_nine_voters() -> None:
    assert [majority(n) for n in range(1, 10)] == [1, 2, 2, 3, 3, 4, 4, 5, 5]
    assert [recovery_quorum(n) for n in range(1, 10)] == [0, 1, 2, 2, 3, 3, 4, 4, 5]


@given(st.integers(min_value=1, max_value=9))
def test_every_quorum_of_followers_meets_every_majority_s_followers(voters: int) -> None:
    """Why an empty kv-0 may decide once it heard a quorum: each meets every acknowledging set."""
    followers = range(1, voters)
    for acked in itertools.combinations(followers, majority(voters) - 1):
        for heard in itertools.combinations(followers, recovery_quorum(voters)):
            assert voters == 1 or set(acked) & set(heard), (voters, acked, heard)


def test_a_value_counts_once_a_majority_of_every_group_holds_it() -> None:
    five = (0, 1, 2, 3, 4)
    held = {1: 10, 2: 7, 3: 3, 4: 1}
    assert agreed([five], held, own=12) == 7  # kv-0, kv-1, kv-2
    assert agreed([five], held, own=5) == 5  # never past kv-0's own
    assert agreed([(0,)], {}, own=9) == 9  # alone: kv-0 is the majority
    # 4 -> 5 voters, not settled: a majority of {0,1,2,3} is 3, of {0..4} also 3.
    four = (0, 1, 2, 3)
    assert agreed([five, four], {3: 9, 4: 9, 1: 2, 2: 2}, own=9) == 2  # kv-0, kv-3, kv-4 only: not the old
    assert agreed([five], {3: 9, 4: 9, 1: 2, 2: 2}, own=9) == 9
    assert agreed([five], {}, own=9) == 0  # no follower heard


def test_a_recovery_quorum_is_needed_instead_of_a_majority_when_asked() -> None:
    three = (0, 1, 2)
    assert agreed([three], {1: 5}, own=5) == 5
    assert agreed([three], {1: 5}, own=5, quorum=True) == 0  # both followers are the quorum of three
    assert agreed([three], {1: 5, 2: 4}, own=5, quorum=True) == 4


def test_all_means_every_voter_of_the_newest_and_a_majority_of_an_unsettled_previous() -> None:
    assert all_hold(((0, 1, 2),), {1: 5, 2: 3}, own=9) == 3
    assert all_hold(((0, 1),), {1: 5, 2: 0}, own=9) == 5  # kv-2 is no voter
    assert all_hold(((0, 1), (0, 1, 2)), {1: 5, 2: 0}, own=9) == 5  # kv-0 and kv-1 are a majority of three
    assert all_hold(((0, 1, 2, 3), (0, 1, 2)), {1: 5, 2: 5, 3: 0}, own=9) == 0


def test_a_change_adds_or_removes_exactly_one_voter_and_never_kv0() -> None:
    three = Configuration.initial(3)
    assert three == Configuration(0, (0, 1, 2))
    four = three.change(17, [3, 0, 1, 2])
    assert four == Configuration(17, (0, 1, 2, 3), (0, 1, 2))
    assert four.groups(settled=False) == ((0, 1, 2, 3), (0, 1, 2)) and four.groups(settled=True) == ((0, 1, 2, 3),)
    assert three.groups(settled=False) == ((0, 1, 2),)  # the initial one has no previous
    assert four.members() == (0, 1, 2, 3)
    for bad in ([0, 1, 2, 3, 4], [0], [0, 1, 3], [1, 2], [0, 1, 2]):  # two changes, a swap, no kv-0, none
        with pytest.raises(ValueError):
            three.change(5, bad)
    assert Configuration.initial(0).voters == (0,)


def test_the_wire_form_round_trips_and_refuses_what_is_not_a_configuration() -> None:
    four = Configuration(17, (0, 1, 2, 3), (0, 1, 2))
    assert Configuration.loads(four.dumps()) == four
    assert Configuration.loads(four.dumps(), lsn=30).lsn == 30  # an entry knows its own LSN
    for raw in (b"", b"[]", b"{", b'{"lsn": -1, "voters": [0]}', b'{"lsn": 1, "voters": []}',
                b'{"lsn": 1, "voters": [1, 2]}', b'{"lsn": 1, "voters": [0, 0]}',
                b'{"lsn": 1, "voters": [0, "1"]}', b'{"lsn": 1, "voters": [0, true]}',
                b'{"lsn": true, "voters": [0]}', b'{"lsn": 1, "voters": [0], "previous": 3}',
                b'\xff', b'{"lsn": 1, "voters": [0, -1]}', b'{"lsn": 1, "voters": ' + str(list(range(300))).encode() + b"}"):
        with pytest.raises(ValueError):
            Configuration.loads(raw)
