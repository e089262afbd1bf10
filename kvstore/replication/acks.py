"""The primary's table of follower positions, which write concerns wait on."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Mapping

from kvstore.aio import wake
from kvstore.replication.protocol import ACK_PARAM_LIMIT


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
        # Pods DNS stopped listing (scaled away): their acks, direct or relayed by a
        # cascade, must not keep them counted among the replicas after they left.
        # Not "only pods in DNS": a new pod may ack before the next refresh lists it.
        self.departed: set[str] = set()
        self.membership = 0  # bumped whenever the set of followers known here changes

    def left(self, name: str) -> None:
        """``name`` left DNS: forget its position and ignore its acks until it is back."""
        self.positions.pop(name, None)
        self.departed.add(name)
        self.membership += 1

    def joined(self, name: str) -> None:
        """``name`` is in DNS (again): its acks count."""
        self.departed.discard(name)
        self.membership += 1

    def record(self, name: str, lsn: int, via: str) -> None:
        """Note that ``name`` holds everything up to ``lsn`` durably."""
        if name in self.departed:
            return
        current = self.positions.get(name)
        if current is None:
            self.membership += 1
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

    def held_by(self, followers: int) -> int:
        """The highest LSN at least ``followers`` followers hold (0 when fewer have acknowledged)."""
        held = sorted((p.lsn for p in self.positions.values()), reverse=True)
        return held[followers - 1] if 0 < followers <= len(held) else 0

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

    def downstream_of(self, me: str, rounds: Mapping[str, int]) -> str:
        """The acks to pass upstream: every follower's position we know, with the newest round it echoed."""
        items = [f"{name}:{p.lsn}/{rounds.get(name, 0)}" for name, p in sorted(self.positions.items())
                 if name != me]
        return ",".join(items[:ACK_PARAM_LIMIT])
