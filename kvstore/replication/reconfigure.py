"""kv-0's changes of the configuration: a caught-up learner becomes a voter, a deleted pod stops being one.

A StatefulSet scale needs no other step (``kubectl scale``, ``kvstore
cluster scale``): kv-0 sees the pods come and go in DNS and changes the
configuration to match, one voter at a time, through a log entry
(membership.py), and only once the previous change is settled.

- **Scale up.** A new pod follows kv-0 as a *learner*: its acks count for
  nothing. Once it is listed in DNS, streams from kv-0 and is at most
  :data:`LEARNER_MAX_LAG` entries behind what a majority holds, kv-0 adds
  it (lowest ordinal first).
- **Scale down.** The StatefulSet deletes the highest ordinal first; a
  deleted pod leaves DNS (NXDOMAIN for its per-pod name, absent from SRV).
  When a voter has been gone like that, and silent, for :data:`REMOVE_AFTER`
  seconds, kv-0 removes it (highest ordinal first). A pod that is merely down
  (restarting, a lost node) keeps its name in DNS and stays a voter; a pod
  that answers is never removed.
"""

from __future__ import annotations

import logging
import time
from typing import Callable

from kvstore.config import Config
from kvstore.discovery import PeerDirectory
from kvstore.events import EventLog
from kvstore.membership import Configuration
from kvstore.replication.acks import AckTable
from kvstore.storage import CONFIG, Mutation, Store, StorageError

log = logging.getLogger("kvstore.replication")

LEARNER_MAX_LAG = 1000  # entries behind the committed LSN a learner may be and still become a voter
LEARNER_HEARD_SECONDS = 2.0  # a learner must have acknowledged this recently (it streams from kv-0)
REMOVE_AFTER = 5.0  # seconds a voter must be gone from DNS, and silent, before kv-0 removes it
STEP_SECONDS = 1.0  # how often kv-0 looks


class Reconfigurer:
    """Decides, on kv-0, when the configuration changes, and writes the change."""

    def __init__(self, config: Config, store: Store, directory: PeerDirectory, acks: AckTable,
                 configuration: Callable[[], Configuration], settled: Callable[[], bool],
                 committed: Callable[[], int | None], older_peers: Callable[[], list[str]] = list, *,
                 events: EventLog) -> None:
        self.config = config
        self.store = store
        self.events = events  # this replica's ring of recent events (GET /v1/events)
        self.directory = directory
        self.acks = acks
        self.configuration = configuration
        self.settled = settled
        self.committed = committed
        self.older_peers = older_peers  # peers of an older build, which could not read a change
        self.held_back: str | None = None  # why no change is written now (an update under way)
        self.leaving: set[int] = set()  # voters gone from DNS, not yet removed
        self._gone_since: dict[int, float] = {}
        self._last = 0.0

    async def step(self) -> None:
        """Look once (at most every :data:`STEP_SECONDS`); write at most one change."""
        now = time.monotonic()
        if now - self._last < STEP_SECONDS:
            return
        self._last = now
        current = self.configuration()
        await self._note_gone(current, now)
        if not self.settled() or self.store.failed is not None:
            return  # one change at a time: the previous one must be held by a majority of both first
        older = self.older_peers()
        held_back = (f"{', '.join(older)} run an older build that cannot read a configuration entry; "
                     "the voters change once the update is done") if older else None
        if held_back != self.held_back and held_back is not None:
            log.warning("configuration changes wait: %s", held_back)
        self.held_back = held_back
        if held_back is not None:
            return
        removable = [o for o in sorted(self.leaving, reverse=True) if now - self._gone_since[o] >= REMOVE_AFTER
                     and self._silent_for(o, REMOVE_AFTER)]
        if removable:
            ordinal = removable[0]
            await self._change(current, [o for o in current.voters if o != ordinal],
                               f"{self.directory.pod_name(ordinal)} is gone (deleted: not in DNS for "
                               f"{REMOVE_AFTER:.0f}s and silent): removed from the voters")
            return
        learner = self._caught_up_learner(current)
        if learner is not None:
            await self._change(current, [*current.voters, learner],
                               f"{self.directory.pod_name(learner)} caught up: it is a voter now")

    async def _note_gone(self, current: Configuration, now: float) -> None:
        for ordinal in current.voters:
            if ordinal == 0:
                continue
            if ordinal in self.directory.peers or not await self.directory.gone(ordinal):
                self._gone_since.pop(ordinal, None)
                self.leaving.discard(ordinal)
                continue
            self._gone_since.setdefault(ordinal, now)
            self.leaving.add(ordinal)
        for ordinal in list(self.leaving):
            if ordinal not in current.voters:
                self.leaving.discard(ordinal)
                self._gone_since.pop(ordinal, None)

    def _silent_for(self, ordinal: int, seconds: float) -> bool:
        position = self.acks.positions.get(self.directory.pod_name(ordinal))
        return position is None or time.monotonic() - position.seen >= seconds

    def _caught_up_learner(self, current: Configuration) -> int | None:
        committed = self.committed() or 0
        now = time.monotonic()
        for ordinal in sorted(self.directory.peers):
            if ordinal == 0 or ordinal in current.voters:
                continue
            position = self.acks.positions.get(self.directory.pod_name(ordinal))
            if position is not None and now - position.seen < LEARNER_HEARD_SECONDS \
                    and position.lsn >= committed - LEARNER_MAX_LAG:
                return ordinal
        return None

    async def _change(self, current: Configuration, voters: list[int], why: str) -> None:
        new = current.change(0, voters)  # its LSN is the one the store gives the entry
        try:
            lsn = await self.store.write(Mutation(CONFIG, b"", new.dumps()))
        except StorageError as exc:
            log.warning("configuration change not written (%s); trying again shortly", exc)
            return
        names = ", ".join(self.directory.pod_name(o) for o in new.voters)
        log.info("configuration at lsn %d: %s (voters %s)", lsn, why, names)
        self.events.record("configuration", f"{why}; voters {names}", lsn=lsn, voters=list(new.voters))
