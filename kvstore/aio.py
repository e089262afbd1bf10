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


class Watermark:
    """A position (an LSN) and the coroutines waiting for it to reach a value.

    Waiters are plain futures resolved by :meth:`set` itself: one loop hop
    fewer than an Event under ``wait_for`` on the replication path.
    """

    def __init__(self, value: int = 0) -> None:
        self.value = value
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []

    def set(self, value: int) -> None:
        """Move to ``value`` (a snapshot may move it back) and wake whoever waited for it."""
        self.value = value
        if self._waiters:
            waiting = []
            for waiter in self._waiters:
                if waiter[0] <= value:
                    wake(waiter[1])
                elif not waiter[1].done():
                    waiting.append(waiter)
            self._waiters = waiting

    def release_all(self) -> None:
        """Wake every waiter whatever it waits for (its reason to wait is gone: it looks again)."""
        waiting, self._waiters = self._waiters, []
        for _, future in waiting:
            wake(future)

    async def wait_for(self, target: int, timeout: float) -> bool:
        """Wait until the position is at least ``target``; False after ``timeout`` seconds."""
        if self.value >= target:
            return True
        if timeout <= 0:
            return False
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        waiter = (target, future)
        self._waiters.append(waiter)
        timer = loop.call_later(timeout, wake, future)
        try:
            await future
        finally:
            timer.cancel()
        if self.value >= target:
            return True
        with contextlib.suppress(ValueError):  # timed out: set() did not remove it
            self._waiters.remove(waiter)
        return False
