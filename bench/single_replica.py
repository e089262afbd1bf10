"""Benchmark one replica with wrk: PUT and GET at 1 and 32 connections, fsync on and off.

    ./kv bench            (or: .venv/bin/python bench/single_replica.py [--seconds 10])

Prints req/s, p50 and p99 per run, and the ratio the group commit is judged
by: durable PUT throughput at 32 connections over the no-fsync throughput of
the same run (target >= 0.70). Figures are written to bench/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Iterator

sys.path.insert(0, str(Path(__file__).parent))

from wrk import RUNS, Figures, ensure_wrk, print_table, run_wrk  # noqa: E402

from kvstore.client import Client  # noqa: E402

RESULTS = Path(__file__).parent / "results"
SEED_KEYS = 1000


def _free_port() -> int:
    with closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def replica(data_dir: str, fsync: bool) -> Iterator[str]:
    """A ``kvstore serve`` process (kv-0, alone) for the duration of the block."""
    port, peer, dns_port = _free_port(), _free_port(), _free_port()
    env = {**os.environ, "POD_NAME": "kv-0", "KV_DATA_DIR": data_dir, "KV_BIND_ADDRESS": "127.0.0.1",
           "KV_HTTP_PORT": str(port), "KV_PEER_PORT": str(peer), "KV_REPLICAS": "1",
           "KV_WRITE_CONCERN": "1", "KV_FSYNC": "true" if fsync else "false",
           "KV_DNS_SERVER": f"127.0.0.1:{dns_port}"}  # no DNS answers there: a lone replica
    proc = subprocess.Popen([sys.executable, "-m", "kvstore", "serve"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(url + "/readyz", timeout=1):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the replica did not start")
                time.sleep(0.05)
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def seed(url: str, count: int) -> None:
    """Write the keys the GET runs read."""
    async with Client(url) as client:
        for start in range(0, count, 100):
            await asyncio.gather(*(client.put(f"seed/{i}", b"s" * 100)
                                   for i in range(start, min(count, start + 100))))


def bench_mode(fsync: bool, seconds: float) -> list[Figures]:
    """PUT and GET at 1 and 32 connections against a fresh replica."""
    label = "fsync" if fsync else "no-fsync"
    rows = []
    with tempfile.TemporaryDirectory(prefix="kv-bench-") as tmp, replica(tmp, fsync) as url:
        asyncio.run(seed(url, SEED_KEYS))
        for conns in (1, 32):
            rows.append(run_wrk(f"PUT 100B unique keys ({label})", url, "put_unique.lua", conns, seconds,
                                {"KV_BENCH_PATH_PREFIX": f"/v1/kv/bench{conns}/"}))
            rows.append(run_wrk(f"GET existing keys ({label})", url, "get_existing.lua", conns, seconds,
                                {"KV_BENCH_KEYS": str(SEED_KEYS)}))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=10.0, help="length of each wrk run")
    args = parser.parse_args()
    if not 1 <= args.seconds <= 600:
        parser.error("--seconds must be from 1 to 600")
    ensure_wrk()
    RUNS.plan(8)  # PUT and GET at 1 and 32 connections, fsync on and off
    rows = bench_mode(True, args.seconds) + bench_mode(False, args.seconds)
    RUNS.close()
    print_table(rows)
    durable = next(r for r in rows if r.name.startswith("PUT") and "(fsync)" in r.name and r.connections == 32)
    ceiling = next(r for r in rows if r.name.startswith("PUT") and "no-fsync" in r.name and r.connections == 32)
    ratio = durable.rps / ceiling.rps if ceiling.rps else 0.0
    verdict = "meets" if ratio >= 0.70 else "MISSES"
    print(f"\ngroup commit: durable PUT at 32 connections = {ratio:.0%} of no-fsync ({verdict} the 70% target)")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"single-replica-{time.strftime('%Y%m%dT%H%M%S')}.json"
    out.write_text(json.dumps({"runs": [r.as_dict() for r in rows], "group_commit_ratio": round(ratio, 3)},
                              indent=2))
    print(f"figures written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
