"""The upstream side of replication: serve this replica's log stream and snapshots on the peer port."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any, AsyncIterator, Callable

import aiohttp
from aiohttp import web

from kvstore.aio import cancel_and_wait
from kvstore.config import Config
from kvstore.events import EventLog
from kvstore.metrics import Metrics
from kvstore.replication import protocol
from kvstore.replication.acks import AckTable
from kvstore.replication.fencing import Fencing
from kvstore.routing import Router, error_response
from kvstore.storage import LogTruncated, Snapshot, Store

log = logging.getLogger("kvstore.replication")


@dataclass(eq=False)  # kept in a set by identity
class _Outbox:
    """One open stream, as the commit notifier sees it."""

    ws: web.WebSocketResponse
    lineage_version: int
    sent: int  # the last LSN pushed
    committed: int = 0  # the committed LSN last told


def _drop(task: "asyncio.Future[None]") -> None:
    """A round pushed to a stream that closed meanwhile: the stream's own loop reports it."""
    if not task.cancelled():
        task.exception()


async def snapshot_frames(store: Store, snap: Snapshot,
                          header: dict[str, Any]) -> AsyncIterator[tuple[bytes, int]]:
    """A snapshot as its frames (header, record chunks, end), each with how many records it holds."""
    yield protocol.json_frame(protocol.FRAME_HEADER, header), 0
    count = 0
    while True:
        chunk = await store.run_blocking(snap.next_chunk, protocol.SNAPSHOT_CHUNK_RECORDS,
                                         protocol.SNAPSHOT_CHUNK_BYTES)
        if not chunk:
            break
        count += len(chunk)
        yield protocol.frame(protocol.FRAME_RECORDS, protocol.encode_records(chunk)), len(chunk)
    yield protocol.json_frame(protocol.FRAME_END, {"count": count}), 0


class LogServer:
    """Peer-port handlers every replica serves: the log stream and snapshots."""

    def __init__(self, config: Config, store: Store, acks: AckTable, metrics: Metrics, fencing: Fencing,
                 committed: Callable[[], int], *, events: EventLog) -> None:
        self.config = config
        self.store = store
        self.events = events  # this replica's ring of recent events (GET /v1/events)
        self.acks = acks
        self.metrics = metrics
        self.fencing = fencing  # confirmation rounds: kv-0's own, or passed down by a cascade
        # What a majority holds, as this replica knows it: every message tells its followers,
        # which answer no read from an entry past it (with pipelining kv-0 may not hold it yet).
        self.committed = committed
        self._outboxes: set[_Outbox] = set()
        # Which process streams under each pod name, and how many of its streams are open: a
        # second process with the same name (an old kv-1 that outlived a force delete, a copy of
        # its volume) is refused while the first streams, so acks never mix two processes' logs.
        self._holders: dict[str, tuple[str, int]] = {}
        # Called whenever the committed LSN may have moved (watches of the client port wait on it).
        self.commit_listeners: list[Callable[[], None]] = []
        self._watcher: asyncio.Task[None] | None = None
        # False while a primary recovers: its disk may be behind or empty, so
        # nobody may follow it or copy it until it has proved it is current.
        self.serving = True
        self._closing = asyncio.Event()

    def close(self) -> None:
        """End open log streams now, so a SIGTERM does not wait for them."""
        self._closing.set()

    def watch_commits(self) -> None:
        """kv-0: its own fsync can move the committed LSN (its followers may have acknowledged first)."""
        if self._watcher is None:
            self._watcher = asyncio.create_task(self._watch_durable(), name="commit-watch")

    async def stop(self) -> None:
        """Stop the commit watcher."""
        self.close()
        await cancel_and_wait(self._watcher)

    async def _watch_durable(self) -> None:
        while True:
            await self.store.wait_for_lsn(self.store.lsn + 1, 3600)
            self.notify_commit()

    def notify_commit(self) -> None:
        """The committed LSN may have moved: tell each follower now, unless a batch on its way will.

        Now, not later: this runs before the write it commits is answered (an
        ack or our fsync wakes both, this first), so an idle follower knows a
        write is committed before its client does, and still answers reads of
        it if kv-0 dies the next moment. Under load a batch is nearly always
        on its way, and its header carries the committed LSN instead (a
        moment later: reads of that write on the follower wait for it).
        """
        for listener in self.commit_listeners:
            listener()
        appended = self.store.appended
        # A stream with entries on their way gets the committed LSN with them (checked first:
        # under load that is nearly every stream, and the committed LSN is not even computed).
        idle = [out for out in self._outboxes if out.sent >= appended]
        if not idle:
            return
        committed = self.committed()
        for out in idle:
            if out.committed >= committed or out.ws.closed or self.store.lineage_version != out.lineage_version:
                continue
            task = asyncio.ensure_future(out.ws.send_bytes(self._message(out, [], committed=committed)))
            task.add_done_callback(_drop)

    def add_routes(self, router: Router) -> None:
        """Mount the peer routes."""
        router.add("GET", "/v1/peer/stream", self.stream)
        router.add("GET", "/v1/peer/snapshot", self.snapshot)

    def _headers(self) -> dict[str, str]:
        return {"X-Kv-Lsn": str(self.store.lsn), "X-Kv-History": self.store.history_id,
                "X-Kv-Epoch": str(self.store.epoch), "X-Kv-Log-Start": str(self.store.log_start)}

    def _refuse(self, status: int, code: str, message: str) -> web.Response:
        return error_response(status, code, message, headers={**self._headers(), "X-Kv-Error": code})

    def _refusal(self, after: int, epoch: int, epoch_id: str) -> web.Response | None:
        """Why this replica cannot stream from position ``after`` (None: it can)."""
        store = self.store
        if not self.serving:
            return self._refuse(503, protocol.RECOVERING, "this replica is recovering; retry shortly")
        if after > store.appended:
            # Never serve from here, and never count the follower's position as
            # an ack: its entries past our LSN are not ours.
            return self._refuse(409, protocol.FOLLOWER_AHEAD, "the follower is ahead of this replica")
        if after:
            ours = store.lineage.at(after)
            if ours is None or (ours.number, ours.id) != (epoch, epoch_id):
                return self._refuse(409, protocol.LOG_MISMATCH,
                                    f"entry {after} here is not the follower's: compare lineages")
        if after + 1 < store.log_start and after < store.lsn:
            return self._refuse(410, protocol.LOG_TRUNCATED,
                                "position older than the retained log: take a snapshot")
        return None

    async def stream(self, request: web.BaseRequest) -> web.StreamResponse:
        """Push the log after ``after`` to a follower as it grows; read its acks."""
        try:
            after, epoch, epoch_id, follower, incarnation = protocol.parse_stream_params(request.rel_url.query)
        except ValueError:
            return error_response(400, "bad_parameter", "need after=<lsn>, epoch=<n>, epoch_id=<id>, "
                                  "follower=<name>, incarnation=<up to 32 hex digits>")
        refusal = self._refusal(after, epoch, epoch_id) or self._duplicate(follower, incarnation)
        if refusal is not None:
            return refusal
        ws = web.WebSocketResponse(autoping=True, max_msg_size=protocol.ACK_TEXT_MAX + 64)
        holder = self._holders.get(follower, (incarnation, 0))
        self._holders[follower] = (incarnation, holder[1] + 1)
        try:
            return await self._serve_stream(request, ws, after, follower)
        finally:
            current = self._holders.get(follower)
            if current is not None and current[1] <= 1:
                del self._holders[follower]
            elif current is not None:
                self._holders[follower] = (current[0], current[1] - 1)

    def _duplicate(self, follower: str, incarnation: str) -> web.Response | None:
        """A refusal when another process named ``follower`` streams from here now (None: it may stream)."""
        holder = self._holders.get(follower)
        if holder is None or holder[0] == incarnation:
            return None
        message = (f"another process named {follower} (incarnation {holder[0] or '?'}) streams from this "
                   f"replica; this one ({incarnation or '?'}) is refused until that stream ends")
        log.warning("refused a stream: %s", message)
        self.events.record("duplicate_refused", message, follower=follower)
        return self._refuse(409, protocol.DUPLICATE, message)

    async def _serve_stream(self, request: web.BaseRequest, ws: web.WebSocketResponse, after: int,
                            follower: str) -> web.WebSocketResponse:
        await ws.prepare(request)
        self.acks.record(follower, after, follower)  # asking for after=N acknowledges N
        version = self.store.lineage_version
        out = _Outbox(ws, version, after)
        self._outboxes.add(out)
        sender = asyncio.create_task(self._push(out), name=f"push-{follower}")
        send = self._round_sender(out)
        detach = self.fencing.attach(send)
        send(self.fencing.round)  # a round already waiting counts this follower at once
        lag = self.metrics.follower_lag.labels(follower)  # once: labels() locks and validates
        try:
            while not sender.done():
                msg = await ws.receive(timeout=protocol.SILENCE_SECONDS)
                if msg.type != aiohttp.WSMsgType.TEXT:
                    break  # closed, or an error
                lsn, round_, relayed = protocol.parse_ack(msg.data)
                if lsn > self.store.appended:  # nobody can hold what we never sent
                    raise ValueError(lsn)
                self.acks.record(follower, lsn, follower)
                for name, (position, _) in relayed.items():
                    if position <= self.store.appended:
                        self.acks.record(name, position, follower)
                self.notify_commit()
                if self.store.lineage_version == version:
                    # The follower streams from this epoch, which it promised: it (and the followers
                    # it serves, which promised it too) still follows us as of these rounds.
                    self.fencing.echo(follower, round_)
                    for name, (_, relayed_round) in relayed.items():
                        self.fencing.echo(name, relayed_round)
                lag.set(self.store.lsn - lsn)
        except asyncio.TimeoutError:
            log.info("%s went silent for %.0fs: dropping its stream", follower, protocol.SILENCE_SECONDS)
        except ValueError:
            log.warning("%s sent a malformed ack: dropping its stream", follower)
        finally:
            self._outboxes.discard(out)
            detach()
            await cancel_and_wait(sender)
            await ws.close()
        return ws

    def _round_sender(self, out: _Outbox) -> Callable[[int], None]:
        """A function that pushes a confirmation round to this stream at once (an empty message)."""
        def send(round_: int) -> None:
            if self.store.lineage_version == out.lineage_version and not out.ws.closed:
                task = asyncio.ensure_future(out.ws.send_bytes(self._message(out, [], round_)))
                task.add_done_callback(_drop)
        return send

    def _message(self, out: _Outbox, raws: list[bytes], round_: int | None = None,
                 committed: int | None = None) -> bytes:
        """A stream message to ``out`` (the current round and committed LSN unless given), noted as told."""
        committed = self.committed() if committed is None else committed
        out.committed = max(out.committed, committed)
        return protocol.encode_message(self.store.lsn, raws, self.fencing.round if round_ is None else round_,
                                       committed)

    async def _push(self, out: _Outbox) -> None:
        """Send entries after ``out.sent`` as they are appended (pipelined: before kv-0's own fsync), or a
        keepalive when idle."""
        store, ws, lineage_version = self.store, out.ws, out.lineage_version
        while not self._closing.is_set():
            if store.lineage_version != lineage_version:
                # A new epoch or a restored database: the follower must compare lineages again.
                await ws.close(code=protocol.CLOSE_LINEAGE_CHANGED, message=b"lineage_changed")
                return
            if store.appended > out.sent:
                try:
                    raws = await store.log_after(out.sent, protocol.FETCH_MAX_ENTRIES, protocol.FETCH_MAX_BYTES)
                except LogTruncated:
                    await ws.close(code=protocol.CLOSE_LOG_TRUNCATED, message=b"log_truncated")
                    return
                if raws:
                    if store.lineage_version == lineage_version:  # else: closed at the top
                        out.sent = protocol.last_lsn(raws)
                        await ws.send_bytes(self._message(out, raws))
                    continue
            if not await store.wait_for_lsn(out.sent + 1, protocol.KEEPALIVE_SECONDS, appended=True):
                await ws.send_bytes(self._message(out, []))
        await ws.close()

    async def snapshot(self, request: web.BaseRequest) -> web.StreamResponse:
        """Stream a consistent snapshot of the data in bounded chunks."""
        if not self.serving:
            return self._refuse(503, protocol.RECOVERING, "this replica is recovering; retry shortly")
        snap = await self.store.run_blocking(self.store.open_snapshot)
        response = web.StreamResponse(headers={**self._headers(), "Content-Type": "application/octet-stream"})
        self.metrics.snapshots.labels("sent").inc()
        count = 0
        try:
            await response.prepare(request)
            header = {"lsn": snap.lsn, "lineage": snap.lineage.to_json(),
                      "membership": None if snap.membership is None else snap.membership.to_json()}
            async for data, records in snapshot_frames(self.store, snap, header):
                count += records
                await response.write(data)
            await response.write_eof()
        finally:
            await self.store.run_blocking(snap.close)
        log.info("sent a snapshot of %d keys at lsn %d to %s", count, snap.lsn, request.remote)
        self.events.record("snapshot_sent", f"sent a snapshot of {count} keys at lsn {snap.lsn} to {request.remote}",
                           keys=count, lsn=snap.lsn)
        return response
