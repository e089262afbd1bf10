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
from kvstore.lineage import Lineage
from kvstore.replication import protocol


class PeerError(Exception):
    """A peer answered something this replica cannot use (wrong status, malformed body)."""


@dataclass(frozen=True)
class PeerPosition:
    """What a peer says of its log: where it is, since when it keeps it, and its epochs."""

    name: str
    state: str
    lsn: int
    log_start: int
    lineage: Lineage

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
            return cls(str(body.get("name", "")), str(body.get("state", "")), lsn, log_start,
                       Lineage.from_json(body.get("lineage", [])))
        except (KeyError, TypeError, ValueError) as exc:
            raise PeerError(f"malformed peer status: {exc}") from None


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
        """A peer's /v1/peer/status as JSON."""
        async with self.session.get(peer.peer_url + "/v1/peer/status",
                                    timeout=aiohttp.ClientTimeout(total=timeout)) as response:
            if response.status != 200:
                raise PeerError(f"{peer.name} answered its status with HTTP {response.status}")
            body = bytearray()
            async for chunk in response.content.iter_chunked(64 * 1024):
                body += chunk
                if len(body) > protocol.STATUS_MAX:  # a peer cannot make us hold more
                    raise PeerError(f"{peer.name}'s status is larger than {protocol.STATUS_MAX} bytes")
            try:
                return json.loads(body)
            except ValueError as exc:
                raise PeerError(f"{peer.name}'s status is not JSON: {exc}") from None

    async def position(self, peer: Peer, timeout: float = 1.0) -> PeerPosition:
        """A peer's position, validated."""
        return PeerPosition.parse(await self.status(peer, timeout))

    @contextlib.asynccontextmanager
    async def stream(self, peer: Peer, params: dict[str, str],
                     max_msg_size: int) -> AsyncIterator[aiohttp.ClientWebSocketResponse]:
        """The log stream from ``peer`` (a WebSocket). Raises :class:`protocol.Refused` when refused."""
        try:
            async with asyncio.timeout(protocol.SILENCE_SECONDS):
                ws = await self.session.ws_connect(peer.peer_url + "/v1/peer/stream", params=params,
                                                   max_msg_size=max_msg_size, autoping=True)
        except aiohttp.WSServerHandshakeError as exc:
            refusal = protocol.refusal_of(exc)
            if refusal is not None:
                raise refusal from None
            raise
        try:
            yield ws
        finally:
            await ws.close()

    async def snapshot(self, peer: Peer, max_frame: int) -> tuple[int, Lineage, AsyncIterator[list[tuple[bytes, bytes]]],
                                                                  aiohttp.ClientResponse]:
        """Open a snapshot stream: (lsn, lineage, chunk iterator, response to release)."""
        response = await self.session.get(peer.peer_url + "/v1/peer/snapshot",
                                          timeout=aiohttp.ClientTimeout(total=None, sock_read=30, connect=2))
        try:
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

        return lsn, lineage, chunks(), response
