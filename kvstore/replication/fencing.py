"""Fencing: a kv-0 process serves strong reads and takes writes only while a majority still follows it.

Two kv-0 processes can run at once: a force-deleted pod whose process lives on
behind a partition, or a copy of kv-0's volume started by hand. With M the
majority of the N voters (the configuration the log holds, membership.py;
"M-1 followers" below means a majority of every voter set counted), three
rules make the one that is no longer kv-0 harmless:

1. **Promises** (follower.py, recovery.py). A recovering kv-0 publishes a
   *candidate* epoch. A follower promises it, durably, only to the kv-0 its
   DNS lists and only when it is newer than any epoch it promised before.
   kv-0 begins the epoch only once a quorum (N-M+1 followers) promised it, so
   every M-1 followers an older process could still count include one that
   now refuses it.
2. **Streams** (follower.py). A follower streams from, and acknowledges to,
   only a kv-0 whose epoch it promised. Its acks are what ``w=majority`` and
   ``w=all`` wait for, so an older process can no longer gather them.
3. **Lease and confirmation rounds** (this module). kv-0 numbers rounds and
   sends one every :data:`HEARTBEAT_SECONDS`; followers echo them in their
   acks, and promise no other epoch until :data:`LEASE_SECONDS` after an
   echo. For :data:`LEASE_SHARE` of that from the start of a round M-1
   followers echoed, kv-0 holds a lease and answers a strong read, or a
   refusal (412, 404 on delete) based on its state, from its state. Without
   one it starts a round after the read and answers once M-1 followers
   echoed it (etcd's read index); reads that wait share a round. Writes are
   taken only while a round started within :data:`CONTACT_SECONDS` was
   echoed by M-1 followers (the window in which a cut-off kv-0 still takes
   ``w=1`` writes its replacement never sees).

The lease assumes monotonic clocks that advance at rates within 10% of each
other; rounds need no clock. The contact window only bounds how long a
cut-off process keeps taking writes.
"""

from __future__ import annotations

import asyncio
import collections
import time
from typing import Callable

from kvstore.aio import Watermark
from kvstore.identity import parse_ordinal
from kvstore.membership import agreed, recovery_quorum
from kvstore.replication.protocol import KEEPALIVE_SECONDS

# Heartbeat rounds come every 0.25 s; a window of several missed ones and a margin.
CONTACT_SECONDS = 2 * KEEPALIVE_SECONDS + 0.5
CONFIRM_TIMEOUT = 1.0  # a round not echoed by a majority within this is a failed round
LEASE_SECONDS = 1.0  # a follower promises no other epoch this long after it echoed a round
# kv-0 counts on its lease for this share of LEASE_SECONDS from the round's start: the
# margin covers monotonic clocks that advance up to 10% apart (NTP slews by 0.05% at most).
LEASE_SHARE = 0.9
HEARTBEAT_SECONDS = LEASE_SECONDS / 4  # kv-0 starts a round this often, so its lease never lapses
RESEND_AFTER = 0.05  # a round out this long without confirmation: the next one goes anyway
MAX_OPEN_ROUNDS = 10_000  # start times kept of rounds not yet confirmed (a cut-off kv-0 keeps starting them)


class Fencing:
    """Confirmation rounds and the followers' echoes of them.

    On kv-0 it starts rounds (for strong reads without a lease, and every
    :data:`HEARTBEAT_SECONDS` as a heartbeat) and counts echoes. On a secondary that others follow (cascade)
    it passes the upstream's rounds down and collects its followers' echoes,
    which the secondary relays upstream with their acks.
    """

    def __init__(self, groups: Callable[[], tuple[tuple[int, ...], ...]],
                 clock: Callable[[], float] = time.monotonic, own: int = 0) -> None:
        # The voter sets (ordinals) a round needs a majority of: the configuration the log holds,
        # and the previous one while a change is not settled (membership.py).
        self.groups = groups
        self.clock = clock
        self.own = own  # this pod's ordinal: the primary's, when it starts rounds
        self.relinquished = False  # a primary handing over counts on no lease (its target's promises skip it)
        self.round = 0  # the newest round started (kv-0) or passed down (a secondary)
        self._scheduled = False  # a round is started and will be sent at the next loop turn
        self._out = 0  # the newest round sent and not yet confirmed (0: none)
        self._out_at = 0.0  # when it was sent (loop time)
        self._want_next = False  # callers wait for the round after the one out
        self._senders: dict[int, Callable[[int], None]] = {}
        self._next_sender = 0
        self._echoed: dict[str, int] = {}  # follower -> newest round it echoed
        self._by_ordinal: dict[int, int] = {}  # the same by ordinal: what the configuration counts
        self._started: collections.deque[tuple[int, float]] = collections.deque(maxlen=MAX_OPEN_ROUNDS)
        self._contact: float | None = None  # when the newest round a majority echoed was started
        self._confirmed = Watermark(0)  # the newest round a majority echoed, which confirm() waits on
        self.began: float | None = None  # when this epoch began with a quorum of promises
        # Whether a quorum of followers promised (or adopted) this epoch. Until then (an epoch
        # begun unverified) a round needs that quorum, not just a majority: only then is every
        # majority an older kv-0 could gather sure to contain a follower that refuses it.
        self.fenced_off = False
        self.generation = 0  # bumped by every reset: a round waited across one proves nothing
        self.rounds = 0  # strong-read rounds confirmed
        self.leased_reads = 0  # confirmations answered by the lease, without a round
        self.failed = 0  # strong-read rounds that timed out

    def reset(self) -> None:
        """A new epoch (or none yet): echoes of the last one do not count for it, nor for its reads."""
        self.generation += 1
        self._out = 0
        # A read of the old epoch's state is never confirmed by the new one's echoes.
        self._confirmed.release_all()
        self._confirmed.set(0)
        self._echoed.clear()
        self._by_ordinal.clear()
        self._started.clear()
        self._contact = None
        self.began = None
        self.fenced_off = False
        self.relinquished = False

    def relinquish(self) -> None:
        """A primary handing over: no strong read is answered from the lease from now on (rounds still are)."""
        self.relinquished = True

    def reset_lease(self) -> None:
        """The handover did not happen: the lease counts again."""
        self.relinquished = False

    # ----------------------------------------------------------- log streams
    def attach(self, send: Callable[[int], None]) -> Callable[[], None]:
        """A follower's stream opened: ``send(round)`` pushes a round to it. Returns the detach function."""
        key = self._next_sender
        self._next_sender += 1
        self._senders[key] = send

        def detach() -> None:
            self._senders.pop(key, None)
        return detach

    def echo(self, follower: str, round_: int) -> None:
        """``follower`` (directly, or relayed by a cascade) acknowledged having seen rounds up to ``round_``."""
        if round_ <= self._echoed.get(follower, 0):
            return
        self._echoed[follower] = round_
        try:
            self._by_ordinal[parse_ordinal(follower)] = round_
        except ValueError:
            pass  # not a pod of this StatefulSet: nothing to count
        if not self.fenced_off and self._quorum_echoed():
            self.fenced_off = True
        confirmed = self._confirmed_round()
        while self._started and self._started[0][0] <= confirmed:
            self._contact = self._started.popleft()[1]
        if self._out and confirmed >= self._out:
            self._out = 0
            if self._want_next and not self._scheduled:
                self._start()
        self._confirmed.set(confirmed)

    def echoed(self) -> dict[str, int]:
        """The newest round each follower echoed (a secondary relays these upstream)."""
        return self._echoed

    def begin(self, verified: bool) -> None:
        """This process began an epoch now; ``verified``: with a quorum of followers' promises."""
        self.reset()
        if verified:
            self.began = self.clock()
            self.fenced_off = True

    def solo(self) -> bool:
        """Whether kv-0 is the only voter: no follower's echo is needed for anything."""
        return all(group == (self.own,) for group in self.groups())

    def _quorum_echoed(self) -> bool:
        """Whether a recovery quorum of the followers of every counted configuration echoed this epoch."""
        return all(sum(1 for o in voters if o in self._by_ordinal) >= recovery_quorum(len(voters))
                   for voters in self.groups())

    def _confirmed_round(self) -> int:
        """The newest round a majority of every voter set echoed (a quorum while older kv-0s are not fenced off)."""
        return agreed(self.groups(), self._by_ordinal, self.round, quorum=not self.fenced_off, leader=self.own)

    def relay(self, round_: int) -> None:
        """A secondary got round ``round_`` from its upstream: pass it to its own followers now."""
        if round_ > self.round:
            self.round = round_
            self._send()

    # ------------------------------------------------------------- asking
    def tick(self) -> None:
        """Start a round nobody waits for: the heartbeat that keeps :meth:`in_contact` true."""
        if not self._scheduled and not self._want_next:
            self._start()

    def _begin_round(self) -> int:
        """The round a caller waits for: one that will be sent after this call.

        Every call in one turn of the event loop shares the round; it is sent
        when the loop next runs callbacks, so it starts after each caller read
        what it answers. While a round is out, callers wait for the next one,
        sent as soon as that one is confirmed (or has been out for
        :data:`RESEND_AFTER`): one round per round trip, whatever the load.
        """
        if self._scheduled:
            return self.round
        loop = asyncio.get_running_loop()
        if self._out and loop.time() - self._out_at < RESEND_AFTER:
            if not self._want_next:
                self._want_next = True
                loop.call_at(self._out_at + RESEND_AFTER, self._start_wanted)
            return self.round + 1
        self._start()
        return self.round

    def _start(self) -> None:
        self.round += 1
        self._scheduled = True
        self._want_next = False
        self._started.append((self.round, self.clock()))
        asyncio.get_running_loop().call_soon(self._send)

    def _start_wanted(self) -> None:
        if self._want_next and not self._scheduled:
            self._start()

    def _send(self) -> None:
        self._scheduled = False
        self._out, self._out_at = self.round, asyncio.get_running_loop().time()
        for send in list(self._senders.values()):
            send(self.round)

    def leased(self) -> bool:
        """Whether a majority echoed, less than the lease ago, a round of this epoch.

        Each of those followers promises no other epoch for :data:`LEASE_SECONDS`
        after its echo, and a replacement commits nothing before it has a
        quorum of promises, so until then nothing was committed that this
        process lacks.
        """
        return (not self.relinquished and self._contact is not None
                and self.clock() < self._contact + LEASE_SECONDS * LEASE_SHARE)

    def confirmed_by_lease(self) -> bool:
        """Whether a majority follows this process with no round needed (its lease, or no followers to ask)."""
        if self.solo() or self.leased():
            self.leased_reads += 1
            return True
        return False

    async def confirm(self, timeout: float = CONFIRM_TIMEOUT) -> bool:
        """Whether a majority still follows this process: its lease, else a round started now."""
        if self.confirmed_by_lease():
            return True
        target = self._begin_round()
        generation = self.generation
        await self._confirmed.wait_for(target, timeout)  # or a reset, or the timeout: look again
        if self.generation == generation and self._confirmed_round() >= target:
            self.rounds += 1
            return True
        self.failed += 1
        return False

    # ------------------------------------------------------------- contact
    def last_contact(self) -> float | None:
        """When a majority was last known to follow (monotonic): the epoch's start, or the newest confirmed round's."""
        if self.solo():
            return self.clock()
        times = [t for t in (self.began, self._contact) if t is not None]
        return max(times) if times else None

    def in_contact(self) -> bool:
        """Whether a majority followed this process within :data:`CONTACT_SECONDS`."""
        last = self.last_contact()
        return last is not None and self.clock() - last <= CONTACT_SECONDS

    def status(self) -> dict[str, object]:
        """For /v1/status: rounds, and how long ago a majority was last heard."""
        last = self.last_contact()
        return {"rounds_confirmed": self.rounds, "rounds_failed": self.failed, "leased": self.leased(),
                "in_contact": self.in_contact(),
                "confirmed_by_lease": self.leased_reads,
                "majority_heard_seconds_ago": None if last is None else round(self.clock() - last, 3),
                "contact_window_seconds": CONTACT_SECONDS}
