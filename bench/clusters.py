"""The systems the benchmarks drive: a 3-member etcd cluster and a kvstore local cluster.

Both are context managers that stop everything they started (processes, temp
dirs) on the way out, also on Ctrl-C and exceptions. Traffic stays on
loopback: etcd members and kvstore pods each get their own 127.0.X.Y address.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import aiohttp

from kvstore.local.handle import LocalCluster, wait_for
from kvstore.local.state import ClusterError
from wrk import ensure_tool

# Loopback ranges of their own, apart from the tests' and `./kv cluster up`'s defaults.
ETCD_NET = "127.0.78"
KV_BASE = "127.0.77.10"
KV_DNS = "127.0.77.2"
# Debian ships etcd 3.4, whose JSON gateway is /v3 (v3beta still accepted, dropped in 3.5).
ETCD_GATEWAY = "/v3"


def http_json(method: str, url: str, body: Any = None, timeout: float = 5.0) -> Any:
    """One JSON request with the standard library; raises OSError/HTTPError."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read() or b"null")


def stop_on_sigterm() -> None:
    """Turn SIGTERM into KeyboardInterrupt so the context managers clean up."""
    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, handler)


def run_main(main: Callable[[], int]) -> None:
    """A benchmark's entry point: exit with main()'s status; Ctrl-C/SIGTERM is one line, not a traceback."""
    try:
        raise SystemExit(main())
    except KeyboardInterrupt:  # the context managers have stopped everything by now
        print("\nbench: interrupted; everything it started has been stopped", file=sys.stderr)
        raise SystemExit(130) from None


# ---------------------------------------------------------------------- etcd
def ensure_etcd() -> str:
    """Path to etcd (Debian's etcd-server, installed when missing and root)."""
    return ensure_tool("etcd", "etcd-server")


def etcd_version(binary: str) -> str:
    """``3.4.23`` from ``etcd --version``."""
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10).stdout
    return next((line.split(":", 1)[1].strip() for line in out.splitlines()
                 if line.startswith("etcd Version")), "unknown")


@dataclass
class EtcdCluster:
    """A running 3-member etcd cluster: client URLs, the leader's and a follower's."""

    urls: list[str]
    procs: list[subprocess.Popen[bytes]]
    version: str
    leader: str = ""
    follower: str = ""
    pids: dict[str, int] = field(default_factory=dict)

    def find_leader(self) -> None:
        """Ask each member's status which member leads."""
        for url in self.urls:
            status = http_json("POST", url + ETCD_GATEWAY + "/maintenance/status", {})
            if status.get("leader") and status["leader"] == status["header"]["member_id"]:
                self.leader = url
        if not self.leader:
            raise RuntimeError("etcd has no leader")
        self.follower = next(u for u in self.urls if u != self.leader)


@contextmanager
def etcd_cluster(members: int = 3, net: str = ETCD_NET) -> Iterator[EtcdCluster]:
    """Start ``members`` etcd members on ``net``.1.. (fsync on, the default), wait for health."""
    binary = ensure_etcd()
    tmp = Path(tempfile.mkdtemp(prefix="etcd-bench-"))
    names = [f"etcd-{i}" for i in range(members)]
    addrs = [f"{net}.{i + 1}" for i in range(members)]
    initial = ",".join(f"{n}=http://{a}:2380" for n, a in zip(names, addrs))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for name, addr in zip(names, addrs):
            logfile = open(tmp / f"{name}.log", "wb")
            procs.append(subprocess.Popen(
                [binary, "--name", name, "--data-dir", str(tmp / name),
                 "--listen-client-urls", f"http://{addr}:2379", "--advertise-client-urls", f"http://{addr}:2379",
                 "--listen-peer-urls", f"http://{addr}:2380", "--initial-advertise-peer-urls",
                 f"http://{addr}:2380", "--initial-cluster", initial, "--initial-cluster-state", "new",
                 "--initial-cluster-token", f"bench-{os.getpid()}", "--logger", "zap",
                 "--log-outputs", "stderr", "--log-level", "warn"],
                stdout=logfile, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True))  # Ctrl-C reaches us; we stop the members in order
            logfile.close()
        urls = [f"http://{a}:2379" for a in addrs]

        def healthy() -> bool:
            for proc, name in zip(procs, names):
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited: {(tmp / f'{name}.log').read_text()[-2000:]}")
            try:
                return all(http_json("GET", u + "/health", timeout=1).get("health") == "true" for u in urls)
            except (OSError, ValueError):
                return False
        wait_for("etcd to be healthy", healthy, 60, 0.2)
        cluster = EtcdCluster(urls, procs, etcd_version(binary),
                              pids={n: p.pid for n, p in zip(names, procs)})
        wait_for("an etcd leader", lambda: _try(cluster.find_leader), 30, 0.2)
        yield cluster
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)


def _try(fn: Callable[[], None]) -> bool:
    try:
        fn()
        return True
    except (OSError, ValueError, KeyError, RuntimeError):
        return False


def b64(text: str) -> str:
    """Base64 of a UTF-8 string, as the etcd gateway wants keys and values."""
    return base64.b64encode(text.encode()).decode()


async def etcd_seed(url: str, prefix: str, count: int, value: bytes, concurrency: int = 32) -> None:
    """Put ``prefix0..N-1`` through the gateway with ``concurrency`` requests in flight."""
    body_value = base64.b64encode(value).decode()
    queue = iter(range(count))
    async with aiohttp.ClientSession() as session:
        async def worker() -> None:
            for i in queue:
                async with session.post(url + ETCD_GATEWAY + "/kv/put",
                                        json={"key": b64(f"{prefix}{i}"), "value": body_value}) as resp:
                    if resp.status != 200:
                        raise RuntimeError(f"etcd seed put failed: {resp.status} {await resp.text()}")
                    await resp.read()
        await asyncio.gather(*(worker() for _ in range(concurrency)))


# ------------------------------------------------------------------- kvstore
class KvCluster(LocalCluster):
    """A running local kvstore cluster (the project's handle) with what the benchmarks read of it."""

    def lsn(self, name: str) -> int:
        """A pod's applied LSN from its status endpoint."""
        return int(http_json("GET", self.url(name) + "/v1/status", timeout=5)["lsn"])

    def wait_caught_up(self, names: list[str], timeout: float = 120) -> None:
        """Wait until every named pod has applied the primary's LSN."""
        target = self.lsn("kv-0")
        wait_for(f"{names} to reach lsn {target}",
                 lambda: all(_lsn_or_zero(self, n) >= target for n in names), timeout, 0.05)


def _lsn_or_zero(cluster: KvCluster, name: str) -> int:
    try:
        return cluster.lsn(name)
    except (OSError, ValueError, KeyError):
        return 0


@contextmanager
def kv_cluster(replicas: int = 3, env: dict[str, str] | None = None, base: str = KV_BASE,
               dns: str = KV_DNS) -> Iterator[KvCluster]:
    """`kvstore cluster up --detach` in a temp dir; `cluster down` (or SIGKILL) and removal after."""
    cluster = KvCluster(replicas=replicas, base_address=base, dns_address=dns, env=env)
    try:
        try:
            cluster.up()
        except ClusterError as exc:
            raise RuntimeError(str(exc)) from None
        yield cluster
    finally:
        cluster.down()


def rss_mb(pid: int) -> float:
    """Resident set size of a process in MB (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def cpu_seconds(pids: dict[str, int]) -> dict[str, float]:
    """User+system CPU seconds used so far by each named process."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for name, pid in pids.items():
        # Fields after the ")" of the command name; utime and stime are the 12th and 13th.
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        out[name] = (int(fields[11]) + int(fields[12])) / tick
    return out


def machine() -> dict[str, Any]:
    """What the figures were measured on, with the load average: other work on the machine skews them."""
    return {"cpus": os.cpu_count(), "kernel": os.uname().release, "python": sys.version.split()[0],
            "loadavg_1_5_15": list(os.getloadavg())}


def urlopen_ok(url: str) -> bool:
    """Whether GET ``url`` answers 2xx."""
    try:
        with urllib.request.urlopen(url, timeout=1):
            return True
    except (OSError, urllib.error.HTTPError):
        return False
