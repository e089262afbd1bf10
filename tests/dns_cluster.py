"""A cluster of real ``kvstore serve`` processes whose DNS a test controls, for deterministic failure tests.

Pods are processes on their own loopback addresses (127.0.<net>.10+N) with the
Kubernetes ports; the headless Service is a DNS server in a thread of the test
process, which a test can silence or make list only some pods, or list another
process under a pod's name.
"""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path
from typing import Any

from local_cluster import http, wait_for
from replica_process import ReplicaProcess
from kvstore.local.dns import DnsServer, Endpoint, HeadlessService

SILENCE_SECONDS = 5.0  # kvstore.replication.protocol.SILENCE_SECONDS (this file also runs against older code)

TOKEN = "recovery-test-token"


class SilenceableDns(DnsServer):
    """The cluster DNS, which a test can make stop answering (queries time out)."""

    silent = False

    def handle(self, wire: bytes, max_size: int | None) -> bytes | None:
        return None if self.silent else super().handle(wire, max_size)


class Cluster:
    """kv-0..kv-N as processes on 127.0.<net>.10+N, ports 8080/8081, DNS on 127.0.<net>.2 in a thread."""

    def __init__(self, workdir: Path, net: int, replicas: int = 3, env: dict[str, str] | None = None) -> None:
        self.workdir = workdir
        self.net = net
        self.replicas = replicas
        self.service = HeadlessService("kv", "default", "cluster.local", {"http": 8080, "peer": 8081})
        self.dns = SilenceableDns(self.service, f"127.0.{net}.2", 0)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.env = {"KV_REPLICAS": str(replicas), "KV_CLUSTER_TOKEN": TOKEN, "KV_WRITE_CONCERN": "majority",
                    "KV_REFRESH_INTERVAL": "0.5", "KV_WRITE_TIMEOUT": "3", "KV_RECOVERY_WAIT": "10",
                    **(env or {})}
        self.pods: dict[int, ReplicaProcess] = {}
        self.extra: list[ReplicaProcess] = []  # processes that claim a pod's name without being it
        self.listed: set[int] = set()
        self.listed_host: dict[int, str] = {}  # pods DNS lists at another process's address

    def __enter__(self) -> "Cluster":
        self.thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self.dns.start(), self.loop).result(5)
        except BaseException:  # __exit__ does not run when __enter__ fails: stop the DNS thread here
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(5)
            self.loop.close()
            raise
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        for pod in [*self.pods.values(), *self.extra]:
            pod.kill()
        if exc_type is not None:  # shown by pytest with the failure
            for path in sorted([*self.workdir.glob("kv-*.log"), *self.workdir.glob("claimant-*/kv-*.log")]):
                print(f"--- {path.relative_to(self.workdir)}\n" + "\n".join(path.read_text(errors="replace").splitlines()[-40:]))
        asyncio.run_coroutine_threadsafe(self.dns.stop(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()

    # ---------------------------------------------------------------- DNS
    def host(self, ordinal: int) -> str:
        return f"127.0.{self.net}.{10 + ordinal}"

    def list_in_dns(self, *ordinals: int) -> None:
        """The headless Service lists exactly these pods (publishNotReadyAddresses: the pods that exist)."""
        self.listed = set(ordinals)

        async def apply() -> None:
            for i in range(10):
                self.service.remove_endpoint(f"kv-{i}")
            for i in sorted(ordinals):
                self.service.set_endpoint(f"kv-{i}", Endpoint(self.listed_host.get(i, self.host(i)), f"kv-{i}"))
        asyncio.run_coroutine_threadsafe(apply(), self.loop).result(5)

    def list_at(self, ordinal: int, host: str | None) -> None:
        """DNS lists kv-N at ``host`` (another process took its name), or at its own address again (None)."""
        if host is None:
            self.listed_host.pop(ordinal, None)
        else:
            self.listed_host[ordinal] = host
        self.list_in_dns(*self.listed)

    # --------------------------------------------------------------- pods
    def data_dir(self, ordinal: int) -> Path:
        return self.workdir / f"data-kv-{ordinal}"

    def start(self, ordinal: int, wait: bool = True, **env: str) -> ReplicaProcess:
        """Start kv-N (listed in DNS from now on, like a pod that exists)."""
        self.list_in_dns(*(self.listed | {ordinal}))
        pod = ReplicaProcess(self.workdir, f"kv-{ordinal}", self.host(ordinal),
                             env={**self.env, "KV_DNS_SERVER": self.dns.address, **env})
        pod.http_port, pod.peer_port = 8080, 8081
        self.pods[ordinal] = pod
        return pod.start(wait=wait)

    def start_claimant(self, ordinal: int, host: str, data_dir: Path, wait: bool = True) -> ReplicaProcess:
        """A second process named kv-N on ``host`` with ``data_dir`` (not listed in DNS unless list_at says)."""
        workdir = self.workdir / f"claimant-{host}"
        workdir.mkdir(exist_ok=True)
        pod = ReplicaProcess(workdir, f"kv-{ordinal}", host,
                             env={**self.env, "KV_DNS_SERVER": self.dns.address, "KV_DATA_DIR": str(data_dir)})
        pod.http_port, pod.peer_port = 8080, 8081
        self.extra.append(pod)
        return pod.start(wait=wait)

    def stop(self, ordinal: int) -> None:
        """SIGKILL kv-N (its volume stays)."""
        self.pods.pop(ordinal).kill()

    def url(self, ordinal: int) -> str:
        return f"http://{self.host(ordinal)}:8080"

    def status(self, ordinal: int) -> dict[str, Any]:
        """kv-N's /v1/status ({} while it does not answer)."""
        try:
            return json.loads(http("GET", self.url(ordinal) + "/v1/status", timeout=5)[2])
        except OSError:
            return {}

    def put(self, ordinal: int, key: str, value: bytes, w: str = "majority") -> tuple[int, dict[str, str], bytes]:
        return http("PUT", f"{self.url(ordinal)}/v1/kv/{key}?w={w}", value)

    def get(self, ordinal: int, key: str, strong: bool = False) -> tuple[int, bytes]:
        status, _, body = http("GET", f"{self.url(ordinal)}/v1/kv/{key}"
                               + ("?consistency=strong" if strong else ""))
        return status, body

    def wait_writable(self, timeout: float = 30) -> None:
        wait_for("kv-0 to take writes", lambda: self.status(0).get("writable"), timeout)

    def log(self, ordinal: int) -> str:
        return (self.workdir / f"kv-{ordinal}.log").read_text(errors="replace")



def write_many(c: Cluster, prefix: str, count: int, w: str = "majority") -> dict[str, bytes]:
    acknowledged = {}
    for i in range(count):
        key, value = f"{prefix}/{i}", b"%s-%d" % (prefix.encode(), i)
        status, _, body = c.put(0, key, value, w=w)
        assert status == 200, body
        acknowledged[key] = value
    return acknowledged


def assert_all_readable(c: Cluster, ordinal: int, acknowledged: dict[str, bytes], strong: bool = False) -> None:
    missing = {k: v for k, v in acknowledged.items() if c.get(ordinal, k, strong) != (200, v)}
    assert not missing, f"kv-{ordinal} lost {len(missing)} acknowledged writes, e.g. {sorted(missing)[:3]}"


def start_all(c: Cluster) -> None:
    """Start every pod in order (but those already started) and wait until kv-0 takes writes and every
    follower follows."""
    for ordinal in range(c.replicas):
        if ordinal not in c.pods:
            c.start(ordinal)
    c.wait_writable()
    wait_for("every follower to follow", lambda: len(c.status(0).get("followers", ())) == c.replicas - 1, 30)
