"""The DNS server of the local cluster: the headless Service, answered like CoreDNS.

It serves one headless Service (``<svc>.<ns>.svc.<zone>``) over UDP and TCP,
with the records the Kubernetes DNS specification defines and the shape
CoreDNS gives them:

- ``_<port>._tcp.<svc>.<ns>.svc.<zone>`` SRV: one record per endpoint,
  priority 0, weight ``100 // n``, the port, target
  ``<hostname>.<svc>.<ns>.svc.<zone>.``; the targets' A records go in the
  additional section.
- An endpoint without a hostname (not a StatefulSet pod) gets CoreDNS's
  dashed-IP label (``127-0-0-50``) as its target.
- ``<svc>.<ns>.svc.<zone>`` A: every endpoint's address; ``<host>.<svc>...``
  A: that endpoint's address.
- A name in the zone with no records is NXDOMAIN (so is the Service while it
  has no endpoints); a name that exists without the asked type is NODATA.
  Both carry the zone's SOA. Names outside the zone are REFUSED: there is
  no upstream to forward to.

UDP answers larger than the client allows are truncated (TC set), so
resolvers retry over TCP, as they must with many replicas.

For fault injection the server can be told to drop every query (clients time
out, as when CoreDNS is down or unreachable) or to leave some pods out of
every answer (as while Endpoints lag behind the pods); ``set_fault()`` with
no arguments heals both.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import random
import struct
from dataclasses import dataclass
from typing import Any, Iterable

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

log = logging.getLogger("kvstore.local.dns")

TTL = 5  # CoreDNS's kubernetes plugin default
UDP_DEFAULT_PAYLOAD = 512

# (rcode, answer rrsets, additional rrsets)
Answer = tuple[int, list[dns.rrset.RRset], list[dns.rrset.RRset]]


@dataclass(frozen=True)
class Endpoint:
    """One address behind the headless Service; ``hostname`` is set for StatefulSet pods."""

    ip: str
    hostname: str | None = None

    @property
    def label(self) -> str:
        """The first label of the endpoint's DNS name, as CoreDNS chooses it."""
        if self.hostname:
            return self.hostname.lower()
        return self.ip.replace(".", "-").replace(":", "-")


class HeadlessService:
    """The records of one headless Service, built from its current endpoints."""

    def __init__(self, service: str, namespace: str, zone: str, ports: dict[str, int],
                 glue: bool = True) -> None:
        # glue=False leaves the additional section empty, as minimal-responses
        # servers and some caches do; clients must then ask for A records.
        self.glue = glue
        self.zone = dns.name.from_text(f"svc.{zone}")
        self.root = dns.name.from_text(zone)
        self.domain = dns.name.from_text(f"{service}.{namespace}.svc.{zone}")
        self.ports = {name.lower(): port for name, port in ports.items()}
        self._endpoints: dict[str, Endpoint] = {}
        self.hidden: frozenset[str] = frozenset()  # endpoint keys left out of every answer (a fault)

    def set_endpoint(self, key: str, endpoint: Endpoint) -> None:
        """Add or replace an endpoint (``key`` is the pod name)."""
        self._endpoints[key] = endpoint

    def remove_endpoint(self, key: str) -> None:
        """Remove an endpoint; unknown keys are ignored."""
        self._endpoints.pop(key, None)

    def endpoints(self) -> list[Endpoint]:
        """The current endpoints, in insertion order, less the hidden ones."""
        return [e for key, e in self._endpoints.items() if key not in self.hidden]

    def host_name(self, endpoint: Endpoint) -> dns.name.Name:
        """The endpoint's fully qualified name, ``<label>.<svc>.<ns>.svc.<zone>.``."""
        return dns.name.Name((endpoint.label.encode(),) + self.domain.labels)

    def soa(self) -> dns.rrset.RRset:
        """The zone's SOA, sent in the authority section of negative answers."""
        return dns.rrset.from_text(
            self.root, TTL, "IN", "SOA",
            f"ns.dns.{self.root} hostmaster.{self.root} 1 7200 1800 86400 {TTL}",
        )

    def _address_rrsets(self, name: dns.name.Name, endpoints: list[Endpoint]) -> list[dns.rrset.RRset]:
        rrsets = []
        for rdtype, version in ((dns.rdatatype.A, 4), (dns.rdatatype.AAAA, 6)):
            ips = [e.ip for e in endpoints if ipaddress.ip_address(e.ip).version == version]
            if ips:
                rrsets.append(dns.rrset.from_text_list(name, TTL, "IN", rdtype, ips))
        return rrsets

    def lookup(self, qname: dns.name.Name, rdtype: int) -> Answer:
        """Answer for the Service name and the endpoints' names."""
        endpoints = self.endpoints()
        random.shuffle(endpoints)  # like CoreDNS's loadbalance: clients must not rely on order
        if qname == self.domain:
            if not endpoints:
                return dns.rcode.NXDOMAIN, [], []
            if rdtype == dns.rdatatype.SRV:
                records = [(e, port) for e in endpoints for port in self.ports.values()]
                return self._srv(qname, records)
            return self._typed(self._address_rrsets(qname, endpoints), rdtype)
        if qname.parent() == self.domain:
            label = qname.labels[0].decode(errors="replace").lower()
            matches = [e for e in endpoints if e.label == label]
            if not matches:
                return dns.rcode.NXDOMAIN, [], []
            return self._typed(self._address_rrsets(qname, matches), rdtype)
        return dns.rcode.NXDOMAIN, [], []

    def _srv(self, qname: dns.name.Name, records: list[tuple[Endpoint, int]]) -> Answer:
        weight = max(1, 100 // len(records))
        srv = dns.rrset.from_text_list(
            qname, TTL, "IN", "SRV",
            [f"0 {weight} {port} {self.host_name(e)}" for e, port in records],
        )
        additional: list[dns.rrset.RRset] = []
        if not self.glue:
            return dns.rcode.NOERROR, [srv], additional
        seen: set[str] = set()
        for endpoint, _ in records:
            if endpoint.label not in seen:
                seen.add(endpoint.label)
                additional.extend(self._address_rrsets(self.host_name(endpoint), [endpoint]))
        return dns.rcode.NOERROR, [srv], additional

    @staticmethod
    def _typed(rrsets: list[dns.rrset.RRset], rdtype: int) -> Answer:
        return dns.rcode.NOERROR, [r for r in rrsets if r.rdtype == rdtype], []

    def answer_port(self, qname: dns.name.Name, rdtype: int) -> Answer:
        """SRV for ``_<port>._tcp.<svc>...``: one record per endpoint for that named port."""
        port_name = qname.labels[0].decode(errors="replace").lower().lstrip("_")
        port = self.ports.get(port_name)
        endpoints = self.endpoints()
        random.shuffle(endpoints)
        if port is None or not endpoints:
            return dns.rcode.NXDOMAIN, [], []
        if rdtype != dns.rdatatype.SRV:
            return dns.rcode.NOERROR, [], []
        return self._srv(qname, [(e, port) for e in endpoints])

    def resolve(self, qname: dns.name.Name, rdtype: int) -> Answer:
        """Answer one question: (rcode, answer rrsets, additional rrsets)."""
        # _<port>._tcp.<svc>.<ns>.svc.<zone>
        if (len(qname.labels) == len(self.domain.labels) + 2
                and qname.parent().parent() == self.domain
                and qname.labels[1].lower() == b"_tcp"
                and qname.labels[0].startswith(b"_")):
            return self.answer_port(qname, rdtype)
        return self.lookup(qname, rdtype)


class DnsServer:
    """A UDP and TCP DNS server for one :class:`HeadlessService` on a loopback address."""

    def __init__(self, service: HeadlessService, host: str = "127.0.0.2", port: int = 0) -> None:
        self.service = service
        self.host = host
        self.port = port
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.base_events.Server | None = None
        self.queries = 0
        self.dropping = False  # a fault: every query goes unanswered
        self.dropped = 0

    def set_fault(self, drop: bool = False, hide: Iterable[str] = ()) -> None:
        """Drop every query (``drop``) and/or leave the pods in ``hide`` out of answers; no arguments heal."""
        self.dropping = drop
        self.service.hidden = frozenset(hide)
        if drop or self.service.hidden:
            log.warning("DNS fault: %s", self.fault)
        else:
            log.warning("DNS fault healed")

    @property
    def fault(self) -> dict[str, Any] | None:
        """The fault in place, or None: ``{"drop": bool, "hidden": [pod, ...]}``."""
        if not self.dropping and not self.service.hidden:
            return None
        return {"drop": self.dropping, "hidden": sorted(self.service.hidden)}

    @property
    def address(self) -> str:
        """``host:port`` as pods take it in ``KV_DNS_SERVER``."""
        return f"{self.host}:{self.port}"

    async def start(self) -> None:
        """Bind UDP, then TCP on the same port (an ephemeral one when port is 0)."""
        loop = asyncio.get_running_loop()
        self._udp, _ = await loop.create_datagram_endpoint(
            lambda: _UdpProtocol(self), local_addr=(self.host, self.port)
        )
        self.port = self._udp.get_extra_info("sockname")[1]
        try:
            self._tcp = await asyncio.start_server(self._serve_tcp, self.host, self.port)
        except OSError:
            self._udp.close()
            self._udp = None
            raise
        log.debug("DNS for %s listening on %s", self.service.domain, self.address)

    async def stop(self) -> None:
        """Close both sockets; safe to call twice."""
        if self._udp is not None:
            self._udp.close()
            self._udp = None
        if self._tcp is not None:
            self._tcp.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._tcp.wait_closed(), 2)
            self._tcp = None

    def handle(self, wire: bytes, max_size: int | None) -> bytes | None:
        """Turn one query into its answer in wire format (None: drop it)."""
        self.queries += 1
        if self.dropping:
            self.dropped += 1
            return None
        try:
            query = dns.message.from_wire(wire)
        except dns.exception.DNSException:
            return _formerr(wire)
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        if query.opcode() != dns.opcode.QUERY:
            response.set_rcode(dns.rcode.NOTIMP)
            return response.to_wire()
        if len(query.question) != 1:
            response.set_rcode(dns.rcode.FORMERR)
            return response.to_wire()
        question = query.question[0]
        qname = question.name
        if question.rdclass != dns.rdataclass.IN or not qname.is_subdomain(self.service.root):
            response.flags &= ~dns.flags.AA
            response.set_rcode(dns.rcode.REFUSED)
            return response.to_wire()
        rcode, answer, additional = self.service.resolve(qname, question.rdtype)
        response.set_rcode(rcode)
        response.answer.extend(answer)
        response.additional.extend(additional)
        if not answer:
            response.authority.append(self.service.soa())
        if max_size is None:
            return response.to_wire()
        if query.edns >= 0:
            max_size = max(UDP_DEFAULT_PAYLOAD, min(query.payload, 4096))
        try:
            return response.to_wire(max_size=max_size)
        except dns.exception.TooBig:
            # Too large for UDP: send the header with TC so the client retries over TCP.
            truncated = dns.message.make_response(query)
            truncated.flags |= dns.flags.AA | dns.flags.TC
            return truncated.to_wire()

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            for _ in range(100):  # a client may send several queries on one connection
                header = await asyncio.wait_for(reader.readexactly(2), 10)
                (length,) = struct.unpack("!H", header)
                wire = await asyncio.wait_for(reader.readexactly(length), 10)
                reply = self.handle(wire, None)
                if reply is None:
                    if self.dropping:
                        # Keep the connection silent until the client gives up, so it sees a
                        # timeout, as from a server that is down.
                        with contextlib.suppress(asyncio.TimeoutError):
                            await asyncio.wait_for(reader.read(), 10)
                    break
                writer.write(struct.pack("!H", len(reply)) + reply)
                await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, server: DnsServer) -> None:
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        reply = self.server.handle(data, UDP_DEFAULT_PAYLOAD)
        if reply is not None and self.transport is not None:
            self.transport.sendto(reply, addr)


def _formerr(wire: bytes) -> bytes | None:
    """FORMERR echoing the query id, or None when not even a header arrived."""
    if len(wire) < 12:
        return None
    query_id, flags = struct.unpack("!HH", wire[:4])
    reply_flags = 0x8000 | (flags & 0x7900) | dns.rcode.FORMERR  # QR, opcode and RD kept
    return struct.pack("!HHHHHH", query_id, reply_flags, 0, 0, 0, 0)
