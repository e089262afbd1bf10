"""Three replicas as containers on a test network, found through the project's DNS server.

The StatefulSet is played by tests/container/conftest.py's Pods (OrderedReady:
kv-N+1 starts once kv-N is Ready), each pod with its own Docker volume, all in
the headless Service's DNS from creation on.
"""

from __future__ import annotations

import json
import secrets
import time
from typing import Any, Iterator

import pytest

from docker_pods import Pods, http, status_json

pytestmark = pytest.mark.timeout(600)

REPLICAS = 3


@pytest.fixture(scope="module")
def cluster(runtime: Any, loop_thread: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pods]:
    pods = Pods(runtime, loop_thread, tmp_path_factory.mktemp("pods"), secrets.token_hex(16))
    try:
        pods.start_dns()
        for ordinal in range(REPLICAS):
            pods.start(ordinal, REPLICAS)
        pods.wait_writable()
        yield pods
    finally:
        pods.stop_all()


def test_each_pod_knows_its_identity(cluster: Pods) -> None:
    for ordinal in range(REPLICAS):
        status = status_json(cluster.url(ordinal))
        assert (status["name"], status["ordinal"]) == (f"kv-{ordinal}", ordinal)
        assert status["role"] == ("primary" if ordinal == 0 else "secondary")


def test_peers_are_found_through_dns_from_inside_a_container(cluster: Pods) -> None:
    """kv-1's own discovery code, inside its container, finds kv-0 and kv-2 via the SRV records."""
    script = (
        "import asyncio, json\n"
        "from kvstore import config, discovery\n"
        "d = discovery.PeerDirectory(config.load())\n"
        "asyncio.run(d.refresh())\n"
        "print(json.dumps({'peers': {p.name: [p.host, p.peer_port] for p in d.peers.values()},"
        " 'error': d.last_error}))\n"
    )
    code, out = cluster.exec(1, ["python3", "-c", script])
    assert code == 0, out
    found = json.loads(out.strip().splitlines()[-1])
    assert found["error"] is None
    assert found["peers"] == {"kv-0": [cluster.address(0), 8081], "kv-2": [cluster.address(2), 8081]}


def test_put_on_kv1_is_readable_on_kv2(cluster: Pods) -> None:
    """A write sent to a secondary reaches the primary and is replicated to the other secondary."""
    code, headers, body = http("PUT", f"{cluster.url(1)}/v1/kv/across?w=all", b"from kv-1")
    assert code == 200, body
    version = json.loads(body)["version"]
    # min_lsn makes kv-2 wait (server-side, bounded) until it has applied the write.
    for _ in range(20):  # bounded: 20 tries of the server's own wait
        code, _, value = http("GET", f"{cluster.url(2)}/v1/kv/across?min_lsn={version}")
        if code == 200:
            break
        time.sleep(0.5)
    assert (code, value) == (200, b"from kv-1")


def test_sigkill_of_kv0_and_restart_on_the_same_volume_loses_nothing(cluster: Pods) -> None:
    """Every acknowledged write survives ``docker kill`` (SIGKILL, no shutdown) of the primary."""
    written: dict[str, bytes] = {}
    last_version = 0
    for i in range(25):
        key, value = f"durable-{i}", secrets.token_bytes(64 + i)
        code, _, body = http("PUT", f"{cluster.url(0)}/v1/kv/{key}?w=1", value)
        assert code == 200, body
        written[key] = value
        last_version = max(last_version, json.loads(body)["version"])
    cluster.pods[0].container.kill()  # SIGKILL
    assert cluster.wait_exit(0) == -9
    cluster.start(0, REPLICAS)  # same name, same address, same volume
    cluster.wait_writable()
    for key, value in written.items():
        code, _, body = http("GET", f"{cluster.url(0)}/v1/kv/{key}")
        assert (code, body) == (200, value), key
    status = status_json(cluster.url(0))
    assert status["role"] == "primary"
    assert status["lsn"] >= last_version
