"""Transactions: what writing three keys costs as one transaction, against three PUTs.

    ./kv bench txn [--count 300] [--connections 16]

Starts a local 3-replica kvstore cluster and writes, ``w=majority`` to kv-0,
unique keys with 16-byte values in two phases, each both ways (three PUTs
one after the other; one transaction of three puts with a comparison that
the first key is absent):

- *latency*: one client, one call at a time, ``--count`` times: p50 and p99
  of the three PUTs together and of the transaction;
- *throughput*: ``--connections`` clients: keys written per second.

Clients run in this process, on the same cores as the pods. Figures go to
bench/results/txn.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Awaitable, Callable

import aiohttp

sys.path.insert(0, str(Path(__file__).parent))

from kvstore.cmdline import flag, int_range  # noqa: E402
from clusters import kv_cluster, machine, run_main, stop_on_sigterm  # noqa: E402

RESULTS = Path(__file__).parent / "results"
BASE, DNS = "127.0.127.10", "127.0.127.2"
VALUE = "0123456789abcdef"
Write = Callable[[aiohttp.ClientSession, str], Awaitable[None]]


async def three_puts(session: aiohttp.ClientSession, url: str, name: str) -> None:
    for k in "abc":
        async with session.put(f"{url}/v1/kv/{name}/{k}", data=VALUE.encode(), params={"w": "majority"}) as r:
            assert r.status == 200, await r.text()


async def one_txn(session: aiohttp.ClientSession, url: str, name: str) -> None:
    body = {"compare": [{"key": f"{name}/a", "absent": True}],
            "success": [{"op": "put", "key": f"{name}/{k}", "value": VALUE} for k in "abc"]}
    async with session.post(f"{url}/v1/txn", json=body, params={"w": "majority"}) as r:
        answer = await r.json()
        assert r.status == 200 and answer["succeeded"], answer


async def measure(url: str, count: int, connections: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    async with aiohttp.ClientSession() as session:
        for label, write in (("three_puts", three_puts), ("txn", one_txn)):
            samples = []
            for i in range(count):
                started = time.perf_counter()
                await write(session, url, f"lat-{label}-{i}")
                samples.append((time.perf_counter() - started) * 1000)
            samples.sort()
            next_key = iter(range(10**9))

            async def client(deadline: float) -> int:
                done = 0
                while time.perf_counter() < deadline:
                    await write(session, url, f"tp-{label}-{next(next_key)}")
                    done += 3
                return done
            started = time.perf_counter()
            keys = sum(await asyncio.gather(*(client(started + 5.0) for _ in range(connections))))
            out[label] = {"p50_ms": round(statistics.median(samples), 2),
                          "p99_ms": round(samples[int(len(samples) * 0.99) - 1], 2),
                          "keys_per_second": round(keys / (time.perf_counter() - started))}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench txn", description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=flag(int_range(10, 100_000)), default=300)
    parser.add_argument("--connections", type=flag(int_range(1, 256)), default=16)
    args = parser.parse_args(argv)
    stop_on_sigterm()
    with kv_cluster(base=BASE, dns=DNS) as cluster:
        figures = asyncio.run(measure(cluster.url("kv-0"), args.count, args.connections))
    result = {"machine": machine(), "count": args.count, "connections": args.connections, **figures}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "txn.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    run_main(main)
