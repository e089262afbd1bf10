"""PeerDirectory against a real DNS server on loopback, answering like CoreDNS."""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import AsyncIterator

import pytest

from kvstore import config as config_mod
from kvstore.discovery import MembershipChange, PeerDirectory, make_resolver, parse_target, srv_name
from kvstore.local.dns import DnsServer, Endpoint, HeadlessService

DNS_HOST = "127.0.0.3"  # not the default 127.0.0.2 of a user's `kvstore cluster up`


def pod(ordinal: int) -> Endpoint:
    return Endpoint(f"127.0.9.{10 + ordinal}", f"kv-{ordinal}")


@pytest.fixture
async def dns_server() -> AsyncIterator[DnsServer]:
    server = DnsServer(HeadlessService("kv", "default", "cluster.local", {"http": 8080, "peer": 8081}),
                       DNS_HOST, 0)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def directory(server: DnsServer, pod_name: str = "kv-1", **kwargs: float) -> PeerDirectory:
    cfg = config_mod.load(env={"POD_NAME": pod_name, "KV_DNS_SERVER": server.address})
    return PeerDirectory(cfg, timeout=0.3, lifetime=0.6, **kwargs)


def test_parse_target_reads_statefulset_ordinals_only() -> None:
    assert parse_target("kv-2.kv.default.svc.cluster.local.", "kv") == 2
    assert parse_target("KV-10.kv.default.svc.cluster.local", "kv") == 10
    assert parse_target("kv-0", "kv") == 0
    # CoreDNS's label for an endpoint without a hostname ends in a number too.
    assert parse_target("10-0-0-5.kv.default.svc.cluster.local.", "kv") is None
    assert parse_target("other-1.kv.default.svc.cluster.local.", "kv") is None
    assert parse_target("kv-01.kv.default.svc.cluster.local.", "kv") is None
    assert parse_target("kv.default.svc.cluster.local.", "kv") is None
    assert parse_target("kv-x.kv.default.svc.cluster.local.", "kv") is None


def test_srv_name_is_the_kubernetes_named_port_form() -> None:
    cfg = config_mod.load(env={"POD_NAME": "kv-0", "POD_NAMESPACE": "prod", "KV_CLUSTER_DOMAIN": "example.org"})
    assert srv_name(cfg) == "_peer._tcp.kv.prod.svc.example.org."


def test_resolver_needs_an_ip_address() -> None:
    with pytest.raises(ValueError, match="KV_DNS_SERVER"):
        make_resolver("dns.example:53")


async def test_coredns_shaped_answer(dns_server: DnsServer, caplog: pytest.LogCaptureFixture) -> None:
    svc = dns_server.service
    for ordinal in (0, 1, 2):
        svc.set_endpoint(f"kv-{ordinal}", pod(ordinal))
    svc.set_endpoint("stray", Endpoint("127.0.9.50"))  # no hostname: target 127-0-9-50.kv...
    d = directory(dns_server)
    with caplog.at_level(logging.INFO, logger="kvstore.discovery"):
        await d.refresh()
        await d.refresh()
    assert sorted(d.peers) == [0, 2]  # its own name (kv-1) is not a peer
    assert d.self_seen
    assert d.peers[0].host == "127.0.9.10" and d.peers[0].peer_port == 8081
    assert d.peers[2].target == "kv-2.kv.default.svc.cluster.local."
    assert d.peers[2].weight == 25 and d.peers[2].priority == 0  # 4 endpoints: 100/4
    assert d.peers[0].role == "primary" and d.peers[2].role == "secondary"
    ignored = [r for r in caplog.records if "127-0-9-50" in r.getMessage()]
    assert len(ignored) == 1, "a bad target is logged once, not on every refresh"
    assert d.status()["peers"][0] == {"name": "kv-0", "ordinal": 0, "role": "primary",
                                      "address": "127.0.9.10:8081", "host": "127.0.9.10",
                                      "peer_port": 8081}


async def test_joins_and_leaves_are_logged_and_published(dns_server: DnsServer,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    svc = dns_server.service
    svc.set_endpoint("kv-0", pod(0))
    svc.set_endpoint("kv-1", pod(1))
    d = directory(dns_server)
    changes: list[MembershipChange] = []
    d.subscribe(changes.append)
    d.subscribe(lambda change: 1 / 0)  # a broken subscriber must not stop the others
    await d.refresh()
    assert [p.name for p in changes[-1].joined] == ["kv-0"]
    svc.set_endpoint("kv-2", pod(2))  # partial answer grows as pods start
    with caplog.at_level(logging.INFO, logger="kvstore.discovery"):
        await d.refresh()
        assert [p.name for p in changes[-1].joined] == ["kv-2"]
        svc.remove_endpoint("kv-0")
        await d.refresh()
    assert [p.name for p in changes[-1].left] == ["kv-0"]
    assert sorted(d.peers) == [2]
    messages = [r.getMessage() for r in caplog.records]
    assert "kv-2 joined (127.0.9.12:8081)" in messages
    assert "kv-0 left" in messages
    count = len(changes)
    await d.refresh()
    assert len(changes) == count, "no change, no event"


async def test_nxdomain_keeps_the_last_good_view(dns_server: DnsServer) -> None:
    d = directory(dns_server)
    await d.refresh()
    assert d.peers == {} and "NXDOMAIN" in (d.last_error or "")
    dns_server.service.set_endpoint("kv-0", pod(0))
    await d.refresh()
    assert list(d.peers) == [0] and d.last_error is None
    dns_server.service.remove_endpoint("kv-0")  # no endpoints: CoreDNS answers NXDOMAIN
    await d.refresh()
    assert list(d.peers) == [0]
    assert "NXDOMAIN" in (d.last_error or "")


async def test_timeouts_keep_the_view_and_recover(dns_server: DnsServer) -> None:
    dns_server.service.set_endpoint("kv-0", pod(0))
    d = directory(dns_server)
    await d.refresh()
    port = dns_server.port
    await dns_server.stop()
    await d.refresh()
    assert list(d.peers) == [0]
    assert d.last_error is not None
    # A server that receives but never answers: a pure timeout.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind((DNS_HOST, port))
        await d.refresh()
        assert "timed out" in (d.last_error or "")
        assert list(d.peers) == [0]
    dns_server.port = port
    await dns_server.start()
    dns_server.service.set_endpoint("kv-2", pod(2))
    await d.refresh()
    assert d.last_error is None and sorted(d.peers) == [0, 2]


async def test_addresses_without_glue_are_looked_up(dns_server: DnsServer) -> None:
    dns_server.service.glue = False
    dns_server.service.set_endpoint("kv-0", pod(0))
    dns_server.service.set_endpoint("kv-3", pod(3))
    d = directory(dns_server)
    await d.refresh()
    assert {o: p.host for o, p in d.peers.items()} == {0: "127.0.9.10", 3: "127.0.9.13"}


async def test_many_replicas_fall_back_to_tcp(dns_server: DnsServer) -> None:
    for ordinal in range(60):  # far more than fits in 512 bytes of UDP
        dns_server.service.set_endpoint(f"kv-{ordinal}", pod(ordinal))
    d = directory(dns_server)
    await d.refresh()
    assert d.last_error is None
    assert sorted(d.peers) == [o for o in range(60) if o != 1]


async def test_background_refresh_follows_dns_until_stopped(dns_server: DnsServer) -> None:
    d = directory(dns_server, interval=0.1)
    await d.start()  # NXDOMAIN at start is not fatal
    try:
        dns_server.service.set_endpoint("kv-4", pod(4))
        for _ in range(100):  # bounded: 10 s at most
            if 4 in d.peers:
                break
            await asyncio.sleep(0.1)
        assert 4 in d.peers
    finally:
        await d.stop()
    refreshes = d.refreshes
    await asyncio.sleep(0.3)
    assert d.refreshes == refreshes, "stop() ends the background refresh"
