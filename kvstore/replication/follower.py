"""The follower side of replication: keep this secondary's log matching its upstream's.

Before each stream the follower asks its upstream for its position and
compares lineages (see lineage.py):

- our log is a prefix of the upstream's: adopt its lineage and stream from
  our LSN (or take a snapshot when our position left its retained log);
- the upstream holds less on our line (it is behind us): do not follow it;
- our entries past the common point were replaced by an epoch whose primary
  proved it held every write a majority had acknowledged (``verified``):
  those entries were never acknowledged by a majority, so they are dropped by
  installing the upstream's snapshot, and logged;
- anything else: this replica *diverged*. It keeps its data, stops
  following, says so in /v1/status, a metric and one log line naming the
  command that resolves it, and serves its data only as stale reads.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import random
import time
from typing import Any, AsyncIterator, Callable

import aiohttp

from kvstore.aio import Watermark, cancel_and_wait
from kvstore.config import Config
from kvstore.discovery import Peer, PeerDirectory
from kvstore.events import EventLog
from kvstore.identity import INCARNATION
from kvstore.lineage import BEHIND, DROPPABLE, PREFIX, UNKNOWN, Lineage, Promise, compare
from kvstore.metrics import Metrics
from kvstore.replication import election, protocol
from kvstore.replication.acks import AckTable
from kvstore.replication.fencing import LEASE_SECONDS, Fencing
from kvstore.replication.peer_client import PeerClient, PeerError, PeerPosition, PromiseRefused
from kvstore.storage import TXN, LogEntry, Store, changes_of

log = logging.getLogger("kvstore.replication")
CASCADE_RETRY = 5.0  # seconds a cascade upstream that failed is passed over

MAX_APPLYING = 8  # batches a follower has queued for its disk before it stops reading
MAX_BACKOFF = 2.0  # seconds between attempts, at most
RECOVERING_RETRY = 0.2  # seconds between attempts while the upstream is recovering
# A stream carries something at least every KEEPALIVE_SECONDS: silence twice that long means
# the upstream's LSN as last heard may be old.
HEARD_RECENTLY = 2 * protocol.KEEPALIVE_SECONDS
SNAPSHOT_PROGRESS_EVERY = 5.0  # seconds between "keys so far" log lines of a snapshot copy
_BEFORE_START = (0, "")  # the epoch of "an echo our previous process may have sent" (no real epoch is 0)


class Stalled(Exception):
    """Following cannot go on now; retried with back-off. ``kind`` groups repeats for the log."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class Diverged(Exception):
    """This replica holds entries its upstream's history does not, and no rule says they may go."""


async def logging_progress(chunks: AsyncIterator[list[tuple[bytes, bytes]]], source: str,
                           every: float = SNAPSHOT_PROGRESS_EVERY,
                           clock: Callable[[], float] = time.monotonic) -> AsyncIterator[list[tuple[bytes, bytes]]]:
    """``chunks`` as they come, logging the keys and bytes copied so far every ``every`` seconds.

    A scale-up's copy of a large store takes minutes; the snapshot header carries no
    key count, so the log says how far it got, not how far it has to go.
    """
    keys = size = 0
    last = clock()
    async for chunk in chunks:
        keys += len(chunk)
        size += sum(len(key) + len(value) for key, value in chunk)
        if clock() - last >= every:
            last = clock()
            log.info("snapshot from %s: %d keys (%.1f MB) copied so far", source, keys, size / 1e6)
        yield chunk


def _drop(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


class Follower:
    """Keeps this secondary's store following its upstream's log."""

    def __init__(self, config: Config, store: Store, directory: PeerDirectory, client: PeerClient,
                 acks: AckTable, metrics: Metrics, fencing: Fencing,
                 committed_moved: Callable[[], None] = lambda: None,
                 leader: Callable[[], int] = lambda: 0, *, events: EventLog) -> None:
        self.config = config
        self.store = store
        self.events = events  # this replica's ring of recent events (GET /v1/events)
        self.directory = directory
        self.client = client
        self.acks = acks
        self.metrics = metrics
        self.fencing = fencing  # our own followers' rounds (cascade): passed down, echoes relayed up
        self.leader = leader  # the ordinal of the primary this replica follows (kv-0 unless another leads)
        self.started = time.monotonic()  # when this replica began to follow (in this process)
        self.leader_heard: float | None = None  # monotonic time of the primary's newest round (they come from it alone)
        self.upstream: Peer | None = None
        self.upstream_lsn: int | None = None  # the upstream's LSN as last heard (status or stream)
        self.primary_lsn: int | None = None
        self.upstream_heard: float | None = None  # monotonic time the upstream last answered at all
        self.last_contact: float | None = None  # monotonic time of the last stream message
        self.installing_snapshot = False
        self.last_error: str | None = None
        self.stalled: str | None = None  # why we are not following now (None: we are, or never tried)
        self.diverged: str | None = None
        self.upstream_recovering = False  # the upstream said it is recovering, as last heard
        self._last_kind: str | None = None
        self._resync = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._cascade_failed: dict[int, float] = {}
        self._promising = asyncio.Lock()
        self._retry_now = asyncio.Event()
        # (epoch, when) of our last echo. A new process may have echoed, before it started, a round
        # whose lease a kv-0 still relies on: it counts its own start as an echo of no epoch.
        self._last_echo: tuple[tuple[int, str], float] = (_BEFORE_START, time.monotonic())
        self._streaming: tuple[int, str] | None = None  # (number, id) of the epoch we stream now
        self.round = 0  # the newest confirmation round the current upstream sent
        self._rounds_of: tuple[int, str] | None = None  # the epoch whose rounds self.fencing passes down
        # The LSN a majority holds, as the upstream last said (kept on disk with the entries).
        # Entries past it may be ones kv-0 never wrote (pipelining: it sends a batch while it
        # fsyncs it); no read is answered from them until they are committed.
        self._committed = Watermark(store.committed_on_disk)
        self._committed_moved = committed_moved  # our own followers (cascade) are told
        self.unconfirmed: dict[bytes, int] = {}  # key -> LSN of its newest entry past the committed LSN
        self._unconfirmed_order: collections.deque[tuple[int, bytes]] = collections.deque()
        self.max_message = protocol.max_stream_message(config.max_key_bytes, config.max_value_bytes)
        self.max_frame = protocol.max_snapshot_frame(config.max_key_bytes, config.max_value_bytes)

    def start(self) -> None:
        """Start following in the background."""
        self._task = asyncio.create_task(self._run(), name="follower")

    @property
    def committed(self) -> int:
        """The LSN a majority holds, as far as this follower knows."""
        return self._committed.value

    async def wait_committed(self, lsn: int, timeout: float) -> bool:
        """Wait until this follower knows ``lsn`` is committed; False after ``timeout``."""
        return await self._committed.wait_for(lsn, timeout)

    def _note_committed(self, committed: int) -> None:
        if committed <= self._committed.value:
            return
        order, unconfirmed = self._unconfirmed_order, self.unconfirmed
        while order and order[0][0] <= committed:
            lsn, key = order.popleft()
            if unconfirmed.get(key) == lsn:
                del unconfirmed[key]
        self._committed.set(committed)
        self._committed_moved()

    def _note_unconfirmed(self, entries: list[LogEntry]) -> None:
        committed = self._committed.value
        for entry in entries:
            if entry.lsn > committed:
                # A transaction holds back a read of every key it writes.
                for key in (c.key for c in changes_of(entry)) if entry.op == TXN else (entry.key,):
                    self.unconfirmed[key] = entry.lsn
                    self._unconfirmed_order.append((entry.lsn, key))

    def _forget_unconfirmed(self) -> None:
        """Hold nothing back: our data was replaced by a snapshot, or we diverged."""
        self.unconfirmed.clear()
        self._unconfirmed_order.clear()

    async def _load_unconfirmed(self) -> None:
        """After a restart: the entries past the committed LSN we last heard are not known to be committed."""
        after = max(self._committed.value, self.store.log_start - 1)
        while after < self.store.lsn:
            raws = await self.store.log_after(after, protocol.FETCH_MAX_ENTRIES, protocol.FETCH_MAX_BYTES)
            if not raws:
                break
            self._note_unconfirmed([LogEntry.decode(raw) for raw in raws])
            after = protocol.last_lsn(raws)
        if self.unconfirmed:
            log.info("%d key(s) written past lsn %d, the last committed lsn heard, are not read until "
                     "kv-0 says they are committed", len(self.unconfirmed), self._committed.value)

    async def stop(self) -> None:
        """Stop following."""
        await cancel_and_wait(self._task)

    def request_resync(self) -> None:
        """The operator's decision: drop what diverged and copy the upstream (kvstore recover resync)."""
        log.warning("operator asked to resync: this replica's data will be replaced by its upstream's")
        self._resync.set()

    def choose_upstream(self) -> Peer | None:
        """The primary, or in cascade mode the pod before this one in the chain that starts at the primary.

        The chain is the primary, then the other pods in ordinal order (kv-0
        leading: kv-0, kv-1, kv-2 ...; kv-1 leading: kv-1, kv-0, kv-2 ...). A
        pod not in DNS, or that failed as an upstream in the last
        ``CASCADE_RETRY`` seconds, is passed over for the one before it.
        """
        peers = self.directory.peers
        leader, me = self.leader(), self.config.ordinal
        if self.config.replicate_from == "previous" and leader != me:
            now = time.monotonic()
            for ordinal in sorted((o for o in peers if o < me and o != leader), reverse=True):
                if now - self._cascade_failed.get(ordinal, 0.0) > CASCADE_RETRY:
                    return peers[ordinal]
        return peers.get(leader)

    def waiting_for_primary(self) -> bool:
        """Whether this follower waits for a primary to lead (none serves that it may follow), not for data."""
        return self.stalled is not None and self._last_kind in ("older_epoch", "upstream_recovering", "no_upstream")

    def lost_for(self) -> float:
        """Seconds since the primary's last round reached this replica (or since this process started)."""
        return time.monotonic() - max(self.started, self.leader_heard or 0.0)

    # ------------------------------------------------------------------ the loop
    async def _run(self) -> None:
        backoff = 0.1
        try:
            await self._load_unconfirmed()
        except Exception as exc:  # LogTruncated meanwhile, a closing store: nothing to hold back then
            log.warning("reading the log past the committed lsn failed: %s", exc)
        while True:
            if self.diverged is not None and not self._resync.is_set():
                await self._resync.wait()
            upstream = self.choose_upstream()
            if upstream is None:
                leader = self.leader()
                self._failed("no_upstream", "this pod led last; waiting for a new primary" if
                             leader == self.config.ordinal else f"{self.directory.pod_name(leader)} is not in DNS")
                self.directory.request_refresh()
                await asyncio.sleep(0.5)
                continue
            if upstream != self.upstream:
                log.info("following %s (%s) from lsn %d", upstream.name, upstream.address, self.store.lsn)
                self.upstream = upstream
            try:
                if self._resync.is_set():
                    await self.install_snapshot_from(upstream, "operator resync", force=True)
                    self._resync.clear()
                    self._set_diverged(None)
                else:
                    await self._follow_once(upstream)
                backoff = 0.1
            except asyncio.CancelledError:
                raise
            except Diverged as exc:
                self._set_diverged(str(exc))
            except Exception as exc:  # refused, a timeout, a torn body, a stalled upstream...
                kind = exc.kind if isinstance(exc, Stalled) else type(exc).__name__
                reason = f"{exc}" if isinstance(exc, Stalled) else (
                    f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
                self._failed(kind, reason, upstream)
                if upstream.ordinal != self.leader():
                    self._cascade_failed[upstream.ordinal] = time.monotonic()
                self.directory.request_refresh()
                if isinstance(exc, Stalled) and exc.kind in ("upstream_recovering", "older_epoch"):
                    # kv-0 serves the moment it has decided (and a cascade upstream adopts its
                    # epoch a moment later): be streaming by then, so its first strong reads
                    # and w=all writes find their followers.
                    await self._pause(RECOVERING_RETRY)
                    continue
                await self._pause(backoff + random.uniform(0, backoff / 2))
                backoff = min(backoff * 2, MAX_BACKOFF)

    async def _pause(self, seconds: float) -> None:
        """Sleep between attempts; a promise just made ends it (kv-0 is about to serve)."""
        self._retry_now.clear()
        try:
            await asyncio.wait_for(self._retry_now.wait(), seconds)
        except asyncio.TimeoutError:
            pass

    def _failed(self, kind: str, reason: str, upstream: Peer | None = None) -> None:
        """Note why we are not following; log once per change of kind."""
        if kind != self._last_kind:
            self.events.record("waiting" if kind == "upstream_recovering" else "stalled", reason, upstream=upstream and upstream.name)
            log.warning("following %s failed: %s; retrying", upstream.name if upstream else "kv-0", reason)
            self._last_kind = kind
        self.last_error = reason
        self.stalled = reason

    def _set_diverged(self, reason: str | None) -> None:
        self.diverged = reason
        self.metrics.diverged.set(0 if reason is None else 1)
        if reason is not None:
            # Not Ready, and no kv-0 will ever say these are committed: answer from all
            # we hold, as stale reads of a replica that says it diverged (design.md).
            self._forget_unconfirmed()
            self.stalled = reason
            self.events.record("diverged", reason)
            log.error("DIVERGED: %s. This replica keeps its data, stops following and serves it only as "
                      "stale reads. To drop its entries and copy kv-0: kvstore recover resync --pod %s",
                      reason, self.config.pod_name)

    # ------------------------------------------------------------- one attempt
    async def _follow_once(self, upstream: Peer) -> None:
        """Compare lineages with ``upstream``, then follow its stream (or take its snapshot)."""
        position = await self.client.position(upstream)
        self._heard(upstream, position.lsn)
        self.upstream_recovering = position.state == "recovering"
        if self.upstream_recovering and upstream.ordinal == self.leader():
            self.leader_heard = time.monotonic()  # alive, proving it is current: not lost
        if self.upstream_recovering or not position.lineage.epochs:
            raise Stalled("upstream_recovering", f"{upstream.name} is recovering; waiting for it")
        await self._check_promise(upstream, position)
        store = self.store
        mine, my_lsn = store.lineage, store.lsn
        against = compare(mine, my_lsn, position.lineage, position.lsn)
        if against.relation == BEHIND:
            raise Stalled("upstream_behind",
                          f"{upstream.name} has lsn {position.lsn} on this replica's line, this replica "
                          f"{my_lsn}; not following it until it has caught up")
        if against.relation == DROPPABLE:
            assert against.replacing is not None
            common, replacing = against.common, against.replacing
            log.warning("entries %d..%d here were replaced by epoch %d of %s, whose primary proved it held "
                        "every write a majority acknowledged: they never were; copying %s", common + 1,
                        my_lsn, replacing.number, upstream.name, upstream.name)
            await self.install_snapshot_from(upstream, "entries past the fork point", allowed_fork=True)
            return
        if against.relation == UNKNOWN:
            raise Diverged(self._unplaceable(upstream, position.lineage))
        if against.relation != PREFIX:
            raise Diverged(self._divergence(upstream, position, against.common))
        if my_lsn + 1 < position.log_start and my_lsn < position.lsn:
            await self.install_snapshot_from(upstream, "position older than its retained log")
            return
        if position.lineage != mine:
            await store.set_lineage(position.lineage)  # our log is a prefix of theirs
        await self._stream(upstream)

    async def _check_promise(self, upstream: Peer, position: PeerPosition) -> None:
        """Follow only an upstream whose newest epoch this replica promised (or a newer one, adopted now)."""
        last = position.lineage.last
        assert last is not None
        async with self._promising:  # never lower a promise made meanwhile
            promise = self.store.promise
            if not promise.covers(last.number, last.id):
                raise Stalled("older_epoch",
                              f"{upstream.name} ({upstream.address}) is in epoch {last.number}, but this replica "
                              f"promised epoch {promise.number} to {self.directory.pod_name(promise.leader)}: it "
                              "does not follow a replaced primary; waiting for the current one")
            if last.number > promise.number:
                await self.store.set_promise(Promise(last.number, last.id, last.leader))

    # -------------------------------------------------------------- promises
    async def promise(self, candidate: Promise) -> None:
        """A candidate asks for its epoch: promise it durably, or raise PromiseRefused.

        Only the pod DNS lists under the candidate's name gets a promise (asked
        back: it must be recovering with this very candidate), so a second
        process with that name (a zombie) can never take the followers from the
        real one. A pod other than the primary this replica follows gets one
        only by election.promise_refusal's rule. Once promised, a stream from an
        older epoch ends before this returns: no ack of this replica reaches an
        older primary after its replacement counted it.
        """
        async with self._promising:
            current = self.store.promise
            if candidate == current:
                return
            floor = max(current.number, self.store.lineage.max_number())
            if candidate.number <= floor:
                held = current if current.number >= floor else Promise(floor, self.store.lineage.last.id
                                                                        if self.store.lineage.last else "")
                raise PromiseRefused(f"this replica already holds to epoch {floor}; ask again with a higher one",
                                     held)
            name = self.directory.pod_name(candidate.leader)
            pod = await self.directory.find(candidate.leader)
            if pod is None:
                self.directory.request_refresh()
                raise PromiseRefused(f"{name} is not in this replica's DNS", current)
            try:
                listed = await self.client.position(pod, timeout=1.0)
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError, PeerError) as exc:
                self.directory.request_refresh()
                raise PromiseRefused(f"cannot ask the {name} DNS lists ({pod.address}) to confirm: "
                                     f"{type(exc).__name__}", current) from None
            if listed.candidate != candidate:
                self.directory.request_refresh()
                raise PromiseRefused(f"the {name} DNS lists ({pod.address}) is not recovering with epoch "
                                     f"{candidate.number} ({candidate.id}); a pod that DNS does not list gets no "
                                     "promise", current)
            leader, me = self.leader(), self.config.ordinal
            # Asked only while the primary is heard: one lost for the failover time is not asked (a
            # frozen one would hold the promise up), and the failover rule applies then anyway.
            handed_over = (candidate.leader != leader
                           and (self.config.failover_after <= 0 or self.lost_for() < self.config.failover_after)
                           and await self._handed_over(leader, candidate))
            refusal = election.promise_refusal(
                candidate, listed, election.key(self.store.lineage, self.store.lsn), leader=leader, me=me,
                lost_for=self.lost_for(), failover_after=self.config.failover_after, handed_over=handed_over)
            if refusal is not None:
                raise PromiseRefused(refusal[1], current, refusal[0])
            await self.store.set_promise(candidate)
            log.warning("promised epoch %d to %s at %s%s: no older primary gets this replica's acks from now on",
                        candidate.number, name, pod.address, " (a switchover)" if handed_over else "")
            self.events.record("promised", f"promised epoch {candidate.number} to {name} at {pod.address}",
                               epoch=candidate.number, address=pod.address, leader=name)
            if self._streaming is not None and not candidate.covers(*self._streaming):
                await self._restart()  # no ack of ours reaches the older epoch from here on
            # The lease our last echo gave an older epoch's primary must run out before the
            # candidate counts this promise (and could commit what that primary would not see).
            # Within LEASE_SECONDS of our start, that echo may be our previous process's. A
            # primary that hands over gave its lease up before it asked the candidate to take over.
            remaining = 0.0 if handed_over else self.promise_hold(candidate)
            if remaining > 0:
                log.info("promising epoch %d in %.2fs, once the lease of our last echo ran out", candidate.number,
                         remaining)
                await asyncio.sleep(remaining)
            self._retry_now.set()

    async def _handed_over(self, leader: int, candidate: Promise) -> bool:
        """Whether the primary this replica follows says it hands its role to the candidate's pod."""
        if leader == self.config.ordinal:
            return False
        position = await self.client.position_or_none(await self.directory.find(leader))
        # Handing over, or handed over already (it promised the candidate, and leads no more).
        return position is not None and (position.handover_to == candidate.leader or position.promised == candidate)

    def promise_hold(self, candidate: Promise) -> float:
        """Seconds before this follower may count as promised to ``candidate`` (0: now).

        LEASE_SECONDS after our last echo of another epoch, or after this process started
        (the previous one's last echo is not known).
        """
        echoed, when = self._last_echo
        if echoed == (candidate.number, candidate.id):
            return 0.0
        return max(0.0, when + LEASE_SECONDS - time.monotonic())

    def _check_streaming(self) -> None:
        """Raise Stalled when a promise made meanwhile no longer covers the epoch we stream (no ack may go)."""
        if self._streaming is None or not self.store.promise.covers(*self._streaming):
            raise Stalled("older_epoch", "this replica promised a newer epoch than its upstream's")

    async def _restart(self) -> None:
        """End the current stream (and its acks) now, and follow again."""
        await cancel_and_wait(self._task)
        self._streaming = None
        self.start()

    def _divergence(self, upstream: Peer, position: PeerPosition, common: int) -> str:
        return (f"entries {common + 1}..{self.store.lsn} (history {self.store.history_id}, epoch "
                f"{self.store.epoch}) are not in {upstream.name}'s history {position.lineage.history} "
                f"(lsn {position.lsn}), and nothing proves they were never acknowledged")

    def _unplaceable(self, upstream: Peer, lineage: Lineage) -> str:
        oldest = lineage.epochs[0]
        return (f"{upstream.name}'s lineage keeps epochs from {oldest.number} (lsn {oldest.start}) on, and none of "
                f"them is in this replica's (lsn {self.store.lsn}, epoch {self.store.epoch}): this replica missed "
                "more epochs than a lineage keeps, and nothing tells whether its entries are in that history")

    def heard_ago(self) -> float | None:
        """Seconds since the upstream last answered, when longer than a live stream stays quiet (else None)."""
        if self.upstream_heard is None:
            return None
        ago = time.monotonic() - self.upstream_heard
        return ago if ago > HEARD_RECENTLY else None

    def _heard(self, upstream: Peer, upstream_lsn: int) -> None:
        self.upstream_heard = time.monotonic()
        self.upstream_lsn = upstream_lsn
        if upstream.ordinal == self.leader():
            self.primary_lsn = upstream_lsn

    async def catch_up_from(self, upstream: Peer, position: PeerPosition) -> bool:
        """A recovering kv-0: copy from ``upstream``'s *log* the entries it holds past ours.

        Only when our log is a prefix of its (the usual case after kv-0 crashed
        while followers were writing its last batch: pipelining) and it still
        keeps the entries after ours; the result is then what a snapshot of it
        would give, at the cost of those few entries. False: it cannot (or the
        stream failed), and the caller copies a snapshot instead.
        """
        store = self.store
        if (not store.lineage.epochs or store.lsn + 1 < position.log_start
                or compare(store.lineage, store.lsn, position.lineage, position.lsn).relation != PREFIX):
            return False
        log.info("catching up from %s's log: entries %d..%d", upstream.name, store.lsn + 1, position.lsn)
        if position.lineage != store.lineage:
            await store.set_lineage(position.lineage)
        try:
            await self._stream(upstream, until=position.lsn)
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError, Stalled, PeerError,
                protocol.Refused) as exc:
            log.warning("catching up from %s's log failed (%s: %s)", upstream.name, type(exc).__name__, exc)
        return store.lsn >= position.lsn

    async def _stream(self, upstream: Peer, until: int | None = None) -> None:
        """Follow ``upstream``'s log stream until it ends, fails or another upstream is preferred.

        ``until``: a recovering kv-0 catching up, which stops once it holds that
        LSN and takes no part in fencing (its rounds and acks are its own).
        """
        store = self.store
        params = protocol.stream_params(store.lsn, store.lineage, self.config.pod_name, INCARNATION)
        last = store.lineage.last
        assert last is not None
        self._streaming, self.round = (last.number, last.id), 0
        self._check_streaming()
        if until is None and self._rounds_of != self._streaming:
            # Rounds are numbered by one kv-0 incarnation: a new epoch's start again from 0.
            self.fencing.reset()
            self.fencing.round = 0
            self._rounds_of = self._streaming
        async with self.client.stream(upstream, params, self.max_message) as ws:
            wake = asyncio.Event()
            acker = asyncio.create_task(self._send_acks(ws, wake, relay=until is None), name="acks")
            applying: collections.deque[asyncio.Future[Any]] = collections.deque()
            next_lsn = store.lsn + 1
            lineage = store.lineage
            previous: float | None = None  # when this stream's last message came (our disk waits left out)
            try:
                while not acker.done():
                    msg = await ws.receive(timeout=protocol.SILENCE_SECONDS)
                    if msg.type != aiohttp.WSMsgType.BINARY:
                        if ws.close_code in (protocol.CLOSE_LOG_TRUNCATED, protocol.CLOSE_LINEAGE_CHANGED):
                            return  # the next attempt compares again and knows what to do
                        raise ConnectionError(f"stream closed ({msg.type.name}, code {ws.close_code})")
                    now = time.monotonic()
                    if previous is not None and now - previous > protocol.SILENCE_SECONDS:
                        # Longer than receive() waits: only while this process was paused (SIGSTOP).
                        # This may have waited in a socket buffer since, and so may all that follows
                        # (the upstream drops a stream silent that long): ask where it is now.
                        raise Stalled("stream_gap", f"nothing came from {upstream.name} for {now - previous:.1f}s; "
                                      "asking it again where it is")
                    previous = now
                    upstream_lsn, committed, round_, entries = protocol.decode_message(msg.data)
                    if round_ > self.round:
                        self.round = round_
                        wake.set()  # the upstream asks who still follows it: answer now, not after the disk
                        if until is None:
                            self.fencing.relay(round_)
                            self.leader_heard = now  # rounds start at the primary alone
                    self.last_contact = now
                    self._heard(upstream, upstream_lsn)
                    self.stalled = self.last_error = None
                    self._last_kind = None
                    if entries:
                        if entries[0].lsn != next_lsn:
                            raise ValueError(f"gap: expected lsn {next_lsn}, got {entries[0].lsn}")
                        _check_epochs(entries, lineage)
                        next_lsn = entries[-1].lsn + 1
                        self._note_unconfirmed(entries)
                        # Not awaited: what arrives while this batch is written joins the next one.
                        future = store.apply_nowait(entries, min(committed, next_lsn - 1))
                        future.add_done_callback(lambda _: wake.set())
                        applying.append(future)
                        self.metrics.fetch_batch.observe(len(entries))
                    elif committed <= self._committed.value:
                        # A keepalive: answer it, so the upstream knows we are here. Not a commit
                        # notice (one per write when idle): an ack to each doubled the acks.
                        wake.set()
                    self._note_committed(min(committed, next_lsn - 1))
                    if upstream.ordinal == self.leader():
                        self.primary_lsn = max(upstream_lsn, next_lsn - 1)
                    while applying and (applying[0].done() or len(applying) > MAX_APPLYING):
                        waited = time.monotonic()
                        await applying.popleft()  # raises if the disk refused the batch
                        previous += time.monotonic() - waited  # our own disk's time is no gap of the upstream's
                    if until is not None:
                        if next_lsn > until:
                            while applying:
                                await applying.popleft()
                            return
                    elif self.choose_upstream() != upstream:
                        return  # cascade: the preferred upstream is back, or DNS moved it
                if acker.done():
                    acker.result()  # the ack channel broke: raise why
            finally:
                self._streaming = None
                await cancel_and_wait(acker)
                for future in applying:  # they still complete; nobody reads their errors now
                    future.add_done_callback(_drop)

    async def _send_acks(self, ws: aiohttp.ClientWebSocketResponse, wake: asyncio.Event, relay: bool = True) -> None:
        """Tell the upstream our durable LSN (and, ``relay``, our followers' positions) whenever it moves."""
        relay_task = asyncio.create_task(self._wake_on_downstream_acks(wake), name="ack-relay") if relay else None
        try:
            while True:
                await wake.wait()
                wake.clear()
                relayed = self.acks.downstream_of(self.config.pod_name, self.fencing.echoed()) if relay else ""
                self._check_streaming()
                await ws.send_str(protocol.encode_ack(self.store.lsn, self.round, relayed))
                if self.round:  # the upstream's lease runs from here (fencing.py)
                    self._last_echo = (self._streaming, time.monotonic())
        finally:
            await cancel_and_wait(relay_task)

    async def _wake_on_downstream_acks(self, wake: asyncio.Event) -> None:
        """Cascade: our followers' positions go upstream as soon as they change."""
        while True:
            await self.acks.wait_change()
            wake.set()

    # ---------------------------------------------------------------- snapshots
    async def install_snapshot_from(self, upstream: Peer, reason: str, *, force: bool = False,
                                    allowed_fork: bool = False) -> None:
        """Replace this replica's data with a snapshot streamed from ``upstream``.

        Only when the snapshot holds everything this replica has (our log is a
        prefix of its lineage), or our extra entries were replaced by a
        verified epoch (``allowed_fork``), or ``force`` (an operator's or a
        recovering primary's decision). Anything else raises Diverged before a
        byte is written.
        """
        self.installing_snapshot = True
        started = time.monotonic()
        try:
            lsn, lineage, chunks, response, membership = await self.client.snapshot(upstream, self.max_frame)
            try:
                if not force:
                    self._check_snapshot(upstream, lsn, lineage, allowed_fork)
                log.info("installing a snapshot from %s at lsn %d (%s)", upstream.name, lsn, reason)
                self.events.record("snapshot_installing", f"copying {upstream.name} at lsn {lsn} ({reason})",
                                   upstream=upstream.name, lsn=lsn)
                count = await self.store.install_snapshot(lineage, lsn, logging_progress(chunks, upstream.name),
                                                          membership)
                self._forget_unconfirmed()
            finally:
                response.release()
            self.metrics.snapshots.labels("received").inc()
            self.events.record("snapshot_installed", f"installed {count} keys at lsn {self.store.lsn} from "
                               f"{upstream.name}", upstream=upstream.name, keys=count, lsn=self.store.lsn)
            log.info("installed a snapshot of %d keys at lsn %d from %s in %.1fs", count, self.store.lsn,
                     upstream.name, time.monotonic() - started)
        finally:
            self.installing_snapshot = False

    def _check_snapshot(self, upstream: Peer, lsn: int, lineage: Lineage, allowed_fork: bool) -> None:
        mine, my_lsn = self.store.lineage, self.store.lsn
        relation = compare(mine, my_lsn, lineage, lsn).relation
        if relation == PREFIX or (allowed_fork and relation == DROPPABLE):
            return  # it holds everything we have, or what it lacks was never acknowledged
        if relation == UNKNOWN:
            raise Diverged(f"a snapshot from {upstream.name} at lsn {lsn}: {self._unplaceable(upstream, lineage)}")
        if relation == BEHIND:
            raise Stalled("snapshot_behind", f"refusing a snapshot from {upstream.name} at lsn {lsn}: this "
                          f"replica holds more ({my_lsn}) on the same line")
        raise Diverged(f"a snapshot from {upstream.name} (history {lineage.history}, lsn {lsn}) would drop "
                       f"entries up to {my_lsn} of history {mine.history} that nothing proves unacknowledged")


def _check_epochs(entries: list[LogEntry], lineage: Lineage) -> None:
    """Every streamed entry must carry the epoch our (adopted) lineage says wrote it."""
    epoch = lineage.at(entries[0].lsn)
    following = [e for e in lineage.epochs if epoch is not None and e.start > epoch.start]
    for entry in entries:
        while following and following[0].start <= entry.lsn:
            epoch = following.pop(0)
        if epoch is None or entry.epoch != epoch.number:
            raise ValueError(f"entry {entry.lsn} carries epoch {entry.epoch}, not the lineage's "
                             f"{epoch.number if epoch else None}: the upstream's lineage changed")
