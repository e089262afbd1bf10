"""What happened to this replica lately: a bounded ring of events.

Each replica keeps its own recent events (started, restarted, a peer
joined or left, became writable, a snapshot sent or installed, catching up,
recovering, diverged, a peer went down or came back) in memory. They are served
as ``GET /v1/events`` and merged across pods by the dashboard's cluster view,
so the dashboard, scripts and commands read the same record.

``server.serve`` creates one :class:`EventLog` per replica and passes it, like
the store and the config, to each part that records (the replication parts,
the dashboard)::

    self.events.record("snapshot_sent", "sent a snapshot of 1200 keys to kv-3", peer="kv-3", keys=1200)

There is no process-wide log: two replicas in one process (as in unit tests)
keep separate records.

Events are numbered from 1 in each log; ``boot`` identifies the log (a new one
each time the replica starts), so a reader that sees another ``boot`` knows
the numbering started again.
"""

from __future__ import annotations

import collections
import secrets
import threading
import time
from typing import Any

DEFAULT_CAPACITY = 500
MAX_MESSAGE_CHARS = 500


class EventLog:
    """The last ``capacity`` events of one replica, oldest dropped first."""

    def __init__(self, pod: str = "", capacity: int = DEFAULT_CAPACITY) -> None:
        self.pod = pod
        self.boot = secrets.token_hex(6)
        self._events: collections.deque[dict[str, Any]] = collections.deque(maxlen=capacity)
        self._seq = 0
        # record() may be called from storage or snapshot threads, not only the event loop.
        self._lock = threading.Lock()

    @property
    def last_seq(self) -> int:
        """The number of the newest event (0 before the first)."""
        return self._seq

    def record(self, kind: str, message: str, **fields: Any) -> dict[str, Any]:
        """Add one event; ``fields`` must be JSON values (names, LSNs, counts)."""
        with self._lock:
            self._seq += 1
            event = {**fields, "seq": self._seq, "time": round(time.time(), 3), "pod": self.pod,
                     "kind": kind, "message": message[:MAX_MESSAGE_CHARS]}
            self._events.append(event)
        return event

    def since(self, after: int = 0, limit: int = DEFAULT_CAPACITY) -> list[dict[str, Any]]:
        """Events numbered above ``after``, oldest first, at most ``limit`` (the oldest of them)."""
        with self._lock:
            out = [event for event in self._events if event["seq"] > after]
        return out[:limit]

    def recent(self, limit: int) -> list[dict[str, Any]]:
        """The newest ``limit`` events, oldest first."""
        with self._lock:
            out = list(self._events)
        return out[-limit:] if limit else []
