"""kvstore side by side with etcd: same machine, same run, same load generator (wrk).

    ./kv bench compare_etcd [--seconds 10] [--connections 1,32]

Starts a 3-member etcd cluster (Debian's etcd-server, fsync on as etcd
always does) and a 3-replica kvstore local cluster (w=majority), both on
loopback, plus one kvstore replica with fsync off as the ceiling of one Python
process. Each pair runs etcd then kvstore, back to back, at each connection
count:

- durable PUT (kvstore w=majority on kv-0) vs etcd put on the leader;
- kvstore consistency=strong GET on kv-0 vs etcd linearizable range on the leader;
- kvstore local GET on the secondary kv-1 vs etcd serializable range on a follower;
- kvstore single replica, fsync off: PUT and GET (the ceiling);
- watch (``bench/watch.py``'s two phases, etcd first): ``--watchers`` watches of one
  prefix spread over the members (etcd's gRPC-gateway ``/v3/watch``, kvstore's
  ``/v1/watch``), then unique-key PUTs: the latency from sending a PUT to each
  watcher reading its event (one writer; median and p99), and the events per
  second delivered to all watchers (``--watch-writers`` writers).

Prints the table and the issue's target verdicts; writes JSON to bench/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).parent))

from clusters import (  # noqa: E402
    ETCD_GATEWAY, EtcdCluster, KvCluster, cpu_seconds, etcd_cluster, etcd_seed, kv_cluster, machine, run_main,
    stop_on_sigterm,
)
from single_replica import replica, seed as kv_seed  # noqa: E402
from wrk import RUNS, Figures, connection_counts, ensure_wrk, run_wrk  # noqa: E402
import watch as watch_bench  # noqa: E402

from kvstore.client import Client  # noqa: E402

RESULTS = Path(__file__).parent / "results"
SEED_KEYS = 1000
# Between runs: etcd commits its backend and kvstore truncates its log in the
# background after a write run; the next run (of either) should not pay for it.
SETTLE_SECONDS = 2.0
VALUE = b"s" * 100


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Flags; bad values end with a one-line usage error."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=10, help="length of each wrk run (default 10)")
    parser.add_argument("--connections", default="1,32",
                        help="comma-separated connection counts (default 1,32)")
    parser.add_argument("--no-ceiling", action="store_true", help="skip the single-replica no-fsync runs")
    parser.add_argument("--watchers", type=int, default=100, help="watchers of the watch figure (0: none; "
                        "default 100)")
    parser.add_argument("--watch-writes", type=int, default=2000,
                        help="PUTs of the watch throughput phase (default 2000; the latency phase makes 200)")
    parser.add_argument("--watch-writers", type=int, default=16,
                        help="concurrent writers of the watch throughput phase (default 16)")
    args = parser.parse_args(argv)
    if not 1 <= args.seconds <= 600:
        parser.error("--seconds must be from 1 to 600")
    if not 0 <= args.watchers <= 1000:
        parser.error("--watchers must be from 0 to 1000")
    if not 10 <= args.watch_writes <= 100_000:
        parser.error("--watch-writes must be from 10 to 100000")
    if not 1 <= args.watch_writers <= 256:
        parser.error("--watch-writers must be from 1 to 256")
    args.connections = connection_counts(parser, args.connections)
    return args


async def seed_kvstore(url: str) -> None:
    """The keys the kvstore GET runs read (w=all, so every replica holds them)."""
    async with Client(url) as client:
        for start in range(0, SEED_KEYS, 100):
            replies = await asyncio.gather(*(client.put(f"seed/{i}", VALUE, w="all")
                                             for i in range(start, min(SEED_KEYS, start + 100))))
            bad = [r.status for r in replies if r.status != 200]
            if bad:
                raise RuntimeError(f"kvstore seed failed with statuses {bad[:5]}")


def with_cpu(run: Callable[[], Figures], pids: dict[str, int]) -> tuple[Figures, dict[str, float]]:
    """Run ``run`` and charge the servers' CPU time to its requests: microseconds per request
    per process. Unlike req/s this hardly moves when other work shares the machine."""
    before = cpu_seconds(pids)
    fig = run()
    after = cpu_seconds(pids)
    return fig, {name: round((after[name] - before[name]) * 1e6 / max(1, fig.requests), 1) for name in pids}


def run_pairs(etcd: EtcdCluster, kv: KvCluster, conns_list: list[int], seconds: int) -> list[dict[str, Any]]:
    """The three etcd/kvstore pairs, etcd first then kvstore, at each connection count."""
    etcd_leader, etcd_follower = etcd.leader, etcd.follower
    primary, secondary = kv.url("kv-0"), kv.url("kv-1")
    kv_pids = {name: kv.pid(name) for name in ("kv-0", "kv-1", "kv-2")}
    pairs: list[dict[str, Any]] = []
    for conns in conns_list:
        # (pair, etcd label, etcd run, kvstore label, kvstore run); called right away, so
        # the lambdas' late binding of ``conns`` is harmless.
        specs: list[tuple[str, str, Callable[[], Figures], str, Callable[[], Figures]]] = [
            ("durable PUT", "etcd put (leader)",
             lambda: run_wrk("etcd put", etcd_leader, "etcd_put_unique.lua", conns, seconds,
                             {"ETCD_GATEWAY": ETCD_GATEWAY, "ETCD_KEY_PREFIX": f"bench-c{conns}/"}),
             "kvstore PUT w=majority (kv-0)",
             lambda: run_wrk("kvstore put w=majority", primary, "put_unique.lua", conns, seconds,
                             {"KV_BENCH_PATH_PREFIX": f"/v1/kv/bench-c{conns}/", "KV_BENCH_QUERY": "?w=majority"})),
            ("strong GET", "etcd range linearizable (leader)",
             lambda: run_wrk("etcd range linearizable", etcd_leader, "etcd_range_existing.lua", conns, seconds,
                             {"ETCD_GATEWAY": ETCD_GATEWAY, "ETCD_KEY_PREFIX": "seed/",
                              "KV_BENCH_KEYS": str(SEED_KEYS), "ETCD_SERIALIZABLE": "false"}),
             "kvstore GET consistency=strong (kv-0)",
             lambda: run_wrk("kvstore get strong", primary, "get_existing.lua", conns, seconds,
                             {"KV_BENCH_KEYS": str(SEED_KEYS), "KV_BENCH_QUERY": "?consistency=strong"})),
            ("local GET", "etcd range serializable (follower)",
             lambda: run_wrk("etcd range serializable", etcd_follower, "etcd_range_existing.lua", conns, seconds,
                             {"ETCD_GATEWAY": ETCD_GATEWAY, "ETCD_KEY_PREFIX": "seed/",
                              "KV_BENCH_KEYS": str(SEED_KEYS), "ETCD_SERIALIZABLE": "true"}),
             "kvstore GET local (secondary kv-1)",
             lambda: run_wrk("kvstore get local", secondary, "get_existing.lua", conns, seconds,
                             {"KV_BENCH_KEYS": str(SEED_KEYS)})),
        ]
        for kind, etcd_label, etcd_run, kv_label, kv_run in specs:
            time.sleep(SETTLE_SECONDS)
            etcd_fig, etcd_cpu = with_cpu(etcd_run, etcd.pids)
            _progress(etcd_label, etcd_fig)
            time.sleep(SETTLE_SECONDS)
            kv_fig, kv_cpu = with_cpu(kv_run, kv_pids)
            _progress(kv_label, kv_fig)
            pairs.append({"kind": kind, "connections": conns, "etcd_label": etcd_label, "kvstore_label": kv_label,
                          "etcd": etcd_fig, "kvstore": kv_fig,
                          "etcd_cpu_us_per_request": etcd_cpu, "kvstore_cpu_us_per_request": kv_cpu})
    return pairs


def run_watch(etcd: EtcdCluster, kv: KvCluster, args: argparse.Namespace) -> dict[str, Any]:
    """The watch figures of both stores, etcd first (bench/watch.py's phases on these clusters)."""
    phases = argparse.Namespace(watchers=args.watchers, writes=args.watch_writes, connections=args.watch_writers)
    urls = [kv.url(f"kv-{i}") for i in range(3)]
    time.sleep(SETTLE_SECONDS)
    etcd_figures = asyncio.run(watch_bench.measure(f"etcd {etcd.version} watch", etcd.urls,
                                                   watch_bench.etcd_watcher, watch_bench.etcd_put(etcd.leader),
                                                   phases, RUNS.echo))
    time.sleep(SETTLE_SECONDS)
    kv_figures = asyncio.run(watch_bench.measure("kvstore watch", urls, watch_bench.kv_watcher,
                                                 watch_bench.kv_put(urls[0]), phases, RUNS.echo))
    return {"watchers": args.watchers, "writes": args.watch_writes, "writers": args.watch_writers,
            "etcd": etcd_figures, "kvstore": kv_figures}


def print_watch(figures: dict[str, Any]) -> None:
    """The watch rows: events/s to all watchers and write-to-event latency, etcd beside kvstore."""
    e, k = figures["etcd"], figures["kvstore"]
    print(f"\nwatch: {figures['watchers']} watchers of one prefix over 3 members/pods, unique-key PUTs "
          f"(w=majority on kvstore)")
    head = f"{'figure':<36} | {'etcd':>9} | {'kvstore':>9} | {'kv/etcd':>7}"
    print(head)
    print("-" * len(head))
    rows = [(f"events/s, {figures['writers']} writers", e["writers"]["events_per_s"],
             k["writers"]["events_per_s"], "{:>9.0f}"),
            ("write-to-event p50 ms, 1 writer", e["one_writer"]["latency_ms_p50"],
             k["one_writer"]["latency_ms_p50"], "{:>9.2f}"),
            ("write-to-event p99 ms, 1 writer", e["one_writer"]["latency_ms_p99"],
             k["one_writer"]["latency_ms_p99"], "{:>9.2f}"),
            (f"write-to-event p50 ms, {figures['writers']} writers", e["writers"]["latency_ms_p50"],
             k["writers"]["latency_ms_p50"], "{:>9.2f}"),
            (f"write-to-event p99 ms, {figures['writers']} writers", e["writers"]["latency_ms_p99"],
             k["writers"]["latency_ms_p99"], "{:>9.2f}")]
    for label, ev, kv, fmt in rows:
        ratio = f"{kv / ev:>6.2f}x" if ev else "      -"
        print(f"{label:<36} | {fmt.format(ev)} | {fmt.format(kv)} | {ratio}")
    print("(watchers and writers are this one Python process, on the same cores as the servers)")


def run_ceiling(conns_list: list[int], seconds: int) -> list[Figures]:
    """One kvstore replica, fsync off: what one Python process can do at best."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="kv-ceiling-") as tmp, replica(tmp, fsync=False) as url:
        asyncio.run(kv_seed(url, SEED_KEYS))
        for conns in conns_list:
            for fig in (run_wrk("kvstore 1 replica PUT no-fsync", url, "put_unique.lua", conns, seconds,
                                {"KV_BENCH_PATH_PREFIX": f"/v1/kv/ceiling-c{conns}/"}),
                        run_wrk("kvstore 1 replica GET no-fsync", url, "get_existing.lua", conns, seconds,
                                {"KV_BENCH_KEYS": str(SEED_KEYS)})):
                _progress(fig.name, fig)
                rows.append(fig)
    return rows


def _progress(label: str, fig: Figures) -> None:
    errors = f"  non-2xx {fig.non_2xx} errors {fig.socket_errors}" if fig.non_2xx or fig.socket_errors else ""
    RUNS.echo(f"  {label:<42} c={fig.connections:<3} {fig.rps:>9.0f} req/s  p50 {fig.p50_ms:7.2f} ms  "
              f"p99 {fig.p99_ms:7.2f} ms{errors}")


def print_comparison(pairs: list[dict[str, Any]], ceiling: list[Figures]) -> None:
    """The side-by-side table: etcd and kvstore figures and the kvstore/etcd ratio."""
    head = (f"{'pair':<12} {'conns':>5} | {'etcd req/s':>10} {'p50 ms':>7} {'p99 ms':>7} {'cpu us':>7} | "
            f"{'kv req/s':>9} {'p50 ms':>7} {'p99 ms':>7} {'cpu us':>7} | {'kv/etcd':>7}")
    print(head)
    print("-" * len(head))
    for p in pairs:
        e, k = p["etcd"], p["kvstore"]
        ratio = k.rps / e.rps if e.rps else 0.0
        ecpu = sum(p["etcd_cpu_us_per_request"].values())
        kcpu = sum(p["kvstore_cpu_us_per_request"].values())
        print(f"{p['kind']:<12} {p['connections']:>5} | {e.rps:>10.0f} {e.p50_ms:>7.2f} {e.p99_ms:>7.2f} {ecpu:>7.0f} | "
              f"{k.rps:>9.0f} {k.p50_ms:>7.2f} {k.p99_ms:>7.2f} {kcpu:>7.0f} | {ratio:>6.2f}x")
    puts = {p["connections"]: p["etcd"] for p in pairs if p["kind"] == "durable PUT"}
    gets = {p["connections"]: p["etcd"] for p in pairs if p["kind"] == "local GET"}
    for fig in ceiling:
        ref = (puts if "PUT" in fig.name else gets).get(fig.connections)
        ratio = f"{fig.rps / ref.rps:>6.2f}x" if ref and ref.rps else "      -"
        kind = "ceil PUT" if "PUT" in fig.name else "ceil GET"
        print(f"{kind:<12} {fig.connections:>5} | {'':>10} {'':>7} {'':>7} {'':>7} | "
              f"{fig.rps:>9.0f} {fig.p50_ms:>7.2f} {fig.p99_ms:>7.2f} {'':>7} | {ratio}")
    print("(cpu us = server CPU per request, all 3 members/replicas together; ceil = one kvstore replica,\n"
          " fsync off, its ratio against etcd put / serializable range)")
    bad = [f for p in pairs for f in (p["etcd"], p["kvstore"])] + ceiling
    bad = [f for f in bad if f.non_2xx or f.socket_errors]
    for f in bad:
        print(f"WARNING: {f.name} c={f.connections}: {f.non_2xx} non-2xx answers, {f.socket_errors} socket errors")


def verdicts(pairs: list[dict[str, Any]], ceiling: list[Figures]) -> list[dict[str, Any]]:
    """The issue's speed targets that this run can judge, each with its measured figures."""
    def pair(kind: str, conns: int) -> dict[str, Any] | None:
        return next((p for p in pairs if p["kind"] == kind and p["connections"] == conns), None)

    out: list[dict[str, Any]] = []

    def judge(target: str, met: bool, measured: str) -> None:
        out.append({"target": target, "met": met, "measured": measured})

    if (p := pair("durable PUT", 1)) is not None:
        e, k = p["etcd"], p["kvstore"]
        judge("single-client w=majority PUT p50 <= 0.8x etcd's put p50", k.p50_ms <= 0.8 * e.p50_ms,
              f"{k.p50_ms / e.p50_ms:.2f}x ({k.p50_ms:.2f} ms vs {e.p50_ms:.2f} ms)")
    if (p := pair("durable PUT", 32)) is not None:
        e, k = p["etcd"], p["kvstore"]
        judge("w=majority PUT at 32 conns >= 1.5x etcd put", k.rps >= 1.5 * e.rps,
              f"{k.rps / e.rps:.2f}x ({k.rps:.0f} vs {e.rps:.0f} req/s)")
        judge("w=majority PUT p99 at 32 conns <= etcd's", k.p99_ms <= e.p99_ms,
              f"{k.p99_ms:.2f} ms vs {e.p99_ms:.2f} ms")
    for conns in sorted({p["connections"] for p in pairs}):
        if (p := pair("durable PUT", conns)) is not None:
            ecpu, kcpu = (sum(p[f"{side}_cpu_us_per_request"].values()) for side in ("etcd", "kvstore"))
            if ecpu:
                judge(f"server CPU per replicated write at {conns} conns <= 0.5x etcd's", kcpu <= 0.5 * ecpu,
                      f"{kcpu / ecpu:.2f}x ({kcpu:.0f} vs {ecpu:.0f} us, all replicas)")
    if (p := pair("local GET", 32)) is not None:
        e, k = p["etcd"], p["kvstore"]
        judge("local GET at 32 conns >= 1.25x etcd serializable", k.rps >= 1.25 * e.rps,
              f"{k.rps / e.rps:.2f}x ({k.rps:.0f} vs {e.rps:.0f} req/s)")
    for conns in (1, 32):
        if (p := pair("strong GET", conns)) is not None:
            e, k = p["etcd"], p["kvstore"]
            judge(f"strong GET at {conns} conns >= 1.0x etcd linearizable", k.rps >= e.rps,
                  f"{k.rps / e.rps:.2f}x ({k.rps:.0f} vs {e.rps:.0f} req/s)")
    ceil = next((f for f in ceiling if "PUT" in f.name and f.connections == 32), None)
    if (p := pair("durable PUT", 32)) is not None and ceil is not None and ceil.rps:
        k = p["kvstore"]
        judge("replicated durable PUT >= 50% of the 1-replica no-fsync ceiling (32 conns)",
              k.rps >= 0.5 * ceil.rps, f"{k.rps / ceil.rps:.0%} ({k.rps:.0f} vs {ceil.rps:.0f} req/s)")
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    ensure_wrk()
    stop_on_sigterm()
    started = time.monotonic()
    at_start = machine()
    print("bench: starting a 3-member etcd cluster and a 3-replica kvstore cluster on loopback", file=sys.stderr)
    with etcd_cluster() as etcd, kv_cluster(3) as kv:
        print(f"bench: etcd {etcd.version} leader {etcd.leader}, follower {etcd.follower}; "
              f"kvstore kv-0 {kv.url('kv-0')}, kv-1 {kv.url('kv-1')}", file=sys.stderr)
        asyncio.run(etcd_seed(etcd.leader, "seed/", SEED_KEYS, VALUE))
        asyncio.run(seed_kvstore(kv.url("kv-0")))
        kv.wait_caught_up(["kv-1", "kv-2"])
        # Three pairs of runs per connection count, then two ceiling runs per count.
        RUNS.plan(len(args.connections) * (6 if args.no_ceiling else 8))
        pairs = run_pairs(etcd, kv, args.connections, args.seconds)
        watch = run_watch(etcd, kv, args) if args.watchers else None
        etcd_version = etcd.version
    ceiling = [] if args.no_ceiling else run_ceiling(args.connections, args.seconds)
    RUNS.close()
    print()
    print_comparison(pairs, ceiling)
    if watch is not None:
        print_watch(watch)
    judged = verdicts(pairs, ceiling)
    print()
    for v in judged:
        print(f"{'MET   ' if v['met'] else 'MISSED'} {v['target']}: {v['measured']}")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"compare-etcd-{time.strftime('%Y%m%dT%H%M%S')}.json"
    out.write_text(json.dumps({
        "command": " ".join(["./kv bench compare_etcd", *(argv if argv is not None else sys.argv[1:])]),
        "seconds": args.seconds, "etcd_version": etcd_version, "machine": at_start,
        "pairs": [{**{k: v for k, v in p.items() if k not in ("etcd", "kvstore")},
                   "etcd": p["etcd"].as_dict(), "kvstore": p["kvstore"].as_dict(),
                   "ratio": round(p["kvstore"].rps / p["etcd"].rps, 3) if p["etcd"].rps else None}
                  for p in pairs],
        "ceiling": [f.as_dict() for f in ceiling],
        "watch": watch,
        "verdicts": judged,
        "wall_seconds": round(time.monotonic() - started, 1),
        "loadavg_at_end": list(os.getloadavg()),
    }, indent=2))
    load = at_start["loadavg_1_5_15"][0], os.getloadavg()[0]
    print(f"\nload average (1 min) at start {load[0]:.2f}, at end {load[1]:.2f} on {os.cpu_count()} CPUs: "
          "other work on the machine skews the figures")
    print(f"figures written to {out} ({time.monotonic() - started:.0f} s in all)")
    return 0


if __name__ == "__main__":
    run_main(main)
