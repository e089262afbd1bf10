"""kvstore at scale: memory, catch-up, snapshot sync and write throughput with 1M keys.

    ./kv bench scale_figures [--keys 1000000] [--seconds 10] [--catchup-writes 100000]

On one 3-replica local cluster (loopback, fsync on, w=majority):

1. PUT throughput (wrk, 32 connections, unique keys) with 10k keys loaded;
2. load up to ``--keys`` keys through the ordinary API (wrk, 64 connections;
   no bulk endpoint) and time it;
3. RSS of every replica once all hold every key;
4. PUT throughput again, now at ``--keys`` keys;
5. follower catch-up: kv-2 is stopped (SIGSTOP) while ``--catchup-writes``
   writes happen, then resumed; entries/s until it holds the primary's LSN
   (the log is kept long enough, KV_LOG_RETENTION, that this is log replay,
   not a snapshot);
6. snapshot sync: scale 3 -> 4; seconds until kv-3 holds every key (its log
   says how long the snapshot install itself took).

Prints the figures with the issue's targets; writes JSON to bench/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from clusters import KvCluster, kv_cluster, machine, rss_mb, run_main, stop_on_sigterm, wait_for  # noqa: E402
from wrk import LUA, RUNS, ensure_wrk, run_wrk  # noqa: E402

RESULTS = Path(__file__).parent / "results"
LOAD_CONNECTIONS = 64
LOAD_THREADS = 2
# Longer than the catch-up gap, so catch-up is log replay; far below 1M, so a new
# replica needs a snapshot.
LOG_RETENTION = 300_000


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Flags; bad values end with a one-line usage error."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keys", type=int, default=1_000_000, help="keys to load (default 1000000)")
    parser.add_argument("--small", type=int, default=10_000, help="keys for the small-store run (default 10000)")
    parser.add_argument("--seconds", type=int, default=10, help="length of each throughput run (default 10)")
    parser.add_argument("--catchup-writes", type=int, default=100_000,
                        help="writes while a follower is stopped (default 100000)")
    args = parser.parse_args(argv)
    if not 1 <= args.seconds <= 600:
        parser.error("--seconds must be from 1 to 600")
    if not 1 <= args.small < args.keys <= 10_000_000:
        parser.error("need 1 <= --small < --keys <= 10000000")
    if not 1 <= args.catchup_writes < LOG_RETENTION:
        parser.error(f"--catchup-writes must be from 1 to {LOG_RETENTION - 1}")
    return args


def load(cluster: KvCluster, prefix: str, start: int, count: int, max_seconds: float = 1800) -> dict[str, Any]:
    """Write ``count`` keys through kv-0's API with wrk, many connections; return what it took.

    wrk only ends at its duration, so it runs with a generous bound and is
    interrupted (SIGINT, it still prints its summary) once the primary's LSN
    has moved by ``count`` (or stopped moving just short of it: wrk may skip
    a generated request, so the loaded count is taken from the LSN).
    """
    url = cluster.url("kv-0")
    before = cluster.lsn("kv-0")
    env = {**os.environ, "KV_BENCH_PATH_PREFIX": f"/v1/kv/{prefix}", "KV_LOAD_KEYS": str(count),
           "KV_LOAD_START": str(start), "KV_LOAD_THREADS": str(LOAD_THREADS),
           "KV_LOAD_CONNS_PER_THREAD": str(LOAD_CONNECTIONS // LOAD_THREADS)}
    cmd = [ensure_wrk(), f"-t{LOAD_THREADS}", f"-c{LOAD_CONNECTIONS}", f"-d{int(max_seconds)}s",
           "--timeout", "10s", "-s", str(LUA / "put_load.lua"), url]
    started = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        last, last_change = before, time.monotonic()
        while proc.poll() is None:
            time.sleep(0.2)
            lsn = cluster.lsn("kv-0")
            if lsn != last:
                last, last_change = lsn, time.monotonic()
            done = lsn - before
            if done >= count or (done >= count - 2 * LOAD_CONNECTIONS and time.monotonic() - last_change > 1.0):
                break
            if time.monotonic() - last_change > 30:
                raise RuntimeError(f"loading stalled at {done} of {count} keys")
        elapsed = time.monotonic() - started
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    line = next((l for l in out.splitlines() if l.startswith("WRK_JSON ")), None)
    data = json.loads(line[len("WRK_JSON "):]) if line else {}
    if data.get("non_2xx") or data.get("socket_errors"):
        raise RuntimeError(f"loading had failures: {data}")
    loaded = cluster.lsn("kv-0") - before
    return {"keys": loaded, "seconds": round(elapsed, 1), "keys_per_second": round(loaded / elapsed),
            "wrk": data}


def put_throughput(cluster: KvCluster, label: str, seconds: int) -> dict[str, Any]:
    """wrk PUT w=majority, 32 connections, unique keys, on kv-0."""
    fig = run_wrk(label, cluster.url("kv-0"), "put_unique.lua", 32, seconds,
                  {"KV_BENCH_PATH_PREFIX": f"/v1/kv/tp-{label}/", "KV_BENCH_QUERY": "?w=majority"})
    RUNS.echo(f"  PUT w=majority c=32 {label}: {fig.rps:.0f} req/s, p50 {fig.p50_ms:.2f} ms, "
              f"p99 {fig.p99_ms:.2f} ms")
    return fig.as_dict()


def catch_up(cluster: KvCluster, writes: int, start: int) -> dict[str, Any]:
    """Stop kv-2, write, resume it; entries/s until it holds the primary's LSN."""
    cluster.wait_caught_up(["kv-1", "kv-2"])
    pid = cluster.pid("kv-2")
    behind_from = cluster.lsn("kv-2")
    os.kill(pid, signal.SIGSTOP)
    try:
        loaded = load(cluster, "catchup/", start, writes)
        target = cluster.lsn("kv-0")
    finally:
        os.kill(pid, signal.SIGCONT)
    resumed = time.monotonic()
    wait_for("kv-2 to catch up", lambda: _lsn(cluster, "kv-2") >= target, 600, 0.02)
    seconds = time.monotonic() - resumed
    entries = target - behind_from
    return {"entries": entries, "seconds": round(seconds, 2), "entries_per_second": round(entries / seconds),
            "writes_while_stopped": loaded}


def snapshot_sync(cluster: KvCluster) -> dict[str, Any]:
    """Scale 3 -> 4 and time until kv-3 holds the primary's LSN; the install time from its log."""
    target = cluster.lsn("kv-0")
    started = time.monotonic()
    cluster.scale(4, timeout=600)
    wait_for("kv-3 to hold every key", lambda: _lsn(cluster, "kv-3") >= target, 600, 0.05)
    seconds = time.monotonic() - started
    log = (cluster.directory / "logs" / "kv-3.log").read_text(errors="replace")
    match = re.search(r"installed a snapshot of (\d+) keys at lsn (\d+) from \S+ in ([\d.]+)s", log)
    return {"seconds_from_scale_to_caught_up": round(seconds, 1),
            "snapshot_keys": int(match.group(1)) if match else None,
            "snapshot_install_seconds": float(match.group(3)) if match else None,
            "rss_mb_kv3": round(rss_mb(cluster.pid("kv-3")), 1)}


def _lsn(cluster: KvCluster, name: str) -> int:
    try:
        return cluster.lsn(name)
    except (OSError, ValueError, KeyError):
        return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    ensure_wrk()
    stop_on_sigterm()
    started = time.monotonic()
    figures: dict[str, Any] = {"keys": args.keys, "machine": machine(),
                               "command": " ".join(["./kv bench scale_figures",
                                                    *(argv if argv is not None else sys.argv[1:])])}
    RUNS.echo(f"bench: 3-replica kvstore cluster (KV_LOG_RETENTION={LOG_RETENTION})")
    RUNS.plan(2)  # the two throughput runs; the other phases say what they do as they start
    with kv_cluster(3, env={"KV_LOG_RETENTION": str(LOG_RETENTION)}) as cluster:
        figures["load_small"] = load(cluster, "k/", 0, args.small)
        cluster.wait_caught_up(["kv-1", "kv-2"])
        figures["put_at_small"] = put_throughput(cluster, f"{args.small // 1000}k-keys", args.seconds)
        RUNS.echo(f"bench: loading {args.keys - args.small} more keys")
        figures["load_large"] = load(cluster, "k/", args.small, args.keys - args.small)
        RUNS.echo(f"  loaded {figures['load_large']['keys']} keys in {figures['load_large']['seconds']} s "
                  f"({figures['load_large']['keys_per_second']}/s)")
        cluster.wait_caught_up(["kv-1", "kv-2"], timeout=600)
        figures["rss_mb"] = {n: round(rss_mb(cluster.pid(n)), 1) for n in ("kv-0", "kv-1", "kv-2")}
        RUNS.echo(f"  RSS: {figures['rss_mb']}")
        figures["put_at_large"] = put_throughput(cluster, f"{args.keys // 1000}k-keys", args.seconds)
        RUNS.echo(f"bench: catch-up of kv-2 after {args.catchup_writes} writes")
        figures["catch_up"] = catch_up(cluster, args.catchup_writes, 0)
        RUNS.echo(f"  {figures['catch_up']}")
        RUNS.echo("bench: scale 3 -> 4 (snapshot sync)")
        figures["snapshot_sync"] = snapshot_sync(cluster)
        RUNS.echo(f"  {figures['snapshot_sync']}")
    RUNS.close()
    figures["wall_seconds"] = round(time.monotonic() - started, 1)
    small, large = figures["put_at_small"]["rps"], figures["put_at_large"]["rps"]
    rss_max = max(figures["rss_mb"].values())
    judged = [
        ("<= 80 MB RSS per replica after 1M keys", rss_max <= 80, f"max {rss_max:.1f} MB {figures['rss_mb']}"),
        ("catch-up >= 20k entries/s", figures["catch_up"]["entries_per_second"] >= 20_000,
         f"{figures['catch_up']['entries_per_second']} entries/s"),
        ("1M-key snapshot sync <= 30 s", figures["snapshot_sync"]["seconds_from_scale_to_caught_up"] <= 30,
         f"{figures['snapshot_sync']['seconds_from_scale_to_caught_up']} s from scale to caught up "
         f"(install {figures['snapshot_sync']['snapshot_install_seconds']} s)"),
        ("PUT throughput at 1M keys within 20% of 10k keys", large >= 0.8 * small,
         f"{large:.0f} vs {small:.0f} req/s ({large / small:.0%})" if small else "no figure"),
    ]
    figures["verdicts"] = [{"target": t, "met": m, "measured": s} for t, m, s in judged]
    print()
    for target, met, measured in judged:
        print(f"{'MET   ' if met else 'MISSED'} {target}: {measured}")
    print(f"load: {figures['load_large']['keys']} keys in {figures['load_large']['seconds']} s; "
          f"whole run {figures['wall_seconds']:.0f} s")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"scale-figures-{time.strftime('%Y%m%dT%H%M%S')}.json"
    out.write_text(json.dumps(figures, indent=2))
    print(f"figures written to {out}")
    return 0


if __name__ == "__main__":
    run_main(main)
