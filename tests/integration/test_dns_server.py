"""The local cluster's DNS server, asked over real UDP and TCP sockets."""

from __future__ import annotations

import asyncio
from typing import AsyncIterator

import dns.asyncquery
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import pytest

from kvstore.local.dns import DnsServer, Endpoint, HeadlessService

HOST = "127.0.0.4"
SVC = "kv.default.svc.cluster.local."


@pytest.fixture
async def server() -> AsyncIterator[DnsServer]:
    srv = DnsServer(HeadlessService("kv", "default", "cluster.local", {"http": 8080, "peer": 8081}), HOST, 0)
    await srv.start()
    try:
        for ordinal in range(3):
            srv.service.set_endpoint(f"kv-{ordinal}", Endpoint(f"127.0.9.{10 + ordinal}", f"kv-{ordinal}"))
        yield srv
    finally:
        await srv.stop()


async def ask(server: DnsServer, name: str, rdtype: str, tcp: bool = False) -> dns.message.Message:
    query = dns.message.make_query(name, rdtype)
    send = dns.asyncquery.tcp if tcp else dns.asyncquery.udp
    return await send(query, HOST, port=server.port, timeout=2)


async def test_srv_for_a_named_port_is_coredns_shaped(server: DnsServer) -> None:
    reply = await ask(server, f"_peer._tcp.{SVC}", "SRV")
    assert reply.rcode() == dns.rcode.NOERROR
    assert reply.flags & dns.flags.AA
    (srv,) = reply.answer
    records = sorted(srv, key=lambda r: r.target.to_text())
    assert [r.target.to_text() for r in records] == [f"kv-{o}.{SVC}" for o in range(3)]
    assert {(r.priority, r.weight, r.port) for r in records} == {(0, 33, 8081)}
    glue = {rrset.name.to_text(): [r.address for r in rrset] for rrset in reply.additional}
    assert glue == {f"kv-{o}.{SVC}": [f"127.0.9.{10 + o}"] for o in range(3)}
    http = await ask(server, f"_http._tcp.{SVC}", "SRV")
    assert {r.port for r in http.answer[0]} == {8080}


async def test_names_types_and_negative_answers(server: DnsServer) -> None:
    service_a = await ask(server, SVC, "A")
    assert sorted(r.address for r in service_a.answer[0]) == ["127.0.9.10", "127.0.9.11", "127.0.9.12"]
    pod_a = await ask(server, f"KV-1.{SVC}", "A")  # names are case-insensitive
    assert [r.address for r in pod_a.answer[0]] == ["127.0.9.11"]
    nodata = await ask(server, f"kv-1.{SVC}", "AAAA")
    assert nodata.rcode() == dns.rcode.NOERROR and not nodata.answer
    assert nodata.authority[0].rdtype == dns.rdatatype.SOA
    for name in (f"kv-7.{SVC}", f"_metrics._tcp.{SVC}", "other.default.svc.cluster.local."):
        missing = await ask(server, name, "SRV" if name.startswith("_") else "A")
        assert missing.rcode() == dns.rcode.NXDOMAIN, name
        assert missing.authority[0].rdtype == dns.rdatatype.SOA
    outside = await ask(server, "example.com.", "A")
    assert outside.rcode() == dns.rcode.REFUSED


async def test_service_without_endpoints_is_nxdomain(server: DnsServer) -> None:
    for ordinal in range(3):
        server.service.remove_endpoint(f"kv-{ordinal}")
    reply = await ask(server, f"_peer._tcp.{SVC}", "SRV")
    assert reply.rcode() == dns.rcode.NXDOMAIN


async def test_endpoint_without_hostname_gets_a_dashed_ip_label(server: DnsServer) -> None:
    server.service.set_endpoint("stray", Endpoint("127.0.9.50"))
    reply = await ask(server, f"_peer._tcp.{SVC}", "SRV")
    targets = {r.target.to_text() for r in reply.answer[0]}
    assert f"127-0-9-50.{SVC}" in targets
    a = await ask(server, f"127-0-9-50.{SVC}", "A")
    assert [r.address for r in a.answer[0]] == ["127.0.9.50"]


async def test_large_answers_truncate_over_udp_and_complete_over_tcp(server: DnsServer) -> None:
    for ordinal in range(3, 40):
        server.service.set_endpoint(f"kv-{ordinal}", Endpoint(f"127.0.9.{10 + ordinal}", f"kv-{ordinal}"))
    udp = await ask(server, f"_peer._tcp.{SVC}", "SRV")
    assert udp.flags & dns.flags.TC
    tcp = await ask(server, f"_peer._tcp.{SVC}", "SRV", tcp=True)
    assert len(tcp.answer[0]) == 40
    assert {r.weight for r in tcp.answer[0]} == {2}  # 100 // 40


async def test_garbage_gets_formerr_or_silence(server: DnsServer) -> None:
    loop = asyncio.get_running_loop()
    replies: asyncio.Queue[bytes] = asyncio.Queue()

    class Client(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: tuple) -> None:
            replies.put_nowait(data)

    transport, _ = await loop.create_datagram_endpoint(Client, remote_addr=(HOST, server.port))
    try:
        transport.sendto(b"\x12\x34" + b"\x01\x00" + b"\xff" * 20)  # a header, then nonsense
        reply = dns.message.from_wire(await asyncio.wait_for(replies.get(), 2))
        assert reply.id == 0x1234 and reply.rcode() == dns.rcode.FORMERR
        transport.sendto(b"\x00")  # not even a header: dropped, and the server lives on
        ok = await ask(server, SVC, "A")
        assert ok.rcode() == dns.rcode.NOERROR
    finally:
        transport.close()
