"""Pull replication: secondaries stream their upstream's log over the peer port.

Every replica serves its log and snapshots on the peer port (``LogServer``);
every secondary runs a ``Follower`` that asks its upstream (kv-0, or kv-N-1
in cascade mode) for the entries after its applied LSN. The request is a
long-lived WebSocket: the upstream pushes each group commit as it happens
(from the in-memory tail of its log) and the follower answers with its
durable LSN after each of its own group commits. Asking for ``after=N``
acknowledges N; each ack then moves the position on, and a cascading
follower passes its own followers' positions along with it. The primary's
``AckTable`` is what write concerns wait on.

One stream instead of a request per fetch: a long-poll fetch cost the
primary a full HTTP request per follower per commit (most of its CPU per
replicated write at one client), and the follower's ack had to wait for its
next request.

Wire formats (peer port, ``Authorization: Bearer <cluster token>``):

- ``GET /v1/peer/stream?after=N&history=H&follower=kv-2`` (WebSocket).
  Refused before the upgrade with 400 (bad parameters), or 409/410 and an
  ``X-Kv-Error`` header (history_mismatch, follower_ahead, log_truncated):
  "take a snapshot" (or, for follower_ahead, "do not follow this one").
  Upstream to follower, binary: ``u64 upstream LSN`` + frames ``u32 length +
  LogEntry`` (none: a keepalive, every second when idle). Follower to
  upstream, text: ``<durable lsn>[ <name>:<lsn>,...]``. The upstream closes
  with code 4409 / 4410 when its history changed or the follower's position
  left the retained log; either side drops a stream silent for 5 s.
- ``GET /v1/peer/snapshot``: frames ``u8 kind + u32 length + payload``: one
  header (JSON: history, lsn), records (``u32 key length, key, raw record``),
  one end frame (JSON: count). A stream without its end frame is discarded.
- ``GET /v1/peer/status``: this replica's position and the acks it holds.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import random
import struct
import time
from dataclasses import dataclass
from typing import Any, AsyncIterator, Callable

import aiohttp
import yarl
from aiohttp import web

from kvstore.aio import cancel_and_wait, wake
from kvstore.routing import Router
from kvstore.client import never_resend
from kvstore.config import Config
from kvstore.discovery import MembershipChange, Peer, PeerDirectory
from kvstore.identity import PRIMARY, parse_ordinal
from kvstore.metrics import Metrics
from kvstore.storage import LogEntry, LogTruncated, Store

log = logging.getLogger("kvstore.replication")

_LEN = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_FRAME = struct.Struct(">BI")
FRAME_HEADER, FRAME_RECORDS, FRAME_END = 1, 2, 3

FETCH_MAX_ENTRIES = 2000
FETCH_MAX_BYTES = 4 * 1024 * 1024
KEEPALIVE_SECONDS = 1.0  # an idle stream still carries the upstream's LSN this often
SILENCE_SECONDS = 5.0  # a stream quiet this long is dead (SIGSTOP, partition)
MAX_APPLYING = 8  # batches a follower has queued for its disk before it stops reading
CLOSE_HISTORY_CHANGED, CLOSE_LOG_TRUNCATED = 4409, 4410
SNAPSHOT_CHUNK_RECORDS = 2000
SNAPSHOT_CHUNK_BYTES = 1024 * 1024
READY_MAX_LAG = 1000  # entries a secondary may trail and still be Ready
ACK_PARAM_LIMIT = 64
RECENT_ACK_SECONDS = 30.0  # a follower that acknowledged this recently exists


class Stalled(Exception):
    """Following cannot go on safely now; logged once and retried with back-off."""


class SnapshotNeeded(Exception):
    """The upstream cannot serve the log from our position (history or truncation)."""

    def __init__(self, reason: str, upstream_history: str, upstream_lsn: int) -> None:
        super().__init__(reason)
        self.upstream_history = upstream_history
        self.upstream_lsn = upstream_lsn


# ------------------------------------------------------------------- encoding
def encode_message(upstream_lsn: int, raws: list[bytes]) -> bytes:
    """One stream message: the upstream's LSN, then length-prefixed encoded entries."""
    parts = [_U64.pack(upstream_lsn)]
    for raw in raws:
        parts.append(_LEN.pack(len(raw)))
        parts.append(raw)
    return b"".join(parts)


def decode_message(data: bytes) -> tuple[int, list[LogEntry]]:
    """Inverse of :func:`encode_message`; ValueError on a torn or malformed message."""
    if len(data) < _U64.size:
        raise ValueError("stream message too short")
    return _U64.unpack_from(data)[0], decode_entries(data, _U64.size)


def decode_entries(body: bytes, offset: int = 0) -> list[LogEntry]:
    """Length-prefixed entries from ``offset`` to the end; ValueError if torn or malformed."""
    entries = []
    view = memoryview(body)
    while offset < len(view):
        if offset + _LEN.size > len(view):
            raise ValueError("torn log frame")
        (length,) = _LEN.unpack_from(view, offset)
        offset += _LEN.size
        if offset + length > len(view):
            raise ValueError("torn log frame")
        entries.append(LogEntry.decode(view[offset:offset + length]))
        offset += length
    return entries


def _frame(kind: int, payload: bytes) -> bytes:
    return _FRAME.pack(kind, len(payload)) + payload


def _encode_records(records: list[tuple[bytes, bytes]]) -> bytes:
    parts = []
    for key, raw in records:
        parts.append(_LEN.pack(len(key)))
        parts.append(key)
        parts.append(_LEN.pack(len(raw)))
        parts.append(raw)
    return b"".join(parts)


def _decode_records(payload: bytes) -> list[tuple[bytes, bytes]]:
    out = []
    view = memoryview(payload)
    offset = 0
    while offset < len(view):
        (key_len,) = _LEN.unpack_from(view, offset)
        offset += _LEN.size
        key = bytes(view[offset:offset + key_len])
        offset += key_len
        (raw_len,) = _LEN.unpack_from(view, offset)
        offset += _LEN.size
        raw = bytes(view[offset:offset + raw_len])
        offset += raw_len
        if len(raw) != raw_len or len(key) != key_len:
            raise ValueError("torn snapshot record")
        out.append((key, raw))
    return out


def parse_acks(text: str) -> dict[str, int]:
    """``kv-2:17,kv-3:12`` -> {"kv-2": 17, "kv-3": 12}; ValueError if malformed."""
    acks: dict[str, int] = {}
    if not text:
        return acks
    items = text.split(",")
    if len(items) > ACK_PARAM_LIMIT:
        raise ValueError("too many acks")
    for item in items:
        name, sep, lsn = item.partition(":")
        if not sep or not name or not lsn.isdigit():
            raise ValueError(f"bad ack {item!r}")
        acks[name] = int(lsn)
    return acks


# ------------------------------------------------------------------ positions
@dataclass
class FollowerPosition:
    """What an upstream knows of one follower: its durable LSN and when it said so."""

    lsn: int
    seen: float
    via: str  # the follower itself, or the replica that passed its ack on


class AckTable:
    """Followers' acknowledged LSNs; write concerns wait on it."""

    def __init__(self) -> None:
        self.positions: dict[str, FollowerPosition] = {}
        self._changed = asyncio.Event()
        # Writes waiting for their concern: future -> (lsn, followers needed). Woken by
        # record() itself; a wait_for per write cost the primary ~7% of its CPU.
        self._waiters: dict[asyncio.Future[None], tuple[int, int]] = {}

    def record(self, name: str, lsn: int, via: str) -> None:
        """Note that ``name`` holds everything up to ``lsn`` durably."""
        current = self.positions.get(name)
        if current is None or lsn >= current.lsn or via == name:
            # A direct ack replaces (a follower restored from a snapshot may go
            # back); a relayed one only moves forward.
            self.positions[name] = FollowerPosition(lsn, time.monotonic(), via)
            event, self._changed = self._changed, asyncio.Event()
            event.set()
            if self._waiters:
                self._wake_waiters()

    def _wake_waiters(self) -> None:
        held = sorted((p.lsn for p in self.positions.values()), reverse=True)
        for future, (lsn, followers) in list(self._waiters.items()):
            if followers <= len(held) and held[followers - 1] >= lsn:
                del self._waiters[future]
                if not future.done():
                    future.set_result(None)

    def confirmed(self, lsn: int, exclude: str = "") -> int:
        """How many followers hold ``lsn``."""
        return sum(1 for name, p in self.positions.items() if p.lsn >= lsn and name != exclude)

    async def wait(self, lsn: int, followers: int, timeout: float) -> int:
        """Wait until ``followers`` followers hold ``lsn``; returns how many do."""
        if (count := self.confirmed(lsn)) >= followers:
            return count
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self._waiters[future] = (lsn, followers)
        timer = loop.call_later(timeout, wake, future)
        try:
            await future
        finally:
            timer.cancel()
            self._waiters.pop(future, None)
        return self.confirmed(lsn)

    async def wait_change(self) -> None:
        """Return after the next recorded ack."""
        await self._changed.wait()

    def downstream_of(self, me: str) -> str:
        """The acks to pass upstream: every follower's position we know."""
        items = [f"{name}:{p.lsn}" for name, p in sorted(self.positions.items()) if name != me]
        return ",".join(items[:ACK_PARAM_LIMIT])


def _consume(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


# --------------------------------------------------------------------- server
class LogServer:
    """Peer-port handlers every replica serves: log, snapshot and status."""

    def __init__(self, config: Config, store: Store, acks: AckTable, metrics: Metrics,
                 status: Callable[[], dict[str, Any]]) -> None:
        self.config = config
        self.store = store
        self.acks = acks
        self.metrics = metrics
        self._status = status
        self.on_foreign_history: Callable[[str, str, int], None] | None = None
        # Whether acks from this name count: not from a pod DNS stopped listing
        # (scaled away), or its last acks, direct or relayed by a cascade, would
        # keep it counted among the replicas after it left.
        self.counts: Callable[[str], bool] = lambda name: True
        self._closing = asyncio.Event()

    def close(self) -> None:
        """End open log streams now, so a SIGTERM does not wait for them."""
        self._closing.set()

    def add_routes(self, router: Router) -> None:
        """Mount the peer routes."""
        router.add("GET", "/v1/peer/stream", self.stream)
        router.add("GET", "/v1/peer/snapshot", self.snapshot)
        router.add("GET", "/v1/peer/status", self.status)

    def _headers(self) -> dict[str, str]:
        return {"X-Kv-Lsn": str(self.store.lsn), "X-Kv-History": self.store.history_id,
                "X-Kv-Log-Start": str(self.store.log_start)}

    async def stream(self, request: web.BaseRequest) -> web.StreamResponse:
        """Push the log after ``after`` to a follower as it grows; read its acks."""
        q = request.rel_url.query
        try:
            after = int(q.get("after", ""))
            follower = q.get("follower", "")
            if after < 0 or not follower or len(follower) > 253:
                raise ValueError
        except ValueError:
            return _peer_error(400, "bad_parameter", "need after=<lsn>, history=<id>, follower=<name>")
        history = q.get("history", "")
        if history != self.store.history_id:
            if self.on_foreign_history is not None:
                self.on_foreign_history(follower, history, after)
            return self._refuse(409, "history_mismatch", "different history: take a snapshot")
        if after > self.store.lsn:
            # The follower is ahead of us: our history is the same but we lost
            # its tail. Never serve from here, and never count its position as
            # an ack: its entries past our LSN are not ours.
            return self._refuse(409, "follower_ahead", "the follower is ahead of this replica")
        if after + 1 < self.store.log_start and after < self.store.lsn:
            return self._refuse(410, "log_truncated", "position older than the retained log: take a snapshot")
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        if self.counts(follower):
            self.acks.record(follower, after, follower)  # asking for after=N acknowledges N
        sender = asyncio.create_task(self._push(ws, after, history), name=f"push-{follower}")
        lag = self.metrics.follower_lag.labels(follower)  # once: labels() locks and validates
        try:
            while not sender.done():
                msg = await ws.receive(timeout=SILENCE_SECONDS)
                if msg.type != aiohttp.WSMsgType.TEXT:
                    break  # closed, or an error
                lsn_text, _, relayed = msg.data.partition(" ")
                lsn = int(lsn_text)
                if not 0 <= lsn <= self.store.lsn:  # nobody can hold what we never sent
                    raise ValueError(lsn)
                if self.counts(follower):
                    self.acks.record(follower, lsn, follower)
                for name, position in parse_acks(relayed).items():
                    if self.counts(name) and position <= self.store.lsn:
                        self.acks.record(name, position, follower)
                lag.set(self.store.lsn - lsn)
        except asyncio.TimeoutError:
            log.info("%s went silent for %.0fs: dropping its stream", follower, SILENCE_SECONDS)
        except ValueError:
            log.warning("%s sent a malformed ack: dropping its stream", follower)
        finally:
            await cancel_and_wait(sender)
            await ws.close()
        return ws

    async def _push(self, ws: web.WebSocketResponse, sent: int, history: str) -> None:
        """Send entries after ``sent`` as they are committed, or a keepalive when idle."""
        store = self.store
        while not self._closing.is_set():
            if store.history_id != history:  # an empty primary restored from a peer
                await ws.close(code=CLOSE_HISTORY_CHANGED, message=b"history_mismatch")
                return
            if store.lsn > sent:
                try:
                    raws = await store.log_after(sent, FETCH_MAX_ENTRIES, FETCH_MAX_BYTES)
                except LogTruncated:
                    await ws.close(code=CLOSE_LOG_TRUNCATED, message=b"log_truncated")
                    return
                if raws:
                    sent = _U64.unpack_from(raws[-1])[0]
                    await ws.send_bytes(encode_message(store.lsn, raws))
                    continue
            if not await store.wait_for_lsn(sent + 1, KEEPALIVE_SECONDS):
                await ws.send_bytes(encode_message(store.lsn, []))
        await ws.close()

    def _refuse(self, status: int, code: str, message: str) -> web.Response:
        return _peer_error(status, code, message, headers={**self._headers(), "X-Kv-Error": code})

    async def snapshot(self, request: web.BaseRequest) -> web.StreamResponse:
        """Stream a consistent snapshot of the data in bounded chunks."""
        snap = await self.store.run_blocking(self.store.open_snapshot)
        response = web.StreamResponse(headers={**self._headers(), "Content-Type": "application/octet-stream"})
        self.metrics.snapshots.labels("sent").inc()
        count = 0
        try:
            await response.prepare(request)
            header = json.dumps({"history": snap.history_id, "lsn": snap.lsn}).encode()
            await response.write(_frame(FRAME_HEADER, header))
            while True:
                chunk = await self.store.run_blocking(snap.next_chunk, SNAPSHOT_CHUNK_RECORDS,
                                                      SNAPSHOT_CHUNK_BYTES)
                if not chunk:
                    break
                count += len(chunk)
                await response.write(_frame(FRAME_RECORDS, _encode_records(chunk)))
            await response.write(_frame(FRAME_END, json.dumps({"count": count}).encode()))
            await response.write_eof()
        finally:
            await self.store.run_blocking(snap.close)
        log.info("sent a snapshot of %d keys at lsn %d to %s", count, snap.lsn, request.remote)
        return response

    async def status(self, request: web.BaseRequest) -> web.Response:
        """This replica's position and the follower positions it knows."""
        return web.json_response(self._status(), headers=self._headers())


def _peer_error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": code, "message": message}, status=status, headers=headers)


# ------------------------------------------------------------------- client
class PeerClient:
    """HTTP to other replicas' peer ports, with the cluster token, on kept-alive connections."""

    def __init__(self, token: str) -> None:
        self._headers = {"Authorization": f"Bearer {token}"}
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        """The shared session (created on first use, inside the event loop)."""
        if self._session is None or self._session.closed:
            # Forwarded writes must never be resent behind our back (see never_resend).
            self._session = never_resend(aiohttp.ClientSession(
                headers=self._headers, connector=aiohttp.TCPConnector(limit_per_host=8)))
        return self._session

    async def close(self) -> None:
        """Close every connection."""
        if self._session is not None:
            await self._session.close()

    async def status(self, peer: Peer, timeout: float = 1.0) -> dict[str, Any]:
        """A peer's /v1/peer/status."""
        async with self.session.get(peer.peer_url + "/v1/peer/status",
                                    timeout=aiohttp.ClientTimeout(total=timeout)) as response:
            if response.status != 200:
                raise aiohttp.ClientResponseError(response.request_info, (), status=response.status)
            return await response.json()

    @contextlib.asynccontextmanager
    async def stream(self, peer: Peer, params: dict[str, str],
                     max_msg_size: int) -> AsyncIterator[aiohttp.ClientWebSocketResponse]:
        """The log stream from ``peer`` (a WebSocket). Raises SnapshotNeeded when refused so."""
        try:
            async with asyncio.timeout(SILENCE_SECONDS):
                ws = await self.session.ws_connect(peer.peer_url + "/v1/peer/stream", params=params,
                                                   max_msg_size=max_msg_size, autoping=True)
        except aiohttp.WSServerHandshakeError as exc:
            headers = exc.headers or {}
            code = headers.get("X-Kv-Error")
            if exc.status in (409, 410) and code:
                raise SnapshotNeeded(code, headers.get("X-Kv-History", ""),
                                     int(headers.get("X-Kv-Lsn", "0"))) from None
            raise
        try:
            yield ws
        finally:
            await ws.close()

    async def snapshot(self, peer: Peer) -> tuple[dict[str, Any], AsyncIterator[list[tuple[bytes, bytes]]],
                                                  aiohttp.ClientResponse]:
        """Open a snapshot stream: (header, chunk iterator, response to release)."""
        response = await self.session.get(peer.peer_url + "/v1/peer/snapshot",
                                          timeout=aiohttp.ClientTimeout(total=None, sock_read=30, connect=2))
        if response.status != 200:
            response.release()
            raise aiohttp.ClientResponseError(response.request_info, (), status=response.status)
        kind, payload = await _read_frame(response.content)
        if kind != FRAME_HEADER:
            response.release()
            raise ValueError("snapshot stream does not start with a header")
        header = json.loads(payload)

        async def chunks() -> AsyncIterator[list[tuple[bytes, bytes]]]:
            count = 0
            while True:
                kind, payload = await _read_frame(response.content)
                if kind == FRAME_RECORDS:
                    records = _decode_records(payload)
                    count += len(records)
                    yield records
                elif kind == FRAME_END:
                    if json.loads(payload).get("count") != count:
                        raise ValueError("snapshot record count does not match its end frame")
                    return
                else:
                    raise ValueError(f"unexpected snapshot frame {kind}")

        return header, chunks(), response


class ForwardFailed(Exception):
    """The primary could not be reached (nothing was sent): safe to retry."""


class ForwardTimeout(Exception):
    """The primary took the request but did not answer in time: outcome unknown."""


FORWARDED_HEADERS = ("If-Match", "If-None-Match", "Content-Type")
RETURNED_HEADERS = ("ETag", "Content-Type", "Retry-After", "X-Kv-Lsn", "X-Kv-Primary-Lsn")


async def forward(client: PeerClient, peer: Peer, request: web.BaseRequest, body: bytes | None,
                  timeout: float, forwarded_by: str) -> web.Response:
    """Send a client request to ``peer``'s peer port and return its answer as ours."""
    headers = {name: request.headers[name] for name in FORWARDED_HEADERS if name in request.headers}
    headers["X-Kv-Forwarded-By"] = forwarded_by
    url = peer.peer_url + request.rel_url.raw_path_qs
    try:
        async with client.session.request(
                request.method, yarl_url(url), data=body, headers=headers,
                timeout=aiohttp.ClientTimeout(total=timeout, connect=1.0)) as response:
            payload = await response.read()
            out = {name: response.headers[name] for name in RETURNED_HEADERS if name in response.headers}
            out["X-Kv-Answered-By"] = response.headers.get("X-Kv-Pod", peer.name)
            return web.Response(status=response.status, body=payload, headers=out)
    except (aiohttp.ClientConnectorError, ConnectionRefusedError) as exc:
        raise ForwardFailed(f"{peer.name} is unreachable: {exc}") from None
    except (asyncio.TimeoutError, aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError) as exc:
        raise ForwardTimeout(f"{peer.name} did not answer in time ({type(exc).__name__})") from None
    except aiohttp.ClientError as exc:
        raise ForwardTimeout(f"{peer.name} failed mid-request: {exc}") from None


def yarl_url(url: str) -> yarl.URL:
    """The URL as given, percent-encoding untouched (keys keep their exact bytes)."""
    return yarl.URL(url, encoded=True)


async def _read_frame(stream: aiohttp.StreamReader) -> tuple[int, bytes]:
    head = await stream.readexactly(_FRAME.size)
    kind, length = _FRAME.unpack(head)
    return kind, await stream.readexactly(length)


# ------------------------------------------------------------------- follower
class Follower:
    """Keeps this secondary's store following its upstream's log."""

    def __init__(self, config: Config, store: Store, directory: PeerDirectory, client: PeerClient,
                 acks: AckTable, metrics: Metrics) -> None:
        self.config = config
        self.store = store
        self.directory = directory
        self.client = client
        self.acks = acks
        self.metrics = metrics
        self.upstream: Peer | None = None
        self.upstream_lsn: int | None = None
        self.primary_lsn: int | None = None
        self.last_contact: float | None = None  # monotonic time of the last good fetch
        self.installing_snapshot = False
        self.last_error: str | None = None
        self._task: asyncio.Task[None] | None = None
        self._cascade_failed: dict[int, float] = {}

    def start(self) -> None:
        """Start following in the background."""
        self._task = asyncio.create_task(self._run(), name="follower")

    async def stop(self) -> None:
        """Stop following."""
        await cancel_and_wait(self._task)

    def choose_upstream(self) -> Peer | None:
        """kv-0, or in cascade mode kv-(N-1) while it is in DNS and answering."""
        peers = self.directory.peers
        if self.config.replicate_from == "previous" and self.config.ordinal > 1:
            previous = peers.get(self.config.ordinal - 1)
            failed_at = self._cascade_failed.get(self.config.ordinal - 1, 0.0)
            if previous is not None and time.monotonic() - failed_at > 5.0:
                return previous
        return peers.get(0)

    async def _run(self) -> None:
        backoff = 0.1
        while True:
            upstream = self.choose_upstream()
            if upstream is None:
                self.directory.request_refresh()
                await asyncio.sleep(0.5)
                continue
            if upstream != self.upstream:
                log.info("following %s (%s) from lsn %d", upstream.name, upstream.address, self.store.lsn)
                self.upstream = upstream
            try:
                try:
                    await self._stream_once(upstream)
                except SnapshotNeeded as exc:
                    # Inside the outer try: a snapshot that fails midway is retried
                    # like any fetch, and never ends the follower.
                    await self._handle_snapshot_needed(upstream, exc)
                backoff = 0.1
                self.last_error = None
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # connection refused, timeout, a torn body...
                reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                if reason != self.last_error:
                    log.warning("following %s failed: %s; retrying", upstream.name, reason)
                self.last_error = reason
                if upstream.ordinal != 0:
                    self._cascade_failed[upstream.ordinal] = time.monotonic()
                self.directory.request_refresh()
                await asyncio.sleep(backoff + random.uniform(0, backoff / 2))
                backoff = min(backoff * 2, 2.0)

    async def _stream_once(self, upstream: Peer) -> None:
        """Follow ``upstream``'s log stream until it ends, fails or another upstream is preferred."""
        params = {"after": str(self.store.lsn), "history": self.store.history_id,
                  "follower": self.config.pod_name}
        max_msg = FETCH_MAX_BYTES + self.config.max_value_bytes + self.config.max_key_bytes + 1024
        async with self.client.stream(upstream, params, max_msg) as ws:
            wake = asyncio.Event()
            acker = asyncio.create_task(self._send_acks(ws, wake), name="acks")
            applying: collections.deque[asyncio.Future[Any]] = collections.deque()
            next_lsn = self.store.lsn + 1
            try:
                while not acker.done():
                    msg = await ws.receive(timeout=SILENCE_SECONDS)
                    if msg.type != aiohttp.WSMsgType.BINARY:
                        if ws.close_code == CLOSE_LOG_TRUNCATED or ws.close_code == CLOSE_HISTORY_CHANGED:
                            return  # the next stream request is refused with what to do
                        raise ConnectionError(f"stream closed ({msg.type.name}, code {ws.close_code})")
                    upstream_lsn, entries = decode_message(msg.data)
                    self.last_contact = time.monotonic()
                    self.upstream_lsn = upstream_lsn
                    if entries:
                        if entries[0].lsn != next_lsn:
                            raise ValueError(f"gap: expected lsn {next_lsn}, got {entries[0].lsn}")
                        next_lsn = entries[-1].lsn + 1
                        # Not awaited: what arrives while this batch is written joins the next one.
                        future = self.store.apply_nowait(entries)
                        future.add_done_callback(lambda _: wake.set())
                        applying.append(future)
                        self.metrics.fetch_batch.observe(len(entries))
                    else:
                        wake.set()  # a keepalive: answer it, so the upstream knows we are here
                    if upstream.ordinal == 0:
                        self.primary_lsn = max(upstream_lsn, next_lsn - 1)
                    while applying and (applying[0].done() or len(applying) > MAX_APPLYING):
                        await applying.popleft()  # raises if the disk refused the batch
                    if self.choose_upstream() != upstream:
                        return  # cascade: the preferred upstream is back, or DNS moved it
                if acker.done():
                    acker.result()  # the ack channel broke: raise why
            finally:
                await cancel_and_wait(acker)
                for future in applying:  # they still complete; nobody reads their errors now
                    future.add_done_callback(_consume)

    async def _send_acks(self, ws: aiohttp.ClientWebSocketResponse, wake: asyncio.Event) -> None:
        """Tell the upstream our durable LSN (and our followers' positions) whenever it moves."""
        relay = asyncio.create_task(self._wake_on_downstream_acks(wake), name="ack-relay")
        try:
            while True:
                await wake.wait()
                wake.clear()
                relayed = self.acks.downstream_of(self.config.pod_name)
                await ws.send_str(f"{self.store.lsn} {relayed}" if relayed else str(self.store.lsn))
        finally:
            await cancel_and_wait(relay)

    async def _wake_on_downstream_acks(self, wake: asyncio.Event) -> None:
        """Cascade: our followers' positions go upstream as soon as they change."""
        while True:
            await self.acks.wait_change()
            wake.set()

    async def _handle_snapshot_needed(self, upstream: Peer, exc: SnapshotNeeded) -> None:
        if str(exc) == "follower_ahead":
            raise Stalled(f"{upstream.name} is behind this replica ({exc.upstream_lsn} < {self.store.lsn}) on "
                          "the same history; not following it until it has caught up")
        if self.store.lsn == 0 and str(exc) == "history_mismatch" and self.store.log_start <= 1:
            # Empty replica: if the upstream still has its whole log, adopt its
            # history and replay the log instead of copying a snapshot.
            status = await self.client.status(upstream)
            if status.get("log_start", 1) <= 1:
                await self.store.adopt_history(exc.upstream_history)
                log.info("empty replica joined history %s of %s", exc.upstream_history, upstream.name)
                return
        if str(exc) == "history_mismatch" and self.store.lsn > exc.upstream_lsn:
            # Redis would wipe us here. An upstream with less data under another
            # history lost its disk: never replace more data with less.
            raise Stalled(f"refusing a snapshot from {upstream.name}: it has lsn {exc.upstream_lsn} under "
                          f"history {exc.upstream_history}, this replica has {self.store.lsn} under "
                          f"{self.store.history_id}; the primary must restore from its peers first")
        await self.install_snapshot_from(upstream, reason=str(exc))

    async def install_snapshot_from(self, upstream: Peer, reason: str) -> None:
        """Replace this replica's data with a snapshot streamed from ``upstream``."""
        self.installing_snapshot = True
        started = time.monotonic()
        try:
            header, chunks, response = await self.client.snapshot(upstream)
            try:
                log.info("installing a snapshot from %s at lsn %d (%s)", upstream.name, header["lsn"], reason)
                count = await self.store.install_snapshot(header["history"], int(header["lsn"]), chunks)
            finally:
                response.release()
            self.metrics.snapshots.labels("received").inc()
            log.info("installed a snapshot of %d keys at lsn %d from %s in %.1fs", count, self.store.lsn,
                     upstream.name, time.monotonic() - started)
        finally:
            self.installing_snapshot = False


# ---------------------------------------------------------------- replication
class Replication:
    """Everything replication a replica runs: log server, follower, acks, restore."""

    def __init__(self, config: Config, store: Store, metrics: Metrics, directory: PeerDirectory,
                 token: str, status: Callable[[], dict[str, Any]]) -> None:
        self.config = config
        self.store = store
        self.metrics = metrics
        self.directory = directory
        self.acks = AckTable()
        self.client = PeerClient(token)
        self.server = LogServer(config, store, self.acks, metrics, status)
        self.server.on_foreign_history = self._foreign_history
        # Pods DNS stopped listing; cleared when one is listed again. Not "only pods
        # in DNS": a new pod may ack before our next refresh lists it, and must count.
        self._departed: set[str] = set()
        self.server.counts = lambda name: name not in self._departed
        directory.subscribe(self._membership_changed)
        self.follower: Follower | None = None
        self.writable = config.role != PRIMARY  # the primary opens for writes after its start-up check
        self.restoring = False
        self._restore_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Start following (secondary) or check for data to restore (primary)."""
        if self.config.role == PRIMARY:
            self._restore_task = asyncio.create_task(self._primary_startup(), name="primary-startup")
        else:
            self.follower = Follower(self.config, self.store, self.directory, self.client, self.acks,
                                     self.metrics)
            self.follower.start()

    async def stop(self) -> None:
        """Stop background work and close peer connections."""
        await cancel_and_wait(self._restore_task)
        if self.follower is not None:
            await self.follower.stop()
        await self.client.close()

    def _membership_changed(self, change: MembershipChange) -> None:
        # A pod DNS no longer lists was scaled away: its old acks must not
        # make the cluster look bigger than it is.
        for peer in change.left:
            self.acks.positions.pop(peer.name, None)
            self._departed.add(peer.name)
        for peer in change.joined:
            self._departed.discard(peer.name)

    def configured_replicas(self) -> int:
        """How many replicas write concerns count: never fewer than the cluster has.

        The largest of KV_REPLICAS (the manifest's count), the pods DNS lists
        (highest ordinal + 1: with publishNotReadyAddresses a pod that exists
        is listed, up or not, so a `kubectl scale` up counts at once), and
        the followers that acknowledged lately (DNS may lag by a refresh).
        Counting too many only delays an answer (504, the write stays);
        counting too few would acknowledge a write held by too few replicas.
        Shrinking below KV_REPLICAS therefore needs KV_REPLICAS lowered.
        """
        ordinals = [self.config.ordinal, *self.directory.peers.keys()]
        now = time.monotonic()
        for name, position in self.acks.positions.items():
            if now - position.seen < RECENT_ACK_SECONDS:
                try:
                    ordinals.append(parse_ordinal(name))
                except ValueError:
                    continue
        return max(self.config.replicas, max(ordinals) + 1)

    # ---------------------------------------------------------- the primary
    async def _primary_startup(self) -> None:
        """An empty primary restores from the most advanced peer before taking writes."""
        delay = 0.5
        while self.store.lsn == 0:
            try:
                await self._restore_if_peers_have_data()
                break
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # Never fall back to taking writes on an empty disk: that is
                # exactly how a lost volume would wipe the cluster.
                log.warning("restore from a peer failed (%s: %s); retrying in %.1fs without taking writes",
                            type(exc).__name__, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        self.writable = True
        log.info("%s is primary and takes writes at lsn %d", self.config.pod_name, self.store.lsn)

    async def _restore_if_peers_have_data(self) -> None:
        """Ask every peer in DNS for its position; restore from the most advanced.

        Waits for *every* peer DNS lists: a write acknowledged with w=majority
        may live on one follower only, so deciding without one could lose it.
        The directory refreshed itself when it started, just before this.
        """
        statuses: dict[str, dict[str, Any]] = {}
        last_warning = time.monotonic()
        while True:
            missing = [p for p in self.directory.peers.values() if p.name not in statuses]
            results = await asyncio.gather(*(self.client.status(p) for p in missing), return_exceptions=True)
            for peer, result in zip(missing, results):
                if isinstance(result, dict):
                    statuses[peer.name] = result
            missing = [p for p in self.directory.peers.values() if p.name not in statuses]
            if not missing:
                break
            if time.monotonic() - last_warning > 10:
                log.warning("empty primary: waiting for %s to answer before deciding what to restore",
                            ", ".join(p.name for p in missing))
                last_warning = time.monotonic()
            await asyncio.sleep(0.5)
            await self.directory.refresh()
        best = max(statuses.items(), key=lambda item: item[1].get("lsn", 0), default=None)
        if best is None or best[1].get("lsn", 0) <= self.store.lsn:
            log.info("no peer holds data (%d in DNS): starting a fresh history", len(statuses))
            return
        name, status = best
        peer = next(p for p in self.directory.peers.values() if p.name == name)
        log.warning("this primary's data dir is empty but %s holds lsn %d (history %s): restoring from it "
                    "before taking any write", name, status["lsn"], status.get("history_id"))
        self.restoring = True
        try:
            follower = Follower(self.config, self.store, self.directory, self.client, self.acks, self.metrics)
            await follower.install_snapshot_from(peer, reason="empty primary")
        finally:
            self.restoring = False
        log.info("restored lsn %d from %s", self.store.lsn, name)

    def _foreign_history(self, follower: str, history: str, lsn: int) -> None:
        """A follower under another history with more data: an empty primary restores from it."""
        if self.config.role != PRIMARY or self.store.lsn != 0 or lsn == 0 or self.restoring:
            return
        if self._restore_task is not None and not self._restore_task.done():
            return
        log.warning("%s has lsn %d under history %s while this primary is empty: restoring", follower, lsn,
                    history)
        self.writable = False
        self._restore_task = asyncio.create_task(self._primary_startup(), name="primary-restore")

    async def wait_for_concern(self, lsn: int, w: str, required_acks: Callable[[str, int], int]) -> tuple[int, int]:
        """Wait for followers to confirm ``lsn``; returns (confirmed replicas, required replicas)."""
        required = required_acks(w, self.configured_replicas())
        if required <= 1:
            return 1, required
        followers = await self.acks.wait(lsn, required - 1, self.config.write_timeout)
        return followers + 1, required

    # ------------------------------------------------------------ positions
    def primary_lsn(self) -> int | None:
        """The primary's LSN as this replica knows it."""
        if self.config.role == PRIMARY:
            return self.store.lsn
        return self.follower.primary_lsn if self.follower else None

    def primary_reachable(self) -> bool:
        """Whether the follower heard from its upstream recently."""
        f = self.follower
        return bool(f and f.last_contact and time.monotonic() - f.last_contact < SILENCE_SECONDS + 1)

    def readiness(self) -> tuple[bool, str]:
        """(ready, why) of this replica for /readyz."""
        if self.config.role == PRIMARY:
            if not self.writable:
                return False, "restoring data from a peer before taking writes"
            return True, "primary taking writes"
        f = self.follower
        if f is None or f.installing_snapshot:
            return False, "installing a snapshot"
        known = f.primary_lsn if f.primary_lsn is not None else f.upstream_lsn
        if known is None:
            return True, "no primary reachable yet; serving what this replica has"
        lag = max(0, known - self.store.lsn)
        if lag > READY_MAX_LAG:
            return False, f"catching up: {lag} entries behind"
        return True, f"following, {lag} entries behind"

    def peers_status(self) -> list[dict[str, Any]]:
        """Every peer with its LSN and lag as far as this replica knows."""
        reference = self.primary_lsn()
        out = []
        for ordinal, peer in sorted(self.directory.peers.items()):
            row = peer.to_dict()
            position = self.acks.positions.get(peer.name)
            if ordinal == 0 and self.follower is not None:
                row["lsn"] = self.follower.primary_lsn
            elif position is not None:
                row["lsn"] = position.lsn
                row["acked_seconds_ago"] = round(time.monotonic() - position.seen, 3)
            else:
                row["lsn"] = None
            row["lag"] = (reference - row["lsn"]) if reference is not None and row["lsn"] is not None else None
            out.append(row)
        return out
