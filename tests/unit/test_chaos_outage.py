"""The longest write outage per fault kind, on hand-made histories and fault logs."""

from __future__ import annotations

from kvstore.chaos.history import FAILED, OK, UNKNOWN, Op
from kvstore.chaos.outage import Outage, longest_outages, outage_text, windows


def write(n: int, ret: float, outcome: str = OK, f: str = "put") -> Op:
    return Op(id=n, process=0, key="chaos/k", f=f, pod="kv-1", call=ret - 0.01, ret=ret, outcome=outcome)


def end(of: str, began: float, time: float) -> dict[str, object]:
    return {"time": time, "fault": "end", "pod": "", "of": of, "began": began}


FAULTS = [
    {"time": 1.0, "fault": "kill", "pod": "kv-0"}, end("kill", 1.0, 2.0),
    {"time": 5.0, "fault": "node-loss", "pod": "kv-0"}, end("node-loss", 5.0, 20.0),
    {"time": 22.0, "fault": "kill", "pod": "kv-1"}, end("kill", 22.0, 23.0),
]


def test_windows_run_from_when_a_fault_began_to_its_end_entry() -> None:
    assert windows(FAULTS) == {"kill": [(1.0, 2.0), (22.0, 23.0)], "node-loss": [(5.0, 20.0)]}
    assert windows([{"time": 1.0, "fault": "kill", "pod": "kv-0"}]) == {}  # a run from before end entries


def test_each_kind_gets_the_longest_gap_between_acknowledged_writes_that_overlaps_its_windows() -> None:
    history = [write(0, 0.5), write(1, 1.5), write(2, 3.0),  # kill: 1.5 s (1.5 -> 3.0) overlaps (1, 2)
               write(3, 6.0), write(4, 14.0),                # node-loss: 8 s (6 -> 14), inside (5, 20)
               write(5, 14.5, FAILED), write(6, 15.0, UNKNOWN), write(7, 15.5, OK, "read"),  # not acknowledged
               write(8, 21.0), write(9, 21.5), write(10, 23.5), write(11, 30.0, OK, "delete")]
    outages = longest_outages(history, FAULTS)
    assert outages["kill"] == Outage(2.0, 21.5, 23.5, False)
    assert outages["node-loss"] == Outage(8.0, 6.0, 14.0, False)  # 6 -> 14 beats 3 -> 6 and 14 -> 21
    assert outages["none"] == Outage(6.5, 23.5, 30.0, False)  # the longest gap overlapping no fault at all


def test_an_outage_still_open_at_the_end_counts_up_to_the_last_answer_not_the_heal() -> None:
    history = [write(0, 0.5), write(1, 4.0), write(2, 10.0, FAILED)]  # the workload's last answer: 10 s
    outages = longest_outages(history, [{"time": 5.0, "fault": "switchover", "pod": "kv-0"},
                                        end("switchover", 5.0, 6.0), end("kill", 11.0, 14.0)])
    assert outages["switchover"] == Outage(6.0, 4.0, 10.0, True)
    assert outages["kill"] == Outage(0.0, 0.0, 0.0, False)  # after the workload stopped: no outage seen
    assert outages["none"] == Outage(3.5, 0.5, 4.0, False)
    assert longest_outages([], [end("kill", 1.0, 2.0)])["kill"] == Outage(0.0, 0.0, 0.0, False)


def test_the_report_line_lists_kinds_in_the_given_order() -> None:
    outages = {"none": Outage(0.4, 0, 0.4, False), "kill": Outage(2.04, 1, 3.04, False),
               "node-loss": Outage(7.0, 14, 21, True)}
    assert outage_text(outages, ("kill", "pause", "node-loss")) == (
        "longest write outage by fault: kill 2.0s, pause -, node-loss >7.0s; with no fault 0.4s")
