"""Drive HTTP servers with wrk (Debian's package) and read its figures back.

The Lua scripts in bench/lua print one ``WRK_JSON {...}`` line from wrk's
``done`` hook, so no text parsing of wrk's human output is needed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from kvstore.progress import ProgressLine

LUA = Path(__file__).parent / "lua"


def connection_counts(parser: argparse.ArgumentParser, text: str) -> list[int]:
    """``1,32`` -> [1, 32]; anything else ends with the parser's one-line usage error."""
    try:
        counts = [int(c) for c in text.split(",")]
    except ValueError:
        parser.error("--connections must be integers like 1,32")
    if not counts or any(not 1 <= c <= 1024 for c in counts):
        parser.error("--connections must each be from 1 to 1024")
    return counts


class Runs:
    """Which wrk run of how many: a progress line on stderr (in place on a terminal)."""

    def __init__(self) -> None:
        self.line = ProgressLine()
        self.planned = 0
        self.done = 0

    def plan(self, count: int) -> None:
        """The number of wrk runs the benchmark is about to make."""
        self.planned, self.done = count, 0

    def start(self, name: str, connections: int, seconds: float) -> None:
        """A run begins: show which."""
        self.done += 1
        of = f" of {self.planned}" if self.planned >= self.done else ""
        self.line.show(f"bench: run {self.done}{of}: {name}, {connections} connections, {seconds:g} s")

    def echo(self, text: str) -> None:
        """A result line, printed above the progress line."""
        self.line.echo(text)

    def close(self) -> None:
        """Before the final tables: the progress line ends."""
        self.line.close()


RUNS = Runs()


@dataclass
class Figures:
    """One wrk run: throughput and latency."""

    name: str
    connections: int
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    non_2xx: int
    socket_errors: int

    @property
    def rps(self) -> float:
        """Requests per second."""
        return self.requests / self.seconds if self.seconds else 0.0

    def as_dict(self) -> dict[str, object]:
        """JSON-ready figures, req/s included."""
        return {**asdict(self), "rps": round(self.rps, 1)}


def ensure_tool(binary: str, package: str) -> str:
    """Path to ``binary``; installs Debian's ``package`` when root and missing, else says how."""
    path = shutil.which(binary)
    if path:
        return path
    if os.geteuid() == 0 and shutil.which("apt-get"):
        print(f"bench: {binary} is missing; installing Debian's {package} package", file=sys.stderr)
        subprocess.run(["apt-get", "update", "-qq"], check=False, stdout=subprocess.DEVNULL)
        subprocess.run(["apt-get", "install", "-y", "-qq", package], check=True, stdout=subprocess.DEVNULL,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
        path = shutil.which(binary)
        if path:
            return path
    sys.exit(f"bench: {binary} is needed: install it with `sudo apt-get install {package}` and run again")


def ensure_wrk() -> str:
    """Path to wrk (Debian's package, installed when missing and root)."""
    return ensure_tool("wrk", "wrk")


def run_wrk(name: str, url: str, script: str, connections: int, seconds: float,
            env: dict[str, str] | None = None) -> Figures:
    """Run wrk for ``seconds`` with ``connections`` (at most 2 threads: the machine is small)."""
    RUNS.start(name, connections, seconds)
    threads = min(2, connections)
    cmd = [ensure_wrk(), f"-t{threads}", f"-c{connections}", f"-d{int(seconds)}s", "--timeout", "10s",
           "-s", str(LUA / script), url]
    result = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})},
                            timeout=seconds + 60)
    line = next((l for l in result.stdout.splitlines() if l.startswith("WRK_JSON ")), None)
    if result.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({result.returncode}): {result.stderr or result.stdout}")
    data = json.loads(line[len("WRK_JSON "):])
    return Figures(name, connections, data["requests"], data["duration_us"] / 1e6,
                   data["p50_us"] / 1000, data["p99_us"] / 1000, data["non_2xx"], data["socket_errors"])


def print_table(rows: list[Figures]) -> None:
    """A fixed-width table of runs."""
    print(f"{'run':<38} {'conns':>5} {'req/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'non-2xx':>8} {'errors':>7}")
    for row in rows:
        print(f"{row.name:<38} {row.connections:>5} {row.rps:>10.0f} {row.p50_ms:>8.2f} "
              f"{row.p99_ms:>8.2f} {row.non_2xx:>8} {row.socket_errors:>7}")
