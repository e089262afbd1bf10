"""Pipelining on and off, same code, same machine: what sending a batch before kv-0's fsync buys.

    ./kv bench pipelining [--seconds 10] [--rounds 2] [--connections 1,32]

Starts a 3-replica kvstore cluster with ``KV_PIPELINE=false``, then one with
``KV_PIPELINE=true``, alternating for ``--rounds`` rounds (the host's load
moves figures ±20% between runs; alternating spreads it over both modes),
and drives ``w=majority`` PUTs on kv-0 with wrk at each connection count.
Prints req/s, p50, p99 and server CPU per request (the 3 replicas together)
per mode, the medians over rounds, and the on/off ratios. JSON goes to
bench/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from clusters import cpu_seconds, kv_cluster, machine, run_main, stop_on_sigterm  # noqa: E402
from wrk import RUNS, connection_counts, ensure_wrk, run_wrk  # noqa: E402

MODES = ("false", "true")
SETTLE_SECONDS = 1.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="kv bench pipelining", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=10, help="length of each wrk run (default 10)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds of off and on (default 2)")
    parser.add_argument("--connections", default="1,32", help="comma-separated wrk connection counts (default 1,32)")
    args = parser.parse_args(argv)
    args.connections = connection_counts(parser, args.connections)
    if not 1 <= args.seconds <= 600:
        parser.error("--seconds must be from 1 to 600")
    if not 1 <= args.rounds <= 20:
        parser.error("--rounds must be from 1 to 20")
    return args


def measure(pipeline: str, conns_list: list[int], seconds: int, round_: int) -> list[dict[str, Any]]:
    """One cluster with KV_PIPELINE=``pipeline``: a wrk PUT run per connection count."""
    rows = []
    with kv_cluster(env={"KV_PIPELINE": pipeline}) as kv:
        pids = {name: kv.pid(name) for name in ("kv-0", "kv-1", "kv-2")}
        for conns in conns_list:
            time.sleep(SETTLE_SECONDS)
            before = cpu_seconds(pids)
            fig = run_wrk(f"PUT w=majority pipeline={pipeline}", kv.url("kv-0"), "put_unique.lua", conns, seconds,
                          {"KV_BENCH_PATH_PREFIX": f"/v1/kv/pipe-r{round_}-c{conns}/", "KV_BENCH_QUERY": "?w=majority"})
            after = cpu_seconds(pids)
            cpu = sum(after[n] - before[n] for n in pids) * 1e6 / max(1, fig.requests)
            RUNS.echo(f"  pipeline={pipeline:<5} c={conns:<3} {fig.rps:>8.0f} req/s  p50 {fig.p50_ms:6.2f} ms  "
                      f"p99 {fig.p99_ms:6.2f} ms  cpu {cpu:5.0f} us")
            rows.append({"pipeline": pipeline, "connections": conns, "round": round_, "rps": fig.rps,
                         "p50_ms": fig.p50_ms, "p99_ms": fig.p99_ms, "cpu_us": round(cpu, 1),
                         "non_2xx": fig.non_2xx, "socket_errors": fig.socket_errors})
    return rows


def summarize(rows: list[dict[str, Any]], conns_list: list[int]) -> None:
    """Medians per mode and connection count, and the on/off ratios."""
    print(f"\n{'conns':>5} | {'pipeline':>8} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'cpu us':>7}")
    print("-" * 48)
    medians: dict[tuple[int, str], dict[str, float]] = {}
    for conns in conns_list:
        for mode in MODES:
            mine = [r for r in rows if r["connections"] == conns and r["pipeline"] == mode]
            m = {k: statistics.median(r[k] for r in mine) for k in ("rps", "p50_ms", "p99_ms", "cpu_us")}
            medians[(conns, mode)] = m
            print(f"{conns:>5} | {'on' if mode == 'true' else 'off':>8} {m['rps']:>8.0f} {m['p50_ms']:>7.2f} "
                  f"{m['p99_ms']:>7.2f} {m['cpu_us']:>7.0f}")
    print("\non/off (medians of the rounds):")
    for conns in conns_list:
        on, off = medians[(conns, "true")], medians[(conns, "false")]
        print(f"  c={conns:<3} req/s {on['rps'] / off['rps']:.2f}x  p50 {on['p50_ms'] / off['p50_ms']:.2f}x  "
              f"p99 {on['p99_ms'] / off['p99_ms']:.2f}x  cpu per write {on['cpu_us'] / off['cpu_us']:.2f}x")


def main() -> int:
    args = parse_args()
    stop_on_sigterm()
    ensure_wrk()
    RUNS.plan(args.rounds * len(MODES) * len(args.connections))
    load = [os.getloadavg()[0]]
    rows: list[dict[str, Any]] = []
    for round_ in range(args.rounds):
        for mode in MODES:
            rows.extend(measure(mode, args.connections, args.seconds, round_))
    load.append(os.getloadavg()[0])
    RUNS.close()
    summarize(rows, args.connections)
    print(f"\nload average (1 min) at start {load[0]:.2f}, at end {load[1]:.2f} on {os.cpu_count()} CPUs")
    out = Path(__file__).parent / "results" / f"pipelining-{time.strftime('%Y%m%dT%H%M%S')}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"machine": machine(), "args": {"seconds": args.seconds, "rounds": args.rounds},
                               "rows": rows}, indent=1))
    print(f"figures written to {out}")
    return 0


if __name__ == "__main__":
    run_main(main)
