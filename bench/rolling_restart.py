"""The write outage of a rolling restart: the longest gap between acknowledged writes.

    ./kv bench rolling_restart [--runs 5]

Starts a local 3-replica cluster (the default grace period), then per run:
a steady writer (one ``w=majority`` PUT at a time, each to a new key; it
moves to the next pod when one refuses the connection, and retries the same
write on the same pod after 10 ms on any other failure) writes for 2 s,
``kvstore cluster rollout restart`` replaces kv-2, kv-1, kv-0, and the
writer goes on until 2 s after ``rollout status`` says the rollout is
complete. Prints per run the longest gap between acknowledged writes (and
which pod was being replaced then), the replacement order, the writes and
failures by kind, and checks that every acknowledged write is still there
(a strong read on kv-0). Then the median of the runs. Figures go to
bench/results/rolling_restart.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from clusters import KvCluster, machine, run_main, stop_on_sigterm  # noqa: E402

from kvstore.local.state import ClusterError, read_state  # noqa: E402
from kvstore.local.statefulset import GRACE_PERIOD  # noqa: E402
from kvstore.local.writer import SteadyWriter  # noqa: E402

RESULTS = Path(__file__).parent / "results"
BASE, DNS = "127.0.74.10", "127.0.74.2"
SETTLE = 2.0  # seconds of writes before the restart and after it is complete


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The benchmark's flags (exit 2 with a usage line when bad)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, choices=range(1, 21), metavar="1..20")
    return parser.parse_args(argv)


class Replacements(threading.Thread):
    """Notes, from the controller's state, when each pod went away and when its successor was Ready."""

    def __init__(self, cluster: KvCluster) -> None:
        super().__init__(name="replacements", daemon=True)
        self.cluster = cluster
        self.windows: dict[str, list[float]] = {}  # pod -> [gone (monotonic), Ready again]
        self.order: list[str] = []
        self.stop = threading.Event()

    def run(self) -> None:
        before = self._pids()
        while not self.stop.wait(0.05):
            try:
                pods = {p["name"]: p for p in read_state(self.cluster.directory)["pods"]}
            except ClusterError:
                continue
            now = time.monotonic()
            for name, pid in before.items():
                pod = pods.get(name)
                gone = pod is None or pod["pid"] != pid or pod["status"] == "Terminating"
                if gone and name not in self.windows:
                    self.windows[name] = [now, float("inf")]
                    self.order.append(name)
                window = self.windows.get(name)
                if window and window[1] == float("inf") and pod and pod["pid"] not in (None, pid) and pod["ready"]:
                    window[1] = now

    def _pids(self) -> dict[str, int]:
        return {p["name"]: p["pid"] for p in read_state(self.cluster.directory)["pods"]}

    def during(self, start: float, end: float) -> str:
        """The pods whose replacement overlaps [start, end]."""
        names = [n for n, (gone, back) in self.windows.items() if gone <= end and back >= start]
        return ",".join(names) or "none"


def longest_gap(writer: SteadyWriter, since: float) -> tuple[float, float, float]:
    """(gap, start, end) of the longest gap between acknowledged writes after ``since``."""
    times = [since] + [a.at for a in writer.acks if a.at >= since]
    return max(((b - a, a, b) for a, b in zip(times, times[1:])), default=(0.0, since, since))


def missing(url: str, writer: SteadyWriter) -> list[str]:
    """Acknowledged writes a strong read on ``url`` does not return."""
    lost = []
    for ack in writer.acks:
        try:
            with urllib.request.urlopen(f"{url}/v1/kv/{ack.key}?consistency=strong", timeout=10) as response:
                if response.read().decode() != ack.value:
                    lost.append(ack.key)
        except OSError:
            lost.append(ack.key)
    return lost


def one_run(cluster: KvCluster, number: int) -> dict[str, Any]:
    """One rolling restart under the writer; its figures."""
    urls = {name: cluster.url(name) for name in ("kv-0", "kv-1", "kv-2")}
    writer = SteadyWriter(urls, prefix=f"run{number}").start()
    watcher = Replacements(cluster)
    try:
        time.sleep(SETTLE)
        watcher.start()
        started = time.monotonic()
        for args in (("rollout", "restart"), ("rollout", "status", "--timeout", "300")):
            result = cluster.cli(*args, timeout=330)
            if result.returncode != 0:
                raise RuntimeError(f"cluster {' '.join(args)}: {result.stderr.strip()}\n{cluster.logs()}")
        took = time.monotonic() - started
        time.sleep(SETTLE)
    finally:
        writer.stop()
        watcher.stop.set()
        watcher.join(5)
    gap, gap_start, gap_end = longest_gap(writer, started)
    lost = missing(urls["kv-0"], writer)
    figures = {
        "longest_gap_s": round(gap, 3), "gap_while_replacing": watcher.during(gap_start, gap_end),
        "order": watcher.order, "rollout_s": round(took, 2), "acknowledged": len(writer.acks),
        "failures": dict(sorted(writer.errors.items())), "moves": writer.moves, "lost": len(lost),
        "windows_s": {n: [round(g - started, 2), round(b - started, 2)] for n, (g, b) in watcher.windows.items()},
    }
    print(f"run {number}: longest gap {gap:.2f} s (while replacing {figures['gap_while_replacing']}), "
          f"order {','.join(watcher.order)}, rollout {took:.1f} s, {len(writer.acks)} writes acknowledged, "
          f"{len(lost)} lost, failures {figures['failures']}", flush=True)
    if lost:
        raise RuntimeError(f"run {number}: acknowledged writes lost: {lost[:10]}")
    return figures


def main() -> int:
    """Run the rolling restarts and print the gap per run and the median."""
    args = parse_args()
    stop_on_sigterm()
    cluster = KvCluster(replicas=3, base_address=BASE, dns_address=DNS, grace=GRACE_PERIOD)
    runs = []
    try:
        try:
            cluster.up()
        except ClusterError as exc:
            raise RuntimeError(str(exc)) from None
        for number in range(1, args.runs + 1):
            runs.append(one_run(cluster, number))
    finally:
        cluster.down()
    gaps = [r["longest_gap_s"] for r in runs]
    median = statistics.median(gaps)
    print(f"longest gap between acknowledged writes: median {median:.2f} s, min {min(gaps):.2f} s, "
          f"max {max(gaps):.2f} s over {len(gaps)} rolling restarts; nothing acknowledged was lost")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "rolling_restart.json").write_text(json.dumps(
        {"runs": runs, "median_gap_s": median, "machine": machine()}, indent=2))
    return 0


if __name__ == "__main__":
    run_main(main)
