"""The primary's table of follower positions, which write concerns wait on."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping

from kvstore.aio import wake
from kvstore.identity import parse_ordinal
from kvstore.replication.protocol import ACK_PARAM_LIMIT


@dataclass
class FollowerPosition:
    """What an upstream knows of one follower: its durable LSN and when it said so."""

    lsn: int
    seen: float
    via: str  # the follower itself, or the replica that passed its ack on


class AckTable:
    """Followers' acknowledged LSNs; write concerns wait on it.

    Which acks count, and how many, is the configuration's business
    (membership.py): a waiter brings a function that says up to which LSN its
    concern is met with the positions recorded so far.
    """

    def __init__(self) -> None:
        self.positions: dict[str, FollowerPosition] = {}
        self.by_ordinal: dict[int, int] = {}  # the same LSNs by ordinal: what the configuration counts
        self._changed = asyncio.Event()
        # Writes waiting for their concern: future -> (lsn, met). Woken by record() itself;
        # a wait_for per write cost the primary ~7% of its CPU.
        self._waiters: dict[asyncio.Future[None], tuple[int, Callable[[], int]]] = {}
        self.membership = 0  # bumped whenever the set of followers known here changes

    def record(self, name: str, lsn: int, via: str) -> None:
        """Note that ``name`` holds everything up to ``lsn`` durably."""
        current = self.positions.get(name)
        if current is None:
            self.membership += 1
        if current is None or lsn > current.lsn or via == name:
            # A direct ack replaces (a follower restored from a snapshot may go
            # back); a relayed one only moves forward, and one that did not move
            # says nothing new (a cascade may pass on a pod's last position after it
            # was deleted: it must not look alive).
            self.positions[name] = FollowerPosition(lsn, time.monotonic(), via)
            try:
                self.by_ordinal[parse_ordinal(name)] = lsn
            except ValueError:
                pass  # not a pod of this StatefulSet: counts for nothing
            event, self._changed = self._changed, asyncio.Event()
            event.set()
            if self._waiters:
                self._wake_waiters()

    def forget(self, name: str) -> None:
        """Drop ``name``'s position: DNS no longer lists it (deleted, or hidden); a live pod acks again at once."""
        if self.positions.pop(name, None) is not None:
            self.membership += 1
        with contextlib.suppress(ValueError):
            self.by_ordinal.pop(parse_ordinal(name), None)

    def _wake_waiters(self) -> None:
        values: dict[Callable[[], int], int] = {}  # one count per kind of concern, not per write
        for future, (lsn, met) in list(self._waiters.items()):
            if met not in values:
                values[met] = met()
            if values[met] >= lsn:
                del self._waiters[future]
                if not future.done():
                    future.set_result(None)

    def holders(self, lsn: int, ordinals: Iterable[int]) -> int:
        """How many of ``ordinals`` (followers) hold ``lsn``."""
        return sum(1 for o in ordinals if self.by_ordinal.get(o, 0) >= lsn)

    async def wait(self, lsn: int, met: Callable[[], int], timeout: float) -> bool:
        """Wait until ``met()`` (the highest LSN a concern is met for) reaches ``lsn``; whether it did."""
        if met() >= lsn:
            return True
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self._waiters[future] = (lsn, met)
        timer = loop.call_later(timeout, wake, future)
        try:
            await future
        finally:
            timer.cancel()
            self._waiters.pop(future, None)
        return met() >= lsn

    async def wait_change(self) -> None:
        """Return after the next recorded ack."""
        await self._changed.wait()

    def downstream_of(self, me: str, rounds: Mapping[str, int]) -> str:
        """The acks to pass upstream: every follower's position we know, with the newest round it echoed."""
        items = [f"{name}:{p.lsn}/{rounds.get(name, 0)}" for name, p in sorted(self.positions.items())
                 if name != me]
        return ",".join(items[:ACK_PARAM_LIMIT])
