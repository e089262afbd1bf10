"""Discovery through the system resolver, as on Kubernetes: ``KV_DNS_SERVER`` unset.

Each replica runs in its own mount namespace (``unshare -m``) whose
``/etc/resolv.conf`` is the one a kubelet writes for a pod: the cluster DNS
as nameserver, Kubernetes search domains, ``ndots:5``. The DNS server is the
local cluster's, on port 53 of a loopback address, and sends no glue, so
pod addresses are looked up through the same resolver.
"""

from __future__ import annotations

import json
import shlex
import shutil
from pathlib import Path

import pytest

import needs
from dns_thread import DnsThread
from local_cluster import http, wait_for
from replica_process import ReplicaProcess
from wrapped_replica import WrappedReplica

NET = "127.0.66"
DNS_HOST = f"{NET}.2"
RESOLV_CONF = f"""\
search default.svc.cluster.local svc.cluster.local cluster.local
nameserver {DNS_HOST}
options ndots:5
"""



@pytest.fixture(autouse=True, scope="module")
def unshare() -> str:
    """A private mount namespace needs root and unshare (util-linux); else a skip (CI: a failure)."""
    needs.root("a private mount namespace (a pod's own /etc/resolv.conf)")
    return needs.tool("unshare", "util-linux")


class NamespacedReplica(WrappedReplica):
    """A replica whose /etc/resolv.conf is ``resolv_conf`` (bind-mounted in its own mount namespace)."""

    def __init__(self, workdir: Path, ordinal: int, resolv_conf: Path) -> None:
        mount = f'mount --bind {shlex.quote(str(resolv_conf))} /etc/resolv.conf && exec "$0" "$@"'
        super().__init__(workdir, f"kv-{ordinal}", f"{NET}.{10 + ordinal}",
                         [shutil.which("unshare") or "unshare", "-m", "--propagation", "private", "sh", "-c", mount],
                         env={"KV_REPLICAS": "2", "KV_WRITE_CONCERN": "majority", "KV_REFRESH_INTERVAL": "0.3"},
                         ready_timeout=30)
        self.http_port, self.peer_port = 8080, 8081   # the Service's ports: the same on every pod

    def environment(self) -> dict[str, str]:
        env = super().environment()
        del env["KV_DNS_SERVER"]                      # the system resolver, as in the StatefulSet
        return env


def peers_of(replica: ReplicaProcess) -> dict[str, str]:
    """The peers a replica found, by name, with the address it found for each."""
    status = json.loads(http("GET", f"{replica.url}/v1/status")[2])
    return {p["name"]: p.get("address", "") for p in status.get("peers", [])}


def test_replicas_find_each_other_through_resolv_conf(tmp_path: Path) -> None:
    resolv_conf = tmp_path / "resolv.conf"
    resolv_conf.write_text(RESOLV_CONF)
    host_resolv = Path("/etc/resolv.conf").read_bytes()
    service = {f"kv-{o}": f"{NET}.{10 + o}" for o in range(2)}
    with DnsThread(DNS_HOST, service, port=53, glue=False) as dns_server:
        replicas = [NamespacedReplica(tmp_path, o, resolv_conf) for o in range(2)]
        try:
            for replica in replicas:   # an empty kv-0 waits for kv-1 before it is Ready: start both first
                replica.start(wait=False)
            for replica in replicas:
                replica.wait_ready(timeout=30)
            wait_for("kv-0 to find kv-1 and kv-1 to find kv-0",
                     lambda: "kv-1" in peers_of(replicas[0]) and "kv-0" in peers_of(replicas[1]), 20, 0.2)
            assert f"{NET}.11" in peers_of(replicas[0])["kv-1"], peers_of(replicas[0])
            wait_for("kv-0 to finish its start-up check", lambda: json.loads(
                http("GET", f"{replicas[0].url}/v1/status")[2]).get("writable"), 20, 0.2)
            # Found for real: a write that needs both replicas is confirmed by kv-1.
            status, _, body = http("PUT", f"{replicas[0].url}/v1/kv/found?w=all", b"through resolv.conf")
            assert status == 200, body
            assert http("GET", f"{replicas[1].url}/v1/kv/found")[2] == b"through resolv.conf"
            assert dns_server.queries > 0
        finally:
            for replica in replicas:
                replica.stop()
    assert Path("/etc/resolv.conf").read_bytes() == host_resolv   # the host's file was never touched
