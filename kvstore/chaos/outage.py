"""The longest write outage per fault kind: what a client of the store felt while each kind of fault ran.

A write outage is a gap between two consecutive acknowledged writes (any
client, any pod; the run's start and its last operation bound the first and
last gap). A
fault kind's outage is the longest such gap that overlaps one of its
windows, from when a fault of that kind began to its ``end`` entry in the
nemesis log (:class:`kvstore.chaos.nemesis.Nemesis`); ``none`` is the longest
gap that overlaps no fault at all, the baseline to compare with.
"""

from __future__ import annotations

from bisect import bisect_left
from itertools import accumulate
from typing import Any, Callable, Iterable, NamedTuple

from kvstore.chaos.history import OK, Op

NO_FAULT = "none"


class Outage(NamedTuple):
    """The longest gap between acknowledged writes: its length, where it starts and ends (seconds since
    the run started), and whether it was still open when the run ended."""

    seconds: float
    start: float
    end: float
    open: bool


def windows(faults: Iterable[dict[str, Any]]) -> dict[str, list[tuple[float, float]]]:
    """Each fault kind's windows, (began, ended), from the nemesis log's ``end`` entries."""
    out: dict[str, list[tuple[float, float]]] = {}
    for entry in faults:
        if entry.get("fault") == "end" and "of" in entry:
            out.setdefault(str(entry["of"]), []).append((float(entry["began"]), float(entry["time"])))
    return out


def _gaps(history: list[Op]) -> list[Outage]:
    """The gaps between acknowledged writes, from the run's start to its last operation's answer."""
    acks = sorted(op.ret for op in history if op.is_write and op.outcome == OK and op.ret is not None)
    end = max((op.call if op.ret is None else op.ret for op in history), default=0.0)
    points = [0.0, *acks]
    gaps = [Outage(b - a, a, b, False) for a, b in zip(points, points[1:])]
    return [*gaps, Outage(end - points[-1], points[-1], end, True)] if end > points[-1] else gaps


def _overlap_test(spans: list[tuple[float, float]]) -> Callable[[Outage], bool]:
    """Whether a gap overlaps one of ``spans`` (a binary search, not a scan: runs have many gaps)."""
    spans = sorted(spans)
    starts = [s for s, _ in spans]
    reach = list(accumulate((e for _, e in spans), max))  # the latest end among the first i windows

    def overlaps(gap: Outage) -> bool:
        began = bisect_left(starts, gap.end)  # the windows that began before the gap ended
        return began > 0 and reach[began - 1] > gap.start
    return overlaps


def longest_outages(history: list[Op], faults: Iterable[dict[str, Any]]) -> dict[str, Outage]:
    """Fault kind (and ``none``) -> the longest gap between acknowledged writes overlapping its windows.

    The last gap runs to the last operation's answer (still open: no write was acknowledged after
    it), not to the end of the run: the workload stops before the cluster heals.
    """
    gaps = _gaps(history)
    spans = windows(faults)
    nothing = Outage(0.0, 0.0, 0.0, False)
    out = {kind: max(filter(_overlap_test(kind_spans), gaps), default=nothing) for kind, kind_spans in spans.items()}
    during_some = _overlap_test([s for kind_spans in spans.values() for s in kind_spans])
    out[NO_FAULT] = max((g for g in gaps if not during_some(g)), default=nothing)
    return out


def outage_text(outages: dict[str, Outage], kinds: Iterable[str]) -> str:
    """The report's line: each of ``kinds`` (``-`` when it never ran), then the baseline."""
    def show(outage: Outage | None) -> str:
        return "-" if outage is None else f"{'>' if outage.open else ''}{outage.seconds:.1f}s"
    return ("longest write outage by fault: " + ", ".join(f"{k} {show(outages.get(k))}" for k in kinds)
            + f"; with no fault {show(outages.get(NO_FAULT))}")
