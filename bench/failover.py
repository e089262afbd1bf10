"""What a change of primary costs writers: switchover, a lost kv-0, a frozen kv-0, and the failback.

    ./kv bench failover [--runs 5] [--hold 25] [--freeze 20]

Starts a local 3-replica cluster (default settings: KV_FAILOVER_AFTER 3 s,
switchover on SIGTERM, failback on) and a steady writer (one ``w=majority``
PUT at a time, each to a new key; it moves to the next pod when one refuses
the connection, else retries on the same pod after 10 ms; while kv-0 is
lost, through kv-1 and kv-2 only). Then:

- ``--runs`` switchovers (``kvstore switchover --to kv-1``), each followed by
  kv-1's failback to kv-0: the longest gap between acknowledged writes
  during the switchover and during the failback, and the writes that failed;
- kv-0 held down ``--hold`` seconds (the controller's hold, a lost node):
  the longest gap, and how long after the release kv-0 leads again;
- kv-0 SIGSTOPped ``--freeze`` seconds, then SIGCONT: the same.

Every acknowledged write is checked afterwards with a strong read. Figures
go to bench/results/failover.json. Tests assert the behaviour
(tests/integration/test_failover.py); this prints the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from clusters import KvCluster, http_json, machine, run_main, stop_on_sigterm  # noqa: E402
from rolling_restart import missing  # noqa: E402

from kvstore.local import control  # noqa: E402
from kvstore.local.handle import run_cli, wait_for  # noqa: E402
from kvstore.local.state import ClusterError  # noqa: E402
from kvstore.local.writer import SteadyWriter  # noqa: E402

RESULTS = Path(__file__).parent / "results"
BASE, DNS = "127.0.75.10", "127.0.75.2"
SETTLE = 2.0  # seconds of writes before each fault


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The benchmark's flags (exit 2 with a usage line when bad)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, choices=range(1, 21), metavar="1..20")
    parser.add_argument("--hold", type=float, default=25.0, help="seconds kv-0 is held down")
    parser.add_argument("--freeze", type=float, default=20.0, help="seconds kv-0 is SIGSTOPped")
    args = parser.parse_args(argv)
    if not 5 <= args.hold <= 300 or not 5 <= args.freeze <= 300:
        parser.error("--hold and --freeze take 5 to 300 seconds")
    return args


def leader(cluster: KvCluster) -> str | None:
    """The pod that says it is the primary and takes writes."""
    for name in ("kv-0", "kv-1", "kv-2"):
        try:
            status = http_json("GET", cluster.url(name) + "/v1/status", timeout=2)
        except (OSError, ValueError):
            continue
        if status.get("role") == "primary" and status.get("writable"):
            return name
    return None


def gap_between(writer: SteadyWriter, start: float, end: float) -> float:
    """The longest gap between acknowledged writes that overlaps [start, end]."""
    times = [a.at for a in writer.acks]
    before = [t for t in times if t <= start]
    inside = [t for t in times if start < t <= end]
    after = [t for t in times if t > end]
    points = before[-1:] + inside + after[:1]
    return max((b - a for a, b in zip(points, points[1:])), default=end - start)


def errors_since(writer: SteadyWriter, before: dict[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in writer.errors.items() if v - before.get(k, 0)}


def switchover(cluster: KvCluster, writer: SteadyWriter, number: int) -> dict[str, Any]:
    wait_for("kv-0 to lead", lambda: leader(cluster) == "kv-0", 60)
    time.sleep(SETTLE)
    errors = dict(writer.errors)
    started = time.monotonic()
    result = run_cli("switchover", "--to", "kv-1", "--dir", str(cluster.directory), timeout=30)
    if result.returncode != 0:
        raise RuntimeError(f"switchover: {result.stderr.strip()}")
    wait_for("kv-1 to lead", lambda: leader(cluster) == "kv-1", 30, 0.02)
    led = time.monotonic()
    time.sleep(1.0)
    wait_for("the failback to kv-0", lambda: leader(cluster) == "kv-0", 60, 0.02)
    back = time.monotonic()
    time.sleep(1.0)
    figures = {"switchover_gap_s": round(gap_between(writer, started, led), 3),
               "failback_gap_s": round(gap_between(writer, led + 0.5, back + 0.5), 3),
               "failback_after_s": round(back - led, 2), "failures": errors_since(writer, errors)}
    print(f"switchover {number}: longest gap {figures['switchover_gap_s']:.3f} s; failback "
          f"{figures['failback_after_s']:.1f} s later, gap {figures['failback_gap_s']:.3f} s; "
          f"failures {figures['failures']}", flush=True)
    return figures


def lost_kv0(cluster: KvCluster, writer: SteadyWriter, kind: str, seconds: float) -> dict[str, Any]:
    wait_for("kv-0 to lead", lambda: leader(cluster) == "kv-0", 60)
    time.sleep(SETTLE)
    errors = dict(writer.errors)
    started = time.monotonic()
    pid = None
    if kind == "hold":
        asyncio.run(control.call(cluster.directory, "POST", "/v1/hold", {"pod": "kv-0"}, 60))
    else:
        pid = cluster.pid("kv-0")
        os.kill(pid, signal.SIGSTOP)
    try:
        wait_for("another pod to lead", lambda: leader(cluster) in ("kv-1", "kv-2"), seconds + 30, 0.05)
        elected = time.monotonic() - started
        time.sleep(max(0.0, started + seconds - time.monotonic()))
    finally:
        if pid is not None:
            os.kill(pid, signal.SIGCONT)
        else:
            asyncio.run(control.call(cluster.directory, "POST", "/v1/release", {"pod": "kv-0"}, 60))
    released = time.monotonic()
    wait_for("kv-0 to lead again", lambda: leader(cluster) == "kv-0", 120, 0.05)
    back = time.monotonic()
    time.sleep(1.0)
    figures = {"longest_gap_s": round(gap_between(writer, started, back + 0.5), 3),
               "elected_after_s": round(elected, 2), "kv0_leads_after_release_s": round(back - released, 2),
               "failures": errors_since(writer, errors)}
    print(f"kv-0 {kind} {seconds:g} s: another pod led after {elected:.2f} s; longest gap "
          f"{figures['longest_gap_s']:.3f} s; kv-0 led again {figures['kv0_leads_after_release_s']:.1f} s after "
          f"the release; failures {figures['failures']}", flush=True)
    return figures


def main() -> int:
    """Run the switchovers and the two faults; print the figures."""
    args = parse_args()
    stop_on_sigterm()
    cluster = KvCluster(replicas=3, base_address=BASE, dns_address=DNS)
    results: dict[str, Any] = {"machine": machine()}
    try:
        try:
            cluster.up()
        except ClusterError as exc:
            raise RuntimeError(str(exc)) from None
        urls = {name: cluster.url(name) for name in ("kv-0", "kv-1", "kv-2")}
        writer = SteadyWriter(urls, prefix="switchover").start()
        try:
            runs = [switchover(cluster, writer, n) for n in range(1, args.runs + 1)]
            results["switchovers"] = runs
        finally:
            writer.stop()
        # While kv-0 is lost the client writes through kv-1 and kv-2, as one that knows kv-0 is away.
        others = SteadyWriter({n: u for n, u in urls.items() if n != "kv-0"}, prefix="lost").start()
        try:
            results["hold"] = lost_kv0(cluster, others, "hold", args.hold)
            results["freeze"] = lost_kv0(cluster, others, "freeze", args.freeze)
        finally:
            others.stop()
        lost = missing(urls["kv-1"], writer) + missing(urls["kv-1"], others)
        results["acknowledged"], results["lost"] = len(writer.acks) + len(others.acks), len(lost)
    finally:
        cluster.down()
    gaps = [r["switchover_gap_s"] for r in runs]
    backs = [r["failback_gap_s"] for r in runs]
    results["switchover_gap_median_s"] = statistics.median(gaps)
    results["failback_gap_median_s"] = statistics.median(backs)
    print(f"switchover: longest gap median {statistics.median(gaps):.3f} s (min {min(gaps):.3f}, max "
          f"{max(gaps):.3f}) over {len(gaps)} runs; failback median {statistics.median(backs):.3f} s; "
          f"{results['acknowledged']} writes acknowledged, {results['lost']} lost")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "failover.json").write_text(json.dumps(results, indent=2))
    if lost:
        raise RuntimeError(f"acknowledged writes lost: {lost[:10]}")
    return 0


if __name__ == "__main__":
    run_main(main)
