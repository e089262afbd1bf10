"""kv-0's start-up decision for every replica count 1-9: when it may decide, and which log it takes as the truth."""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from kvstore import config as kvconfig
from kvstore.events import EventLog
from kvstore.lineage import Lineage, Promise
from kvstore.membership import Configuration, recovery_quorum
from kvstore.metrics import Metrics
from kvstore.replication.peer_client import PeerPosition
from kvstore.replication.recovery import Recovery

H = "1" * 32
ONE = Lineage().begin(1, 1, H, True, "a1")
TWO = ONE.begin(2, 4, H, True, "b2")           # epoch 2 from LSN 4 on
TWO_OTHER = ONE.begin(2, 3, H, False, "c2")    # another process's epoch 2, from LSN 3
THREE = TWO.begin(3, 6, H, True, "d3")
# (lineage, lsn) a replica may hold; () with 0: it never held data.
LOGS = [(Lineage(), 0), (ONE, 0), (ONE, 2), (ONE, 5), (TWO, 3), (TWO, 4), (TWO, 7), (TWO_OTHER, 3), (TWO_OTHER, 9),
        (THREE, 5), (THREE, 6)]
WAIT = 10.0


@dataclass
class Disk:
    """What the decision reads of kv-0's own store."""

    lsn: int
    lineage: Lineage
    promise: Promise = Promise()
    membership: Configuration | None = None  # none recorded: KV_REPLICAS counts


@dataclass
class Directory:
    """The pods DNS lists (ordinal -> peer); recovery only names them here."""

    peers: dict[int, object] = field(default_factory=dict)

    def pod_name(self, ordinal: int) -> str:
        return f"kv-{ordinal}"


def recovery_for(replicas: int, disk: Disk, wait: str = str(10.0)) -> Recovery:
    """kv-0's recovery with ``KV_REPLICAS`` replicas and nothing heard yet."""
    config = kvconfig.load({"POD_NAME": "kv-0", "KV_CLUSTER_TOKEN": "t", "KV_RECOVERY_WAIT": wait,
                            "KV_REPLICAS": str(replicas)})
    return Recovery(config, disk, Directory(), None, None, Metrics(),  # type: ignore[arg-type]
                    events=EventLog("kv-0"))


def last_entry_epoch(lineage: Lineage, lsn: int) -> int:
    """The number of the epoch that wrote entry ``lsn`` (0: none), reading the epochs one by one."""
    numbers = [e.number for e in lineage.epochs if e.start <= lsn] if lsn else []
    return numbers[-1] if numbers else 0


def most_up_to_date(log: tuple[Lineage, int]) -> tuple[int, int]:
    return last_entry_epoch(*log), log[1]


@settings(max_examples=400, deadline=None)
@given(st.integers(1, 9), st.sampled_from(LOGS), st.lists(st.sampled_from(LOGS), min_size=8, max_size=8),
       st.sets(st.integers(1, 8)), st.booleans())
def test_the_decision_needs_a_quorum_and_takes_the_most_up_to_date_log(
        replicas: int, own: tuple[Lineage, int], logs: list[tuple[Lineage, int]], heard_ordinals: set[int],
        waited: bool) -> None:
    recovery = recovery_for(replicas, Disk(own[1], own[0]), str(WAIT))
    followers = replicas - 1
    heard = {f"kv-{i}": logs[i - 1] for i in sorted(heard_ordinals) if i < replicas}
    recovery.heard = {name: PeerPosition(name, "following", lsn, 1, lineage) for name, (lineage, lsn) in heard.items()}
    decision = recovery.decide(WAIT if waited else WAIT - 0.5)

    all_heard = len(heard) == followers
    have_quorum = len(heard) >= recovery_quorum(replicas)
    own_empty = own[1] == 0 and not own[0].epochs
    data_heard = [log for log in heard.values() if log[1] or log[0].epochs]
    if own_empty and all_heard and not data_heard:
        assert decision is not None and decision.source is None and decision.verified
        assert not decision.continue_history and "no replica ever held data" in decision.why
        return
    may_decide = all_heard or (waited and (have_quorum or not own_empty))
    if not may_decide or (own_empty and not data_heard):
        assert decision is None, "decided before hearing enough followers to know every acknowledged write"
        return
    assert decision is not None
    assert decision.verified == (all_heard or have_quorum)
    assert decision.continue_history == all_heard  # an unheard follower may hold more: a new history
    best = max([most_up_to_date(log) for log in data_heard], default=None)
    mine = most_up_to_date(own) if not own_empty else (-1, -1)
    if best is not None and best > mine:
        assert decision.source is not None and most_up_to_date(heard[decision.source]) == best
        assert f"copying {decision.source}, the most up-to-date" in decision.why
    else:
        assert decision.source is None, "copied a follower whose log is not more up to date than kv-0's"
        assert "this replica is the most up-to-date" in decision.why
    # The reason an operator reads says how much was heard.
    assert ("heard every follower" if all_heard else f"a quorum ({len(heard)} of {followers} followers)"
            if have_quorum else "trusting this disk (unverified)") in decision.why


def test_an_empty_kv0_copies_a_follower_that_began_an_epoch_even_before_it_wrote() -> None:
    """A lineage is data too: an epoch a follower adopted, with no entry yet, is more than nothing."""
    recovery = recovery_for(3, Disk(0, Lineage()))
    recovery.heard = {"kv-1": PeerPosition("kv-1", "following", 0, 1, ONE),
                      "kv-2": PeerPosition("kv-2", "following", 0, 1, Lineage())}
    decision = recovery.decide(0.0)
    assert decision is not None and decision.source == "kv-1" and decision.verified


def test_the_quorum_decides_for_four_and_five_replicas() -> None:
    """The cases where three replicas' numbers would be wrong: 4 needs 2 of 3 followers, 5 needs 3 of 4."""
    for replicas, enough in ((4, 2), (5, 3)):
        for count in range(replicas):
            recovery = recovery_for(replicas, Disk(0, Lineage()), "0")
            recovery.heard = {f"kv-{i}": PeerPosition(f"kv-{i}", "following", 5, 1, ONE)
                              for i in range(1, count + 1)}
            decision = recovery.decide(1.0)
            assert (decision is not None) == (count >= enough), (replicas, count)


def test_the_quorum_counts_the_configuration_of_the_most_up_to_date_log_heard() -> None:
    """KV_REPLICAS says 3, the newest log says 5 voters: 2 followers heard are not a quorum, 3 are."""
    five = Configuration.initial(3).change(2, range(4)).change(3, range(5))
    for count, enough in ((2, False), (3, True)):
        recovery = recovery_for(3, Disk(1, ONE), "0")
        recovery.heard = {f"kv-{i}": PeerPosition(f"kv-{i}", "following", 5 if i == 1 else 1, 1, ONE,
                                                  membership=five if i == 1 else None)
                          for i in range(1, count + 1)}
        assert recovery.configuration() == five
        assert recovery._needed() == ["kv-1", "kv-2", "kv-3", "kv-4"]
        decision = recovery.decide(1.0)
        assert decision is not None and decision.verified == enough, count
        assert decision.source == "kv-1" and ("a quorum (3 of 4 followers)" in decision.why) == enough
    # kv-0's own log counts when no log heard is more up to date, even one heard as up to date;
    # KV_REPLICAS when none records one.
    four = Configuration.initial(3).change(2, range(4))
    recovery = recovery_for(3, Disk(9, TWO, membership=five))
    recovery.heard = {"kv-1": PeerPosition("kv-1", "following", 8, 1, TWO, membership=four),
                      "kv-2": PeerPosition("kv-2", "following", 9, 1, TWO, membership=four)}
    assert recovery.configuration() == five
    assert recovery_for(3, Disk(9, TWO, membership=five)).configuration() == five
    assert recovery_for(4, Disk(9, TWO)).configuration() == Configuration.initial(4)


def test_every_follower_includes_every_pod_dns_lists() -> None:
    """A pod DNS lists beyond the voters may hold writes too: until it is heard, not every follower was."""
    recovery = recovery_for(3, Disk(2, ONE), "100")
    recovery.directory.peers = {1: None, 2: None, 3: None}  # type: ignore[attr-defined]
    recovery.heard = {f"kv-{i}": PeerPosition(f"kv-{i}", "following", 2, 1, ONE) for i in (1, 2)}
    assert recovery._to_ask() == ["kv-1", "kv-2", "kv-3"] and recovery.decide(0.0) is None
    recovery.heard["kv-3"] = PeerPosition("kv-3", "following", 2, 1, ONE)
    decision = recovery.decide(0.0)
    assert decision is not None and decision.continue_history and "heard every follower" in decision.why


@settings(max_examples=300, deadline=None)
@given(st.integers(2, 9), st.integers(1, 8), st.sampled_from(LOGS[1:]), st.sets(st.integers(0, 8)),
       st.sampled_from(["failover", "handover"]), st.floats(0, 100))
def test_a_candidate_other_than_the_leader_never_begins_an_epoch_without_a_majority_of_promises(
        replicas: int, me: int, own: tuple[Lineage, int], promised: set[int], mode: str, elapsed: float) -> None:
    """kv-0's start-up may trust its own disk after KV_RECOVERY_WAIT; a pod that stands for election or takes
    over never does: two candidates can ask for one epoch at once, and only a majority makes one of them win."""
    from kvstore.membership import majority
    me = me % replicas or 1
    config = kvconfig.load({"POD_NAME": f"kv-{me}", "KV_CLUSTER_TOKEN": "t", "KV_RECOVERY_WAIT": "0",
                            "KV_REPLICAS": str(replicas)})
    recovery = Recovery(config, Disk(own[1], own[0]), Directory(), None, None, Metrics(),  # type: ignore[arg-type]
                        mode=mode, events=EventLog(f"kv-{me}"))
    heard = sorted(o for o in promised if o < replicas and o != me)
    recovery.heard = {f"kv-{o}": PeerPosition(f"kv-{o}", "following", 1, 1, ONE) for o in heard}
    decision = recovery.decide(elapsed)
    if len(heard) + 1 < majority(replicas):
        assert decision is None, f"kv-{me} began an epoch with {len(heard)} promise(s) of {replicas} voters"
    else:
        assert decision is not None and decision.verified


class Refusing:
    """A peer client whose every follower refuses: it holds to epoch ``held`` of another pod (kv-0)."""

    def __init__(self, held: int) -> None:
        self.held = held

    async def promise(self, peer: object, candidate: Promise, timeout: float) -> PeerPosition:
        from kvstore.replication.peer_client import PromiseRefused
        raise PromiseRefused(f"this replica already holds to epoch {self.held}; ask again with a higher one",
                             Promise(self.held, "9" * 32, 0))


class Finding(Directory):
    async def find(self, ordinal: int) -> object:
        return object()


async def test_a_candidate_refused_for_a_newer_epoch_asks_above_it_next_time() -> None:
    """A candidate told that its followers hold to epoch 90 asks for 91 next, not one above its own 83:
    rising by one it would be refused once per epoch in between (seen: 30 s without a primary)."""
    config = kvconfig.load({"POD_NAME": "kv-1", "KV_CLUSTER_TOKEN": "t", "KV_REPLICAS": "3"})
    disk = Disk(5, ONE, Promise(82, "8" * 32, 1))
    first = Recovery(config, disk, Finding(), Refusing(90), None, Metrics(),  # type: ignore[arg-type]
                     mode="failover", events=EventLog("kv-1"))
    assert first.candidate.number == 83
    await first._ask("kv-2")
    assert first.abandoned is not None and "promised epoch 90 to another candidate" in first.abandoned
    # The coordinator starts the next candidacy above what the last one asked for or was told of.
    second = Recovery(config, disk, Finding(), Refusing(90), None, Metrics(),  # type: ignore[arg-type]
                      mode="failover", asked_before=first.asked_up_to, events=EventLog("kv-1"))
    assert second.candidate.number == 91
