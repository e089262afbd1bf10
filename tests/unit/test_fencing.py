"""Confirmation rounds: a strong read is answered only when a majority echoed a round started after it."""

from __future__ import annotations

import asyncio

import pytest

from kvstore.lineage import LineageError, Promise
from kvstore.replication.fencing import CONTACT_SECONDS, LEASE_SECONDS, LEASE_SHARE, Fencing


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def settle() -> None:
    """Let tasks just created run, and the round they scheduled be sent."""
    for _ in range(3):
        await asyncio.sleep(0)


def voters(needed: int) -> tuple[tuple[int, ...], ...]:
    """The configuration in which ``needed`` followers besides kv-0 make a majority: 2 * needed + 1 voters."""
    return (tuple(range(2 * needed + 1)),)


def fencing_with(needed: int, clock: Clock | None = None) -> tuple[Fencing, list[int]]:
    """A Fencing with one attached stream that records the rounds pushed to it."""
    f = Fencing(lambda: voters(needed), clock=clock or Clock())
    f.fenced_off = True  # an epoch begun with a quorum of promises
    sent: list[int] = []
    f.attach(sent.append)
    return f, sent


async def test_a_round_is_confirmed_only_by_echoes_of_that_round() -> None:
    f, sent = fencing_with(needed=1)
    f.echo("kv-1", 0)  # an echo from before the read counts for nothing
    read = asyncio.ensure_future(f.confirm(timeout=5))
    await settle()
    assert sent == [1] and not read.done()
    f.echo("kv-2", 0)
    await settle()
    assert not read.done()
    f.echo("kv-1", 1)
    assert await read is True
    assert f.rounds == 1


async def test_without_a_majority_the_round_fails() -> None:
    f, _ = fencing_with(needed=2)
    read = asyncio.ensure_future(f.confirm(timeout=0.05))
    await settle()
    f.echo("kv-1", 1)  # one of the two followers needed
    assert await read is False
    assert f.failed == 1


async def test_reads_in_one_loop_turn_share_a_round_and_later_ones_need_the_next() -> None:
    f, sent = fencing_with(needed=1)
    first = [asyncio.ensure_future(f.confirm(timeout=5)) for _ in range(3)]
    await settle()
    assert sent == [1]  # one message for the three reads
    later = [asyncio.ensure_future(f.confirm(timeout=5)) for _ in range(2)]
    await settle()
    assert sent == [1]  # round 1 is out: the later reads wait for the round after it
    f.echo("kv-1", 1)
    assert await asyncio.gather(*first) == [True, True, True]
    await settle()
    assert sent == [1, 2] and not any(r.done() for r in later)  # round 1 proves nothing for them
    f.echo("kv-1", 2)
    assert await asyncio.gather(*later) == [True, True]


async def test_a_round_left_unconfirmed_does_not_hold_back_the_next() -> None:
    f, sent = fencing_with(needed=1)
    first = asyncio.ensure_future(f.confirm(timeout=5))
    await settle()
    second = asyncio.ensure_future(f.confirm(timeout=5))
    await settle()
    assert sent == [1]
    await asyncio.sleep(0.1)  # round 1 got lost (a follower that went away): round 2 goes anyway
    assert sent == [1, 2]
    f.echo("kv-1", 2)
    assert await first is True and await second is True


async def test_a_detached_stream_gets_no_rounds_and_one_replica_needs_none() -> None:
    f = Fencing(lambda: voters(1))
    sent: list[int] = []
    detach = f.attach(sent.append)
    detach()
    assert await f.confirm(timeout=0.01) is False and sent == []
    assert await Fencing(lambda: voters(0)).confirm(timeout=0.01) is True


async def test_contact_is_the_start_of_the_newest_round_a_majority_echoed() -> None:
    clock = Clock()
    f, _ = fencing_with(needed=1, clock=clock)
    assert f.last_contact() is None and not f.in_contact()
    f.tick()
    started = clock.now
    clock.now += 1.0
    f.echo("kv-1", 1)
    assert f.last_contact() == started and f.in_contact()
    clock.now = started + CONTACT_SECONDS + 0.01
    assert not f.in_contact()
    f.echo("kv-1", 1)  # the same round again (a relayed ack that did not move) proves nothing new
    assert not f.in_contact()
    f.begin(verified=True)  # an epoch begun with a quorum of promises
    assert f.in_contact()


async def test_a_secondary_passes_its_upstream_rounds_down_once() -> None:
    f, sent = fencing_with(needed=1)
    f.relay(5)
    f.relay(5)
    f.relay(3)
    assert sent == [5]
    f.echo("kv-2", 5)
    assert f.echoed() == {"kv-2": 5}


async def test_an_unverified_epoch_needs_a_quorum_until_one_has_followed_it() -> None:
    f = Fencing(lambda: voters(1))  # 3 replicas: the quorum is both followers
    f.begin(verified=False)
    read = asyncio.ensure_future(f.confirm(timeout=0.05))
    await settle()
    f.echo("kv-1", 1)  # a majority, but kv-2 may still follow an older kv-0
    assert await read is False
    f.echo("kv-2", 1)  # now both followed this epoch: no older kv-0 can gather a majority
    assert f.fenced_off
    read = asyncio.ensure_future(f.confirm(timeout=5))
    await settle()
    f.echo("kv-1", 2)
    assert await read is True


async def test_a_new_epoch_fails_the_rounds_of_the_old_one() -> None:
    f, _ = fencing_with(needed=1)
    read = asyncio.ensure_future(f.confirm(timeout=5))
    await settle()
    f.reset()  # this process recovered again: what it read belonged to its old line
    f.fenced_off = True
    f.echo("kv-1", 5)
    assert await read is False


async def test_a_lease_answers_without_a_round_until_it_runs_out() -> None:
    clock = Clock()
    f, sent = fencing_with(needed=1, clock=clock)
    f.tick()
    await settle()
    clock.now += 0.1
    f.echo("kv-1", 1)  # a majority echoed the round started at 100.0
    assert f.leased() and await f.confirm(timeout=5) is True and sent == [1]  # no round needed
    clock.now = 100.0 + LEASE_SECONDS * LEASE_SHARE  # the follower's promise may be free soon
    assert not f.leased()
    assert await f.confirm(timeout=0.05) is False and sent == [1, 2]


def test_a_promise_covers_newer_epochs_and_itself_only() -> None:
    p = Promise(4, "ab")
    assert p.covers(5, "cd") and p.covers(4, "ab")
    assert not p.covers(4, "cd") and not p.covers(3, "ab")
    assert Promise().covers(1, "ab")
    assert Promise.from_json(p.to_json()) == p and Promise.from_json(None) == Promise()
    for bad in ([], {"epoch": 1}, {"epoch": -1, "id": "ab"}, {"epoch": 1, "id": "XYZ"}, {"epoch": 0, "id": "ab"},
                {"epoch": 2, "id": ""}, {"epoch": True, "id": "ab"}, {"epoch": 1, "id": "a" * 33}):
        with pytest.raises(LineageError):
            Promise.from_json(bad)
