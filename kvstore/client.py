"""A small HTTP client of the kvstore API (aiohttp), used by the CLI, tests and chaos."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Mapping, Sequence
from urllib.parse import quote

import aiohttp
from multidict import CIMultiDict


# The longest watch line: a put of the largest value a replica may allow, in base64, with its key.
MAX_WATCH_LINE = 96 * 1024 * 1024


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
        self.timeout = timeout
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
                  if_match: int | None = None, create_only: bool = False, ttl: int | None = None) -> Reply:
        """PUT a value; ``if_match`` makes it a compare-and-set, ``ttl`` (seconds) makes it expire."""
        return await self.request("PUT", key_path(key), params=_params(w=w, ttl=ttl), data=value,
                                  headers=_conditions(if_match, create_only))

    async def txn(self, compare: Sequence[Mapping[str, Any]] = (), success: Sequence[Mapping[str, Any]] = (),
                  failure: Sequence[Mapping[str, Any]] = (), *, w: str | None = None) -> Reply:
        """POST /v1/txn: ``compare`` like ``{"key": "a", "version": 7}``, ``{"key": "b", "absent": True}`` or
        ``{"key": "c", "value": "x"}``; each branch a list like ``{"op": "put", "key": "a", "value": "1"}`` or
        ``{"op": "delete", "key": "b"}``. The answer's ``data`` says which branch ran and each key's version."""
        body = {"compare": list(compare), "success": list(success), "failure": list(failure)}
        return await self.request("POST", "/v1/txn", params=_params(w=w), data=json.dumps(body).encode(),
                                  headers={"Content-Type": "application/json"})

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

    @contextlib.asynccontextmanager
    async def open_stream(self, path: str, params: Mapping[str, Any] | None = None,
                          read_timeout: float | None = None) -> AsyncIterator[aiohttp.ClientResponse]:
        """A GET whose answer is read as it arrives (a watch, a backup): no total timeout, only
        ``read_timeout`` (default: the client's) between two reads."""
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.timeout,
                                        sock_read=read_timeout or self.timeout)
        async with self._session.get(self.base_url + path, params=params, timeout=timeout) as response:
            yield response

    async def watch(self, prefix: str = "", *, from_lsn: int | None = None, history: str | None = None,
                    values: bool = True, read_timeout: float = 30.0) -> AsyncIterator[dict[str, Any]]:
        """One watch connection: every line (start, put, delete, keepalive) as a dict, values decoded.

        Raises :class:`WatchError` when the replica refuses the watch or ends
        it with an error line; a dropped connection raises aiohttp's errors.
        """
        params = _params(prefix=prefix or None, from_lsn=from_lsn, history=history or None,
                         values=None if values else "false")
        async with self.open_stream("/v1/watch", params, read_timeout) as response:
            if response.status != 200:
                body = await response.read()
                try:
                    data = json.loads(body)
                except ValueError:
                    data = {}
                raise WatchError(response.status, data.get("error", "http_error"),
                                 data.get("message", f"HTTP {response.status}"),
                                 resumable=response.status == 503, lsn=data.get("lsn"),
                                 history=data.get("history"))
            while raw := await response.content.readline(max_line_length=MAX_WATCH_LINE):
                line = json.loads(raw)
                if line.get("type") == "error":
                    raise WatchError(200, line["error"], line["message"], resumable=line.get("resumable", False),
                                     lsn=line.get("lsn"))
                if "value" in line:
                    line["value"] = base64.b64decode(line["value"])
                yield line
            raise WatchError(200, "ended", "the watch ended without a reason", resumable=True)


class WatchError(Exception):
    """A watch was refused (``status`` is its HTTP status) or ended with an error line (status 200).

    ``resumable``: watching again from the last position loses nothing;
    otherwise (``log_compacted``, ``history_changed``, a bad parameter) the
    watcher must re-read the keys first.
    """

    def __init__(self, status: int, code: str, message: str, resumable: bool,
                 lsn: int | None = None, history: str | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.resumable = resumable
        self.lsn = lsn
        self.history = history


class WatchPosition:
    """Where a watch stands, so that one resumed after a cut skips nothing and shows nothing twice.

    A transaction is one LSN with a line per key, and a cut may fall between
    them: until the stream reads past the LSN of its last event, a resumed
    watch asks for that LSN again and skips the keys already read there.
    """

    def __init__(self, from_lsn: int | None = None, history: str | None = None) -> None:
        self.done = None if from_lsn is None else from_lsn - 1  # every line up to this LSN was read
        self.current: int | None = None  # the LSN of the last event taken, maybe not all of its keys yet
        self.seen: set[str] = set()  # the keys taken at ``current``
        self.history = history  # the history of the position: the one to resume with

    def resume_from(self) -> int | None:
        """The ``from_lsn`` to watch again with (None: from now)."""
        if self.current is not None:
            return self.current
        return None if self.done is None else self.done + 1

    def take(self, line: Mapping[str, Any]) -> bool:
        """Note one line of the stream; False for an event that was read before the cut (skip it)."""
        kind = line["type"]
        if kind in ("start", "keepalive"):
            # The history changes past a fork: resume with the position's own.
            self.history = line.get("history") or self.history
            self.done = line["lsn"] if self.done is None else max(self.done, line["lsn"])
            if self.current is not None and self.done >= self.current:
                self.current, self.seen = None, set()  # every line of it was read
            return True
        if kind not in ("put", "delete"):
            return True
        if line["version"] == self.current and line["key"] in self.seen:
            return False
        if line["version"] != self.current:
            if self.current is not None:
                self.done = self.current
            self.current, self.seen = line["version"], set()
        self.seen.add(line["key"])
        return True

    def restart(self, lsn: int, history: str | None) -> None:
        """Start over after a re-read of the range at ``lsn`` (a watch that could not resume)."""
        self.done, self.current, self.seen, self.history = lsn, None, set(), history


async def follow(urls: Sequence[str], prefix: str = "", *, from_lsn: int | None = None,
                 history: str | None = None, values: bool = True, give_up_after: float = 60.0,
                 timeout: float = 10.0) -> AsyncIterator[dict[str, Any]]:
    """Watch ``prefix`` through any of ``urls``, reconnecting from the last position: yields puts and deletes.

    After a dropped connection, a stopping pod or a slow-watcher cut-off it
    watches again, from the next pod in ``urls``, from where it was (with
    that position's history, see :class:`WatchPosition`), so nothing is
    skipped or shown twice. Gives up (raising the last error) after
    ``give_up_after`` seconds without a connection; raises
    :class:`WatchError` at once when the watcher must re-read first.
    """
    position = WatchPosition(from_lsn, history)
    failing_since: float | None = None
    attempt = 0
    while True:
        url = urls[attempt % len(urls)]
        attempt += 1
        try:
            async with Client(url, timeout=timeout) as client:
                async for line in client.watch(prefix, from_lsn=position.resume_from(),
                                               history=position.history, values=values):
                    failing_since = None
                    if position.take(line) and line["type"] not in ("start", "keepalive"):
                        yield line
        except WatchError as exc:
            if not exc.resumable:
                raise
            error: Exception = exc
        except (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError, ValueError) as exc:
            error = exc
        now = time.monotonic()
        failing_since = failing_since or now
        if now - failing_since > give_up_after:
            raise error
        await asyncio.sleep(min(1.0, 0.1 * attempt))


def _params(**values: Any) -> dict[str, str]:
    return {name: str(value) for name, value in values.items() if value is not None}


def _conditions(if_match: int | None, create_only: bool) -> dict[str, str]:
    headers = {}
    if if_match is not None:
        headers["If-Match"] = f'"{if_match}"'
    if create_only:
        headers["If-None-Match"] = "*"
    return headers
