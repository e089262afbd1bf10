"""Who may begin an epoch: the rules a follower promises by, and when a follower stands for election.

kv-0 leads whenever it is up and current. Another pod begins an epoch only
in two cases (docs/design.md, "Failover and switchover"):

- **Switchover.** The primary stops admitting writes, waits until the target
  holds its whole log, and asks it to take over; the followers it asks for
  promises confirm with the primary that it is handing over to that pod.
- **Failover.** The followers have not heard the primary's rounds for
  ``KV_FAILOVER_AFTER`` seconds; the most up-to-date follower (ties: the
  lowest ordinal) asks for promises.

A follower promises a candidate that is not the primary it follows only when
the candidate's log is at least as up to date as its own (Raft's election
restriction) and either the primary handed over to it, or the follower itself
lost the primary for ``KV_FAILOVER_AFTER``. The pod that leads may always ask
again after a restart (kv-0's start-up recovery, unchanged): it copies the
most up-to-date log it hears before it serves.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Callable, Mapping

from kvstore.config import Config
from kvstore.discovery import PeerDirectory
from kvstore.lineage import Lineage, Promise
from kvstore.membership import Configuration, majority
from kvstore.replication.peer_client import PeerClient, PeerPosition
from kvstore.replication.versions import LEADER_PROTOCOL
from kvstore.storage import Store

log = logging.getLogger("kvstore.replication")

ELECT_INTERVAL = 0.25  # seconds between a follower's looks at whether it should stand
ASK_TIMEOUT = 0.5  # seconds a peer has to tell its position to a follower deciding whether to stand
# Refusal kinds a candidate acts on (PromiseRefused.kind): a live primary, or a log behind the follower's.
LEADER_ALIVE = "leader_alive"
BEHIND = "behind"


def newest_leader(store: Store, *hints: tuple[int, int]) -> int:
    """The ordinal leading the newest epoch this replica knows of: promised, in its log, or heard of."""
    known = [(store.promise.number, store.promise.leader)]
    last = store.lineage.last
    if last is not None:
        known.append((last.number, last.leader))
    known.extend(hints)
    return max(known)[1]


def key(lineage: Lineage, lsn: int) -> tuple[int, int]:
    """How up to date a log is: its last entry's epoch, then its LSN (Raft's rule)."""
    return lineage.up_to_date_key(lsn) if lsn or lineage.epochs else (-1, -1)


def promise_refusal(candidate: Promise, candidate_position: PeerPosition, mine: tuple[int, int], *,
                    leader: int, me: int, lost_for: float, failover_after: float,
                    handed_over: bool) -> tuple[str, str] | None:
    """Why this follower does not promise ``candidate`` (kind, message); None: it may.

    ``leader`` is the primary this follower knows, ``lost_for`` how long it
    has not heard that primary's rounds, ``handed_over`` whether that primary
    says it hands its role to the candidate.
    """
    if candidate.leader == leader and leader != me:
        return None  # the primary's own pod, restarted: its start-up recovery copies what it lacks
    theirs = key(candidate_position.lineage, candidate_position.lsn)
    if theirs < mine:
        return BEHIND, (f"the candidate's log (epoch {theirs[0]}, lsn {theirs[1]}) is behind this replica's "
                        f"(epoch {mine[0]}, lsn {mine[1]}): only an up-to-date log may lead")
    if handed_over:
        return None
    if failover_after <= 0:
        return LEADER_ALIVE, ("failover is off here (KV_FAILOVER_AFTER=0) and the primary did not hand its "
                              "role to this candidate")
    if lost_for < failover_after:
        return LEADER_ALIVE, (f"this replica heard the primary (ordinal {leader}) {lost_for:.1f}s ago; it "
                              f"promises another pod only after {failover_after:g}s without it")
    return None


def decide_to_stand(me: int, voters: tuple[int, ...], mine: tuple[int, int], epoch: int,
                    heard: Mapping[int, PeerPosition],
                    leader: int | None = None) -> tuple[bool, str, tuple[int, int] | None]:
    """Whether a follower that lost its primary stands: (stand, why, a serving primary's (epoch, ordinal)).

    It stands only if the primary it knows (``leader``) does not answer as
    primary or recovering (a kv-0 proving it is current is not lost), no pod
    it heard serves as primary in its epoch or a newer one, no voter it heard
    is more up to date (ties: the lowest ordinal stands), and the voters it
    hears make a majority with itself.
    """
    own = heard.get(leader) if leader is not None else None
    if own is not None and own.state in ("primary", "recovering"):
        return False, f"{own.name}, the primary, answers ({own.state})", None
    for ordinal, position in heard.items():
        last = position.lineage.last
        if position.state == "primary" and last is not None and last.number >= epoch:
            return False, f"{position.name} is the primary in epoch {last.number}", (last.number, ordinal)
        theirs = key(position.lineage, position.lsn)
        if ordinal in voters and (theirs > mine or (theirs == mine and ordinal < me)):
            return False, f"{position.name} is at least as up to date and comes first", None
    counted = 1 + sum(1 for o in heard if o in voters)
    needed = majority(len(voters))
    if counted < needed:
        return False, f"hears {counted} of the {needed} voters an election needs", None
    return True, f"this replica is the most up-to-date of the {len(heard) + 1} pods it hears", None


class Elector:
    """A follower's watch for a lost primary: returns once this follower should stand for election."""

    def __init__(self, config: Config, store: Store, directory: PeerDirectory,
                 client: PeerClient, configuration: Callable[[], Configuration], leader: Callable[[], int],
                 lost_for: Callable[[], float], usable: Callable[[], bool]) -> None:
        self.config = config
        self.store = store
        self.directory = directory
        self.client = client
        self.configuration = configuration
        self.leader = leader
        self.lost_for = lost_for
        self.usable = usable  # False while this follower diverged or copies a snapshot
        self.hint: tuple[int, int] = (0, 0)  # (epoch, ordinal) of a serving primary a peer named
        self.why_not: str | None = None  # why it did not stand at its last look (for /v1/status)
        self.unreachable: frozenset[int] = frozenset()  # pods that did not answer at the last look

    async def wait_to_stand(self) -> str:
        """Return the reason once this follower should ask for promises (runs until cancelled)."""
        while True:
            await asyncio.sleep(ELECT_INTERVAL)
            after = self.config.failover_after
            if after <= 0 or self.lost_for() < after or not self.usable():
                continue
            reason = await self.should_stand()
            # Asking took up to ASK_TIMEOUT: a round that came meanwhile means the primary is not lost.
            if reason is not None and self.lost_for() >= after:
                return reason

    async def should_stand(self) -> str | None:
        """Whether this follower is the one to stand now (the most up-to-date voter that hears a quorum)."""
        me, configuration = self.config.ordinal, self.configuration()
        if me not in configuration.voters:
            self.why_not = "a learner does not stand for election"
            return None
        if self.client.versions.older_peers(LEADER_PROTOCOL):
            self.why_not = "a peer speaks an older peer protocol, which knows no primary but kv-0"
            return None
        others = sorted((set(configuration.voters) | set(self.directory.peers)) - {me})
        answers = await asyncio.gather(*(self._position(o) for o in others))
        heard = {o: p for o, p in zip(others, answers) if p is not None}
        self.unreachable = frozenset(o for o in others if o not in heard)
        stand, why, hint = decide_to_stand(me, configuration.voters, key(self.store.lineage, self.store.lsn),
                                           self.store.epoch, heard, self.leader())
        if hint is not None:
            self.hint = max(self.hint, hint)
        self.why_not = None if stand else why
        if not stand:
            return None
        return (f"no round from the primary (ordinal {self.leader()}) for {self.lost_for():.1f}s; {why}")

    async def _position(self, ordinal: int) -> PeerPosition | None:
        return await self.client.position_or_none(await self.directory.find(ordinal), ASK_TIMEOUT)
