"""kv-0's start-up: prove it holds every acknowledged write before it serves, then begin an epoch.

On *every* start, kv-0 asks each follower it knows of (the members of every
configuration its own log and the followers heard so far record, or
kv-1 .. kv-(KV_REPLICAS-1) when none records one, and every pod DNS lists;
each found by SRV or by its stable per-pod name) to promise its *candidate*
epoch and to tell its position as of that promise (see fencing.py: a follower
promises only the kv-0 its DNS lists). A position counts as *heard* only with that promise. A timeout, an
NXDOMAIN, a refused connection or a refused promise is never "that follower is
empty": it is simply not heard yet.

The configuration that counts is the one the most up-to-date log heard (or
kv-0's own) records: it holds every configuration a majority acknowledged
(membership.py). A write acknowledged with ``w=majority`` of its N voters
(M = N//2+1) is on kv-0 and M-1 followers, so any N-M+1 of its followers
hold it at least once: that is the *quorum* kv-0 must hear before it may
decide without its own disk.

- Every follower heard: decide now. No follower can hold entries kv-0 does
  not know of, so the history goes on (the new epoch keeps its id).
- Otherwise wait up to ``KV_RECOVERY_WAIT`` for the others, then decide with
  a quorum; the new epoch starts a new history (a fork: an unheard follower
  may hold entries past kv-0's position, and an LSN must never name two
  writes in one history).
- Deciding: the most up-to-date log among kv-0's own and the followers' heard
  (last entry's epoch, then LSN; Raft's rule) is the truth. When a follower's
  is, kv-0 copies it before anything else: the entries past its own from
  that follower's log when its log is a prefix of the follower's (kv-0
  crashed while followers wrote its last batch), else a snapshot.
- An empty kv-0 never starts a brand-new history unless *every* follower
  answered that it never held data; with fewer than a quorum heard it waits
  as long as it takes (an operator may decide instead).
- An intact kv-0 that hears fewer than a quorum within ``KV_RECOVERY_WAIT``
  trusts its disk and goes on *unverified*: followers then keep entries it
  does not have and report divergence instead of dropping them.

The new epoch is ``verified`` when a quorum was heard: followers may then drop
entries it replaced (they were never acknowledged by a majority).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

import aiohttp

from kvstore.config import Config
from kvstore.discovery import Peer, PeerDirectory
from kvstore.events import EventLog
from kvstore.lineage import Promise, new_id
from kvstore.membership import Configuration, majority, recovery_quorum
from kvstore.metrics import Metrics
from kvstore.replication import election
from kvstore.replication.follower import Follower
from kvstore.replication.peer_client import PeerClient, PeerError, PeerPosition, PromiseRefused
from kvstore.storage import Store

log = logging.getLogger("kvstore.replication")

ASK_INTERVAL = 0.5  # seconds between rounds of asking the followers not heard yet
START, FAILOVER, HANDOVER = "start", "failover", "handover"  # why a pod asks for an epoch
LOG_INTERVAL = 5.0  # seconds between "still waiting" lines


@dataclass(frozen=True)
class Decision:
    """What a recovering kv-0 does: copy ``source`` (None: keep its own), then begin an epoch."""

    source: str | None
    continue_history: bool
    verified: bool
    why: str


class Recovery:
    """A pod's check before it serves as primary; ``done`` once it may serve, ``abandoned`` if it may not.

    ``mode``: START (kv-0's start-up, or again after it found it was
    replaced), FAILOVER (a follower that lost the primary, election.py) or
    HANDOVER (the primary asked this follower to take over). A candidate in
    any mode gives up (``abandoned``) when a live primary answers or a
    follower's log is ahead of its own; FAILOVER and HANDOVER also when they
    are refused for a newer epoch or have not decided within their time.
    """

    def __init__(self, config: Config, store: Store, directory: PeerDirectory, client: PeerClient,
                 follower: Follower, metrics: Metrics, mode: str = START,
                 unreachable: frozenset[int] = frozenset(), asked_before: int = 0, *, events: EventLog) -> None:
        self.config = config
        self.store = store
        self.events = events  # this replica's ring of recent events (GET /v1/events)
        self.directory = directory
        self.client = client
        self.follower = follower  # used only to copy a snapshot from the chosen follower
        self.metrics = metrics
        self.done = asyncio.Event()
        self.waiting_for: list[str] = []
        self.unheard_reasons: dict[str, str] = {}
        self.heard: dict[str, PeerPosition] = {}
        self.decision: Decision | None = None
        self.rounds = 0  # rounds of asking that ended still waiting
        # The epoch this kv-0 will begin, which followers must promise first (fencing.py).
        self.mode = mode
        # Pods a standing follower just found unreachable (the lost primary): not waited for in the
        # first round, so a frozen one does not hold the election up for a timeout.
        self._skip = {directory.pod_name(o) for o in unreachable}
        # Above every epoch this pod knows, and above its own earlier candidacies (``asked_before``):
        # followers may still hold to one it gave up.
        self.candidate = Promise(max(store.lineage.max_number(), store.promise.number, asked_before) + 1, new_id(),
                                 config.ordinal)
        self._refused_at = 0  # the newest epoch a refusal said its follower holds to
        # The pod that led the newest epoch this one knows: its followers are the ones to hear.
        self.previous_leader = election.newest_leader(store)
        self.abandoned: str | None = None  # why this pod gave up asking (it follows instead)
        self.live_leader: tuple[int, int] | None = None  # (epoch, ordinal) of a primary that answered
        self._forced: Decision | None = None
        self._wake = asyncio.Event()

    # ------------------------------------------------------------- operator
    def force(self, action: str, peer: str | None) -> str:
        """An operator's decision (kvstore recover): ``fresh``, or ``from`` a named follower."""
        if self.done.is_set():
            raise ValueError("kv-0 has finished recovering; nothing to decide")
        if action == "fresh":
            self._forced = Decision(None, False, False, "operator: go on from this replica's own data")
        elif action == "from" and peer:
            self._forced = Decision(peer, False, False, f"operator: accept {peer} as the truth")
        else:
            raise ValueError("expected fresh, or from with a pod name")
        log.warning("RECOVERY FORCED by an operator: %s", self._forced.why)
        self._wake.set()
        return self._forced.why

    # ----------------------------------------------------------------- run
    async def run(self) -> None:
        """Ask, decide, copy if needed, begin the epoch; retried until it succeeds."""
        self.metrics.recovering.set(1)
        started = time.monotonic()
        last_log = 0.0
        delay = ASK_INTERVAL
        deadline = started + max(2.0, self.config.failover_after) if self.mode != START else None
        while True:
            if self.abandoned is None and deadline is not None and time.monotonic() > deadline:
                self.abandoned = "no quorum of promises in time: " + "; ".join(
                    f"{k}: {v}" for k, v in sorted(self.unheard_reasons.items()))
            if self.abandoned is not None:
                log.warning("%s stops asking for epoch %d: %s", self.config.pod_name, self.candidate.number,
                            self.abandoned)
                self.events.record("election_abandoned", self.abandoned, epoch=self.candidate.number)
                self.metrics.recovering.set(0)
                return
            try:
                decision = self._forced or await self._ask_and_decide(time.monotonic() - started)
                if decision is not None:
                    await self._carry_out(decision)
                    break
                self.rounds += 1
                if time.monotonic() - last_log > LOG_INTERVAL:
                    last_log = time.monotonic()
                    self.events.record("recovering", "waiting for " + (", ".join(self.waiting_for) or "nobody")
                                       + " before taking writes", waiting_for=self.waiting_for)
                    log.warning("recovering: waiting for %s before taking writes (%s)",
                                ", ".join(self.waiting_for) or "nobody",
                                "; ".join(f"{k}: {v}" for k, v in sorted(self.unheard_reasons.items())))
                delay = ASK_INTERVAL
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # Never fall back to taking writes unchecked: that is how a lost
                # volume would wipe the cluster. Ask again.
                log.warning("recovery step failed (%s: %s); retrying in %.1fs", type(exc).__name__, exc, delay)
                self.heard.clear()
                delay = min(delay * 2, 5.0)
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), delay)
            except asyncio.TimeoutError:
                pass
        self.metrics.recovering.set(0)
        self.done.set()

    def configuration(self) -> Configuration:
        """The configuration that counts: the one the most up-to-date log among ours and those heard records."""
        store = self.store
        best, best_key = store.membership, store.lineage.up_to_date_key(store.lsn) if store.lsn else (-1, -1)
        for position in self.heard.values():
            key = position.lineage.up_to_date_key(position.lsn)
            if key > best_key:
                best, best_key = position.membership, key
        return best or Configuration.initial(self.config.replicas)

    def _to_ask(self) -> list[str]:
        """Every follower that may count: members of each configuration known here, and every pod in DNS."""
        ordinals = set(self.configuration().members()) | set(self.directory.peers)
        for configuration in [self.store.membership, *(p.membership for p in self.heard.values())]:
            if configuration is not None:
                ordinals |= set(configuration.members())
        return [self.directory.pod_name(o) for o in sorted(ordinals - {self.config.ordinal})]

    def _needed(self) -> list[str]:
        """The followers "every follower" means: the counting configuration's voters and every pod in DNS."""
        ordinals = set(self.configuration().voters) | set(self.directory.peers)
        return [self.directory.pod_name(o) for o in sorted(ordinals - {self.config.ordinal})]

    async def _ask_and_decide(self, elapsed: float) -> Decision | None:
        for _ in range(3):  # again at once when an answer raised the candidate or named more members
            candidate, asked = self.candidate, self._to_ask()
            missing = [name for name in asked if name not in self.heard]
            self.waiting_for = missing
            await asyncio.gather(*(self._ask(name) for name in missing if name not in self._skip))
            self._skip = set()
            # A position counts only with a promise of the current candidate (it may have risen meanwhile).
            self.heard = {name: p for name, p in self.heard.items() if p.promised == self.candidate}
            if self.candidate == candidate and self._to_ask() == asked:
                break
        self.waiting_for = [name for name in self._needed() if name not in self.heard]
        if self.abandoned is not None:
            return None  # a live primary or a more up-to-date log answered: follow, do not decide
        return self.decide(elapsed)

    async def _ask(self, name: str) -> None:
        ordinal = int(name.rsplit("-", 1)[1])
        try:
            peer = await self.directory.find(ordinal)
            if peer is None:
                self.unheard_reasons[name] = "not in DNS"
                return
            candidate = self.candidate
            # A pod that stands has no time to lose on one that does not answer; kv-0's start-up
            # allows for a follower that waits out its lease before it promises.
            position = await self.client.promise(peer, candidate, timeout=2.0 if self.mode == START else 1.0)
            if position.promised != candidate or position.lineage.max_number() >= candidate.number:
                raise PeerError(f"{name} answered a promise of epoch {candidate.number} with another position")
            self.heard[name] = position
            self.unheard_reasons.pop(name, None)
        except PromiseRefused as exc:
            self.unheard_reasons[name] = f"did not promise epoch {self.candidate.number}: {exc}"
            self._refused_at = max(self._refused_at, exc.promised.number)
            if exc.kind == election.LEADER_ALIVE:
                if exc.promised.number:
                    self.live_leader = max(self.live_leader or (0, 0), (exc.promised.number, exc.promised.leader))
                self.abandoned = f"{name}: a primary is alive ({exc})"
            elif exc.kind == election.BEHIND:
                self.abandoned = f"{name} holds a more up-to-date log ({exc})"
            elif exc.promised.number >= self.candidate.number:
                if self.mode != START and exc.promised.leader != self.config.ordinal:
                    self.abandoned = f"{name} promised epoch {exc.promised.number} to another candidate"
                else:  # kv-0's start-up, or a promise made to this pod's own earlier candidacy
                    self._raise_candidate(exc.promised.number)
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError, PeerError) as exc:
            self.unheard_reasons[name] = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__

    @property
    def asked_up_to(self) -> int:
        """The epoch a next candidacy of this pod must ask above: its own, and every one a refusal named.

        As a Raft candidate takes a higher term it hears of: one that rose by one at a time would
        ask, and be refused, once for every epoch between its own and the one its followers hold to.
        """
        return max(self.candidate.number, self._refused_at)

    def _raise_candidate(self, above: int) -> None:
        """A follower holds to epoch ``above`` or newer: ask for a higher one (promises of the old one are void)."""
        self.candidate = Promise(above + 1, new_id(), self.config.ordinal)
        self.heard.clear()
        log.info("recovery: a follower holds to epoch %d; asking for epoch %d", above, self.candidate.number)

    def decide(self, elapsed: float) -> Decision | None:
        """The decision for what has been heard so far, or None to keep waiting."""
        heard = self.heard
        configuration = self.configuration()
        me, previous = self.config.ordinal, self.previous_leader
        voters = [self.directory.pod_name(o) for o in configuration.voters if o != me]
        voters_heard = sum(1 for name in voters if name in heard)
        if me == previous:
            # The pod that led asks again (kv-0's start-up): its own disk may be lost, so it needs
            # the followers that hold every write it acknowledged, without itself.
            have_quorum = voters_heard >= recovery_quorum(len(configuration.voters))
        else:
            # Another pod (a failover, a takeover): every promiser's log is at most as up to date
            # as this one (election.py), so a majority with itself holds every committed write,
            # as in Raft; and every majority the old primary could gather holds a promiser.
            voters_heard += me in configuration.voters
            have_quorum = voters_heard >= majority(len(configuration.voters))
        all_heard = all(name in heard for name in self._needed())
        followers = len(voters)
        # A follower that stands has waited KV_FAILOVER_AFTER already, and the pod that was lost
        # is exactly the one it would wait for.
        waited = elapsed >= self.config.recovery_wait or self.mode != START
        store = self.store
        empty = store.lsn == 0 and not store.lineage.epochs
        if self.mode != START and not have_quorum:
            # Trusting its own disk is the restarted kv-0's way out when followers stay away; a
            # candidate that stands or takes over never begins an epoch without a majority's promises
            # (another candidate may be asking for the same epoch at the same time).
            return None
        if empty and all_heard and all(p.empty for p in heard.values()):
            return Decision(None, False, True, "no replica ever held data: a new history")
        if not (all_heard or (waited and (have_quorum or not empty))):
            return None
        if empty and not any(not p.empty for p in heard.values()):
            return None  # a quorum, all empty, but an unheard follower may hold the data
        mine = store.lineage.up_to_date_key(store.lsn) if not empty else (-1, -1)
        best = max(heard.values(), key=lambda p: p.lineage.up_to_date_key(p.lsn), default=None)
        source = None
        if best is not None and not best.empty and best.lineage.up_to_date_key(best.lsn) > mine:
            source = best.name
        how = "every follower" if all_heard else (
            f"a quorum ({voters_heard} of {followers} followers)" if have_quorum
            else f"only {voters_heard} of {followers} followers, after {self.config.recovery_wait:.0f}s; "
                 "trusting this disk (unverified)")
        what = f"copying {source}, the most up-to-date" if source else "this replica is the most up-to-date"
        return Decision(source, all_heard, all_heard or have_quorum, f"heard {how}: {what}")

    async def _carry_out(self, decision: Decision) -> None:
        log.warning("recovery decided: %s", decision.why)
        self.events.record("recovery_decided", decision.why, source=decision.source, verified=decision.verified)
        self.decision = decision
        if decision.source is not None:
            peer = await self._peer(decision.source)
            heard = self.heard.get(decision.source)
            # A few entries from its log when ours is a prefix of it (a crash while followers wrote
            # kv-0's last batch); else, or if that fails, a snapshot of it.
            if heard is None or not await self.follower.catch_up_from(peer, heard):
                await self.follower.install_snapshot_from(peer, "recovering primary", force=True)
        store = self.store
        # The candidate is above every epoch heard (a follower refuses to promise otherwise) and our own.
        number = max(self.candidate.number, store.lineage.max_number() + 1)
        history = store.history_id if decision.continue_history and store.history_id else new_id()
        lineage = store.lineage.begin(number, store.lsn + 1, history, decision.verified, self.candidate.id,
                                      keep=self.config.test_max_epochs, leader=self.config.ordinal)
        if self.config.ordinal != self.previous_leader:
            # It counted itself among the promises, so it keeps a follower's rule for them: the lease
            # its last echo gave the old primary runs out first (that primary may still answer strong
            # reads on it). A primary that handed over gave its lease up before it asked.
            hold = 0.0 if self.mode == HANDOVER else self.follower.promise_hold(self.candidate)
            if hold > 0:
                log.info("beginning epoch %d in %.2fs, once the lease of this pod's last echo ran out",
                         number, hold)
                await asyncio.sleep(hold)
            await store.set_promise(Promise(number, self.candidate.id, self.config.ordinal))
        await store.set_lineage(lineage)
        self.metrics.epoch.set(lineage.number)
        fork = lineage.fork()
        self.events.record("became_primary", f"primary in epoch {lineage.number} at lsn {store.lsn}"
                           + (f", history forked at lsn {fork['lsn']}" if fork else ""), epoch=lineage.number,
                           lsn=store.lsn, history=history, fork=fork, verified=decision.verified)
        log.info("%s is primary in epoch %d at lsn %d, history %s%s%s", self.config.pod_name, lineage.number,
                 store.lsn, history, f" (forked from {fork['parent']} at lsn {fork['lsn']})" if fork else "",
                 "" if decision.verified else " UNVERIFIED: followers keep what it lacks and report divergence")

    async def _peer(self, name: str) -> Peer:
        peer = await self.directory.find(int(name.rsplit("-", 1)[1]))
        if peer is None:
            raise PeerError(f"{name} is not in DNS")
        return peer
