"""The peer protocol's version: named in every peer call, checked in one place on each side.

Every call and stream a pod makes to a peer port carries ``X-Kv-Peer-Protocol``
(the versions it speaks: ``2``, or ``2-3`` for a build that still speaks 2)
and ``X-Kv-Peer-From`` (its name). The peer port's guard accepts a call when
the two ranges meet, and otherwise answers 409 ``peer_protocol`` with its own
versions; the caller's :class:`~kvstore.replication.peer_client.PeerClient`
turns that answer into :class:`PeerProtocolMismatch`. Both sides note the
other in :class:`Versions`: one log line per peer and version ("kv-1 speaks
peer protocol 3, this pod 2"), shown in ``/readyz`` and ``/v1/status`` while
the peer keeps calling or being called; a follower whose upstream it cannot
speak with is not Ready. The upgrade rule is in docs/design.md.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Mapping

log = logging.getLogger("kvstore.replication")

# 2: the stream header since pipelining (upstream LSN, committed LSN, round).
# 3: configuration entries in the log (membership.py) and the follower's incarnation in a stream request.
# 4: transaction entries in the log (txn.py; a PUT with a ttl is one too), and any pod may lead
#    (election.py, handover.py: epochs and promises name their leader, which older builds ignore).
PEER_PROTOCOL = 4
OLDEST_PEER_PROTOCOL = 2  # the oldest version this build still speaks
CONFIG_PROTOCOL = 3  # a peer speaking less cannot read a configuration entry: kv-0 writes none meanwhile
TXN_PROTOCOL = 4  # a peer speaking less cannot read a transaction entry: the primary writes none meanwhile
LEADER_PROTOCOL = 4  # a peer speaking less knows no primary but kv-0: no other pod stands for election meanwhile
PEER_VERSIONS = (OLDEST_PEER_PROTOCOL, PEER_PROTOCOL)
# A call without the header comes from a build older than the header, which spoke version 2.
UNNAMED = (2, 2)
HEADER = "X-Kv-Peer-Protocol"
FROM_HEADER = "X-Kv-Peer-From"
REFUSAL = "peer_protocol"
MISMATCH_SECONDS = 10.0  # a mismatch is shown this long after the peer last met us


class PeerProtocolMismatch(Exception):
    """A peer speaks no peer protocol version this pod speaks."""


def parse_range(text: str) -> tuple[int, int]:
    """``2`` -> (2, 2), ``2-3`` -> (2, 3); ValueError if malformed."""
    low, sep, high = text.strip().partition("-")
    if not low.isdigit() or (sep and not high.isdigit()) or len(text) > 21:
        raise ValueError(f"{HEADER} must be N or N-M, not {text[:30]!r}")
    versions = (int(low), int(high) if sep else int(low))
    if versions[0] > versions[1]:
        raise ValueError(f"{HEADER} must be N or N-M with N <= M, not {text[:30]!r}")
    return versions


def format_range(versions: tuple[int, int]) -> str:
    """Inverse of :func:`parse_range`."""
    low, high = versions
    return str(high) if low == high else f"{low}-{high}"


@dataclass
class _Seen:
    theirs: str
    when: float


class Versions:
    """This pod's peer protocol versions, and the peers it met that speak none of them."""

    def __init__(self, pod: str, versions: tuple[int, int] = PEER_VERSIONS) -> None:
        self.pod = pod
        self.versions = versions
        self.text = format_range(versions)
        self.headers = {HEADER: self.text, FROM_HEADER: pod}
        self._seen: dict[str, _Seen] = {}
        # Peers met lately that speak only versions below this build's: their newest version, when.
        self._older: dict[str, tuple[int, float]] = {}

    def compatible(self, theirs: tuple[int, int]) -> bool:
        """Whether a peer speaking ``theirs`` and this pod share a version."""
        return theirs[0] <= self.versions[1] and self.versions[0] <= theirs[1]

    def check_call(self, headers: Mapping[str, str], remote: str | None) -> str | None:
        """The peer port's check of a call: None to accept it, else why it is refused (noted too).

        ValueError when the header is malformed.
        """
        given = headers.get(HEADER)
        if given == self.text:  # the usual case, without parsing
            return None
        theirs = UNNAMED if given is None else parse_range(given)
        if self.compatible(theirs):
            if theirs[1] < self.versions[1]:
                self._older[(headers.get(FROM_HEADER) or remote or "a peer")[:253]] = (theirs[1], time.monotonic())
                if len(self._older) > 64:
                    del self._older[min(self._older, key=lambda name: self._older[name][1])]
            return None
        return self.note(headers.get(FROM_HEADER) or remote or "a peer", format_range(theirs))

    def check_answer(self, peer: str, status: int, headers: Mapping[str, str]) -> None:
        """A peer's answer to one of our calls: PeerProtocolMismatch (noted) if it refused our version."""
        if status == 409 and headers.get("X-Kv-Error") == REFUSAL:
            raise PeerProtocolMismatch(self.note(peer, headers.get(HEADER, "unknown")[:21]))

    def note(self, peer: str, theirs: str) -> str:
        """Remember that ``peer`` speaks ``theirs``; log it once per peer and version. Returns the line."""
        peer = peer[:253]
        line = f"{peer} speaks peer protocol {theirs}, this pod {self.text}"
        seen = self._seen.get(peer)
        if seen is None or seen.theirs != theirs or time.monotonic() - seen.when > MISMATCH_SECONDS:
            log.error("%s: they cannot replicate to or from each other (see the upgrade rule in docs/design.md)",
                      line)
        self._seen[peer] = _Seen(theirs, time.monotonic())
        if len(self._seen) > 64:  # bounded: the oldest go first
            del self._seen[min(self._seen, key=lambda name: self._seen[name].when)]
        return line

    def mismatches(self) -> dict[str, str]:
        """Peer name -> the line saying what it speaks, for peers met within :data:`MISMATCH_SECONDS`."""
        now = time.monotonic()
        return {name: f"{name} speaks peer protocol {seen.theirs}, this pod {self.text}"
                for name, seen in sorted(self._seen.items()) if now - seen.when <= MISMATCH_SECONDS}

    def older_peers(self, needed: int = CONFIG_PROTOCOL) -> list[str]:
        """Peers met within :data:`MISMATCH_SECONDS` that speak no version from ``needed`` on (an update under way).

        By default those that cannot read a configuration entry; ``TXN_PROTOCOL``: a transaction entry.
        """
        now = time.monotonic()
        return sorted(name for name, (theirs, when) in self._older.items()
                      if theirs < needed and now - when <= MISMATCH_SECONDS)

    def status(self) -> dict[str, object]:
        """For /v1/status."""
        return {"speaks": self.text, "mismatches": list(self.mismatches().values())}
