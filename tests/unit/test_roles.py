"""The roles a replica plays (roles.py), the switch between them, and forwarding's own terms.

A replica plays the primary's or a follower's role object; replication
switches it in the same step as its own role, so a request never decides
with one and acts with the other. The replica layer (replica.py, roles.py,
forwarding.py) never sees the HTTP server's request: a handler passes a
``Forwardable`` built by ``forwarding.forwardable``.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import AsyncIterator

import pytest
from multidict import CIMultiDict

import kvstore
from kvstore import config as config_mod
from kvstore.discovery import PeerDirectory
from kvstore.events import EventLog
from kvstore.forwarding import FORWARDED_BY, MAX_HOPS, forwardable
from kvstore.metrics import Metrics
from kvstore.replica import Replica
from kvstore.replication import Replication
from kvstore.replication.recovery import START
from kvstore.roles import FollowerRole, PrimaryRole
from kvstore.storage import Store

PACKAGE = Path(kvstore.__file__).resolve().parent


def test_a_call_keeps_the_condition_headers_and_the_pods_it_passed_through() -> None:
    headers = CIMultiDict({"if-match": '"3"', "Content-Type": "application/json", "Authorization": "x",
                           FORWARDED_BY: "kv-2,,kv-1"})
    call = forwardable("PUT", "/v1/kv/a%2Fb?w=1", headers, b"v")
    assert (call.method, call.target, call.body) == ("PUT", "/v1/kv/a%2Fb?w=1", b"v")
    # Only the condition and content headers go on (the client's own Authorization does not).
    assert dict(call.headers) == {"If-Match": '"3"', "Content-Type": "application/json"}
    assert call.hops == ("kv-2", "kv-1")


def test_a_call_names_at_most_max_hops_pods() -> None:
    many = ",".join(f"kv-{i}" for i in range(MAX_HOPS + 3))
    assert len(forwardable("GET", "/v1/kv/k", {FORWARDED_BY: many}, None).hops) == MAX_HOPS
    assert forwardable("GET", "/v1/kv/k", {}, None).hops == ()


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


@pytest.mark.parametrize("module", ["replica.py", "roles.py", "forwarding.py"])
def test_the_replica_layer_never_sees_the_http_servers_request(module: str) -> None:
    assert "aiohttp.web" not in _imports(PACKAGE / module)


async def test_a_replica_alone_plays_the_role_of_its_ordinal(tmp_path: Path) -> None:
    for pod, role in (("kv-0", PrimaryRole), ("kv-1", FollowerRole)):
        config = config_mod.load({"POD_NAME": pod, "KV_DATA_DIR": str(tmp_path / pod)})
        store = Store.open(config.data_dir, fsync=False)
        try:
            assert isinstance(Replica(config, store, Metrics()).current_role, role)
        finally:
            await store.close()


@pytest.fixture
async def follower_pod(tmp_path: Path) -> AsyncIterator[tuple[Replica, Replication]]:
    """kv-1 of three, with its replication built but not started (no loop switches its role)."""
    config = config_mod.load({"POD_NAME": "kv-1", "KV_DATA_DIR": str(tmp_path), "KV_REPLICAS": "3"})
    store = Store.open(config.data_dir, fsync=False)
    metrics = Metrics()
    replication = Replication(config, store, metrics, PeerDirectory(config), "token", EventLog("kv-1"))
    try:
        yield Replica(config, store, metrics, replication), replication
    finally:
        await replication.stop()
        await store.close()


async def test_the_replica_plays_the_role_replication_takes_in_the_same_step(
        follower_pod: tuple[Replica, Replication]) -> None:
    replica, replication = follower_pod
    assert isinstance(replica.current_role, FollowerRole) and replica.role == "secondary"
    # A listener added after the replica's runs after it: it sees the replica switched already.
    seen: list[tuple[str, str, bool]] = []
    replication.role_listeners.append(
        lambda role: seen.append((role, replica.role, replication.recovery is not None)))
    replication._become(replication._new_recovery(START))
    assert isinstance(replica.current_role, PrimaryRole)
    replication._become(None)
    assert isinstance(replica.current_role, FollowerRole)
    assert seen == [("primary", "primary", True), ("secondary", "secondary", False)]


def test_a_write_concern_timeout_never_says_only_n_of_n() -> None:
    """Counted after the wait (or of the new voters of an unsettled change) the count may be enough."""
    from kvstore.refusals import WriteConcernTimeout
    assert "only 1 of the 3 replicas" in str(WriteConcernTimeout(8, 1, 3))
    enough = str(WriteConcernTimeout(8, 3, 3))
    assert "only" not in enough and "3 of the 3 replicas" in enough and "membership change" in enough
