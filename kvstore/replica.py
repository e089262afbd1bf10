"""One replica's behaviour behind the API: its role, write path, read freshness, health.

The HTTP layer (api.py) parses and renders; this decides what a write or read
means on this pod. What differs between leading and following (the primary
commits and waits for its write concern, a follower forwards writes and
strong reads to the primary) is in the role object it plays now (roles.py),
switched when replication changes the role. Calls come in, and forwarded
answers go back, in the project's own terms (forwarding.py), never as the
HTTP server's request and response objects.
"""

from __future__ import annotations

import time
from typing import Any, Callable

from kvstore import storage
from kvstore.config import Config
from kvstore.forwarding import Forwardable, Forwarded
from kvstore.identity import PRIMARY, SECONDARY
from kvstore.metrics import Metrics
from kvstore.refusals import ReadTimeout
from kvstore.replication import Replication
from kvstore.roles import FollowerRole, PrimaryRole, Role
from kvstore.txn import Txn, TxnResult


class Replica:
    """This pod: its store, role, metrics and replication (None when it runs alone)."""

    def __init__(self, config: Config, store: storage.Store, metrics: Metrics,
                 replication: Replication | None = None) -> None:
        self.config = config
        self.store = store
        self.metrics = metrics
        self.replication = replication
        self.started = time.time()
        self._primary_role = PrimaryRole(config, store, metrics, replication)
        self._roles: dict[str, Role] = {PRIMARY: self._primary_role,
                                        SECONDARY: FollowerRole(config, store, metrics, replication)}
        # The role this pod plays now. Replication switches it in the same step as its own role
        # (no await between), so a request's decision never sees the one without the other.
        self.current_role: Role = self._roles[
            config.role if replication is None else replication.role_name()]
        if replication is not None:
            replication.role_listeners.append(self._play)

    def _play(self, role: str) -> None:
        """Replication's role changed: play ``role`` (``primary`` or ``secondary``) from now on."""
        self.current_role = self._roles[role]

    @property
    def role(self) -> str:
        """``primary`` while this pod holds or asks for an epoch, else ``secondary`` (kv-0 alone: primary)."""
        return self.current_role.name

    def primary_lsn(self) -> int | None:
        """The primary's LSN when known (our own on the primary)."""
        return self.current_role.primary_lsn()

    # ------------------------------------------------------------- writes
    async def _held(self) -> bool:
        """Wait while a switchover holds writes and strong reads back; whether it did."""
        return self.replication is not None and await self.replication.admitted()

    async def write(self, mutation: storage.Mutation, w: str, call: Forwardable) -> int | Forwarded:
        """Commit a client write and wait for its concern; a follower forwards ``call``.

        Returns the LSN, or the primary's answer when forwarded. Raises the
        storage errors, NoPrimary, PrimaryTimeout or WriteConcernTimeout.
        """
        held = await self._held()
        return await self.current_role.write(mutation, w, call, held)

    async def transact(self, parse: Callable[[int], Txn], w: str, call: Forwardable) -> TxnResult | Forwarded:
        """Run a transaction (``parse`` makes it, given the primary's clock for a ttl) and wait for its
        concern; a follower forwards ``call``. Raises what :meth:`write` raises, and UpgradeInProgress.

        A branch that writes nothing was decided on this primary's state: it is
        answered only once confirmed, as a refused conditional write is. It
        waits and forwards exactly as :meth:`write` does (a switchover holds it).
        """
        txn = parse(int(time.time() * 1000))  # a bad body is refused by any pod
        held = await self._held()
        return await self.current_role.transact(txn, w, call, held)

    async def confirm_read(self, lsn: int, lineage_version: int) -> None:
        """Before a strong read's answer, based on this primary's state at ``lsn``: show it is still true.

        The read was admitted by the primary's role, which confirms it even if
        this pod has stopped leading since (then it cannot, and says so).
        """
        await self._primary_role.confirm_read(lsn, lineage_version)

    # -------------------------------------------------------------- reads
    def check_local_read(self) -> None:
        """What this pod may not answer from its own data: 503 rather than a wrong answer."""
        self.current_role.check_local_read()

    def read_lsn(self) -> int:
        """The ``X-Kv-Lsn`` of a local read, taken before it: a lower bound on what it reflects.

        Only what a majority held is sure to be on the cluster's line of LSNs:
        on the primary the LSN a majority holds, on a follower
        :meth:`committed_limit`.
        """
        return self.current_role.read_lsn()

    def committed_limit(self) -> int:
        """The last LSN this pod holds and knows a majority holds: what a watch or a backup may show."""
        return self.current_role.committed_limit()

    async def prepare_read(self, min_lsn: int, strong: Forwardable | None = None) -> Forwarded | None:
        """Wait for ``min_lsn``; a non-None answer was served by the primary.

        ``strong``: the call of a strong read (passed on when this pod does not
        lead); None: a local read.
        """
        if strong is not None:
            held = await self._held()
            role = self.current_role
            forwarded = await role.strong_read(strong, held)
            if forwarded is not None:
                return forwarded
        else:
            role = self.current_role
            role.check_local_read()  # a strong read is confirmed after it has read instead
        if min_lsn:
            await role.check_min_lsn(min_lsn, strong is not None)
            if not await role.reach(min_lsn):
                raise ReadTimeout(f"this replica has applied up to {self.store.lsn} and knows a majority holds up "
                                  f"to {self.committed_limit()}, not {min_lsn}, after {self.config.read_wait}s; "
                                  "retry, or read with consistency=strong")
        return None

    def hides_expired(self) -> bool:
        """Whether a read here shows an expired key as absent (the primary, whose expirer deletes it)."""
        return self.current_role.hides_expired

    def unsettled(self, key: bytes) -> int:
        """The LSN a follower's answer about ``key`` (found or absent) waits for (:meth:`settle`); 0: none."""
        return self.current_role.unsettled(key)

    def unsettled_listing(self, lsn: int) -> int:
        """Like :meth:`unsettled`, for a listing taken at ``lsn``."""
        return self.current_role.unsettled_listing(lsn)

    async def settle(self, lsn: int) -> None:
        """Wait (up to KV_READ_WAIT) until this follower knows ``lsn`` is committed; else NotConfirmed."""
        await self.current_role.settle(lsn)

    # ------------------------------------------------------------- status
    def local_status(self) -> dict[str, Any]:
        """This pod's own view (also what peers get from /v1/peer/status)."""
        role = self.current_role
        status: dict[str, Any] = {
            "name": self.config.pod_name,
            "ordinal": self.config.ordinal,
            "role": role.name,
            "state": "primary",
            "lsn": self.store.lsn,
            "log_start": self.store.log_start,
            "history_id": self.store.history_id,
            "epoch": self.store.epoch,
            "replicas": self.config.replicas,
            "replicate_from": self.config.replicate_from,
            "uptime_seconds": round(time.time() - self.started, 3),
            "revision": self.config.pod_revision or None,
            "primary_lsn": role.primary_lsn(),
            "peers": [],
        }
        r = self.replication
        if r is not None:
            status.update(r.position())
            status["replicas"] = len(r.configuration().voters)
            status["peers"] = r.peers_status()
            status["primary"] = r.primary_status()
            status["followers"] = {name: p.lsn for name, p in sorted(r.acks.positions.items())}
            status["discovery"] = r.directory.status()
            status["peer_protocol"] = r.client.versions.status()
            status.update(role.status_fields(r))
        return status

    async def status(self) -> dict[str, Any]:
        """GET /v1/status: our view, with the primary's follower positions on a follower."""
        role = self.current_role
        return await role.with_primary_view(self.local_status())

    def update_gauges(self) -> None:
        """Positions computed when /metrics is read, so a silent follower's lag is never stale."""
        m, store = self.metrics, self.store
        m.lsn.set(store.lsn)
        m.log_start.set(store.log_start)
        m.epoch.set(store.epoch)
        if self.replication is not None:
            self.current_role.update_gauges(self.replication)

    def readiness(self) -> tuple[bool, str]:
        """(ready, why) for /readyz; a follower that cannot speak with its upstream is not Ready."""
        if self.replication is None:
            return True, "accepting requests (single replica)"
        ready, why = self.replication.readiness()
        mismatches = self.replication.client.versions.mismatches()
        if not mismatches:
            return ready, why
        if self.current_role.mismatch_blocks(mismatches):
            ready = False
        return ready, "; ".join([*mismatches.values(), why])
