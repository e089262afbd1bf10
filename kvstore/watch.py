"""``GET /v1/watch``: every committed change under a prefix, in log order, as newline-delimited JSON.

A watch is served by any pod from its own log, with the rule reads have: it
never shows an entry this pod does not know to be committed (held by a
majority; see ``Replica.committed_limit``). It pulls from the log in bounded
batches, so a watcher holds at most one batch in memory; one that does not
take its stream for ``KV_WATCH_SEND_TIMEOUT`` is cut off with a reason, and
one that falls behind the retained log is told to re-read. Lines:

- ``{"type": "start", "pod", "history", "lsn"}``: events follow from ``lsn + 1``,
  and ``history`` is the history of ``lsn`` (what to pass back when resuming);
- ``{"type": "put", "key", "version", "value"}`` (base64; left out with
  ``values=false``) and ``{"type": "delete", "key", "version"}``; a
  transaction is one such line per key it writes, all with its LSN;
- ``{"type": "keepalive", "lsn", "history"}`` after ``KV_WATCH_KEEPALIVE``
  seconds without a line, and at once when the stream passes into another
  history (a fork): everything up to ``lsn`` was scanned, and ``lsn``
  belongs to ``history``;
- ``{"type": "error", "error", "message", "lsn"}``, the last line of a watch
  that ends: ``resumable`` says whether watching again from ``lsn + 1``
  (with the same history) loses nothing.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
from typing import Any

from aiohttp import web

from kvstore import storage
from kvstore.aio import cancel_and_wait
from kvstore.api import unavailable
from kvstore.lineage import Lineage
from kvstore.refusals import NoPrimary
from kvstore.replica import Replica
from kvstore.routing import ApiError, Router, parse_int, parse_query

log = logging.getLogger("kvstore.watch")

BATCH_ENTRIES = 1000  # log entries read per step of one watch
BATCH_BYTES = 1024 * 1024
CONTENT_TYPE = "application/x-ndjson"
_HISTORY = re.compile(r"^[0-9a-f]{1,32}$")
_BOOLEANS = {"true": True, "false": False}


def event_lines(entry: storage.LogEntry, prefix: bytes, values: bool) -> list[bytes]:
    """The entry's key changes under ``prefix``, one line of JSON each, at the entry's LSN.

    A PUT or DELETE is one change, a transaction one per key it writes (all
    with its LSN); configuration entries are never shown.
    """
    out = []
    for change in storage.changes_of(entry):
        if not change.key.startswith(prefix):
            continue
        event: dict[str, Any] = {"type": "delete" if change.value is None else "put",
                                 "key": change.key.decode("utf-8", "replace"), "version": entry.lsn}
        if values and change.value is not None:
            event["value"] = base64.b64encode(change.value).decode("ascii")
        out.append(json_line(event))
    return out


def json_line(body: dict[str, Any]) -> bytes:
    """A dict as one line of compact JSON."""
    return json.dumps(body, separators=(",", ":")).encode() + b"\n"


def history_at(lineage: Lineage, lsn: int) -> str | None:
    """The history the entry at ``lsn`` belongs to in this lineage ("" before any data; None: unknown)."""
    if lsn == 0:
        return ""
    epoch = lineage.at(lsn)
    return epoch.history if epoch is not None else None


class WatchEnded(Exception):
    """The watch stops; the reason is sent as its last line."""

    def __init__(self, code: str, message: str, resumable: bool) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.resumable = resumable


class Watches:
    """The watches one pod serves: the route, the wake-up on commits, the count and the shutdown."""

    def __init__(self, node: Replica) -> None:
        self.node = node
        self.config = node.config
        self.count = 0
        self._changed = asyncio.Event()
        self._closing = False
        self._durable: asyncio.Task[None] | None = None
        if node.replication is not None:
            node.replication.server.commit_listeners.append(self.signal)

    def add_client_routes(self, router: Router) -> None:
        """Mount ``GET /v1/watch`` on the client port."""
        router.add("GET", "/v1/watch", self.watch)

    def signal(self) -> None:
        """The committed LSN or this pod's own may have moved: every watch looks again."""
        if not self.count and not self._closing:  # called on every ack: nothing to do for nobody
            return
        event, self._changed = self._changed, asyncio.Event()
        event.set()

    def close(self) -> None:
        """End every watch now (a stopping pod): each gets a resumable ``shutting_down`` line."""
        self._closing = True
        self.signal()

    async def stop(self) -> None:
        """Stop the background task."""
        self.close()
        await cancel_and_wait(self._durable)

    async def _follow_durable(self) -> None:
        """This pod's own LSN moving can move what a watch may show (a secondary applies after it heard)."""
        store = self.node.store
        while self.count:
            await store.wait_for_lsn(store.lsn + 1, 1.0)
            self.signal()
        self._durable = None

    # ------------------------------------------------------------------ the route
    async def watch(self, request: web.BaseRequest) -> web.StreamResponse:
        """``GET /v1/watch?prefix=&from_lsn=&history=&values=``: stream changes under the prefix."""
        params = parse_query(request, ("prefix", "from_lsn", "history", "values"))
        if request.body_exists and request.content_length != 0:
            raise ApiError(400, "unexpected_body", "GET takes no request body")
        prefix = params.get("prefix", "").encode()  # one longer than any key matches none, as in a listing
        from_lsn = parse_int(params, "from_lsn", 1, 2**63 - 1, 0) if "from_lsn" in params else None
        history = params.get("history")
        if history is not None and not _HISTORY.match(history):
            raise ApiError(400, "bad_parameter", "history must be the hex id a read's X-Kv-History header gave")
        values = _BOOLEANS.get(params.get("values", "true").lower())
        if values is None:
            raise ApiError(400, "bad_parameter", "values must be true or false")
        try:
            self.node.check_local_read()
        except NoPrimary as exc:
            raise unavailable(exc) from None
        if self._closing:
            raise ApiError(503, "shutting_down", "this pod is stopping; watch another pod or retry",
                           headers={"Retry-After": "1"})
        if self.count >= self.config.max_watchers:
            raise ApiError(503, "too_many_watchers",
                           f"this pod already serves {self.count} watches (KV_MAX_WATCHERS); "
                           "watch another pod or retry later", headers={"Retry-After": "5"})
        position = self.node.committed_limit() if from_lsn is None else from_lsn - 1
        line = self._check_start(position, history)
        store = self.node.store
        headers = {"X-Kv-Pod": self.config.pod_name, "X-Kv-Role": self.node.role,
                   "X-Kv-Lsn": str(self.node.committed_limit()), "X-Kv-History": store.history_id,
                   "Content-Type": CONTENT_TYPE, "Cache-Control": "no-store", "X-Accel-Buffering": "no"}
        if request.method == "HEAD":  # the checks above, without a stream that would never end
            return web.Response(headers=headers)
        response = web.StreamResponse(headers=headers)
        await response.prepare(request)
        self.count += 1
        if self._durable is None:
            self._durable = asyncio.create_task(self._follow_durable(), name="watch-durable")
        try:
            await response.write(json_line({"type": "start", "pod": self.config.pod_name,
                                            "history": line or store.history_id, "lsn": position}))
            await self._stream(request, response, prefix, position, line, values)
        except (ConnectionError, RuntimeError):  # the watcher went away
            pass
        finally:
            self.count -= 1
        return response

    def _check_start(self, position: int, history: str | None) -> str:
        """The history of the watcher's position, after checking it may resume there; else a 409/410."""
        store = self.node.store
        line = history_at(store.lineage, position) or ""
        if history is not None and position > 0 and line != history:
            raise self._reread(409, "history_changed",
                               f"lsn {position} of history {history} is not on this replica's line of "
                               f"writes (history {store.history_id or 'none'})")
        if position + 1 < store.log_start and position < store.lsn:
            raise self._reread(410, "log_compacted",
                               f"the log here keeps entries from lsn {store.log_start} on; those after "
                               f"{position} are gone", log_start=store.log_start)
        return line

    def _reread(self, status: int, code: str, why: str, **extra: Any) -> ApiError:
        return ApiError(status, code, f"{why}: re-read the keys under the prefix (GET /v1/kv?prefix=..., then "
                        "each key), then watch again with from_lsn set to the X-Kv-Lsn of that read plus one "
                        "and history set to its X-Kv-History", lsn=self.node.committed_limit(),
                        history=self.node.store.history_id, **extra)

    async def _stream(self, request: web.BaseRequest, response: web.StreamResponse, prefix: bytes,
                      position: int, line: str, values: bool) -> None:
        """Send the changes after ``position`` as they are committed, until the watch ends."""
        store = self.node.store
        lineage_version = store.lineage_version
        loop = asyncio.get_running_loop()
        last_sent = loop.time()
        try:
            while True:
                if self._closing:
                    raise WatchEnded("shutting_down", "this pod is stopping; watch again (another pod)", True)
                changed = self._changed  # taken before looking, so no wake-up is missed
                if store.lineage_version != lineage_version:
                    lineage_version = store.lineage_version
                    # The entries up to ``position`` were shown: they must still be this replica's.
                    here = history_at(store.lineage, position) or ""
                    if not line:  # nothing was known of the position yet (an empty replica)
                        line = here
                    elif here != line:
                        raise WatchEnded("history_changed",
                                         f"this replica's line of writes changed (now history "
                                         f"{store.history_id}) and no longer holds lsn {position} of history "
                                         f"{line}: re-read the keys and watch again from the X-Kv-Lsn of "
                                         "that read plus one", False)
                limit = self.node.committed_limit()
                if limit > position:
                    try:
                        raws = await store.log_after(position, BATCH_ENTRIES, BATCH_BYTES)
                    except storage.LogTruncated:
                        raise WatchEnded("log_compacted",
                                         f"this watch fell behind the retained log (it starts at lsn "
                                         f"{store.log_start}): re-read the keys and watch again from the "
                                         "X-Kv-Lsn of that read plus one", False) from None
                    if store.lineage_version != lineage_version:
                        continue  # read while the log changed under us (a snapshot): checked again above
                    out = []
                    for raw in raws:
                        entry = storage.LogEntry.decode(raw)
                        if entry.lsn > limit:
                            break
                        position = entry.lsn
                        out.extend(event_lines(entry, prefix, values))
                    here = history_at(store.lineage, position)
                    if here and here != line:
                        # Past a fork (or the first data): the watcher resumes with this history from now on.
                        line = here
                        out.append(json_line({"type": "keepalive", "lsn": position, "history": line}))
                    if out:
                        await self._send(response, b"".join(out))
                        last_sent = loop.time()
                    continue
                wait = self.config.watch_keepalive - (loop.time() - last_sent)
                if wait <= 0:
                    await self._send(response, json_line({"type": "keepalive", "lsn": position, "history": line}))
                    last_sent = loop.time()
                    continue
                try:
                    await asyncio.wait_for(changed.wait(), wait)
                except asyncio.TimeoutError:
                    pass
        except WatchEnded as end:
            await self._end(request, response, position, end)

    async def _send(self, response: web.StreamResponse, data: bytes) -> None:
        """Write, or end the watch when the watcher does not take it in time (its buffer stays bounded)."""
        try:
            await asyncio.wait_for(response.write(data), self.config.watch_send_timeout)
        except asyncio.TimeoutError:
            raise WatchEnded("slow_watcher",
                             f"this watcher did not read its stream for {self.config.watch_send_timeout:g}s "
                             "(KV_WATCH_SEND_TIMEOUT); read faster, then watch again", True) from None

    async def _end(self, request: web.BaseRequest, response: web.StreamResponse, position: int,
                   end: WatchEnded) -> None:
        """The last line, then the end of the stream; a watcher that does not read is cut off."""
        log.info("watch from %s ended at lsn %d: %s", request.remote, position, end.code)
        last = json_line({"type": "error", "error": end.code, "message": end.message, "lsn": position,
                          "resumable": end.resumable})
        try:
            await asyncio.wait_for(response.write(last), 1.0)
            await asyncio.wait_for(response.write_eof(), 1.0)
        except asyncio.TimeoutError:
            # Still not reading: close the connection (what it has buffered, our last line
            # included, is flushed first), and drop it for good if it never reads.
            transport = request.transport
            if transport is not None:
                transport.close()
                asyncio.get_running_loop().call_later(self.config.watch_send_timeout, transport.abort)
