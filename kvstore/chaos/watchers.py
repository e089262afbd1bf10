"""The chaos watchers: long-lived ``GET /v1/watch`` streams that record every line they read.

Each watcher follows the prefix the way the README tells a client to: it
starts from now on one pod; after a cut connection or a resumable end
(``shutting_down``, ``slow_watcher``, a 503) it watches again on the next pod
from its last position plus one, with that position's history; after a
non-resumable one (409 ``history_changed``, 410 ``log_compacted``, or such an
error line) it re-reads the prefix (``GET /v1/kv?prefix=``) and watches again
from that read's ``X-Kv-Lsn`` plus one with its ``X-Kv-History``, recorded as
a ``resync``. Watchers start on different pods and take the pods from the
same ``urls()`` as the clients, so the nemesis aims them too.
"""

from __future__ import annotations

import asyncio
from typing import Callable

import aiohttp

from kvstore.chaos.history import WatchRecord
from kvstore.client import Client, WatchError, WatchPosition

# An idle stream sends a keepalive every KV_WATCH_KEEPALIVE seconds (default 10, a chaos cluster 1);
# a stream silent for longer is taken as cut and watched again elsewhere.
READ_TIMEOUT = 12.0
LIST_PAGES = 100  # a re-read reads at most this many pages of 1000 keys


class Watchers:
    """``count`` watchers of ``prefix``; ``log`` receives their records in the order they happen."""

    def __init__(self, urls: Callable[[], dict[str, str]], clock: Callable[[], float], count: int,
                 prefix: str) -> None:
        self.urls = urls
        self.clock = clock
        self.count = count
        self.prefix = prefix
        self.log: list[WatchRecord] = []

    def _record(self, watcher: int, kind: str, pod: str, **kw: object) -> WatchRecord:
        record = WatchRecord(watcher=watcher, type=kind, time=round(self.clock(), 6), pod=pod,
                             prefix=self.prefix, **kw)
        self.log.append(record)
        return record

    async def run(self, session: aiohttp.ClientSession, deadline: float) -> None:
        """Every watcher until ``deadline`` (on ``clock``)."""
        await asyncio.gather(*(self._watch(i, session, deadline) for i in range(self.count)))

    async def _pick(self, turn: int, deadline: float) -> tuple[str, str] | None:
        """The pod for the ``turn``-th connection (watcher ``i`` starts on the ``i``-th pod and moves on),
        once there is one; None at the deadline."""
        while self.clock() < deadline:
            urls = self.urls()
            if urls:
                names = sorted(urls)
                name = names[turn % len(names)]
                return name, urls[name]
            await asyncio.sleep(0.2)
        return None

    async def _watch(self, index: int, session: aiohttp.ClientSession, deadline: float) -> None:
        position = WatchPosition()  # where the stream stands (from now at first)
        turn = index
        while (picked := await self._pick(turn, deadline)) is not None:
            turn += 1
            pod, url = picked
            from_lsn = position.resume_from()
            try:
                async with asyncio.timeout(max(0.0, deadline - self.clock())):
                    async for line in Client(url, session=session).watch(
                            self.prefix, from_lsn=from_lsn, history=position.history, read_timeout=READ_TIMEOUT):
                        kind = line["type"]
                        if not position.take(line):
                            continue  # read before the cut
                        if kind in ("start", "keepalive"):
                            self._record(index, kind, pod, lsn=line["lsn"], history=line.get("history"),
                                         from_lsn=from_lsn if kind == "start" else None)
                        elif kind in ("put", "delete"):
                            value = line.get("value")
                            self._record(index, kind, pod, key=line["key"], version=line["version"],
                                         value=value.decode(errors="replace") if value is not None else None)
            except WatchError as exc:
                self._record(index, "end", pod, lsn=exc.lsn, status=exc.status, error=exc.code,
                             resumable=exc.resumable)
                if not exc.resumable:
                    again = await self._resync(index, session, deadline, exc.code, turn)
                    if again is None:
                        return
                    position.restart(*again)
            except asyncio.TimeoutError:
                if self.clock() >= deadline:
                    self._record(index, "end", pod, error="deadline", resumable=True)
                    return
                self._record(index, "end", pod, error="read_timeout", resumable=True)
            except (aiohttp.ClientError, OSError, ValueError) as exc:
                self._record(index, "end", pod, error=type(exc).__name__, resumable=True)
            await asyncio.sleep(0.1)

    async def _resync(self, index: int, session: aiohttp.ClientSession, deadline: float, reason: str,
                      turn: int) -> tuple[int, str | None] | None:
        """Re-read the prefix on some pod: (the read's LSN, its history), or None at the deadline."""
        while (picked := await self._pick(turn, deadline)) is not None:
            turn += 1
            pod, url = picked
            client = Client(url, session=session)
            try:
                reply = await client.list(self.prefix, limit=1000)
                status, lsn, history = reply.status, reply.lsn, reply.headers.get("X-Kv-History") or None
                for _ in range(LIST_PAGES):  # the rest of the keys; the first page's LSN bounds them all
                    if reply.status != 200 or not isinstance(reply.data, dict) or not reply.data.get("more"):
                        break
                    reply = await client.list(self.prefix, start_after=reply.data["next_start_after"], limit=1000)
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
                self._record(index, "end", pod, error=f"re-read: {type(exc).__name__}", resumable=True)
            else:
                if status == 200 and lsn is not None:
                    self._record(index, "resync", pod, lsn=lsn, history=history, error=reason)
                    return lsn, history
                self._record(index, "end", pod, status=status, error=f"re-read: {status}", resumable=True)
            await asyncio.sleep(0.2)
        return None
