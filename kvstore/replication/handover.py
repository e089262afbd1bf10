"""Switchover: a primary hands its role to another pod, and takes writes back to whoever leads.

A mixin of :class:`~kvstore.replication.coordinator.Replication` (it uses
that class's store, acks, fencing, directory and roles): the primary's side
(``switchover``, the failback, the promise it gives only to its target), the
target's (``takeover``), and the wait a write does while its primary hands
over. The rules are on the design page, "Failover, switchover and failback".
"""

from __future__ import annotations

import asyncio
import logging
import re
import time

import aiohttp
from aiohttp import web

from kvstore.discovery import Peer
from kvstore.identity import parse_ordinal
from kvstore.lineage import Promise
from kvstore.replication import election
from kvstore.replication.peer_client import PeerError, PromiseRefused
from kvstore.replication.protocol import FORWARDED_BY
from kvstore.replication.recovery import HANDOVER
from kvstore.routing import error_response
from kvstore.storage import StorageError

log = logging.getLogger("kvstore.replication")

FAILBACK_AFTER = 3.0  # seconds kv-0 must have been current before another primary hands the role back
FAILBACK_MAX_LAG = 100  # entries kv-0 may trail and still count as current for a failback
SWITCHOVER_TIMEOUT = 3.0  # seconds a switchover may hold writes before it gives up and the primary goes on
ADMIT_WAIT = 5.0  # seconds a write waits while its primary hands over, or its new primary begins
READY_MAX_LAG = 1000  # entries a secondary may trail and still be Ready (and a switchover target)
_EPOCH_ID = re.compile(r"^[0-9a-f]{1,32}$")


class SwitchoverRefused(Exception):
    """A switchover cannot start (no such target, behind, no quorum) or did not complete; nothing changed."""


class Handover:
    """The switchover half of Replication (see the module docstring).

    Its methods use Replication's attributes (config, store, acks, fencing,
    directory, client, recovery, follower, handing_over, _stepped_down,
    _admit, _takeover); it is never used alone.
    """

    async def _maybe_fail_back(self) -> None:
        """Another pod leads: hand the role back to kv-0 once it has been current for FAILBACK_AFTER."""
        if self.config.ordinal == 0 or not self.config.failback or self.handing_over is not None:
            return
        position = self.acks.positions.get(self.directory.pod_name(0))
        now = time.monotonic()
        current = (position is not None and now - position.seen < 1.0
                   and self.store.lsn - position.lsn <= FAILBACK_MAX_LAG)
        if not current:
            self._current_since = None
            return
        if self._current_since is None:
            self._current_since = now
        if now - self._current_since < FAILBACK_AFTER:
            return
        self._current_since = None
        try:
            await self.switchover(0, "failback: kv-0 is current again")
        except SwitchoverRefused as exc:
            log.warning("failback to kv-0 not done: %s; trying again later", exc)

    def _best_target(self) -> int:
        """The most up-to-date voter that acked lately (ties: the lowest ordinal); SwitchoverRefused if none."""
        now, me = time.monotonic(), self.config.ordinal
        best: tuple[int, int] | None = None
        for ordinal in self.configuration().voters:
            position = self.acks.positions.get(self.directory.pod_name(ordinal))
            if ordinal == me or position is None or now - position.seen > 2.0:
                continue
            if best is None or (position.lsn, -ordinal) > (best[0], -best[1]):
                best = (position.lsn, ordinal)
        if best is None:
            raise SwitchoverRefused("no voter has acknowledged this primary in the last 2s")
        return best[1]

    async def switchover(self, to: int | None, why: str, timeout: float = SWITCHOVER_TIMEOUT) -> str:
        """Hand the primary's role to ``to`` (None: the most up-to-date follower); what was done.

        Writes wait (they do not fail) while the target catches up and asks for
        promises; they then go to it. Raises SwitchoverRefused, with the
        primary still leading, when the target is not a current voter or the
        handover did not complete within ``timeout``.
        """
        if self.recovery is None or not self.writable or self.handing_over is not None:
            raise SwitchoverRefused("this pod is not a serving primary" if self.handing_over is None
                                    else "a switchover is already under way")
        target = self._best_target() if to is None else to
        name = self.directory.pod_name(target)
        if target == self.config.ordinal:
            raise SwitchoverRefused(f"{name} is the primary already")
        if target not in self.configuration().voters:
            raise SwitchoverRefused(f"{name} is not a voter (a learner, or no such pod)")
        position = self.acks.positions.get(name)
        if position is None or time.monotonic() - position.seen > 2.0:
            raise SwitchoverRefused(f"{name} has not acknowledged this primary in the last 2s (not Ready?)")
        if self.store.lsn - position.lsn > READY_MAX_LAG:
            raise SwitchoverRefused(f"{name} is {self.store.lsn - position.lsn} entries behind")
        if not self.fencing.in_contact():
            raise SwitchoverRefused("this primary has not heard a majority lately (no quorum)")
        peer = await self.directory.find(target)
        if peer is None:
            raise SwitchoverRefused(f"{name} is not in DNS")
        started = time.monotonic()
        log.warning("switchover to %s: %s; holding writes until it leads", name, why)
        self.handing_over = target
        self._admit.clear()
        try:
            # Writes admitted before the hold may still be queued (a transaction or a conditional write is
            # not in ``appended`` before its batch is written): they are in the log before the target's LSN.
            try:
                await asyncio.wait_for(asyncio.shield(self.store.drain()), timeout)
            except (asyncio.TimeoutError, StorageError) as exc:
                raise SwitchoverRefused(f"this primary's queued writes were not written within {timeout:g}s "
                                        f"({exc or type(exc).__name__})") from None
            lsn = self.store.appended  # what this primary sent: it and the target must hold all of it
            holds = lambda: self.acks.by_ordinal.get(target, 0)  # noqa: E731
            if not await self.store.wait_for_lsn(lsn, timeout):
                raise SwitchoverRefused(f"this primary did not write lsn {lsn} within {timeout:g}s")
            left = max(0.1, timeout - (time.monotonic() - started))
            if not await self.acks.wait(lsn, holds, left):
                raise SwitchoverRefused(f"{name} did not acknowledge lsn {lsn} within {timeout:g}s")
            # From here no strong read is answered from the lease: the target's promises skip it.
            self.fencing.relinquish()
            epoch = self.store.lineage.last
            assert epoch is not None
            await self.client.takeover(peer, Promise(epoch.number, epoch.id), self.store.lsn,
                                       timeout=max(0.1, timeout - (time.monotonic() - started)))
            left = max(0.1, timeout - (time.monotonic() - started))
            try:
                await asyncio.wait_for(self._stepped_down.wait(), left)
            except asyncio.TimeoutError:
                raise SwitchoverRefused(f"{name} did not ask this primary for its promise within "
                                        f"{timeout:g}s") from None
            # The followers confirm the handover with this pod: it answers until the target leads
            # (a stopping primary closes its ports only then).
            await self._until_leading(peer, max(0.1, timeout - (time.monotonic() - started)))
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError, PeerError) as exc:
            self._abort_switchover()
            raise SwitchoverRefused(f"{name} could not be asked to take over: {exc}") from None
        except BaseException:
            self._abort_switchover()
            raise
        self.metrics.switchovers.inc()
        self.events.record("switchover", f"{self.config.pod_name} handed the primary's role to {name} ({why})",
                           to=name, why=why)
        return f"{name} takes over from {self.config.pod_name} in epoch {self.store.promise.number}"

    async def _until_leading(self, peer: Peer, timeout: float) -> bool:
        """Wait (bounded) until ``peer`` says it serves as primary; whether it did."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            position = await self.client.position_or_none(peer, timeout=0.5)
            if position is not None and position.state == "primary":
                return True
            await asyncio.sleep(0.02)
        log.warning("%s did not say it leads within %.1fs of this primary's handover", peer.name, timeout)
        return False

    def _abort_switchover(self) -> None:
        """The handover did not happen: lead on (unless the target already got this primary's promise)."""
        if self._stepped_down.is_set():
            return  # promised: this pod leads no more; held writes go to whoever leads
        self.handing_over = None
        self.fencing.reset_lease()
        self._admit.set()

    async def admitted(self) -> bool:
        """Wait while this primary hands over (bounded); whether the write may go on here or be forwarded."""
        if self._admit.is_set():
            return False
        try:
            await asyncio.wait_for(self._admit.wait(), ADMIT_WAIT)
        except asyncio.TimeoutError:
            pass
        return True

    async def serving_soon(self) -> None:
        """A pod that was asked to take over: wait (bounded) until it serves, rather than refuse at once."""
        r = self.recovery
        if r is not None and r.mode == HANDOVER and not r.done.is_set():
            try:
                await asyncio.wait_for(r.done.wait(), ADMIT_WAIT)
            except asyncio.TimeoutError:
                pass

    async def takeover(self, request: web.BaseRequest) -> web.Response:
        """POST /v1/peer/takeover?epoch=N&id=X&lsn=L: the primary asks this follower to take over."""
        query = request.rel_url.query
        number, ident, lsn = query.get("epoch", ""), query.get("id", ""), query.get("lsn", "")
        if not number.isdigit() or not _EPOCH_ID.match(ident) or not lsn.isdigit():
            return error_response(400, "bad_parameter", "need epoch=<n>, id=<1-32 hex digits> and lsn=<n>")
        if self.follower is None:
            return error_response(409, "not_a_follower", "this pod leads or stands for election already")
        last = self.store.lineage.last
        if last is None or (last.number, last.id) != (int(number), ident):
            return error_response(409, "other_epoch", "this pod does not follow that epoch")
        if self.store.lsn < int(lsn):
            return error_response(409, "behind", f"this pod holds lsn {self.store.lsn}, not {lsn}")
        if self.config.ordinal not in self.configuration().voters:
            return error_response(409, "not_a_voter", "a learner does not lead")
        self._takeover.set()
        return web.json_response({"name": self.config.pod_name, "taking_over": True}, status=202)

    async def switchover_route(self, request: web.BaseRequest) -> web.Response:
        """POST /v1/peer/switchover {"to": "kv-N" | null}: kvstore switchover (passed on to the primary)."""
        try:
            body = await request.json()
            if not isinstance(body, dict) or set(body) - {"to"}:
                raise ValueError
            to = body.get("to")
            target = None if to is None else parse_ordinal(to)
            if target is not None and to != self.directory.pod_name(target):
                raise ValueError  # another StatefulSet's pod
        except (ValueError, TypeError, RecursionError):  # RecursionError: nested past the parser
            return error_response(400, "bad_request", 'expected JSON {"to": "kv-N"} or {"to": null}')
        if self.recovery is None or not self.writable:
            primary = self.leader_peer()
            if primary is None or request.headers.get(FORWARDED_BY):
                return error_response(409, "switchover_refused", "this pod is not the primary and knows no other")
            try:
                async with self.client.session.post(primary.peer_url + "/v1/peer/switchover", json={"to": to},
                                                    headers={FORWARDED_BY: self.config.pod_name},
                                                    timeout=aiohttp.ClientTimeout(total=SWITCHOVER_TIMEOUT + 5)
                                                    ) as response:
                    return web.Response(status=response.status, body=await response.read(),
                                        content_type="application/json")
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
                return error_response(409, "switchover_refused",
                                      f"the primary {primary.name} could not be asked: {type(exc).__name__}")
        try:
            result = await self.switchover(target, "operator: kvstore switchover")
        except SwitchoverRefused as exc:
            return error_response(409, "switchover_refused", str(exc))
        return web.json_response({"result": result})

    async def _promise_as_primary(self, candidate: Promise) -> web.Response:
        """A primary promises only the pod it hands over to; a serving one tells others it is alive."""
        last = self.store.lineage.last
        if (self.handing_over is not None and self.fencing.relinquished and candidate.leader == self.handing_over
                and candidate.number > max(self.store.lineage.max_number(), self.store.promise.number)):
            try:
                await self.store.set_promise(candidate)
            except StorageError as exc:
                return error_response(503, "storage_unavailable", f"{exc}; retry later")
            self._stepped_down.set()
            return web.json_response({"name": self.config.pod_name, **self.position()})
        if self.writable and last is not None:
            return refused_response(PromiseRefused(
                f"{self.config.pod_name} is the primary in epoch {last.number} and alive",
                Promise(last.number, last.id, self.config.ordinal), election.LEADER_ALIVE))
        return error_response(409, "not_a_follower", "this pod asks for an epoch itself; it promises none")


def refused_response(exc: PromiseRefused) -> web.Response:
    """The 409 a candidate reads: why, what this pod holds to, and the kind of refusal."""
    return web.json_response({"error": "promise_refused", "message": str(exc), "promised": exc.promised.to_json(),
                              "kind": exc.kind}, status=409)
