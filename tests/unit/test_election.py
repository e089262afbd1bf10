"""Who may begin an epoch: the promise rule, the leader an epoch names, and counts led by another pod."""

from __future__ import annotations

from pathlib import Path

import pytest

from kvstore.lineage import Lineage, Promise
from kvstore.membership import agreed, all_hold
from kvstore.replication import election
from kvstore.replication.peer_client import PeerPosition
from kvstore.storage import Store

LINEAGE = Lineage().begin(1, 1, "a" * 32, True, "b" * 32)
CANDIDATE = Promise(2, "c" * 32, leader=1)


def position(lsn: int, lineage: Lineage = LINEAGE) -> PeerPosition:
    return PeerPosition("kv-1", "recovering", lsn, 1, lineage, candidate=CANDIDATE)


def refusal(candidate_lsn: int = 10, mine: int = 10, **kw: object) -> tuple[str, str] | None:
    args = {"leader": 0, "me": 2, "lost_for": 5.0, "failover_after": 3.0, "handed_over": False, **kw}
    return election.promise_refusal(CANDIDATE, position(candidate_lsn), (1, mine), **args)  # type: ignore[arg-type]


def test_a_follower_that_lost_the_primary_long_enough_promises_an_up_to_date_candidate() -> None:
    assert refusal() is None


def test_a_candidate_behind_this_follower_never_gets_its_promise() -> None:
    kind, message = refusal(candidate_lsn=9, mine=10)
    assert kind == election.BEHIND and "behind" in message
    # ... not even when the primary hands over to it
    assert refusal(candidate_lsn=9, mine=10, handed_over=True)[0] == election.BEHIND


def test_a_follower_that_heard_the_primary_lately_refuses_another_pod() -> None:
    kind, message = refusal(lost_for=1.0)
    assert kind == election.LEADER_ALIVE and "1.0s ago" in message


def test_failover_off_refuses_every_other_pod_but_a_handover_goes_through() -> None:
    assert refusal(failover_after=0.0, lost_for=100.0)[0] == election.LEADER_ALIVE
    assert refusal(failover_after=0.0, lost_for=0.0, handed_over=True) is None


def test_the_leading_pod_restarted_asks_as_before_even_when_behind() -> None:
    # kv-1 led, restarted (its volume may be behind): its start-up recovery copies what it lacks.
    assert refusal(candidate_lsn=0, mine=10, leader=1, lost_for=0.0) is None
    # This follower is the pod that led: a candidate is another pod, under the full rule.
    assert refusal(candidate_lsn=9, mine=10, leader=1, me=1)[0] == election.BEHIND


async def test_the_leader_is_the_one_of_the_newest_epoch_known(tmp_path: Path) -> None:
    store = Store.open(str(tmp_path / "data"))
    await store.start()
    try:
        assert election.newest_leader(store) == 0  # a new log: kv-0
        await store.set_lineage(Lineage().begin(3, 1, "a" * 32, True, "b" * 32, leader=2))
        assert election.newest_leader(store) == 2
        await store.set_promise(Promise(4, "c" * 32, leader=1))
        assert election.newest_leader(store) == 1
        assert election.newest_leader(store, (5, 0)) == 0  # a live primary heard of, newer still
    finally:
        await store.close()


def test_epochs_and_promises_name_their_leader_and_read_the_old_form_as_kv0() -> None:
    lineage = Lineage().begin(2, 5, "a" * 32, True, "b" * 32, leader=3)
    assert Lineage.from_json(lineage.to_json()).last.leader == 3
    assert "leader" not in Lineage().begin(2, 5, "a" * 32, True, "b" * 32).to_json()[0]
    assert Promise.from_json({"epoch": 2, "id": "b" * 32}).leader == 0
    assert Promise.from_json(Promise(2, "b" * 32, 7).to_json()) == Promise(2, "b" * 32, 7)
    for bad in (-1, "1", True, 10**9):
        with pytest.raises(ValueError):
            Promise.from_json({"epoch": 2, "id": "b" * 32, "leader": bad})


def test_counts_led_by_another_pod_count_kv0_as_a_follower() -> None:
    voters = ((0, 1, 2),)
    # kv-1 leads and holds 10; kv-0 acked 7, kv-2 acked 4: a majority (kv-1 and kv-0) holds 7.
    assert agreed(voters, {0: 7, 2: 4}, 10, leader=1) == 7
    # Counted as if kv-0 led, kv-1's own 10 would be missing and kv-0's ack ignored.
    assert agreed(voters, {0: 7, 2: 4}, 10, leader=0) != 7
    assert all_hold(voters, {0: 7, 2: 4}, 10, leader=1) == 4
    # A previous configuration the leader is not in needs a majority of its members alone.
    assert agreed(((1, 2, 3), (0, 2, 3)), {0: 9, 2: 8, 3: 6}, 10, leader=1) == 8


def peer(name: str, lsn: int, state: str = "following", lineage: Lineage = LINEAGE) -> PeerPosition:
    return PeerPosition(name, state, lsn, 1, lineage)


def test_a_follower_less_up_to_date_than_another_never_stands() -> None:
    voters = (0, 1, 2)
    stand, why, _ = election.decide_to_stand(2, voters, (1, 10), 1, {1: peer("kv-1", 11)})
    assert not stand and "kv-1" in why
    # The most up-to-date one does; so does the lowest ordinal of equals, and only it.
    assert election.decide_to_stand(1, voters, (1, 11), 1, {2: peer("kv-2", 10)})[0]
    assert election.decide_to_stand(1, voters, (1, 10), 1, {2: peer("kv-2", 10)})[0]
    assert not election.decide_to_stand(2, voters, (1, 10), 1, {1: peer("kv-1", 10)})[0]
    # An older epoch's longer log is less up to date than a newer epoch's shorter one.
    newer = LINEAGE.begin(2, 8, "a" * 32, True, "d" * 32, leader=1)
    assert election.decide_to_stand(1, voters, (2, 8), 2, {2: peer("kv-2", 50)})[0]
    assert not election.decide_to_stand(2, voters, (1, 50), 1, {1: peer("kv-1", 8, lineage=newer)})[0]


def test_no_one_stands_beside_a_serving_primary_or_without_a_majority() -> None:
    voters = (0, 1, 2)
    stand, why, hint = election.decide_to_stand(2, voters, (1, 10), 1, {1: peer("kv-1", 5, "primary")})
    assert not stand and hint == (1, 1) and "primary" in why
    stand, why, _ = election.decide_to_stand(1, voters, (1, 10), 1, {})
    assert not stand and "1 of the 2" in why
    # A learner heard does not make the majority.
    assert not election.decide_to_stand(1, (0, 1, 2, 3, 4), (1, 10), 1, {2: peer("kv-2", 1), 5: peer("kv-5", 1)})[0]


def test_no_one_stands_while_the_primary_answers_recovering() -> None:
    voters = (0, 1, 2)
    recovering = PeerPosition("kv-0", "recovering", 3, 1, LINEAGE)
    stand, why, _ = election.decide_to_stand(1, voters, (1, 10), 1, {0: recovering, 2: peer("kv-2", 5)}, leader=0)
    assert not stand and "kv-0, the primary, answers (recovering)" in why
    # The same pod answering as a mere follower (it gave up leading) does not hold an election up.
    following = PeerPosition("kv-0", "starting", 3, 1, LINEAGE)
    assert election.decide_to_stand(1, voters, (1, 10), 1, {0: following, 2: peer("kv-2", 5)}, leader=0)[0]


def test_an_empty_log_is_less_up_to_date_than_any_that_began_an_epoch() -> None:
    assert election.key(Lineage(), 0) < election.key(LINEAGE, 0) < election.key(LINEAGE, 1)
    assert election.key(Lineage(), 0) == (-1, -1)


def test_a_failover_time_under_a_second_still_fails_over() -> None:
    assert refusal(failover_after=0.5, lost_for=0.7) is None
    assert refusal(failover_after=0.5, lost_for=0.2)[0] == election.LEADER_ALIVE
