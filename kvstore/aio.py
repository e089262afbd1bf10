"""Small asyncio helpers shared by the long-running parts of a replica."""

from __future__ import annotations

import asyncio
import contextlib


async def cancel_and_wait(*tasks: asyncio.Task[object] | None) -> None:
    """Cancel background tasks and wait until each has really ended."""
    for task in tasks:
        if task is not None:
            task.cancel()
    for task in tasks:
        if task is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


def wake(future: asyncio.Future[None]) -> None:
    """Resolve ``future`` unless it already is (a timer and an event may both fire)."""
    if not future.done():
        future.set_result(None)
