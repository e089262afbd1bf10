"""The lease against the clock margin the design page states, rounds for every replica count, and promises."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvstore import config as kvconfig
from kvstore.discovery import Peer
from kvstore.events import EventLog
from kvstore.lineage import Lineage, Promise
from kvstore.membership import Configuration, majority, recovery_quorum
from kvstore.metrics import Metrics
from kvstore.replication.acks import AckTable
from kvstore.replication.fencing import (
    CONTACT_SECONDS, HEARTBEAT_SECONDS, LEASE_SECONDS, LEASE_SHARE, Fencing,
)
from kvstore.replication.follower import Follower
from kvstore.replication.peer_client import PeerPosition, PromiseRefused
from kvstore.storage import Store

DESIGN = Path(__file__).resolve().parents[2] / "docs" / "design.md"


def replicas(count: int) -> tuple[tuple[int, ...], ...]:
    """The voter sets of a settled configuration of ``count`` replicas (what Fencing counts echoes against)."""
    return Configuration.initial(count).groups(True)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def stated(pattern: str) -> float:
    """A number the design page states (its text with line breaks and indentation folded)."""
    text = re.sub(r"\s+", " ", DESIGN.read_text("utf-8"))
    found = re.search(pattern, text)
    assert found, f"docs/design.md no longer says {pattern!r}"
    return float(found.group(1))


# ------------------------------------------------------------------ the lease
async def test_the_lease_ends_before_any_follower_may_promise_again_at_the_stated_clock_drift() -> None:
    """Worst case: the follower echoes the instant the round starts, and its clock runs fast by the margin.

    kv-0 counts its lease from the round's start for LEASE_SHARE of
    LEASE_SECONDS on its clock; the follower holds its promise for
    LEASE_SECONDS on its own, which then pass ``1 + drift`` times sooner.
    """
    drift = stated(r"monotonic clocks advance at rates within (\d+)% of each other") / 100
    follower_free_at = LEASE_SECONDS / (1 + drift)  # kv-0's time, from the round's start
    assert LEASE_SECONDS * LEASE_SHARE <= follower_free_at
    clock = Clock()
    f = Fencing(lambda: replicas(3), clock=clock)
    f.fenced_off = True
    f.tick()
    f.echo("kv-1", 1)
    assert f.leased()
    clock.now = 100.0 + follower_free_at
    assert not f.leased(), "kv-0 would answer from its state after the follower may have promised another kv-0"


def test_the_numbers_are_the_ones_the_design_page_states() -> None:
    assert stated(r"starts a heartbeat round every ([\d.]+) s") == HEARTBEAT_SECONDS
    assert stated(r"promises no other epoch until ([\d.]+) s after its last echo") == LEASE_SECONDS
    assert stated(r"So for ([\d.]+) s from the start of a round") == pytest.approx(LEASE_SECONDS * LEASE_SHARE)
    assert stated(r"when no round started in the last ([\d.]+) s") == CONTACT_SECONDS
    assert HEARTBEAT_SECONDS < LEASE_SECONDS * LEASE_SHARE  # a heartbeat renews the lease before it lapses


async def test_the_lease_and_the_contact_window_at_their_exact_ends() -> None:
    clock = Clock()
    f = Fencing(lambda: replicas(5), clock=clock)
    f.fenced_off = True
    f.tick()
    clock.now = 100.5
    f.echo("kv-1", 1)
    assert not f.leased() and f.last_contact() is None  # one follower of the two a majority needs
    f.echo("kv-2", 1)
    assert f.leased() and f.last_contact() == 100.0  # from the round's start, not the echo
    clock.now = 100.0 + LEASE_SECONDS * LEASE_SHARE - 1e-9
    assert f.leased()
    clock.now = 100.0 + LEASE_SECONDS * LEASE_SHARE
    assert not f.leased()
    clock.now = 100.0 + CONTACT_SECONDS
    assert f.in_contact() and f.status()["majority_heard_seconds_ago"] == CONTACT_SECONDS
    clock.now = 100.0 + CONTACT_SECONDS + 1e-6
    assert not f.in_contact()


# ------------------------------------------------------------- rounds, 1-9 replicas
@settings(max_examples=120, deadline=None)
@given(st.integers(1, 9), st.booleans(), st.sets(st.integers(1, 8)))
def test_a_round_is_confirmed_by_a_majority_or_while_unfenced_a_quorum(
        count: int, verified: bool, echoing: set[int]) -> None:
    followers = {f"kv-{i}" for i in echoing if i < count}
    needed = majority(count) - 1 if verified else recovery_quorum(count)  # followers besides kv-0

    async def run() -> bool:
        f = Fencing(lambda: replicas(count))
        f.begin(verified)
        sent: list[int] = []
        f.attach(sent.append)
        read = asyncio.ensure_future(f.confirm(timeout=0.01))
        for _ in range(3):
            await asyncio.sleep(0)
        for name in sorted(followers):
            f.echo(name, sent[-1] if sent else 1)
        return await read

    assert asyncio.run(run()) == (len(followers) >= needed)


# ------------------------------------------------------------------ promises
class KvZeroListed:
    """Stands in for DNS and the peer port of the kv-0 DNS lists: it is recovering with ``candidate``."""

    def __init__(self) -> None:
        self.candidate: Promise | None = None

    async def find(self, ordinal: int) -> Peer:
        return Peer("kv-0", 0, "127.0.0.1", 8081)

    def request_refresh(self) -> None:
        pass

    def pod_name(self, ordinal: int) -> str:
        return f"kv-{ordinal}"

    async def position(self, peer: Peer, timeout: float = 1.0) -> PeerPosition:
        return PeerPosition("kv-0", "recovering", 0, 1, Lineage(), candidate=self.candidate)


async def new_follower(workdir: Path, pod: str) -> Follower:
    """Follower ``pod`` with its own store and its own ring of events, asked by a :class:`KvZeroListed`."""
    store = Store.open(str(workdir / f"data-{pod}"))
    await store.start()
    kv0 = KvZeroListed()
    config = kvconfig.load({"POD_NAME": pod, "KV_CLUSTER_TOKEN": "t", "KV_DATA_DIR": str(workdir)})
    f = Follower(config, store, kv0, kv0, AckTable(), Metrics(), Fencing(lambda: replicas(1)),  # type: ignore[arg-type]
                 events=EventLog(pod))
    f.kv0 = kv0  # type: ignore[attr-defined]
    return f


@pytest.fixture
async def follower(tmp_path: Path):
    f = await new_follower(tmp_path, "kv-1")
    try:
        yield f
    finally:
        await f.store.close()


async def ask(follower: Follower, number: int, ident: str) -> Promise:
    """kv-0 (the one DNS lists) asks for candidate (number, ident); what the follower then holds to."""
    candidate = Promise(number, ident)
    follower.kv0.candidate = candidate  # type: ignore[attr-defined]
    await follower.promise(candidate)
    return follower.store.promise


async def test_a_follower_promises_each_epoch_number_to_one_incarnation_only(follower: Follower) -> None:
    assert await ask(follower, 2, "aa") == Promise(2, "aa")
    assert await ask(follower, 2, "aa") == Promise(2, "aa")  # the same candidate asking again
    for number, ident in ((2, "bb"), (1, "cc")):  # another process with the same number, or an older one
        with pytest.raises(PromiseRefused) as refused:
            await ask(follower, number, ident)
        assert refused.value.promised == Promise(2, "aa")
    assert await ask(follower, 3, "bb") == Promise(3, "bb")


async def test_a_follower_never_promises_an_epoch_its_log_already_holds(follower: Follower) -> None:
    await follower.store.set_lineage(Lineage().begin(4, 1, "1" * 32, True, "dd"))
    for number, ident in ((4, "ee"), (4, "dd"), (3, "ff")):
        with pytest.raises(PromiseRefused) as refused:
            await ask(follower, number, ident)
        assert refused.value.promised == Promise(4, "dd")
    assert await ask(follower, 5, "ee") == Promise(5, "ee")


async def test_a_promise_is_an_event_of_the_replica_that_gave_it_only(follower: Follower, tmp_path: Path) -> None:
    # Two replicas in one process: each records in its own ring, as each serves its own /v1/events.
    other = await new_follower(tmp_path, "kv-2")
    try:
        await ask(follower, 2, "aa")
        promised = [e for e in follower.events.since() if e["kind"] == "promised"]
        assert [(e["pod"], e["epoch"], e["leader"], e["address"]) for e in promised] == [
            ("kv-1", 2, "kv-0", "127.0.0.1:8081")]
        assert other.events.since() == []
    finally:
        await other.store.close()


# ------------------------------------------------------------- counting echoes
async def settle() -> None:
    for _ in range(3):
        await asyncio.sleep(0)


async def test_contact_comes_from_the_round_the_needed_follower_echoed() -> None:
    """With echoes of rounds 4, 3, 2, 1: one follower needed confirms round 4, two round 3."""
    for needed, confirmed in ((1, 4), (2, 3), (4, 1)):
        clock = Clock()
        f = Fencing(lambda: replicas(2 * needed + 1), clock=clock)
        f.fenced_off = True
        for _ in range(4):  # rounds 1..4, started at 101, 102, 103, 104
            clock.now += 1
            f.tick()
            await settle()
        for follower, round_ in (("kv-1", 4), ("kv-2", 3), ("kv-3", 2), ("kv-4", 1)):
            f.echo(follower, round_)
        assert f.last_contact() == 100 + confirmed, needed
        f.echo("kv-1", 2)  # an older echo, relayed late, takes nothing back
        assert f.echoed()["kv-1"] == 4 and f.last_contact() == 100 + confirmed


async def test_an_unverified_epoch_is_fenced_off_only_once_a_quorum_followed_it() -> None:
    f = Fencing(lambda: replicas(5))  # 5 replicas: a majority is 2 followers, the quorum 3
    f.round = 1
    f.begin(verified=False)
    f.echo("kv-1", 1)
    f.echo("kv-2", 1)
    # A majority echoed, not a quorum: round 1 is not confirmed before any epoch is fenced off.
    assert not f.fenced_off and not f._quorum_echoed() and f._confirmed_round() == 0
    f.echo("kv-7", 1)  # no voter: counts for nothing
    assert not f.fenced_off
    f.echo("kv-3", 1)
    assert f.fenced_off and f._confirmed_round() == 1
    f.begin(verified=True)
    assert f.fenced_off and f.began is not None
    f.reset()
    assert not f.fenced_off and f.began is None and f._confirmed_round() == 0


async def test_status_counts_rounds_leases_and_failures() -> None:
    clock = Clock()
    f = Fencing(lambda: replicas(3), clock=clock)
    f.begin(verified=True)
    sent: list[int] = []
    f.attach(sent.append)
    assert f.status()["majority_heard_seconds_ago"] == 0.0  # the epoch began with a quorum of promises
    f.reset()
    assert f.status()["majority_heard_seconds_ago"] is None and not f.status()["in_contact"]
    f.begin(verified=True)
    for _ in range(2):
        failed = asyncio.ensure_future(f.confirm(timeout=0.01))
        await settle()
        assert await failed is False
        await asyncio.sleep(0.06)  # past RESEND_AFTER: the next read starts its own round
    clock.now += 0.5
    for expected in (3, 4):
        read = asyncio.ensure_future(f.confirm(timeout=5))
        await asyncio.sleep(0.06)
        assert sent[-1] == expected
        f.echo("kv-1", expected)
        assert await read is True
        clock.now += LEASE_SECONDS  # the lease ran out: the next read needs a round again
    clock.now -= 0.123  # 0.877 s after round 4 started: still leased (0.9 s)
    assert f.confirmed_by_lease() and f.confirmed_by_lease()
    assert f.status() == {"rounds_confirmed": 2, "rounds_failed": 2, "leased": True, "in_contact": True,
                          "confirmed_by_lease": 2, "majority_heard_seconds_ago": 0.877,
                          "contact_window_seconds": CONTACT_SECONDS}
    assert Fencing(lambda: replicas(1)).confirmed_by_lease()  # one replica: nobody to ask
    assert Fencing(lambda: replicas(1), clock=clock).last_contact() == clock.now


async def test_a_round_waited_across_any_reset_proves_nothing() -> None:
    f = Fencing(lambda: replicas(3))
    f.reset()  # the generation moves on every reset, not to a fixed value
    f.fenced_off = True
    sent: list[int] = []
    f.attach(sent.append)
    read = asyncio.ensure_future(f.confirm(timeout=5))
    await settle()
    f.reset()
    f.fenced_off = True
    f.echo("kv-1", sent[-1])
    assert await read is False


async def test_streams_each_get_every_round_until_detached() -> None:
    f = Fencing(lambda: replicas(3))
    f.fenced_off = True
    first: list[int] = []
    second: list[int] = []
    third: list[int] = []
    f.attach(first.append)
    detach_second = f.attach(second.append)
    f.attach(third.append)
    f.tick()
    f.tick()  # a round is already scheduled in this loop turn: no second one
    await settle()
    detach_second()
    detach_second()  # a stream that ends twice (an error, then its cleanup)
    f.echo("kv-1", 1)
    f.tick()
    await settle()
    assert first == [1, 2] and second == [1] and third == [1, 2]


async def test_one_round_per_round_trip_and_none_held_back() -> None:
    """A read while a round is out waits for the next one, sent RESEND_AFTER after it; after a confirmed
    round the next read's round goes at once; and no round is sent that nobody asked for."""
    clock = Clock()
    f = Fencing(lambda: replicas(3), clock=clock)
    f.fenced_off = True
    sent: list[int] = []
    f.attach(sent.append)
    first = asyncio.ensure_future(f.confirm(timeout=5))
    await settle()
    second = asyncio.ensure_future(f.confirm(timeout=5))
    for _ in range(10):  # loop turns, not time: RESEND_AFTER is 50 ms away
        await asyncio.sleep(0)
    assert sent == [1]  # round 1 is out: round 2 waits for its echo, or for RESEND_AFTER
    f.echo("kv-1", 1)
    assert await first is True
    await settle()
    assert sent == [1, 2]  # round 1 confirmed: the waiting read's round goes now
    f.echo("kv-1", 2)
    assert await second is True
    clock.now += LEASE_SECONDS  # past the lease round 2 gave
    third = asyncio.ensure_future(f.confirm(timeout=5))
    await settle()
    assert sent == [1, 2, 3]  # round 2, sent a moment ago, was confirmed: no wait
    f.echo("kv-1", 3)
    assert await third is True
    await asyncio.sleep(0.08)
    assert sent == [1, 2, 3]  # nothing else was asked for


async def test_a_candidate_counts_itself_only_once_the_lease_of_its_own_last_echo_ran_out(
        follower: Follower) -> None:
    """A follower that stands is one of its own promises: like any promise, it waits until the lease its last
    echo gave the old primary has run out, or that primary could answer a strong read on the lease while the
    candidate, already leading, acknowledges a newer write."""
    from kvstore.replication.recovery import FAILOVER, Decision, Recovery
    import time
    follower._last_echo = ((1, "old"), time.monotonic())  # it echoed the old primary's round just now
    config = kvconfig.load({"POD_NAME": "kv-1", "KV_CLUSTER_TOKEN": "t", "KV_DATA_DIR": str(follower.config.data_dir)})
    recovery = Recovery(config, follower.store, follower.directory, None, follower,  # type: ignore[arg-type]
                        Metrics(), mode=FAILOVER, events=EventLog("kv-1"))
    decided = asyncio.create_task(recovery._carry_out(Decision(None, False, True, "test")))
    await asyncio.sleep(0.3 * LEASE_SECONDS)
    assert not decided.done() and follower.store.promise.number == 0, "began its epoch inside the old lease"
    await asyncio.wait_for(decided, 2 * LEASE_SECONDS)
    assert follower.store.promise.leader == 1 and follower.store.lineage.last.leader == 1
