"""One replica's behaviour behind the API: role, write path, read freshness, health.

The HTTP layer (api.py) parses and renders; this decides what a write or read
means on this pod given its role: the primary commits and waits for its write
concern, a secondary forwards writes and strong reads to the primary.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Awaitable, Callable

import aiohttp
from aiohttp import web

from kvstore import storage
from kvstore.config import Config
from kvstore.identity import PRIMARY, SECONDARY
from kvstore.metrics import Metrics
from kvstore.forwarding import ForwardFailed, ForwardTimeout, forward
from kvstore.replication import Replication
from kvstore.replication.follower import Follower
from kvstore.replication.peer_client import PeerError
from kvstore.replication.versions import TXN_PROTOCOL
from kvstore.txn import Txn, TxnResult

FORWARDED_BY = "X-Kv-Forwarded-By"
# A follower that had no round from its primary this long stops forwarding to it (with failover on):
# rounds come four times a second, and a lost primary is replaced after KV_FAILOVER_AFTER.
FORWARD_SILENCE = 1.5
MAX_HOPS = 2  # a forwarded call reaches the primary in at most two hops (one after a change of primary)


class NoPrimary(Exception):
    """The primary cannot take the write now; the client should retry."""

    code = "no_primary"


class Recovering(NoPrimary):
    """kv-0 is proving it holds every acknowledged write before it serves."""

    code = "recovering"


class NotPrimary(NoPrimary):
    """This kv-0 process cannot show that a majority still follows it: it may have been replaced."""

    code = "not_primary"


class UpgradeInProgress(NoPrimary):
    """A pod of an older build is about: the primary writes no entry kind it could not read."""

    code = "upgrade_in_progress"


class LsnAhead(Exception):
    """``min_lsn`` names a write the primary never made."""


class ReadTimeout(Exception):
    """``min_lsn`` was not reached in time."""


class PrimaryTimeout(Exception):
    """A forwarded write reached the primary but its answer did not come back."""


class NotConfirmed(Exception):
    """The primary could not confirm in time that what it read is held by a majority."""


class WriteConcernTimeout(Exception):
    """The write is durable on the primary but not confirmed by enough replicas."""

    def __init__(self, lsn: int, confirmed: int, required: int) -> None:
        super().__init__(
            f"the write (version {lsn}) is durable on the primary, but only {confirmed} of the "
            f"{required} replicas its write concern needs confirmed it in time. It is not rolled back "
            "and will replicate, unless kv-0 loses its volume or is replaced before a follower holds it. "
            "Read it back before retrying")
        self.lsn = lsn
        self.confirmed = confirmed
        self.required = required


class Replica:
    """This pod: its store, role, metrics and replication (None when it runs alone)."""

    def __init__(self, config: Config, store: storage.Store, metrics: Metrics,
                 replication: Replication | None = None) -> None:
        self.config = config
        self.store = store
        self.metrics = metrics
        self.replication = replication
        self.started = time.time()
        # labels() locks and validates: once, not on every strong read.
        self._rounds = {result: metrics.confirm_rounds.labels(result) for result in ("confirmed", "failed")}

    @property
    def role(self) -> str:
        """``primary`` while this pod holds or asks for an epoch, else ``secondary`` (kv-0 alone: primary)."""
        if self.replication is None:
            return self.config.role
        return PRIMARY if self.replication.is_primary() else SECONDARY

    def primary_lsn(self) -> int | None:
        """The primary's LSN when known (our own on the primary)."""
        if self.role == PRIMARY:
            return self.store.lsn
        return self.replication.primary_lsn() if self.replication else None

    # ------------------------------------------------------------- writes
    async def write(self, mutation: storage.Mutation, w: str, request: web.BaseRequest,
                    body: bytes | None) -> int | web.Response:
        """Commit a client write and wait for its concern; a secondary forwards it.

        Returns the LSN, or the primary's answer when forwarded. Raises the
        storage errors, NoPrimary, PrimaryTimeout or WriteConcernTimeout.
        """
        forwarded = await self._to_primary(request, body, "writes go to the primary")
        if forwarded is not None:
            return forwarded
        if mutation.expires:
            self.check_entry_kind()  # a PUT with a ttl is a TXN entry
        version = self.store.lineage_version
        try:
            lsn = await self.store.write(mutation)
        except (storage.PreconditionFailed, storage.NotFound):
            # The refusal read this primary's state: answer it only as a strong read would be.
            await self.confirm_read(self.store.lsn, version)
            raise
        if self.replication is None:
            return lsn
        met, confirmed, required = await self.replication.wait_for_concern(lsn, w)
        if not met:
            raise WriteConcernTimeout(lsn, confirmed, required)
        return lsn

    async def transact(self, body: bytes, parse: Callable[[bytes, int], Txn], w: str,
                       request: web.BaseRequest) -> TxnResult | web.Response:
        """Run a transaction (``parse`` turns the body into one, with the primary's clock for a ttl) and wait
        for its concern; a secondary forwards it. Raises what :meth:`write` raises, and UpgradeInProgress.

        A branch that writes nothing was decided on this primary's state: it is
        answered only once confirmed, as a refused conditional write is. It
        waits and forwards exactly as :meth:`write` does (a switchover holds it).
        """
        txn = parse(body, int(time.time() * 1000))  # a bad body is refused by any pod
        forwarded = await self._to_primary(request, body, "transactions go to the primary")
        if forwarded is not None:
            return forwarded
        self.check_entry_kind()
        version = self.store.lineage_version
        result = await self.store.transact(txn)
        if result.lsn is None:
            await self.confirm_read(self.store.lsn, version)
            return result
        if self.replication is not None:
            met, confirmed, required = await self.replication.wait_for_concern(result.lsn, w)
            if not met:
                raise WriteConcernTimeout(result.lsn, confirmed, required)
        return result

    async def _to_primary(self, request: web.BaseRequest, body: bytes | None, why: str,
                          contact: bool = True) -> web.Response | None:
        """Every write's (and strong read's) way in: wait while a switchover holds them, then the primary's
        answer when this pod forwards it (None: this pod is the primary, recovered and, with ``contact``, in
        contact with a majority, and answers itself)."""
        held = self.replication is not None and await self.replication.admitted()
        if self.role != PRIMARY:
            # A write held while this primary handed over goes on to the new one, even if forwarded once.
            return await self._forward(request, body, why, again=held)
        if self.replication is not None:
            await self.replication.serving_soon()
        self._check_recovered()
        if contact:
            self._check_contact()
        return None

    def check_entry_kind(self) -> None:
        """UpgradeInProgress while a peer of an older build, which could not read a TXN entry, is about."""
        older = self.replication.client.versions.older_peers(TXN_PROTOCOL) if self.replication else []
        if older:
            raise UpgradeInProgress(f"{', '.join(older)} run an older build that cannot replicate a transaction "
                                    "or a key with a ttl; retry once the update is done")

    def _check_contact(self, what: str = "writes") -> None:
        """Refuse a write (or a local read) before applying it when no majority followed this process lately.

        A kv-0 cut off from its followers may have been replaced; what it took
        now, even with ``w=1``, its replacement would never see. Refused up
        front, the write is certainly not applied (503), unlike a write concern
        that times out after the write (504, outcome unknown).
        """
        r = self.replication
        if r is not None and not r.fencing.in_contact():
            last = r.fencing.last_contact()
            ago = f"for {time.monotonic() - last:.1f}s" if last is not None else "since it began its epoch"
            raise NotPrimary(f"{self.config.pod_name} has not heard from a majority of replicas {ago}; it may have been "
                             f"replaced, so it takes no {what} now; retry shortly")

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
        kv-0 could lose its volume and that write with it, and the read would
        then have shown a value that never was. Raises NotConfirmed after
        KV_WRITE_TIMEOUT.
        """
        if self.replication is None or self.committed(lsn):
            return
        met, confirmed, required = await self.replication.wait_for_concern(lsn, "majority")
        if not met:
            raise NotConfirmed(f"only {confirmed} of the {required} replicas a majority needs confirmed lsn "
                               f"{lsn} in time; the answer would not be linearizable. Retry")

    def _check_recovered(self) -> None:
        """Raise Recovering while kv-0 has not proved it is current."""
        if self.replication is not None and not self.replication.writable:
            raise Recovering(self.replication.recovering_message())

    def check_local_read(self) -> None:
        """What kv-0 may not answer from its own data: 503 rather than a wrong answer.

        An empty kv-0 that is recovering has nothing true to say (never a wrong
        404); a kv-0 that heard no majority lately may have been replaced, and
        its data may have parted from the cluster's.
        """
        if self.role == PRIMARY and self.store.lsn == 0:
            self._check_recovered()
        if self.role == PRIMARY and self.replication is not None and self.replication.writable:
            self._check_contact("reads")

    def read_lsn(self) -> int:
        """The ``X-Kv-Lsn`` of a local read, taken before it: a lower bound on what it reflects.

        Only what a majority held is sure to be on the cluster's line of LSNs:
        a replaced primary may have written past the point where its
        replacement's line began, and keeps that tail (as a follower, too)
        until it has heard the new primary. So on the primary the LSN a
        majority holds, on a secondary :meth:`committed_limit`.
        """
        r = self.replication
        if r is not None and self.role == PRIMARY:
            committed = r.committed_lsn()
            return committed if committed is not None else self.store.lsn
        return self.committed_limit()

    def committed_limit(self) -> int:
        """The last LSN this pod holds and knows a majority holds: what a watch or a backup may show.

        kv-0's committed LSN, or on a secondary the smaller of its own LSN and
        the committed LSN kv-0 last told it (with pipelining it may hold
        entries kv-0 never wrote). Alone: its own LSN.
        """
        r = self.replication
        if r is None:
            return self.store.lsn
        return min(self.store.lsn, r.committed_known() or 0)

    async def _forward(self, request: web.BaseRequest, body: bytes | None, why: str,
                       again: bool = False) -> web.Response:
        hops = [hop for hop in request.headers.get(FORWARDED_BY, "").split(",") if hop][:MAX_HOPS]
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
            return await self._while_heard(forward(self.replication.client, primary, request, body,
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

    async def _while_heard(self, call: Awaitable[web.Response], name: str) -> web.Response:
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

    # -------------------------------------------------------------- reads
    async def prepare_read(self, request: web.BaseRequest, consistency: str,
                           min_lsn: int) -> web.StreamResponse | None:
        """Wait for ``min_lsn``; a non-None answer was served by the primary (strong read)."""
        if consistency == "strong":
            # Confirmed after it has read, not by the contact window up front.
            forwarded = await self._to_primary(request, None, "strong reads are answered by the primary",
                                               contact=False)
            if forwarded is not None:
                return forwarded
        else:
            self.check_local_read()  # a strong read is confirmed after it has read instead
        if min_lsn > self.store.lsn and self.role == PRIMARY:
            # A recovering kv-0 may be behind (a rolled-back volume): it cannot know yet.
            self._check_recovered()
            # The primary numbers every write, so no client can have seen this LSN, unless
            # this process was replaced and the LSN is its replacement's: ask a majority.
            await self._confirm_primacy()
            raise LsnAhead(f"min_lsn {min_lsn} is ahead of the primary's last write "
                           f"({self.store.lsn}); use the version a write answered")
        if min_lsn and self.role == PRIMARY and consistency != "strong":
            # The answer's X-Kv-Lsn is what a majority holds (read_lsn): it must reach min_lsn.
            await self.confirm_committed(min_lsn)
        if min_lsn and not await self._reach(min_lsn):
            raise ReadTimeout(f"this replica has applied up to {self.store.lsn} and knows a majority holds up "
                              f"to {self.committed_limit()}, not {min_lsn}, after {self.config.read_wait}s; "
                              "retry, or read with consistency=strong")
        return None

    async def _reach(self, min_lsn: int) -> bool:
        """Wait (up to KV_READ_WAIT) until a read here reflects ``min_lsn``; False on timeout.

        A secondary also waits until it knows ``min_lsn`` is committed: its
        own entry at that LSN may be one a replaced primary wrote and no
        majority held (its tail, kept until it hears the new primary), so
        reaching the number alone proves nothing.
        """
        deadline = time.monotonic() + self.config.read_wait
        if not await self.store.wait_for_lsn(min_lsn, self.config.read_wait):
            return False
        f = self._follower()
        return f is None or await f.wait_committed(min_lsn, max(0.0, deadline - time.monotonic()))

    def _follower(self) -> Follower | None:
        """This secondary's follower (None on kv-0, or with no replication)."""
        return self.replication.follower if self.replication is not None else None

    def unsettled(self, key: bytes) -> int:
        """The LSN a secondary's answer about ``key`` (found or absent) waits for; 0: none.

        kv-0 sends a batch while it fsyncs it (pipelining), so a secondary may
        hold an entry kv-0 then lost in a crash: never acknowledged, and
        dropped when the secondary follows again. No read shows such an
        entry: one that would waits (:meth:`settle`) until the secondary
        hears that a majority holds it. The usual case is one dict lookup.
        """
        f = self._follower()
        if f is None:
            return 0
        # Entries join ``unconfirmed`` before they are applied and leave it once committed,
        # so a found version and an absence are both covered by the key's pending entry.
        pending = f.unconfirmed.get(key, 0)
        return pending if pending > f.committed else 0

    def unsettled_listing(self, lsn: int) -> int:
        """Like :meth:`unsettled`, for a secondary's listing taken at ``lsn``."""
        f = self._follower()
        return lsn if f is not None and f.unconfirmed and lsn > f.committed else 0

    async def settle(self, lsn: int) -> None:
        """Wait (up to KV_READ_WAIT) until this secondary knows ``lsn`` is committed; else NotConfirmed."""
        f = self._follower()
        if f is not None and not await f.wait_committed(lsn, self.config.read_wait):
            raise NotConfirmed(f"lsn {lsn} on this replica is not known to be held by a majority yet (it "
                               f"heard up to {f.committed}; kv-0 may be away); retry, or read another replica")

    # ------------------------------------------------------------- status
    def local_status(self) -> dict[str, Any]:
        """This pod's own view (also what peers get from /v1/peer/status)."""
        status: dict[str, Any] = {
            "name": self.config.pod_name,
            "ordinal": self.config.ordinal,
            "role": self.role,
            "state": "primary",
            "lsn": self.store.lsn,
            "log_start": self.store.log_start,
            "history_id": self.store.history_id,
            "epoch": self.store.epoch,
            "replicas": self.config.replicas,
            "replicate_from": self.config.replicate_from,
            "uptime_seconds": round(time.time() - self.started, 3),
            "revision": self.config.pod_revision or None,
            "primary_lsn": self.primary_lsn(),
            "peers": [],
        }
        r = self.replication
        if r is not None:
            status.update(r.position())
            status["replicas"] = len(r.configuration().voters)
            status["writable"] = r.writable if self.role == PRIMARY else None
            status["peers"] = r.peers_status()
            status["primary"] = r.primary_status()
            status["followers"] = {name: p.lsn for name, p in sorted(r.acks.positions.items())}
            status["discovery"] = r.directory.status()
            status["peer_protocol"] = r.client.versions.status()
            if self.role == PRIMARY:
                status["fencing"] = {**r.fencing.status(), "fenced": r.fenced}
            if r.recovery is not None:
                rec = r.recovery
                status["recovery"] = {
                    "waiting_for": rec.waiting_for,
                    "unheard": dict(sorted(rec.unheard_reasons.items())),
                    "heard": sorted(rec.heard),
                    "decision": rec.decision.why if rec.decision else None,
                    "candidate_epoch": rec.candidate.number,
                }
            if r.follower is not None:
                f = r.follower
                status["following"] = {
                    "upstream": f.upstream.name if f.upstream else None,
                    "upstream_lsn": f.upstream_lsn,
                    "connected": r.primary_reachable(),
                    "installing_snapshot": f.installing_snapshot,
                    "stalled": f.stalled,
                    "diverged": f.diverged,
                    "last_error": f.last_error,
                }
        return status

    async def status(self) -> dict[str, Any]:
        """GET /v1/status: our view, with the primary's follower positions on a secondary."""
        status = self.local_status()
        r = self.replication
        primary = r.leader_peer() if r is not None and self.role != PRIMARY else None
        if primary is not None:
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

    def update_gauges(self) -> None:
        """Positions computed when /metrics is read, so a silent follower's lag is never stale."""
        m, store = self.metrics, self.store
        m.lsn.set(store.lsn)
        m.log_start.set(store.log_start)
        m.epoch.set(store.epoch)
        r = self.replication
        if r is None:
            return
        if self.role == PRIMARY:
            for name, position in r.acks.positions.items():
                m.follower_lag.labels(name).set(max(0, store.lsn - position.lsn))
        else:
            primary = self.primary_lsn()
            m.replication_lag.set(max(0, primary - store.lsn) if primary is not None else 0)

    def readiness(self) -> tuple[bool, str]:
        """(ready, why) for /readyz; a follower that cannot speak with its upstream is not Ready."""
        if self.replication is None:
            return True, "accepting requests (single replica)"
        ready, why = self.replication.readiness()
        mismatches = self.replication.client.versions.mismatches()
        if not mismatches:
            return ready, why
        f = self.replication.follower
        if f is not None and f.upstream is not None and f.upstream.name in mismatches:
            ready = False
        return ready, "; ".join([*mismatches.values(), why])
