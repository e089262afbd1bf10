"""One replica's replication, wired together: log server, follower or recovery, acks, the configuration.

``replica.py`` asks this for what it needs (may the primary write, how many
replicas a write concern counts, this replica's position and state); nothing
here calls into the replica, except the listeners told of a change of role.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from typing import Any, Callable

from aiohttp import web

from kvstore.aio import cancel_and_wait
from kvstore.config import Config
from kvstore.discovery import MembershipChange, Peer, PeerDirectory
from kvstore.events import EventLog
from kvstore.expiry import Expirer
from kvstore.identity import PRIMARY, SECONDARY, parse_ordinal
from kvstore.membership import Configuration, agreed, all_hold, majority
from kvstore.metrics import Metrics
from kvstore.replication import election, protocol
from kvstore.replication.election import Elector
from kvstore.lineage import Promise
from kvstore.replication.acks import AckTable
from kvstore.replication.fencing import HEARTBEAT_SECONDS, Fencing
from kvstore.replication.follower import Follower
from kvstore.replication.handover import READY_MAX_LAG, Handover, refused_response
from kvstore.replication.log_server import LogServer
from kvstore.replication.peer_client import PeerClient, PromiseRefused
from kvstore.replication.reconfigure import Reconfigurer
from kvstore.replication.recovery import FAILOVER, HANDOVER, START, Recovery
from kvstore.replication.versions import PEER_VERSIONS, Versions
from kvstore.routing import Router, error_response
from kvstore.storage import StorageError, Store

log = logging.getLogger("kvstore.replication")

WATCH_SECONDS = 1.0  # how often the primary checks, when out of contact, whether it was replaced

_EPOCH_ID = re.compile(r"^[0-9a-f]{1,32}$")


class Replication(Handover):
    """Everything replication a replica runs (the switchover part: handover.py)."""

    def __init__(self, config: Config, store: Store, metrics: Metrics, directory: PeerDirectory,
                 token: str, events: EventLog) -> None:
        self.config = config
        self.store = store
        self.events = events  # this replica's ring of recent events (GET /v1/events), given to each part
        self.metrics = metrics
        self.directory = directory
        self.acks = AckTable()
        self.client = PeerClient(token, Versions(config.pod_name, config.test_peer_protocol or PEER_VERSIONS))
        # The highest configuration LSN that a majority of both it and the one before it held:
        # from then on only the newer one counts (membership.py). Per process: a new kv-0
        # counts both again until it sees the change held.
        self._settled = 0
        self._initial = Configuration.initial(config.replicas)
        self._groups: tuple[object, tuple[tuple[int, ...], ...]] = (None, ())
        self.fencing = Fencing(self.groups, own=config.ordinal)
        self.server = LogServer(config, store, self.acks, metrics, self.fencing, self._committed_to_tell,
                                events=events)
        directory.subscribe(self._dns_changed)
        self.reconfigurer = Reconfigurer(config, store, directory, self.acks, self.configuration,
                                         self.settled, self.committed_lsn, self.client.versions.older_peers,
                                         events=events)
        # The Follower also copies a snapshot for a primary that recovers from a follower's log.
        self._follower = Follower(config, store, directory, self.client, self.acks, metrics, self.fencing,
                                  self.server.notify_commit, self.leader, events=events)
        self.elector = Elector(config, store, directory, self.client, self.configuration, self.leader,
                               self._follower.lost_for, self._follower_usable)
        # The role is one of two objects, switched at run time: ``recovery`` (this pod asks for, or
        # holds, an epoch: the primary) or ``follower`` (it follows the primary). Never both.
        self.follower: Follower | None = None
        self.recovery: Recovery | None = None  # set only by _become, which tells role_listeners
        # Told, in the same step, each time the role changes: ``primary`` or ``secondary`` (role_name).
        self.role_listeners: list[Callable[[str], None]] = []
        self._asked_before = 0  # the newest epoch this pod asked for or was told of when refused (the next asks above)
        self.fenced: str | None = None  # why this primary last found itself replaced
        self.hint: tuple[int, int] = (0, 0)  # (epoch, ordinal) of a live primary a candidacy met
        self.handing_over: int | None = None  # the ordinal this primary hands its role to, while it does
        self._stepped_down = asyncio.Event()  # the target asked this primary's promise: it leads no more
        self._admit = asyncio.Event()  # cleared while a switchover holds writes back
        self._admit.set()
        self._takeover = asyncio.Event()  # the primary asked this follower to take over
        self.leading: dict[str, Any] | None = None  # since when and why this pod leads (None: it does not)
        self._current_since: float | None = None  # kv-0 current since (a failback waits on it)
        self._task: asyncio.Task[None] | None = None
        # The serving primary deletes expired keys (expiry.py): started and stopped in _lead, and it
        # writes only while a majority follows and no switchover holds writes back.
        self.expirer = Expirer(store, lambda: (self.writable and self.handing_over is None
                                               and self.fencing.in_contact() and store.failed is None))
        if config.ordinal == 0:
            self._become(self._new_recovery(START))
            self.server.serving = False
        else:
            self.follower = self._follower
        metrics.epoch.set(store.epoch)

    async def start(self) -> None:
        """Start the role loop: kv-0 begins with its start-up recovery, every other pod follows."""
        self._task = asyncio.create_task(self._run(), name="roles")
        self.server.watch_commits()

    def _new_recovery(self, mode: str, unreachable: frozenset[int] = frozenset()) -> Recovery:
        return Recovery(self.config, self.store, self.directory, self.client, self._follower, self.metrics, mode,
                        unreachable, self._asked_before, events=self.events)

    def _follower_usable(self) -> bool:
        return self._follower.diverged is None and not self._follower.installing_snapshot

    async def _run(self) -> None:
        """Switch between the two roles for as long as this replica runs."""
        mode: str | None = START if self.config.ordinal == 0 else None
        while True:
            mode = await self._follow() if mode is None else await self._lead(mode)

    async def _follow(self) -> str:
        """Follow the primary until this pod should stand (FAILOVER) or was asked to take over (HANDOVER)."""
        self.follower = self._follower
        self._become(None)
        self.store.pipeline = False
        self.server.serving = True
        self.handing_over = None
        self._admit.set()  # writes held by a switchover go to the new primary now
        self._takeover.clear()
        self._follower.started = time.monotonic()  # the primary counts as lost only from now on
        self._follower.start()
        stand = asyncio.create_task(self.elector.wait_to_stand(), name="elector")
        asked = asyncio.create_task(self._takeover.wait(), name="takeover")
        try:
            await asyncio.wait({stand, asked}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            await cancel_and_wait(stand)
            await cancel_and_wait(asked)
        await self._follower.stop()
        self.follower = None
        if self._takeover.is_set():
            return HANDOVER
        reason = stand.result()
        log.warning("standing for election: %s", reason)
        self.events.record("election", f"{self.config.pod_name} stands for election: {reason}")
        self.metrics.elections.inc()
        return FAILOVER

    async def _lead(self, mode: str) -> str | None:
        """Ask for an epoch, serve it; the next role: START again (kv-0 replaced) or None (follow)."""
        self._become(self._new_recovery(mode, self.elector.unreachable if mode == FAILOVER else frozenset()))
        self.server.serving = False
        self.store.pipeline = self.config.pipeline
        self.fencing.reset()
        self._settled = 0
        self._stepped_down.clear()
        self._current_since = None
        await self.recovery.run()
        self._asked_before = max(self._asked_before, self.recovery.asked_up_to)
        if self.recovery.abandoned is not None:
            if self.recovery.live_leader is not None:
                self.hint = max(self.hint, self.recovery.live_leader)
            return None
        decision = self.recovery.decision
        self.fencing.begin(decision is not None and decision.verified)
        self.server.serving = True
        self.expirer.start()  # the deadlines come from the log: a new primary scans them now
        why = {START: "kv-0 started" if self.config.ordinal == 0 else "this pod started",
               FAILOVER: "failover: the primary was lost", HANDOVER: "switchover"}[mode]
        self.leading = {"since": time.time(), "why": why, "epoch": self.store.epoch}
        if mode != START:
            self.events.record("took_over", f"{self.config.pod_name} leads epoch {self.store.epoch} ({why})",
                               epoch=self.store.epoch, why=why)
            log.warning("%s leads epoch %d: %s", self.config.pod_name, self.store.epoch, why)
        try:
            outcome = await self._watch()
        finally:
            self.leading = None
            self.server.serving = False
            await self.expirer.stop()  # fenced or handed over: the next primary expires
        return START if outcome == "fenced" and self.config.ordinal == 0 else None

    async def _watch(self) -> str:
        """Serve until this primary finds a follower promised a newer epoch ("fenced") or it handed over."""
        last_check = time.monotonic()
        while True:
            self.fencing.tick()  # the heartbeat round: followers' echoes renew the lease and contact
            try:
                await asyncio.wait_for(self._stepped_down.wait(), HEARTBEAT_SECONDS)
            except asyncio.TimeoutError:
                pass
            if self._stepped_down.is_set():
                return "handed_over"
            if self.fencing.in_contact():
                await self.reconfigurer.step()  # a learner to promote, a deleted pod to remove
                await self._maybe_fail_back()
            if self.fencing.in_contact() or time.monotonic() - last_check < WATCH_SECONDS:
                continue
            last_check = time.monotonic()
            reason = await self._replaced_by()
            if reason is not None:
                self.fenced = reason
                self.metrics.fenced.inc()
                self.events.record("fenced", reason)
                log.error("FENCED: %s. This process stops taking writes and strong reads; %s", reason,
                          "it recovers again, and leads only once the followers promise it an epoch"
                          if self.config.ordinal == 0 else "it follows the new primary")
                return "fenced"

    def leader(self) -> int:
        """The ordinal of the primary as this replica knows it (itself while it leads or asks to)."""
        if self.recovery is not None:
            return self.config.ordinal
        return election.newest_leader(self.store, self.hint, self.elector.hint)

    def leader_peer(self) -> Peer | None:
        """The primary, when it is another pod and DNS lists it."""
        leader = self.leader()
        return None if leader == self.config.ordinal else self.directory.peers.get(leader)

    def primary_status(self) -> dict[str, Any]:
        """Who leads as this replica knows it, since when and why (for /v1/status and the dashboard)."""
        leader = self.leader()
        epoch = max(self.store.epoch, self.store.promise.number if self.store.promise.leader == leader else 0)
        out: dict[str, Any] = {"name": self.directory.pod_name(leader), "ordinal": leader, "epoch": epoch,
                               "acting": leader != 0, "handing_over_to": None if self.handing_over is None
                               else self.directory.pod_name(self.handing_over)}
        if self.leading is not None:
            out.update(since=self.leading["since"], why=self.leading["why"])
        if self.follower is not None:
            out["not_heard_seconds"] = round(self.follower.lost_for(), 3)
            out["failover_after"] = self.config.failover_after
            out["not_standing_because"] = self.elector.why_not
        return out

    def role_name(self) -> str:
        """``primary`` while this pod holds or asks for an epoch, else ``secondary``."""
        return PRIMARY if self.recovery is not None else SECONDARY

    def _become(self, recovery: Recovery | None) -> None:
        """Take the primary's role (``recovery``: this pod asks for, then holds, an epoch) or a follower's
        (None), and tell the role listeners at once: no await between, so no request sees the one change
        without the other."""
        self.recovery = recovery
        role = self.role_name()
        for listener in self.role_listeners:
            listener(role)

    async def _replaced_by(self) -> str | None:
        """Why a follower no longer follows this process's epoch (None: none says so)."""
        mine = self.store.lineage.last
        if mine is None:
            return None

        async def ask(ordinal: int) -> str | None:
            position = await self.client.position_or_none(await self.directory.find(ordinal))
            if position is None or position.promised.covers(mine.number, mine.id):
                return None
            self.hint = max(self.hint, (position.promised.number, position.promised.leader))
            return (f"{self.directory.pod_name(ordinal)} promised epoch {position.promised.number} ({position.promised.id}) to "
                    f"{self.directory.pod_name(position.promised.leader)}; this process is in epoch "
                    f"{mine.number} ({mine.id})")
        # An unexpected error from one peer must not end the watch (kv-0 would never find out).
        ordinals = set(self.configuration().members()) | set(self.directory.peers)
        answers = await asyncio.gather(*(ask(i) for i in sorted(ordinals - {self.config.ordinal})),
                                       return_exceptions=True)
        return next((reason for reason in answers if isinstance(reason, str)), None)

    # -------------------------------------------------------------- followers
    def add_routes(self, router: Router) -> None:
        """Mount the peer routes of replication: log stream, snapshot, promise."""
        self.server.add_routes(router)
        router.add("POST", "/v1/peer/promise", self.promise)
        router.add("POST", "/v1/peer/takeover", self.takeover)
        router.add("POST", "/v1/peer/switchover", self.switchover_route)

    async def promise(self, request: web.BaseRequest) -> web.Response:
        """POST /v1/peer/promise?epoch=N&id=X&leader=O: a candidate (pod O) asks for its epoch."""
        query = request.rel_url.query
        number, ident, leader = query.get("epoch", ""), query.get("id", ""), query.get("leader", "0")
        if (not number.isdigit() or not 0 < int(number) < 2**63 or not _EPOCH_ID.match(ident)
                or not leader.isdigit() or int(leader) >= 10**9):
            return error_response(400, "bad_parameter",
                                  "need epoch=<n, 1 or more>, id=<1-32 hex digits> and leader=<ordinal>")
        candidate = Promise(int(number), ident, int(leader))
        if self.follower is None:
            return await self._promise_as_primary(candidate)
        try:
            await self.follower.promise(candidate)
        except PromiseRefused as exc:
            return refused_response(exc)
        except StorageError as exc:  # the promise must be on disk before it is answered
            return error_response(503, "storage_unavailable", f"{exc}; retry later")
        return web.json_response({"name": self.config.pod_name, **self.position()})

    async def stop(self) -> None:
        """Stop background work and close peer connections."""
        await cancel_and_wait(self._task)
        await self.expirer.stop()
        await self.server.stop()
        await self._follower.stop()
        await self.client.close()

    def _dns_changed(self, change: MembershipChange) -> None:
        # A pod DNS no longer lists was deleted (or is hidden): its last position is not passed
        # on (cascade) and no longer looks like a live pod; a live one acks again at once.
        for peer in change.left:
            self.acks.forget(peer.name)

    # ------------------------------------------------------------ the primary
    @property
    def writable(self) -> bool:
        """Whether this replica takes writes and strong reads now (kv-0 after its recovery)."""
        return self.recovery is not None and self.recovery.done.is_set()

    def recovering_message(self) -> str:
        """What a client is told while this primary recovers."""
        r = self.recovery
        waiting = ", ".join(r.waiting_for) if r and r.waiting_for else "its own start-up check"
        return (f"{self.config.pod_name} is recovering: before it serves it must hear from {waiting} (it "
                "proves it holds every acknowledged write); retry shortly")

    # ------------------------------------------------------- the configuration
    def configuration(self) -> Configuration:
        """The voters as this replica's log records them (``KV_REPLICAS`` while it records none)."""
        return self.store.membership or self._initial

    def settled(self) -> bool:
        """Whether the newest configuration change is held by a majority of both configurations."""
        return self.configuration().lsn <= self._settled

    def groups(self) -> tuple[tuple[int, ...], ...]:
        """The voter sets every count needs a majority of (two while a change is not settled)."""
        configuration = self.configuration()
        key = (configuration, self._settled)
        if self._groups[0] != key:  # every write and strong read asks: reuse until either changes
            self._groups = (key, configuration.groups(configuration.lsn <= self._settled))
        return self._groups[1]

    def _majority_met(self) -> int:
        """The highest LSN a majority of every voter set holds, kv-0's own write assumed durable."""
        return agreed(self.groups(), self.acks.by_ordinal, _ANY, leader=self.config.ordinal)

    def _all_met(self) -> int:
        """The highest LSN every voter and every pod DNS lists hold, kv-0's own write assumed durable.

        ``w=all`` means every replica that exists: a new pod counts from its
        creation, as a learner, though it is no voter yet.
        """
        held = all_hold(self.groups(), self.acks.by_ordinal, _ANY, leader=self.config.ordinal)
        for ordinal in self.directory.peers:
            if ordinal != self.config.ordinal:
                held = min(held, self.acks.by_ordinal.get(ordinal, 0))
        return held

    def concern_met(self, lsn: int, w: str) -> bool:
        """Whether the replicas write concern ``w`` needs hold ``lsn`` already (kv-0 holds it)."""
        return w == "1" or (self._all_met() if w == "all" else self._majority_met()) >= lsn

    async def wait_for_concern(self, lsn: int, w: str) -> tuple[bool, int, int]:
        """Wait until the voters write concern ``w`` needs hold ``lsn``: (met, voters holding it, voters needed).

        Counts come from the configuration the log holds: a majority of its
        voters (of both while a change is not settled); ``w=all`` also waits
        for every pod DNS lists (learners included), as "every replica" says.
        """
        voters = self.configuration().voters
        if w == "all":
            voters = tuple(sorted({*voters, *self.directory.peers}))
        required = 1 if w == "1" else len(voters) if w == "all" else majority(len(voters))
        if w == "1":
            return True, 1, 1
        version = self.store.lineage_version
        met = await self.acks.wait(lsn, self._all_met if w == "all" else self._majority_met,
                                   self.config.write_timeout)
        if self.store.lineage_version != version:
            # A new epoch (this kv-0 found it was replaced and recovered): LSN ``lsn`` may now
            # name another write, and acks of it say nothing of this one.
            return False, 1, required
        return met, 1 + self.acks.holders(lsn, (o for o in voters if o != self.config.ordinal)), required

    def membership_status(self) -> dict[str, Any]:
        """The configuration and each member's kind (voter, learner, leaving), for /v1/status."""
        configuration = self.configuration()
        kinds = {self.directory.pod_name(o): "voter" for o in configuration.voters}
        counted = set(configuration.voters)
        if self.recovery is not None and not self.settled():
            counted |= set(configuration.previous or ())  # kv-0: removed, but still counted until settled
        for ordinal in [*(counted - set(configuration.voters)), *self.reconfigurer.leaving]:
            kinds[self.directory.pod_name(ordinal)] = "leaving"
        for ordinal in sorted({*self.directory.peers, self.config.ordinal} - counted):
            kinds[self.directory.pod_name(ordinal)] = "learner"
        return {"lsn": configuration.lsn, "voters": [self.directory.pod_name(o) for o in configuration.voters],
                "previous": None if configuration.previous is None
                else [self.directory.pod_name(o) for o in configuration.previous],
                "settled": self.settled() if self.recovery is not None else None,
                "changes_held_back": self.reconfigurer.held_back,
                "recorded": None if self.store.membership is None else self.store.membership.to_json(),
                "members": dict(sorted(kinds.items(), key=lambda kv: _ordinal_of(kv[0])))}

    # --------------------------------------------------------------- operator
    def recover(self, action: str, peer: str | None) -> str:
        """``kvstore recover``: decide for a recovering kv-0, or resync a diverged follower."""
        if action == "resync":
            if self.follower is None:
                raise ValueError("resync is for a secondary; kv-0 is the source of truth")
            self.follower.request_resync()
            return "dropping this replica's data and copying its upstream"
        if self.recovery is None:
            raise ValueError(f"{action} is for a recovering kv-0")
        return self.recovery.force(action, peer)

    # -------------------------------------------------------------- positions
    def state(self) -> str:
        """recovering | primary | following | stalled | diverged | installing_snapshot | starting."""
        if self.recovery is not None:
            return "primary" if self.writable else "recovering"
        f = self.follower
        if f is None:
            return "starting"  # between roles: a candidate gave up, or a primary handed over
        if f.diverged is not None:
            return "diverged"
        if f.installing_snapshot:
            return "installing_snapshot"
        if f.stalled is not None:
            return "stalled"
        return "following" if f.last_contact is not None else "starting"

    def committed_lsn(self) -> int | None:
        """On the primary: the highest LSN a majority holds (what strong reads may show).

        Never past kv-0's own durable LSN: with pipelining a majority of
        followers may hold a batch that kv-0 is still writing, and if kv-0
        crashed before its fsync that batch was never acknowledged.
        """
        if self.recovery is None:
            return None
        configuration = self.configuration()
        committed = agreed(self.groups(), self.acks.by_ordinal, self.store.lsn, leader=self.config.ordinal)
        if committed >= configuration.lsn > self._settled:
            self._settled = configuration.lsn  # a majority of both holds the change: the new one alone counts
        return committed

    def committed_known(self) -> int | None:
        """The committed LSN as this replica knows it: kv-0's own, or the one a secondary was told."""
        if self.recovery is not None:
            return self.committed_lsn()
        return self.follower.committed if self.follower is not None else None

    def _committed_to_tell(self) -> int:
        """The committed LSN this replica's stream messages carry."""
        return self.committed_known() or 0

    def position(self) -> dict[str, Any]:
        """This replica's log position as peers read it (GET /v1/peer/status) and /v1/status shows it.

        ``lsn`` is what this replica has applied (durable on its disk and
        visible to its reads); ``appended`` what its log stream has sent
        (kv-0: past ``lsn`` while a pipelined batch is being written);
        ``committed_lsn`` what a majority holds (a secondary: as kv-0 last
        said; no read shows an entry past it).
        """
        lineage = self.store.lineage
        position = {"state": self.state(), "lsn": self.store.lsn, "appended": self.store.appended,
                    "committed_lsn": self.committed_known(),
                    "log_start": self.store.log_start, "history_id": lineage.history, "epoch": lineage.number,
                    "fork": lineage.fork(), "lineage": lineage.to_json(), "promised": self.store.promise.to_json(),
                    "membership": self.membership_status(), "leader": self.leader(),
                    # Said only once the lease is given up: a follower that reads it skips its lease wait.
                    "handover_to": self.handing_over if self.fencing.relinquished else None}
        if self.recovery is not None and not self.writable:
            position["candidate"] = self.recovery.candidate.to_json()
        return position

    def primary_lsn(self) -> int | None:
        """The primary's LSN as this replica knows it."""
        if self.recovery is not None:
            return self.store.lsn
        return self.follower.primary_lsn if self.follower else None

    def primary_reachable(self) -> bool:
        """Whether the follower heard from its upstream recently."""
        f = self.follower
        return bool(f and f.upstream_heard and time.monotonic() - f.upstream_heard < protocol.SILENCE_SECONDS + 1)

    def readiness(self) -> tuple[bool, str]:
        """(ready, why) of this replica for /readyz.

        A kv-0 that is still waiting for followers after asking them once is
        Ready: under OrderedReady the StatefulSet creates kv-1 only once kv-0
        is Ready, and kv-0 waits to hear from kv-1. (When every follower
        answers at once, kv-0 decides before its first Ready.)
        """
        if self.recovery is not None:
            if not self.writable:
                return self.recovery.rounds > 0, "recovering: " + self.recovering_message()
            return True, "primary taking writes"
        f = self.follower
        if f is None:
            return True, "changing role; serving what this replica has"
        if f.diverged is not None:
            return False, f"diverged: {f.diverged}; kvstore recover resync --pod {self.config.pod_name}"
        if f.installing_snapshot:
            return False, "installing a snapshot"
        name = f.upstream.name if f.upstream else self.directory.pod_name(self.leader())
        if f.upstream_heard is None and f.stalled is None:
            # Just started: whether it can follow at all (the peer protocol, the lineage) is not
            # known until its first question ends, and a rolling update must not go on meanwhile.
            return False, f"starting: asking {name} where it stands"
        known = f.primary_lsn if f.primary_lsn is not None else f.upstream_lsn
        if known is None:
            return True, "no primary reachable yet; serving what this replica has"
        lag = max(0, known - self.store.lsn)
        behind = f"{lag} entries behind"
        quiet = f.heard_ago()  # the LSN we compare with may be long past (a pause, a partition)
        if quiet is not None:
            behind += f" when {name} was last heard, {quiet:.1f}s ago"
        if f.upstream_recovering:
            # Ready, or OrderedReady would never create the pod kv-0 is waiting to hear from.
            return True, f"{name} is recovering; serving what this replica has ({behind})"
        if f.waiting_for_primary():
            # Ready, or OrderedReady would never create the pods an election needs to hear from.
            return True, f"waiting for a primary ({f.stalled}); serving what this replica has ({behind})"
        if f.stalled is not None and lag and self.primary_reachable():
            return False, f"stalled: {behind} ({f.stalled})"
        if lag > READY_MAX_LAG:
            return False, f"catching up: {behind}"
        if quiet is not None:
            return True, f"not heard from {name} for {quiet:.1f}s; {lag} entries behind when it was last heard"
        return True, f"following, {behind}"

    def peers_status(self) -> list[dict[str, Any]]:
        """Every peer with its LSN and lag as far as this replica knows."""
        reference = self.primary_lsn()
        out = []
        for ordinal, peer in sorted(self.directory.peers.items()):
            row = peer.to_dict()
            row["role"] = "primary" if ordinal == self.leader() else "secondary"  # who leads now, not the ordinal
            position = self.acks.positions.get(peer.name)
            if ordinal == self.leader() and self.follower is not None:
                row["lsn"] = self.follower.primary_lsn
            elif position is not None:
                row["lsn"] = position.lsn
                row["acked_seconds_ago"] = round(time.monotonic() - position.seen, 3)
            else:
                row["lsn"] = None
            row["lag"] = (reference - row["lsn"]) if reference is not None and row["lsn"] is not None else None
            out.append(row)
        return out


_ANY = 2**63  # kv-0's own position when a write concern waits: it has written the entry already


def _ordinal_of(name: str) -> int:
    try:
        return parse_ordinal(name)
    except ValueError:
        return 2**31

