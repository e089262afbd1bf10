"""The progress line of long commands: in place on a terminal, a plain line every few seconds otherwise."""

from __future__ import annotations

import io
import os
import select
import pty

import pytest

from kvstore.chaos.cli import progress_text
from kvstore.chaos.nemesis import FAULTS
from kvstore.chaos.history import FAILED, OK, UNKNOWN, Op
from kvstore.progress import ProgressLine


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_not_a_terminal_gets_a_plain_line_every_few_seconds() -> None:
    out, clock = io.StringIO(), Clock()
    line = ProgressLine(out, plain_every=5.0, clock=clock)
    for second in range(12):
        clock.now = 100.0 + second
        line.show(f"at {second}")
    line.echo("a result")
    line.close()
    # t=5 and t=10 are 5 s apart from the last line; nothing in between, no escape codes.
    assert out.getvalue() == "at 5\nat 10\na result\n"


def test_a_terminal_gets_one_line_rewritten_in_place() -> None:
    master, slave = pty.openpty()
    try:
        with os.fdopen(slave, "w", closefd=False) as terminal:
            line = ProgressLine(terminal)
            assert line.tty
            line.show("first, longer")
            line.show("second")
            line.echo("a result")
            line.close()
        # A pty hands over what was written in pieces: read until nothing more comes.
        chunks = []
        while select.select([master], [], [], 0.5)[0]:
            chunks.append(os.read(master, 4096))
        written = b"".join(chunks).decode()
    finally:
        os.close(master)
        os.close(slave)
    # Each status starts at the line's beginning and clears what a longer one left; an echoed
    # line goes above the status, which is drawn again; close() ends the status line.
    assert written == ("\rfirst, longer\x1b[K" "\rsecond\x1b[K" "\r\x1b[Ka result\r\nsecond" "\r\n")


def test_a_line_wider_than_the_terminal_is_cut_and_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "21")  # what shutil.get_terminal_size() reads first
    master, slave = pty.openpty()
    try:
        with os.fdopen(slave, "w", closefd=False) as terminal:
            line = ProgressLine(terminal)
            line.show("0123456789" * 5)
            assert line._shown == "01234567890123456..."  # 20 columns: the last one would wrap
            line.show("fits")
            assert line._shown == "fits"
    finally:
        os.close(master)
        os.close(slave)


def _op(n: int, f: str, outcome: str, status: int | None = 200, done: bool = True) -> Op:
    return Op(id=n, process=0, key="k", f=f, pod="kv-0", call=float(n), ret=float(n) + 0.1 if done else None,
              outcome=outcome, status=status)


def test_the_chaos_line_counts_finished_operations_and_faults() -> None:
    history = [_op(1, "put", OK), _op(2, "read", OK), _op(3, "cas", FAILED, 412),
               _op(4, "put", FAILED, 503), _op(5, "put", UNKNOWN, None), _op(6, "put", UNKNOWN, None, done=False)]
    faults = [{"fault": "kill", "pod": "kv-0"}, {"fault": "kill", "pod": "kv-2"}, {"fault": "pause", "pod": "kv-1"}]
    text = progress_text(12.4, 60.0, history, faults, ("kill", "pause"))
    # The operation in flight is not counted; a 412 is rejected, as in the summary table. The
    # outcomes come before the faults, so an 80-column terminal that cuts the line keeps them.
    assert text == "chaos 12s/60s | ok 2 rejected 1 failed 1 unknown 1 | faults 3: kill 2 pause 1"
    assert progress_text(61.0, 60.0, [], [], ()) == "chaos 60s/60s | ok 0 rejected 0 failed 0 unknown 0"
    assert progress_text(5.0, 60.0, [], [], ("kill",)).endswith("unknown 0 | faults 0")
    every = [{"fault": kind, "pod": "kv-1"} for kind in FAULTS]
    busy = progress_text(599.0, 600.0, [_op(n, "put", OK) for n in range(99999)], every, FAULTS)
    assert busy.index("unknown 0") < 80, busy
