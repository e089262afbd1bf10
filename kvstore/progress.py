"""A progress line for long commands (``kvstore chaos``, the benchmarks).

On a terminal it is one line rewritten in place; in a log or a pipe it is a
plain line at most every few seconds, so a CI log stays readable. Lines
printed through :meth:`ProgressLine.echo` go above it.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
import time
from typing import Callable, TextIO

PLAIN_EVERY = 5.0  # seconds between plain lines when the stream is not a terminal
REDRAW_EVERY = 0.5  # seconds between redraws on a terminal


class ProgressLine:
    """One status line on ``stream`` (default stderr)."""

    def __init__(self, stream: TextIO | None = None, plain_every: float = PLAIN_EVERY,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty()
        self.plain_every = plain_every
        self._clock = clock
        self._last_plain = clock()
        self._shown = ""  # what the terminal line shows now

    def show(self, text: str) -> None:
        """Make ``text`` the current status."""
        if self.tty:
            width = shutil.get_terminal_size().columns - 1  # the last column would wrap on some terminals
            self._shown = text if len(text) <= width else text[:max(0, width - 3)] + "..."
            self.stream.write("\r" + self._shown + "\x1b[K")  # \x1b[K: clear what a longer line left
            self.stream.flush()
            return
        now = self._clock()
        if now - self._last_plain >= self.plain_every:
            self._last_plain = now
            self.stream.write(text + "\n")
            self.stream.flush()

    def echo(self, text: str) -> None:
        """Print a line of its own above the status line, which stays."""
        if self.tty and self._shown:
            self.stream.write("\r\x1b[K" + text + "\n" + self._shown)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        """Leave the last status on its own line (a terminal) so what follows starts afresh."""
        if self.tty and self._shown:
            self.stream.write("\n")
            self.stream.flush()
        self._shown = ""

    async def follow(self, describe: Callable[[], str]) -> None:
        """Show ``describe()`` again and again until cancelled (run it as a task)."""
        period = REDRAW_EVERY if self.tty else min(REDRAW_EVERY * 2, self.plain_every)
        while True:
            self.show(describe())
            await asyncio.sleep(period)
