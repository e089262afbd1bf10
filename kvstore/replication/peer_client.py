"""HTTP to other replicas' peer ports: their position, their log stream, their snapshot."""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass
from typing import Any, AsyncIterator

import aiohttp

from kvstore.client import never_resend
from kvstore.discovery import Peer
from kvstore.lineage import Lineage, Promise
from kvstore.membership import Configuration
from kvstore.replication import protocol
from kvstore.replication.versions import PeerProtocolMismatch, Versions


class PeerError(Exception):
    """A peer answered something this replica cannot use (wrong status, malformed body)."""


class PromiseRefused(PeerError):
    """A follower did not promise a recovering kv-0's candidate epoch; ``promised`` is what it holds to."""

    def __init__(self, message: str, promised: Promise, kind: str = "") -> None:
        super().__init__(message)
        self.promised = promised
        self.kind = kind  # election.LEADER_ALIVE, election.BEHIND, or "" (an older or other epoch)


@dataclass(frozen=True)
class PeerPosition:
    """What a peer says of its log: where it is, since when it keeps it, and its epochs."""

    name: str
    state: str
    lsn: int
    log_start: int
    lineage: Lineage
    promised: Promise = Promise()  # the newest epoch this peer promised to follow
    candidate: Promise | None = None  # a recovering kv-0's epoch-to-be, which followers promise
    membership: Configuration | None = None  # the newest configuration its log holds (None: none recorded)
    leader: int | None = None  # the ordinal it takes for the primary (itself when it leads)
    handover_to: int | None = None  # a primary handing its role over: the ordinal it hands it to

    @property
    def empty(self) -> bool:
        """Whether this peer never held data."""
        return self.lsn == 0 and not self.lineage.epochs

    @classmethod
    def parse(cls, body: Any) -> "PeerPosition":
        """Validate a /v1/peer/status body; PeerError when it is not one."""
        try:
            if not isinstance(body, dict):
                raise ValueError("not an object")
            lsn, log_start = body["lsn"], body["log_start"]
            if not isinstance(lsn, int) or not isinstance(log_start, int) or lsn < 0 or log_start < 1:
                raise ValueError("bad lsn or log_start")
            candidate, membership = body.get("candidate"), body.get("membership")
            leader, handover = body.get("leader"), body.get("handover_to")
            for value in (leader, handover):
                if value is not None and (not isinstance(value, int) or isinstance(value, bool)
                                          or not 0 <= value < 10**9):
                    raise ValueError("bad leader or handover_to")
            return cls(str(body.get("name", "")), str(body.get("state", "")), lsn, log_start,
                       Lineage.from_json(body.get("lineage", [])), Promise.from_json(body.get("promised")),
                       Promise.from_json(candidate) if candidate is not None else None,
                       Configuration.from_json(membership["recorded"]) if isinstance(membership, dict)
                       and membership.get("recorded") is not None else None, leader, handover)
        except (KeyError, TypeError, ValueError) as exc:
            raise PeerError(f"malformed peer status: {exc}") from None


class PeerClient:
    """HTTP to other replicas' peer ports, with the cluster token and this pod's peer protocol
    versions (:mod:`~kvstore.replication.versions`), on kept-alive connections."""

    def __init__(self, token: str, versions: Versions | None = None) -> None:
        self.versions = versions or Versions("")
        self._headers = {"Authorization": f"Bearer {token}", **self.versions.headers}
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        """The shared session (created on first use, inside the event loop)."""
        if self._session is None or self._session.closed:
            # Forwarded writes must never be resent behind our back (see never_resend).
            self._session = never_resend(aiohttp.ClientSession(
                headers=self._headers, connector=aiohttp.TCPConnector(limit_per_host=8)))
        return self._session

    def _check_version(self, peer: Peer, status: int, headers: Any) -> None:
        """PeerError saying so when ``peer`` refused this pod's peer protocol version."""
        try:
            self.versions.check_answer(peer.name, status, headers or {})
        except PeerProtocolMismatch as exc:
            raise PeerError(str(exc)) from None

    async def close(self) -> None:
        """Close every connection."""
        if self._session is not None:
            await self._session.close()

    async def status(self, peer: Peer, timeout: float = 1.0) -> dict[str, Any]:
        """A peer's /v1/peer/status as JSON."""
        async with self.session.get(peer.peer_url + "/v1/peer/status",
                                    timeout=aiohttp.ClientTimeout(total=timeout)) as response:
            self._check_version(peer, response.status, response.headers)
            if response.status != 200:
                raise PeerError(f"{peer.name} answered its status with HTTP {response.status}")
            return await _bounded_json(response, peer)

    async def position(self, peer: Peer, timeout: float = 1.0) -> PeerPosition:
        """A peer's position, validated."""
        return PeerPosition.parse(await self.status(peer, timeout))

    async def position_or_none(self, peer: Peer | None, timeout: float = 1.0) -> PeerPosition | None:
        """``peer``'s position, or None when there is no such peer (DNS does not know it) or it does not answer."""
        if peer is None:
            return None
        try:
            return await self.position(peer, timeout)
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError, PeerError):
            return None

    async def promise(self, peer: Peer, candidate: Promise, timeout: float = 2.0) -> PeerPosition:
        """Ask follower ``peer`` to promise ``candidate``; its position after promising.

        Raises PromiseRefused with the follower's reason and the epoch it holds to.
        """
        params = {"epoch": str(candidate.number), "id": candidate.id, "leader": str(candidate.leader)}
        async with self.session.post(peer.peer_url + "/v1/peer/promise", params=params,
                                     timeout=aiohttp.ClientTimeout(total=timeout)) as response:
            self._check_version(peer, response.status, response.headers)
            body = await _bounded_json(response, peer)
        if response.status == 409 and isinstance(body, dict) and body.get("error") == "promise_refused":
            try:
                promised = Promise.from_json(body.get("promised"))
            except ValueError as exc:
                raise PeerError(f"{peer.name} refused with a malformed promise: {exc}") from None
            raise PromiseRefused(f"{peer.name}: {str(body.get('message', ''))[:300]}", promised,
                                 str(body.get("kind", ""))[:40])
        if response.status != 200:
            raise PeerError(f"{peer.name} answered a promise request with HTTP {response.status}")
        return PeerPosition.parse(body)

    async def takeover(self, peer: Peer, epoch: Promise, lsn: int, timeout: float = 2.0) -> None:
        """Ask follower ``peer`` to take the primary's role over from this pod (a switchover).

        ``epoch`` is the primary's current epoch, ``lsn`` its last write, which
        ``peer`` must hold. Raises PeerError with the follower's reason.
        """
        params = {"epoch": str(epoch.number), "id": epoch.id, "lsn": str(lsn)}
        async with self.session.post(peer.peer_url + "/v1/peer/takeover", params=params,
                                     timeout=aiohttp.ClientTimeout(total=timeout)) as response:
            self._check_version(peer, response.status, response.headers)
            body = await _bounded_json(response, peer)
        if response.status != 202:
            message = body.get("message", "") if isinstance(body, dict) else ""
            raise PeerError(f"{peer.name} refused to take over: {str(message)[:300]}")

    @contextlib.asynccontextmanager
    async def stream(self, peer: Peer, params: dict[str, str],
                     max_msg_size: int) -> AsyncIterator[aiohttp.ClientWebSocketResponse]:
        """The log stream from ``peer`` (a WebSocket). Raises :class:`protocol.Refused` when refused."""
        try:
            async with asyncio.timeout(protocol.SILENCE_SECONDS):
                ws = await self.session.ws_connect(peer.peer_url + "/v1/peer/stream", params=params,
                                                   max_msg_size=max_msg_size, autoping=True)
        except aiohttp.WSServerHandshakeError as exc:
            self._check_version(peer, exc.status, exc.headers)
            refusal = protocol.refusal_of(exc)
            if refusal is not None:
                raise refusal from None
            raise
        try:
            yield ws
        finally:
            await ws.close()

    async def snapshot(self, peer: Peer, max_frame: int) -> tuple[int, Lineage, AsyncIterator[list[tuple[bytes, bytes]]],
                                                                  aiohttp.ClientResponse, Configuration | None]:
        """Open a snapshot stream: (lsn, lineage, chunk iterator, response to release, configuration)."""
        response = await self.session.get(peer.peer_url + "/v1/peer/snapshot",
                                          timeout=aiohttp.ClientTimeout(total=None, sock_read=30, connect=2))
        try:
            self._check_version(peer, response.status, response.headers)
            if response.status != 200:
                raise PeerError(f"{peer.name} answered a snapshot request with HTTP {response.status}")
            kind, payload = await protocol.read_frame(response.content, max_frame)
            if kind != protocol.FRAME_HEADER:
                raise PeerError("snapshot stream does not start with a header")
            header = protocol.parse_json_frame(payload)
            lsn = header.get("lsn")
            if not isinstance(lsn, int) or lsn < 0:
                raise PeerError("snapshot header has no LSN")
            lineage = Lineage.from_json(header.get("lineage"))
            raw_membership = header.get("membership")
            membership = None if raw_membership is None else Configuration.from_json(raw_membership)
        except BaseException:
            response.release()
            raise

        async def chunks() -> AsyncIterator[list[tuple[bytes, bytes]]]:
            count = 0
            while True:
                kind, payload = await protocol.read_frame(response.content, max_frame)
                if kind == protocol.FRAME_RECORDS:
                    records = protocol.decode_records(payload)
                    count += len(records)
                    yield records
                elif kind == protocol.FRAME_END:
                    if protocol.parse_json_frame(payload).get("count") != count:
                        raise ValueError("snapshot record count does not match its end frame")
                    return
                else:
                    raise ValueError(f"unexpected snapshot frame {kind}")

        return lsn, lineage, chunks(), response, membership


async def _bounded_json(response: aiohttp.ClientResponse, peer: Peer) -> Any:
    """A peer's JSON answer, read up to :data:`protocol.STATUS_MAX` bytes (a peer cannot make us hold more)."""
    body = bytearray()
    async for chunk in response.content.iter_chunked(64 * 1024):
        body += chunk
        if len(body) > protocol.STATUS_MAX:
            raise PeerError(f"{peer.name}'s answer is larger than {protocol.STATUS_MAX} bytes")
    try:
        return json.loads(body)
    except ValueError as exc:
        raise PeerError(f"{peer.name}'s answer is not JSON: {exc}") from None
