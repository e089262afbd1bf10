"""The commit queue's one test seam: what happens between sending a pipelined batch and writing it.

In production nothing (:class:`CommitHook`). The test-only fault
``KV_TEST_HOLD_COMMIT`` (:class:`HoldCommit`) holds one batch there for ever:
followers were sent it and kv-0 never writes it, a crash before its fsync on
demand. :func:`commit_hook` makes the one the configuration asks for; the
server calls it once, when it opens the store.
"""

from __future__ import annotations

import asyncio
import logging

log = logging.getLogger("kvstore.storage")


class CommitHook:
    """Called by the commit queue once a pipelined batch is published, before it is written; does nothing."""

    async def published(self, first: int, last: int, epoch: int) -> None:
        """Entries ``first``..``last`` of ``epoch`` were sent to followers and are not written yet."""


class HoldCommit(CommitHook):
    """The test-only fault KV_TEST_HOLD_COMMIT: the batch holding ``lsn`` of ``epoch`` is sent but never written."""

    def __init__(self, lsn: int, epoch: int) -> None:
        self.lsn = lsn
        self.epoch = epoch

    async def published(self, first: int, last: int, epoch: int) -> None:
        """Wait for ever (until the test kills us) if this is the batch to hold."""
        if first <= self.lsn <= last and self.epoch == epoch:
            log.warning("KV_TEST_HOLD_COMMIT: entries %d..%d were sent to followers and are never written", first,
                        last)
            await asyncio.Event().wait()


def commit_hook(hold_commit: tuple[int, int] | None) -> CommitHook:
    """The hook for the configured ``KV_TEST_HOLD_COMMIT`` (LSN, epoch); without it, the one that does nothing."""
    return HoldCommit(*hold_commit) if hold_commit is not None else CommitHook()
