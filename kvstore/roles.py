"""The two roles a replica plays, as objects: what leading and following do differently.

A replica is the primary or a follower, and switches at run time (failover,
switchover, failback: ``replication/coordinator.py``). What differs lives in
the role it plays now (``Replica.current_role``):

- how a write, a transaction or a strong read is admitted: the primary
  applies it here, once recovered and in contact with a majority; a
  follower forwards it to the primary (``forwarding.py``);
- what a local read may answer and which ``X-Kv-Lsn`` it names, and how a
  read's ``min_lsn`` is waited for;
- which answers wait until they are committed (only a follower holds back
  keys it has not heard are committed: ``unsettled``, ``settle``);
- the status fields, gauges and readiness only one role has.

What both share is in :class:`Role`.
"""

from __future__ import annotations

import asyncio
import time
from abc import ABC, abstractmethod
from typing import Any, Awaitable, Mapping

import aiohttp

from kvstore import storage
from kvstore.config import Config
from kvstore.forwarding import (
    MAX_HOPS, Forwardable, Forwarded, ForwardFailed, ForwardTimeout, forward,
)
from kvstore.identity import PRIMARY, SECONDARY
from kvstore.metrics import Metrics
from kvstore.refusals import (
    LsnAhead, NoPrimary, NotConfirmed, NotPrimary, PrimaryTimeout, Recovering, UpgradeInProgress,
    WriteConcernTimeout,
)
from kvstore.replication import Replication
from kvstore.replication.follower import Follower
from kvstore.replication.peer_client import PeerError
from kvstore.replication.versions import TXN_PROTOCOL
from kvstore.txn import Txn, TxnResult

# A follower that had no round from its primary this long stops forwarding to it (with failover on):
# rounds come four times a second, and a lost primary is replaced after KV_FAILOVER_AFTER.
FORWARD_SILENCE = 1.5


class Role(ABC):
    """What a role reads of its replica, and what both roles do alike."""

    name: str
    # Whether an expired key reads as absent here: the serving primary's expirer is about to
    # write its delete (expiry.py); a follower shows the key until that delete reaches it.
    hides_expired: bool

    def __init__(self, config: Config, store: storage.Store, metrics: Metrics,
                 replication: Replication | None) -> None:
        self.config = config
        self.store = store
        self.metrics = metrics
        self.replication = replication

    # ------------------------------------------------------------- writes
    @abstractmethod
    async def write(self, mutation: storage.Mutation, w: str, call: Forwardable, held: bool) -> int | Forwarded:
        """Apply a client write and wait for its concern (the LSN), or the primary's answer when forwarded.

        ``held``: a switchover held the write back before it came here.
        """

    @abstractmethod
    async def transact(self, txn: Txn, w: str, call: Forwardable, held: bool) -> TxnResult | Forwarded:
        """Run a transaction and wait for its concern, or the primary's answer when forwarded."""

    @abstractmethod
    async def strong_read(self, call: Forwardable, held: bool) -> Forwarded | None:
        """Admit a strong read: None when this pod answers it, else the primary's answer."""

    # -------------------------------------------------------------- reads
    @abstractmethod
    def check_local_read(self) -> None:
        """Refuse (503) a local read this pod may not answer from its own data."""

    @abstractmethod
    def read_lsn(self) -> int:
        """The ``X-Kv-Lsn`` of a local read, taken before it: a lower bound on what it reflects."""

    def committed_limit(self) -> int:
        """The last LSN this pod holds and knows a majority holds: what a watch or a backup may show.

        The primary's committed LSN, or on a follower the smaller of its own
        LSN and the committed LSN its primary last told it (with pipelining it
        may hold entries the primary never wrote). Alone: its own LSN.
        """
        r = self.replication
        if r is None:
            return self.store.lsn
        return min(self.store.lsn, r.committed_known() or 0)

    @abstractmethod
    async def check_min_lsn(self, min_lsn: int, strong: bool) -> None:
        """What a read's ``min_lsn`` (not 0) must pass before it is waited for."""

    @abstractmethod
    async def reach(self, min_lsn: int) -> bool:
        """Wait (up to KV_READ_WAIT) until a read here reflects ``min_lsn``; False on timeout."""

    @abstractmethod
    def unsettled(self, key: bytes) -> int:
        """The LSN an answer about ``key`` (found or absent) waits for (:meth:`settle`); 0: none."""

    @abstractmethod
    def unsettled_listing(self, lsn: int) -> int:
        """Like :meth:`unsettled`, for a listing taken at ``lsn``."""

    @abstractmethod
    async def settle(self, lsn: int) -> None:
        """Wait until this pod knows ``lsn`` is committed; else NotConfirmed."""

    # ------------------------------------------------------------- status
    @abstractmethod
    def primary_lsn(self) -> int | None:
        """The primary's LSN when known."""

    @abstractmethod
    def status_fields(self, r: Replication) -> dict[str, Any]:
        """The /v1/status fields only this role has (``writable`` is the primary's)."""

    @abstractmethod
    async def with_primary_view(self, status: dict[str, Any]) -> dict[str, Any]:
        """GET /v1/status: ``status`` completed with what only the primary knows (followers' positions)."""

    @abstractmethod
    def update_gauges(self, r: Replication) -> None:
        """The lag gauges of this role, set when /metrics is read."""

    @abstractmethod
    def mismatch_blocks(self, mismatches: Mapping[str, str]) -> bool:
        """Whether a peer protocol mismatch (by pod name) makes this pod not Ready."""


class PrimaryRole(Role):
    """This pod leads (or asks for an epoch): it applies writes, once recovered and in contact."""

    name = PRIMARY
    hides_expired = True

    def __init__(self, config: Config, store: storage.Store, metrics: Metrics,
                 replication: Replication | None) -> None:
        super().__init__(config, store, metrics, replication)
        # labels() locks and validates: once, not on every strong read.
        self._rounds = {result: metrics.confirm_rounds.labels(result) for result in ("confirmed", "failed")}

    # ------------------------------------------------------------- writes
    async def write(self, mutation: storage.Mutation, w: str, call: Forwardable, held: bool) -> int:
        """Commit a client write and wait for its concern: its LSN.

        Raises the storage errors, NoPrimary, NotConfirmed or WriteConcernTimeout.
        """
        await self._admit(contact=True)
        if mutation.expires:
            self.check_entry_kind()  # a PUT with a ttl is a TXN entry
        version = self.store.lineage_version
        try:
            lsn = await self.store.write(mutation)
        except (storage.PreconditionFailed, storage.NotFound):
            # The refusal read this primary's state: answer it only as a strong read would be.
            await self.confirm_read(self.store.lsn, version)
            raise
        await self._wait_for_concern(lsn, w)
        return lsn

    async def transact(self, txn: Txn, w: str, call: Forwardable, held: bool) -> TxnResult:
        """Run a transaction and wait for its concern. Raises what :meth:`write` raises, and UpgradeInProgress.

        A branch that writes nothing was decided on this primary's state: it is
        answered only once confirmed, as a refused conditional write is.
        """
        await self._admit(contact=True)
        self.check_entry_kind()
        version = self.store.lineage_version
        result = await self.store.transact(txn)
        if result.lsn is None:
            await self.confirm_read(self.store.lsn, version)
            return result
        await self._wait_for_concern(result.lsn, w)
        return result

    async def strong_read(self, call: Forwardable, held: bool) -> None:
        """A strong read is answered here, confirmed after it has read (not by the contact window up front)."""
        await self._admit(contact=False)

    async def _admit(self, contact: bool) -> None:
        """Let a write (or strong read) in: once a pod asked to take over serves, recovered and, with
        ``contact``, in contact with a majority."""
        if self.replication is not None:
            await self.replication.serving_soon()
        self._check_recovered()
        if contact:
            self._check_contact()

    async def _wait_for_concern(self, lsn: int, w: str) -> None:
        if self.replication is None:
            return
        met, confirmed, required = await self.replication.wait_for_concern(lsn, w)
        if not met:
            raise WriteConcernTimeout(lsn, confirmed, required)

    def check_entry_kind(self) -> None:
        """UpgradeInProgress while a peer of an older build, which could not read a TXN entry, is about."""
        older = self.replication.client.versions.older_peers(TXN_PROTOCOL) if self.replication else []
        if older:
            raise UpgradeInProgress(f"{', '.join(older)} run an older build that cannot replicate a transaction "
                                    "or a key with a ttl; retry once the update is done")

    def _check_contact(self, what: str = "writes") -> None:
        """Refuse a write (or a local read) before applying it when no majority followed this process lately.

        A primary cut off from its followers may have been replaced; what it
        took now, even with ``w=1``, its replacement would never see. Refused
        up front, the write is certainly not applied (503), unlike a write
        concern that times out after the write (504, outcome unknown).
        """
        r = self.replication
        if r is not None and not r.fencing.in_contact():
            last = r.fencing.last_contact()
            ago = f"for {time.monotonic() - last:.1f}s" if last is not None else "since it began its epoch"
            raise NotPrimary(f"{self.config.pod_name} has not heard from a majority of replicas {ago}; it may have been "
                             f"replaced, so it takes no {what} now; retry shortly")

    def _check_recovered(self) -> None:
        """Raise Recovering while this primary has not proved it is current."""
        if self.replication is not None and not self.replication.writable:
            raise Recovering(self.replication.recovering_message())

    async def confirm_read(self, lsn: int, lineage_version: int) -> None:
        """Before an answer based on this primary's state (read at LSN ``lsn``): show it is still true.

        ``lineage_version`` is the store's when the state was read: a new epoch
        since (this process recovered again) makes the state another line's.

        First a confirmation round, started after the state was read: a
        majority still follows this process, so no replacement has committed
        anything it lacks (else NotPrimary). Then a majority holds ``lsn``, so
        no lost volume can undo it (else NotConfirmed).
        """
        await self._confirm_primacy()
        if self.store.lineage_version != lineage_version:
            raise NotPrimary(f"{self.config.pod_name} began a new epoch while it answered; retry")
        await self.confirm_committed(lsn)

    async def _confirm_primacy(self) -> None:
        """A confirmation round: NotPrimary unless a majority still follows this process."""
        r = self.replication
        if r is None:
            return
        if r.fencing.confirmed_by_lease():  # the usual case: no round, nothing to time
            return
        started = time.monotonic()
        confirmed = await r.fencing.confirm()
        self.metrics.confirm_seconds.observe(time.monotonic() - started)
        self._rounds["confirmed" if confirmed else "failed"].inc()
        if not confirmed:
            raise NotPrimary(f"{self.config.pod_name} could not confirm within a second that a majority of replicas still "
                             "follows it (it may have been replaced, or its followers are unreachable); "
                             "retry shortly")

    def committed(self, lsn: int) -> bool:
        """Whether a majority holds ``lsn`` already (the usual case; no await)."""
        return self.replication is None or self.replication.concern_met(lsn, "majority")

    async def confirm_committed(self, lsn: int) -> None:
        """Return once a majority holds ``lsn`` (what a strong read or a refusal is based on).

        Linearizable reads must never show a write a majority does not hold:
        the primary could lose its volume and that write with it, and the read
        would then have shown a value that never was. Raises NotConfirmed after
        KV_WRITE_TIMEOUT.
        """
        if self.replication is None or self.committed(lsn):
            return
        met, confirmed, required = await self.replication.wait_for_concern(lsn, "majority")
        if not met:
            raise NotConfirmed(f"only {confirmed} of the {required} replicas a majority needs confirmed lsn "
                               f"{lsn} in time; the answer would not be linearizable. Retry")

    # -------------------------------------------------------------- reads
    def check_local_read(self) -> None:
        """What the primary may not answer from its own data: 503 rather than a wrong answer.

        An empty primary that is recovering has nothing true to say (never a
        wrong 404); a primary that heard no majority lately may have been
        replaced, and its data may have parted from the cluster's.
        """
        if self.store.lsn == 0:
            self._check_recovered()
        if self.replication is not None and self.replication.writable:
            self._check_contact("reads")

    def read_lsn(self) -> int:
        """The LSN a majority holds: only that is sure to be on the cluster's line of LSNs.

        A replaced primary may have written past the point where its
        replacement's line began (see :meth:`FollowerRole.read_lsn`).
        """
        committed = self.replication.committed_lsn() if self.replication is not None else None
        return committed if committed is not None else self.store.lsn

    async def check_min_lsn(self, min_lsn: int, strong: bool) -> None:
        """LsnAhead for an LSN this primary never wrote; a local read's LSN must be committed."""
        if min_lsn > self.store.lsn:
            # A recovering primary may be behind (a rolled-back volume): it cannot know yet.
            self._check_recovered()
            # The primary numbers every write, so no client can have seen this LSN, unless
            # this process was replaced and the LSN is its replacement's: ask a majority.
            await self._confirm_primacy()
            raise LsnAhead(f"min_lsn {min_lsn} is ahead of the primary's last write "
                           f"({self.store.lsn}); use the version a write answered")
        if not strong:
            # The answer's X-Kv-Lsn is what a majority holds (read_lsn): it must reach min_lsn.
            await self.confirm_committed(min_lsn)

    async def reach(self, min_lsn: int) -> bool:
        """Wait (up to KV_READ_WAIT) until this primary has applied ``min_lsn``."""
        return await self.store.wait_for_lsn(min_lsn, self.config.read_wait)

    def unsettled(self, key: bytes) -> int:
        """None: what the primary applied is its own (a read's X-Kv-Lsn is what a majority holds)."""
        return 0

    def unsettled_listing(self, lsn: int) -> int:
        """None, as :meth:`unsettled`."""
        return 0

    async def settle(self, lsn: int) -> None:
        """Nothing to wait for (:meth:`unsettled` names nothing)."""

    # ------------------------------------------------------------- status
    def primary_lsn(self) -> int:
        """Our own LSN."""
        return self.store.lsn

    def status_fields(self, r: Replication) -> dict[str, Any]:
        """Writable, fencing, and the recovery that asked for (or began) this primary's epoch."""
        fields: dict[str, Any] = {"writable": r.writable, "fencing": {**r.fencing.status(), "fenced": r.fenced}}
        if r.recovery is not None:
            rec = r.recovery
            fields["recovery"] = {
                "waiting_for": rec.waiting_for,
                "unheard": dict(sorted(rec.unheard_reasons.items())),
                "heard": sorted(rec.heard),
                "decision": rec.decision.why if rec.decision else None,
                "candidate_epoch": rec.candidate.number,
            }
        return fields

    def update_gauges(self, r: Replication) -> None:
        """Each follower's lag behind this primary."""
        for name, position in r.acks.positions.items():
            self.metrics.follower_lag.labels(name).set(max(0, self.store.lsn - position.lsn))

    async def with_primary_view(self, status: dict[str, Any]) -> dict[str, Any]:
        """``status`` as it is: this primary knows its followers' positions itself."""
        return status

    def mismatch_blocks(self, mismatches: Mapping[str, str]) -> bool:
        """Never: a follower it cannot speak with does not stop the primary serving (the reason names it)."""
        return False


class FollowerRole(Role):
    """This pod follows the primary: it forwards writes and strong reads, and holds back what is unsettled."""

    name = SECONDARY
    hides_expired = False

    # ------------------------------------------------------------- writes
    async def write(self, mutation: storage.Mutation, w: str, call: Forwardable, held: bool) -> Forwarded:
        """The primary's answer to the forwarded write."""
        return await self._forward(call, "writes go to the primary", again=held)

    async def transact(self, txn: Txn, w: str, call: Forwardable, held: bool) -> Forwarded:
        """The primary's answer to the forwarded transaction."""
        return await self._forward(call, "transactions go to the primary", again=held)

    async def strong_read(self, call: Forwardable, held: bool) -> Forwarded:
        """The primary's answer to the forwarded strong read."""
        return await self._forward(call, "strong reads are answered by the primary", again=held)

    async def _forward(self, call: Forwardable, why: str, again: bool = False) -> Forwarded:
        """Pass ``call`` on to the primary; ``again``: it was held while this pod handed over (it may go on
        to the new primary even if forwarded once). Raises NoPrimary (nothing sent) or PrimaryTimeout."""
        hops = call.hops
        primary = self.replication.leader_peer() if self.replication else None
        # Forwarded already: once more only to a primary that pod did not know (it led a moment ago,
        # or its view was a moment old), so no request ever goes round.
        if hops and not again and (len(hops) >= MAX_HOPS or primary is None or primary.name in hops):
            raise NoPrimary(f"{self.config.pod_name} is not the primary and does not forward twice")
        if primary is None:
            name = self.replication.directory.pod_name(self.replication.leader()) if self.replication else "kv-0"
            raise NoPrimary(f"{why}, and {name} is not known (not in DNS); retry shortly")
        silent = self._silent_primary()
        if silent is not None:  # nothing sent: the client may retry at once (503)
            raise NoPrimary(f"{why}, and {primary.name} {silent}; retry shortly")
        try:
            return await self._while_heard(forward(self.replication.client, primary, call,
                                                   self.config.write_timeout + 2.0,
                                                   ",".join([*hops, self.config.pod_name])),
                                           primary.name)
        except ForwardFailed as exc:
            raise NoPrimary(f"{why}: {exc}; retry shortly") from None
        except ForwardTimeout as exc:
            raise PrimaryTimeout(f"{exc}: the write may or may not have been applied; "
                                 "read the key to find out before retrying") from None

    def _silent_primary(self) -> str | None:
        """Why the primary looks lost to this follower (no round for FORWARD_SILENCE), else None.

        Only with failover on, and only while this follower streams (a
        snapshot copy or a divergence stops the rounds, not the primary).
        """
        f = self._follower()
        if (f is None or self.config.failover_after <= 0 or f.diverged is not None or f.installing_snapshot):
            return None
        lost = f.lost_for()
        return f"sent no round for {lost:.1f}s (it may be lost; a follower takes over after " \
               f"{self.config.failover_after:g}s)" if lost > FORWARD_SILENCE else None

    async def _while_heard(self, call: Awaitable[Forwarded], name: str) -> Forwarded:
        """Await a forwarded call, but give up (ForwardTimeout) once its primary falls silent meanwhile.

        A primary frozen or cut off keeps its connections open: a client would
        otherwise wait for the whole forward timeout, past the failover.
        """
        task = asyncio.ensure_future(call)
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=0.25)
                if done:
                    return task.result()
                silent = self._silent_primary()
                if silent is not None:
                    raise ForwardTimeout(f"{name} took the request, then {silent}")
        finally:
            if not task.done():
                task.cancel()

    def _follower(self) -> Follower | None:
        """The follower streaming from the primary (None between roles, or with no replication)."""
        return self.replication.follower if self.replication is not None else None

    # -------------------------------------------------------------- reads
    def check_local_read(self) -> None:
        """Nothing refused: a follower answers from what it holds, with an X-Kv-Lsn that says how fresh."""

    async def check_min_lsn(self, min_lsn: int, strong: bool) -> None:
        """Nothing up front: a follower cannot tell an LSN not written yet from one not received yet."""

    def read_lsn(self) -> int:
        """:meth:`committed_limit`: this follower may hold the tail of a replaced primary's line.

        Only what a majority held is sure to be on the cluster's line of LSNs:
        a replaced primary may have written past the point where its
        replacement's line began, and keeps that tail (as a follower, too)
        until it has heard the new primary.
        """
        return self.committed_limit()

    async def reach(self, min_lsn: int) -> bool:
        """Wait (up to KV_READ_WAIT) until this follower holds ``min_lsn`` and knows it is committed.

        Its own entry at that LSN may be one a replaced primary wrote and no
        majority held (its tail, kept until it hears the new primary), so
        reaching the number alone proves nothing.
        """
        deadline = time.monotonic() + self.config.read_wait
        if not await self.store.wait_for_lsn(min_lsn, self.config.read_wait):
            return False
        f = self._follower()
        return f is None or await f.wait_committed(min_lsn, max(0.0, deadline - time.monotonic()))

    def unsettled(self, key: bytes) -> int:
        """The LSN this follower's answer about ``key`` (found or absent) waits for; 0: none.

        The primary sends a batch while it fsyncs it (pipelining), so a
        follower may hold an entry the primary then lost in a crash: never
        acknowledged, and dropped when the follower follows again. No read
        shows such an entry: one that would waits (:meth:`settle`) until the
        follower hears that a majority holds it. The usual case is one dict
        lookup.
        """
        f = self._follower()
        if f is None:
            return 0
        # Entries join ``unconfirmed`` before they are applied and leave it once committed,
        # so a found version and an absence are both covered by the key's pending entry.
        pending = f.unconfirmed.get(key, 0)
        return pending if pending > f.committed else 0

    def unsettled_listing(self, lsn: int) -> int:
        """Like :meth:`unsettled`, for this follower's listing taken at ``lsn``."""
        f = self._follower()
        return lsn if f is not None and f.unconfirmed and lsn > f.committed else 0

    async def settle(self, lsn: int) -> None:
        """Wait (up to KV_READ_WAIT) until this follower knows ``lsn`` is committed; else NotConfirmed."""
        f = self._follower()
        if f is not None and not await f.wait_committed(lsn, self.config.read_wait):
            raise NotConfirmed(f"lsn {lsn} on this replica is not known to be held by a majority yet (it "
                               f"heard up to {f.committed}; kv-0 may be away); retry, or read another replica")

    # ------------------------------------------------------------- status
    def primary_lsn(self) -> int | None:
        """The primary's LSN as this follower last heard it."""
        return self.replication.primary_lsn() if self.replication else None

    def status_fields(self, r: Replication) -> dict[str, Any]:
        """Not writable, and how this follower streams from its upstream."""
        fields: dict[str, Any] = {"writable": None}
        if r.follower is not None:
            f = r.follower
            fields["following"] = {
                "upstream": f.upstream.name if f.upstream else None,
                "upstream_lsn": f.upstream_lsn,
                "connected": r.primary_reachable(),
                "installing_snapshot": f.installing_snapshot,
                "stalled": f.stalled,
                "diverged": f.diverged,
                "last_error": f.last_error,
            }
        return fields

    async def with_primary_view(self, status: dict[str, Any]) -> dict[str, Any]:
        """The primary's follower positions and its LSN in ``status`` (as it was when the primary is away)."""
        r = self.replication
        primary = r.leader_peer() if r is not None else None
        if primary is None:
            return status
        try:
            remote = await r.client.status(primary, timeout=0.5)
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError, PeerError):
            return status
        known = remote.get("followers", {})
        reference = remote.get("lsn")
        for row in status["peers"]:
            if row["name"] in known and row["name"] != primary.name:
                row["lsn"] = known[row["name"]]
                row["lag"] = reference - row["lsn"] if isinstance(reference, int) else None
            elif row["name"] == primary.name:
                row["lsn"], row["lag"] = reference, 0
        status["primary_lsn"] = reference
        return status

    def update_gauges(self, r: Replication) -> None:
        """This follower's lag behind the primary."""
        primary = self.primary_lsn()
        self.metrics.replication_lag.set(max(0, primary - self.store.lsn) if primary is not None else 0)

    def mismatch_blocks(self, mismatches: Mapping[str, str]) -> bool:
        """A follower that cannot speak with its own upstream is not Ready."""
        f = self._follower()
        return f is not None and f.upstream is not None and f.upstream.name in mismatches
