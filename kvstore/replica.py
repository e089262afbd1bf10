"""One replica's behaviour behind the API: role, write path, read freshness, health.

The HTTP layer (api.py) parses and renders; this decides what a write or read
means on this pod given its role. Replication plugs in here.
"""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from kvstore import storage
from kvstore.config import Config
from kvstore.identity import PRIMARY
from kvstore.metrics import Metrics


class NoPrimary(Exception):
    """The primary cannot take the write now; the client should retry."""


class LsnAhead(Exception):
    """``min_lsn`` names a write the primary never made."""


class ReadTimeout(Exception):
    """``min_lsn`` was not reached in time."""


class WriteConcernTimeout(Exception):
    """The write is durable on the primary but not confirmed by enough replicas."""

    def __init__(self, lsn: int, confirmed: int, required: int) -> None:
        super().__init__(
            f"the write (version {lsn}) is durable on the primary but only {confirmed} of the "
            f"{required} replicas the write concern needs confirmed it in time; it will still "
            "replicate. Read it back or retry with the same If-Match to be sure")
        self.lsn = lsn
        self.confirmed = confirmed
        self.required = required


def required_acks(w: str, replicas: int) -> int:
    """Replicas (the primary included) that must hold a write for concern ``w``."""
    if w == "1":
        return 1
    if w == "all":
        return replicas
    return replicas // 2 + 1


class Replica:
    """This pod: its store, role, metrics and (later) replication."""

    def __init__(self, config: Config, store: storage.Store, metrics: Metrics) -> None:
        self.config = config
        self.store = store
        self.metrics = metrics
        self.started = time.time()

    @property
    def role(self) -> str:
        """``primary`` or ``secondary``, from the ordinal."""
        return self.config.role

    def primary_lsn(self) -> int | None:
        """The primary's LSN when known (our own on the primary)."""
        return self.store.lsn if self.role == PRIMARY else None

    async def write(self, mutation: storage.Mutation, w: str, request: web.Request) -> Any:
        """Commit a client write; returns its LSN.

        Raises the storage errors, NoPrimary or WriteConcernTimeout.
        """
        if self.role != PRIMARY:
            raise NoPrimary("this replica is a secondary and replication is not running; "
                            "write to kv-0")
        lsn = await self.store.write(mutation)
        required = required_acks(w, self.config.replicas)
        if required > 1:
            raise WriteConcernTimeout(lsn, 1, required)
        return lsn

    async def prepare_read(self, request: web.Request, consistency: str, min_lsn: int) -> web.StreamResponse | None:
        """Wait for ``min_lsn``; a non-None answer was served elsewhere (the primary)."""
        if min_lsn > self.store.lsn and self.role == PRIMARY:
            # The primary numbers every write, so no client can have seen this LSN.
            raise LsnAhead(f"min_lsn {min_lsn} is ahead of the primary's last write "
                           f"({self.store.lsn}); use the version a write answered")
        if min_lsn and not await self.store.wait_for_lsn(min_lsn, self.config.read_wait):
            raise ReadTimeout(f"this replica has applied up to {self.store.lsn}, "
                              f"not {min_lsn}; retry or read from kv-0")
        if consistency == "strong" and self.role != PRIMARY:
            raise NoPrimary("strong reads are answered by the primary, which is not reachable")
        return None

    def status(self) -> dict[str, Any]:
        """What GET /v1/status shows for this pod."""
        return {
            "name": self.config.pod_name,
            "ordinal": self.config.ordinal,
            "role": self.role,
            "lsn": self.store.lsn,
            "log_start": self.store.log_start,
            "history_id": self.store.history_id,
            "replicas": self.config.replicas,
            "uptime_seconds": round(time.time() - self.started, 3),
            "peers": [],
        }

    def readiness(self) -> tuple[bool, str]:
        """(ready, why) for /readyz."""
        return True, "accepting requests"
