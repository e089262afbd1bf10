"""A small HTTP client of the kvstore API (aiohttp), used by the CLI, tests and chaos."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any, Mapping
from urllib.parse import quote

import aiohttp
from multidict import CIMultiDict


@dataclass
class Reply:
    """One answer: status, headers, raw body and the decoded JSON when it is JSON."""

    status: int
    headers: Mapping[str, str]
    body: bytes
    data: Any = field(default=None)

    @property
    def version(self) -> int | None:
        """The key's version from the ETag, if any."""
        tag = self.headers.get("ETag")
        return int(tag.strip('"')) if tag and tag.strip('"').isdigit() else None

    @property
    def lsn(self) -> int | None:
        """The answering replica's LSN."""
        value = self.headers.get("X-Kv-Lsn")
        return int(value) if value is not None else None


def never_resend(session: aiohttp.ClientSession) -> aiohttp.ClientSession:
    """Stop aiohttp from silently resending a PUT/DELETE once a connection drops mid-request.

    A resent write may already have been applied, and the resend's "connection
    refused" would read as "never sent": for a database client an unknown
    outcome must stay unknown. aiohttp has no public switch for this
    (aio-libs/aiohttp#10790), hence the private attribute.
    """
    session._retry_connection = False  # type: ignore[attr-defined]
    return session


def why_unanswered(exc: BaseException) -> str:
    """What went wrong with a call, in a few words a user can act on (not aiohttp's internals).

    ``Cannot connect to host 127.0.0.10:8081 ssl:default [Connect call failed
    ('127.0.0.10', 8081)]`` becomes ``connection refused``.
    """
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return "its host name does not resolve"
    if isinstance(exc, aiohttp.ClientConnectorError):
        exc = exc.os_error
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, (asyncio.TimeoutError, aiohttp.ServerTimeoutError)):
        return "no answer in time"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "it closed the connection without answering"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return "its answer was cut off"
    if isinstance(exc, ConnectionResetError):
        return "the connection was reset"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror[:1].lower() + exc.strerror[1:]
    return type(exc).__name__


def key_path(key: str) -> str:
    """``/v1/kv/<key>`` with the key percent-encoded (``/`` kept, it is allowed)."""
    return "/v1/kv/" + quote(key, safe="/")


class Client:
    """Talks to one replica's client port; connections are reused."""

    def __init__(self, base_url: str, timeout: float = 10.0,
                 session: aiohttp.ClientSession | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self._own_session = session is None
        self._session = session or never_resend(aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=timeout)))

    async def close(self) -> None:
        """Close the underlying session if this client made it."""
        if self._own_session:
            await self._session.close()

    async def __aenter__(self) -> "Client":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def request(self, method: str, path: str, *, params: Mapping[str, Any] | None = None,
                      data: bytes | None = None, headers: Mapping[str, str] | None = None) -> Reply:
        """Send one request and read the whole answer."""
        async with self._session.request(method, self.base_url + path, params=params, data=data,
                                         headers=headers) as response:
            body = await response.read()
            parsed = None
            if response.content_type == "application/json":
                try:
                    parsed = json.loads(body)
                except ValueError:
                    parsed = None
            # Case-insensitive, as HTTP header names are: aiohttp's server sends ``Etag``.
            return Reply(response.status, CIMultiDict(response.headers), body, parsed)

    async def put(self, key: str, value: bytes, *, w: str | None = None,
                  if_match: int | None = None, create_only: bool = False) -> Reply:
        """PUT a value; ``if_match`` makes it a compare-and-set."""
        return await self.request("PUT", key_path(key), params=_params(w=w), data=value,
                                  headers=_conditions(if_match, create_only))

    async def delete(self, key: str, *, w: str | None = None, if_match: int | None = None) -> Reply:
        """DELETE a key."""
        return await self.request("DELETE", key_path(key), params=_params(w=w),
                                  headers=_conditions(if_match, False))

    async def get(self, key: str, *, consistency: str | None = None,
                  min_lsn: int | None = None) -> Reply:
        """GET a key's value."""
        return await self.request("GET", key_path(key),
                                  params=_params(consistency=consistency, min_lsn=min_lsn))

    async def list(self, prefix: str = "", start_after: str | None = None,
                   limit: int | None = None) -> Reply:
        """One page of keys."""
        return await self.request("GET", "/v1/kv", params=_params(
            prefix=prefix or None, start_after=start_after, limit=limit))

    async def status(self) -> Reply:
        """This replica's status."""
        return await self.request("GET", "/v1/status")


def _params(**values: Any) -> dict[str, str]:
    return {name: str(value) for name, value in values.items() if value is not None}


def _conditions(if_match: int | None, create_only: bool) -> dict[str, str]:
    headers = {}
    if if_match is not None:
        headers["If-Match"] = f'"{if_match}"'
    if create_only:
        headers["If-None-Match"] = "*"
    return headers
