"""Watch: events per second delivered to many watchers, and the latency from a write to its event.

    ./kv bench watch [--watchers 100] [--writes 2000] [--connections 16] [--no-etcd]

Starts a local 3-replica kvstore cluster (and a 3-member etcd cluster), opens
``--watchers`` watches of one prefix spread over the three pods (members), then
two phases of unique-key PUTs of 16 bytes (``w=majority`` to kv-0; to etcd's
leader):

- *latency*: one writer, one PUT at a time: per event, the time from sending
  the PUT to the watcher reading its event (p50, p99 over every watcher);
- *throughput*: ``--connections`` writers: events delivered to all watchers per
  second, from the first PUT sent to the last event read.

Watchers and writers run in this one process, on the same 2 cores as the
servers: the figures are what the whole machine gives, client included.
Figures go to bench/results/watch.json.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Awaitable, Callable

import aiohttp

sys.path.insert(0, str(Path(__file__).parent))

from kvstore.cmdline import flag, int_range  # noqa: E402
from clusters import (  # noqa: E402
    ETCD_GATEWAY, b64, etcd_cluster, kv_cluster, machine, run_main, stop_on_sigterm,
)

RESULTS = Path(__file__).parent / "results"
BASE, DNS = "127.0.125.10", "127.0.125.2"
ETCD_NET = "127.0.126"
VALUE = b"0123456789abcdef"
Put = Callable[[aiohttp.ClientSession, str], Awaitable[None]]


class Recorder:
    """When each key was sent, and when each watcher read its event."""

    def __init__(self, watchers: int) -> None:
        self.sent: dict[str, float] = {}
        self.seen: list[dict[str, float]] = [{} for _ in range(watchers)]
        self.expected = 0
        self.done = asyncio.Event()
        self.events = 0

    def saw(self, watcher: int, key: str) -> None:
        self.seen[watcher].setdefault(key, time.perf_counter())
        self.events += 1
        if self.events >= self.expected:
            self.done.set()

    def latencies_ms(self, keys: list[str]) -> list[float]:
        return sorted((seen[k] - self.sent[k]) * 1000 for seen in self.seen for k in keys if k in seen)


async def kv_watcher(session: aiohttp.ClientSession, url: str, prefix: str, index: int, rec: Recorder,
                     ready: asyncio.Event) -> None:
    async with session.get(f"{url}/v1/watch", params={"prefix": prefix, "values": "false"}) as response:
        await response.content.readline()  # the start line: the watch is open
        ready.set()
        async for line in response.content:
            event = json.loads(line)
            if event["type"] == "put":
                rec.saw(index, event["key"])


async def etcd_watcher(session: aiohttp.ClientSession, url: str, prefix: str, index: int, rec: Recorder,
                       ready: asyncio.Event) -> None:
    end = prefix[:-1] + chr(ord(prefix[-1]) + 1)
    body = {"create_request": {"key": b64(prefix), "range_end": b64(end)}}
    async with session.post(url + ETCD_GATEWAY + "/watch", json=body) as response:
        async for line in response.content:
            result = json.loads(line).get("result", {})
            if result.get("created"):
                ready.set()
            for event in result.get("events", ()):
                rec.saw(index, base64.b64decode(event["kv"]["key"]).decode())


async def run_phase(urls: list[str], watcher: Callable[..., Awaitable[None]], put: Put, prefix: str,
                    watchers: int, writes: int, connections: int) -> dict[str, Any]:
    """Open the watchers, write, wait for every event: the figures of one phase."""
    rec = Recorder(watchers)
    rec.expected = watchers * writes
    timeout = aiohttp.ClientTimeout(total=None, sock_read=60)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=0)) as session:
        readies = [asyncio.Event() for _ in range(watchers)]
        tasks = [asyncio.create_task(watcher(session, urls[i % len(urls)], prefix, i, rec, readies[i]))
                 for i in range(watchers)]
        try:
            async with asyncio.timeout(60):
                await asyncio.gather(*(r.wait() for r in readies))
            keys = [f"{prefix}{i:07d}" for i in range(writes)]
            queue = iter(keys)
            started = time.perf_counter()

            async def writer() -> None:
                for key in queue:
                    rec.sent[key] = time.perf_counter()
                    await put(session, key)
            await asyncio.gather(*(writer() for _ in range(connections)))
            async with asyncio.timeout(120):
                await rec.done.wait()
            elapsed = max(max(s.values()) for s in rec.seen) - started
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    latencies = rec.latencies_ms(keys)
    return {"events": rec.events, "seconds": round(elapsed, 3), "events_per_s": round(rec.events / elapsed),
            "latency_ms_p50": round(statistics.median(latencies), 2),
            "latency_ms_p99": round(latencies[int(len(latencies) * 0.99) - 1], 2)}


async def measure(name: str, urls: list[str], watcher: Callable[..., Awaitable[None]], put: Put,
                  args: argparse.Namespace, say: Callable[[str], None] = print) -> dict[str, Any]:
    """Both phases against one store (``args``: watchers, writes, connections); ``say`` prints a line."""
    quiet = await run_phase(urls, watcher, put, "lat/", args.watchers, min(200, args.writes), 1)
    say(f"{name}: one writer: write-to-event p50 {quiet['latency_ms_p50']} ms, "
        f"p99 {quiet['latency_ms_p99']} ms")
    busy = await run_phase(urls, watcher, put, "tput/", args.watchers, args.writes, args.connections)
    say(f"{name}: {args.connections} writers: {busy['events_per_s']} events/s to {args.watchers} watchers "
        f"(p50 {busy['latency_ms_p50']} ms, p99 {busy['latency_ms_p99']} ms)")
    return {"one_writer": quiet, "writers": busy}


def kv_put(url: str) -> Put:
    async def put(session: aiohttp.ClientSession, key: str) -> None:
        async with session.put(f"{url}/v1/kv/{key}?w=majority", data=VALUE) as response:
            if response.status != 200:
                raise RuntimeError(f"kvstore put failed: {response.status} {await response.text()}")
            await response.read()
    return put


def etcd_put(url: str) -> Put:
    value = base64.b64encode(VALUE).decode()

    async def put(session: aiohttp.ClientSession, key: str) -> None:
        async with session.post(url + ETCD_GATEWAY + "/kv/put", json={"key": b64(key), "value": value}) as response:
            if response.status != 200:
                raise RuntimeError(f"etcd put failed: {response.status} {await response.text()}")
            await response.read()
    return put


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The benchmark's flags (exit 2 with a usage line when bad)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--watchers", type=flag(int_range(1, 1000)), default=100, metavar="1..1000")
    parser.add_argument("--writes", type=flag(int_range(10, 100_000)), default=2000, metavar="10..100000")
    parser.add_argument("--connections", type=flag(int_range(1, 256)), default=16, metavar="1..256")
    parser.add_argument("--no-etcd", action="store_true", help="measure kvstore only")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Measure kvstore's watch (and etcd's) and print both."""
    args = parse_args(argv)
    stop_on_sigterm()
    results: dict[str, Any] = {"watchers": args.watchers, "writes": args.writes,
                               "connections": args.connections, "machine": machine()}
    with kv_cluster(3, base=BASE, dns=DNS) as cluster:
        urls = [cluster.url(f"kv-{i}") for i in range(3)]
        results["kvstore"] = asyncio.run(measure("kvstore", urls, kv_watcher, kv_put(urls[0]), args))
    if not args.no_etcd:
        with etcd_cluster(net=ETCD_NET) as etcd:
            results["etcd"] = asyncio.run(measure(f"etcd {etcd.version}", etcd.urls, etcd_watcher,
                                                  etcd_put(etcd.leader), args))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "watch.json").write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    run_main(main)
