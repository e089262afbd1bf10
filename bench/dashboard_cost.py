"""What an open dashboard costs the pod serving it.

Starts a 3-replica local cluster (fsync on, 127.0.83.10+), then drives kv-0,
the primary and the pod serving the dashboard, with wrk: `w=majority` PUTs and
strong GETs. Each run is repeated in three modes, interleaved over rounds so a
change in the machine's load hits every mode alike:

- ``off``: nobody watches; the dashboard does nothing but look at its own state.
- ``feed``: one client reads the live feed (``/ui/live``): exactly the server's
  work for one open dashboard (asking the peers, assembling, pushing), with a
  client that costs nothing.
- ``browser``: headless chromium shows the page (also charges the machine with
  a browser rendering once a second, on the same 2 cores).

It also measures kv-0's CPU while no load runs (``--idle`` seconds per mode):
the difference between ``off`` and ``feed`` is the dashboard's own work, in
milliseconds of CPU per second, to compare with the one core a loaded pod
uses. req/s and CPU per request under load are printed too (medians over the
rounds); on a shared machine they move more from run to run than the
dashboard's share, hence short runs, many rounds and the order reversed every
other round.

    ./kv bench dashboard_cost [--seconds 5] [--rounds 4] [--connections 32] [--idle 10]    # ~6 min
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable, Iterator

sys.path.insert(0, str(Path(__file__).parent))

from clusters import KvCluster, cpu_seconds, kv_cluster, machine, stop_on_sigterm, wait_for  # noqa: E402
from compare_etcd import SEED_KEYS, SETTLE_SECONDS, seed_kvstore, with_cpu  # noqa: E402
from wrk import Figures, ensure_tool, ensure_wrk, run_wrk  # noqa: E402

BASE = "127.0.83.10"
DNS = "127.0.83.2"
MODES = ("off", "feed", "browser")
RESULTS = Path(__file__).parent / "results"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line, range-checked (exit 2 with the reason otherwise)."""
    parser = argparse.ArgumentParser(prog="dashboard_cost", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=5, help="seconds per wrk run (5-120)")
    parser.add_argument("--rounds", type=int, default=4, help="rounds of every mode (1-10)")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections (1-1024)")
    parser.add_argument("--idle", type=int, default=10, help="seconds of kv-0's idle CPU per mode (5-300)")
    args = parser.parse_args(argv)
    for name, low, high in (("seconds", 5, 120), ("rounds", 1, 10), ("connections", 1, 1024), ("idle", 5, 300)):
        if not low <= getattr(args, name) <= high:
            parser.error(f"--{name} must be from {low} to {high}")
    return args


def peer_views_served(cluster: KvCluster) -> float:
    """How many times kv-1 answered a dashboard's question (it grows once a second while one is open)."""
    with urllib.request.urlopen(cluster.url("kv-1") + "/metrics", timeout=5) as response:
        text = response.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("kv_http_requests_total{") and 'route="/v1/peer/view"' in line)


@contextlib.contextmanager
def watching(mode: str, cluster: KvCluster) -> Iterator[None]:
    """Nothing, a live-feed reader, or a headless chromium on kv-0's dashboard, for the block."""
    url = cluster.url("kv-0")
    if mode == "off":
        yield
        return
    if mode == "feed":
        argv = [ensure_tool("curl", "curl"), "-sN", "-o", "/dev/null", url + "/ui/live"]
    else:
        argv = [ensure_tool("chromium", "chromium"), "--headless=new", "--no-sandbox", "--disable-gpu",
                "--disable-dev-shm-usage", "--no-first-run", "--remote-debugging-port=0",
                "--user-data-dir=" + str(cluster.directory / "chromium"), url + "/ui/"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        before = peer_views_served(cluster)
        wait_for(f"the {mode} to watch kv-0", lambda: peer_views_served(cluster) >= before + 2, 30, 0.2)
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def runs(cluster: KvCluster, conns: int, seconds: int) -> dict[str, Callable[[], Figures]]:
    """The wrk runs against kv-0, by name."""
    primary = cluster.url("kv-0")
    put_env = {"KV_BENCH_PATH_PREFIX": "/v1/kv/dash/", "KV_BENCH_QUERY": "?w=majority"}
    get_env = {"KV_BENCH_KEYS": str(SEED_KEYS), "KV_BENCH_QUERY": "?consistency=strong"}
    return {
        "PUT w=majority (kv-0)": lambda: run_wrk("put", primary, "put_unique.lua", conns, seconds, put_env),
        "GET strong (kv-0)": lambda: run_wrk("get", primary, "get_existing.lua", conns, seconds, get_env),
    }


def main(argv: list[str] | None = None) -> int:
    """Measure every mode over the rounds, print the medians and write them to bench/results/."""
    args = parse_args(argv)
    stop_on_sigterm()
    ensure_wrk()
    figures: dict[tuple[str, str], list[tuple[Figures, float]]] = {}
    idle: dict[str, list[float]] = {}
    with kv_cluster(base=BASE, dns=DNS) as cluster:
        asyncio.run(seed_kvstore(cluster.url("kv-0")))
        pid = {"kv-0": cluster.pid("kv-0")}
        for round_no in range(args.rounds):
            # ABC then CBA: a drift in the machine's load does not favour one mode.
            order = MODES if round_no % 2 == 0 else MODES[::-1]
            for mode in order:
                with watching(mode, cluster):
                    before = cpu_seconds(pid)["kv-0"]
                    time.sleep(args.idle)
                    ms_per_s = (cpu_seconds(pid)["kv-0"] - before) * 1000 / args.idle
                    idle.setdefault(mode, []).append(ms_per_s)
                    print(f"round {round_no + 1} {mode:<8} {'idle':<24} kv-0 {ms_per_s:>6.2f} ms CPU per second",
                          flush=True)
                    for name, run in runs(cluster, args.connections, args.seconds).items():
                        time.sleep(SETTLE_SECONDS)
                        fig, cpu = with_cpu(run, pid)
                        figures.setdefault((name, mode), []).append((fig, cpu["kv-0"]))
                        print(f"round {round_no + 1} {mode:<8} {name:<24} {fig.rps:>8.0f} req/s  "
                              f"kv-0 {cpu['kv-0']:>6.1f} us/request  non-2xx {fig.non_2xx}", flush=True)
    report: list[dict[str, Any]] = []
    print(f"\n{'run':<24} {'mode':<8} {'req/s':>9} {'vs off':>7} {'kv-0 us/req':>12} {'vs off':>7}")
    for name in sorted({name for name, _ in figures}, reverse=True):
        base_rps = statistics.median(f.rps for f, _ in figures[(name, "off")])
        base_cpu = statistics.median(c for _, c in figures[(name, "off")])
        for mode in MODES:
            rps = statistics.median(f.rps for f, _ in figures[(name, mode)])
            cpu = statistics.median(c for _, c in figures[(name, mode)])
            print(f"{name:<24} {mode:<8} {rps:>9.0f} {(rps / base_rps - 1) * 100:>+6.1f}% {cpu:>12.1f} "
                  f"{(cpu / base_cpu - 1) * 100:>+6.1f}%")
            report.append({"run": name, "mode": mode, "rps": round(rps, 1), "kv0_cpu_us_per_request": cpu,
                           "rps_vs_off_percent": round((rps / base_rps - 1) * 100, 2),
                           "cpu_vs_off_percent": round((cpu / base_cpu - 1) * 100, 2)})
    print(f"\n{'idle kv-0':<24} {'mode':<8} {'ms CPU/s':>9} {'vs off':>9}")
    base_idle = statistics.median(idle["off"])
    for mode in MODES:
        value = statistics.median(idle[mode])
        print(f"{'idle kv-0':<24} {mode:<8} {value:>9.2f} {value - base_idle:>+8.2f}")
        report.append({"run": "idle", "mode": mode, "kv0_cpu_ms_per_second": round(value, 2),
                       "extra_ms_per_second": round(value - base_idle, 2)})
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"dashboard_cost-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps({"machine": machine(), "args": vars(args), "results": report}, indent=2))
    print(f"\nwritten to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
