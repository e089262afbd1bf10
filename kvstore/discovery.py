"""Peer discovery: the SRV records of the headless Service's ``peer`` port.

A :class:`PeerDirectory` asks for ``_peer._tcp.<svc>.<ns>.svc.<domain>``
(the Kubernetes DNS specification's name for a named port of a headless
Service), takes each target's address from the additional section (else an
A/AAAA query), and reads the peer's ordinal from the target's first label
(``kv-2.kv.default.svc.cluster.local.`` -> 2).

It expects the answers a real cluster gives: one SRV per endpoint with
CoreDNS's priority 0 and weight ``100/n`` (both ignored: every endpoint is a
member), answers in any order, partial answers while pods start, the pod's
own name among the targets, and targets that are not StatefulSet hostnames
(CoreDNS's dashed-IP labels), which are logged once and ignored. NXDOMAIN,
SERVFAIL and timeouts keep the last good view and are retried on the next
refresh: a DNS hiccup must not make every peer "leave".
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import re
import time
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Callable, Mapping

import dns.asyncresolver
import dns.exception
import dns.name
import dns.nameserver
import dns.rdatatype
import dns.resolver

from kvstore.aio import cancel_and_wait
from kvstore.config import Config
from kvstore.identity import role_of, statefulset_name

log = logging.getLogger("kvstore.discovery")

PEER_PORT_NAME = "peer"


@dataclass(frozen=True)
class Peer:
    """One replica found in DNS."""

    name: str
    ordinal: int
    host: str
    peer_port: int
    target: str = ""
    priority: int = 0
    weight: int = 0

    @property
    def role(self) -> str:
        """``primary`` for ordinal 0, else ``secondary``."""
        return role_of(self.ordinal)

    @property
    def address(self) -> str:
        """``host:port`` of the peer port (IPv6 hosts in brackets)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.peer_port}"

    @property
    def peer_url(self) -> str:
        """Base URL of the peer port."""
        return f"http://{self.address}"

    def to_dict(self) -> dict[str, Any]:
        """JSON shape used by ``GET /v1/status``."""
        return {"name": self.name, "ordinal": self.ordinal, "role": self.role,
                "address": self.address, "host": self.host, "peer_port": self.peer_port}


@dataclass(frozen=True)
class MembershipChange:
    """What one refresh changed; ``peers`` is the view after it."""

    joined: tuple[Peer, ...]
    left: tuple[Peer, ...]
    moved: tuple[Peer, ...]
    peers: Mapping[int, Peer] = field(default_factory=dict)


Subscriber = Callable[[MembershipChange], None]


def srv_name(config: Config, port_name: str = PEER_PORT_NAME) -> str:
    """``_<port>._tcp.<svc>.<ns>.svc.<domain>.`` for this replica's Service."""
    return f"_{port_name}._tcp.{config.service}.{config.namespace}.svc.{config.cluster_domain}."


def parse_target(target: str, statefulset: str) -> int | None:
    """The ordinal from a target's first label, or None if it is not ``<statefulset>-N``.

    ``kv-2.kv.default.svc.cluster.local.`` -> 2; ``10-0-0-5.kv...`` (CoreDNS's
    label for a pod without a hostname) -> None.
    """
    label = target.strip().split(".", 1)[0].lower()
    match = re.fullmatch(re.escape(statefulset.lower()) + r"-(0|[1-9][0-9]{0,8})", label)
    return int(match.group(1)) if match else None


def make_resolver(dns_server: str, timeout: float = 1.0, lifetime: float = 2.0) -> dns.asyncresolver.Resolver:
    """An async resolver for ``host:port`` (an IP address), or the system's when empty.

    Raises ValueError with a one-line reason when it cannot be built.
    """
    if dns_server:
        host, _, port = dns_server.rpartition(":")
        host = host.strip("[]")
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ValueError(f"KV_DNS_SERVER={dns_server!r}: expected an IP address and port") from None
        resolver = dns.asyncresolver.Resolver(configure=False)
        resolver.nameservers = [dns.nameserver.Do53Nameserver(host, int(port))]
    else:
        try:
            resolver = dns.asyncresolver.Resolver()
        except dns.resolver.NoResolverConfiguration:
            raise ValueError("no system DNS resolver configured; set KV_DNS_SERVER") from None
    resolver.timeout = timeout
    resolver.lifetime = lifetime
    resolver.cache = None  # membership must follow DNS, not a cache
    return resolver


class PeerDirectory:
    """The current set of peers, refreshed from DNS on an interval and on demand.

    ``peers`` maps ordinal -> :class:`Peer` for the *other* replicas; this
    replica's own record, when DNS has it, is noted in ``self_seen``.
    """

    def __init__(self, config: Config, *, interval: float | None = None,
                 timeout: float = 1.0, lifetime: float = 2.0,
                 resolver: dns.asyncresolver.Resolver | None = None) -> None:
        self.config = config
        self.qname = srv_name(config)
        self.interval = config.refresh_interval if interval is None else interval
        self.statefulset = statefulset_name(config.pod_name)
        self.domain = dns.name.from_text(f"{config.service}.{config.namespace}.svc.{config.cluster_domain}")
        self.resolver = resolver or make_resolver(config.dns_server, timeout, lifetime)
        self._peers: dict[int, Peer] = {}
        self._subscribers: list[Subscriber] = []
        self._warned_targets: set[str] = set()
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self.self_seen = False
        self.last_error: str | None = None
        self.last_success: float | None = None  # time.time() of the last good answer
        self.refreshes = 0

    @property
    def peers(self) -> Mapping[int, Peer]:
        """Read-only view: ordinal -> Peer, without this replica."""
        return MappingProxyType(self._peers)

    def pod_name(self, ordinal: int) -> str:
        """The pod name of ``ordinal`` in this StatefulSet (``kv-2``)."""
        return f"{self.statefulset}-{ordinal}"

    async def find(self, ordinal: int) -> Peer | None:
        """The peer with ``ordinal``: from the last SRV answer, else by its stable per-pod name.

        ``kv-N.<service>.<namespace>.svc.<domain>`` has an address as soon as
        the pod exists, even when an SRV answer left it out; its peer port is
        this pod template's. None when DNS does not know it (or does not answer).
        """
        known = self._peers.get(ordinal)
        if known is not None:
            return known
        target = dns.name.from_text(self.pod_name(ordinal), self.domain)
        hosts = await self._address(target)
        if not hosts:
            return None
        return Peer(name=self.pod_name(ordinal), ordinal=ordinal, host=sorted(hosts)[0],
                    peer_port=self.config.peer_port, target=target.to_text())

    async def gone(self, ordinal: int) -> bool:
        """Whether DNS says pod ``ordinal`` does not exist: not in the SRV answer, its per-pod name NXDOMAIN.

        With ``publishNotReadyAddresses`` a pod's name resolves from its creation
        until it is deleted, up or down; a timeout or a server failure is never
        "gone".
        """
        if ordinal in self._peers:
            return False
        target = dns.name.from_text(self.pod_name(ordinal), self.domain)
        try:
            await self.resolver.resolve(target, dns.rdatatype.A, search=False)
        except dns.resolver.NXDOMAIN:
            return True
        except (dns.exception.DNSException, OSError):
            return False
        return False

    def subscribe(self, callback: Subscriber) -> Callable[[], None]:
        """Call ``callback(change)`` after every refresh that changed the view.

        Returns a function that unsubscribes. Callbacks run on the event loop
        and must not block; an exception in one is logged and ignored.
        """
        self._subscribers.append(callback)

        def unsubscribe() -> None:
            with contextlib.suppress(ValueError):
                self._subscribers.remove(callback)

        return unsubscribe

    async def start(self) -> None:
        """Refresh once, then keep refreshing in the background; a failed first lookup is not fatal."""
        if self._task is not None:
            return
        await self.refresh()
        self._task = asyncio.create_task(self._run(), name="peer-discovery")

    async def stop(self) -> None:
        """Stop the background refresh; safe to call twice."""
        task, self._task = self._task, None
        await cancel_and_wait(task)

    def request_refresh(self) -> None:
        """Ask the background loop to refresh now instead of at the next interval."""
        self._wake.set()

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval)
            self._wake.clear()
            try:
                await self.refresh()
            except Exception:  # never let one bad answer end discovery
                log.exception("peer discovery refresh failed")

    async def refresh(self) -> Mapping[int, Peer]:
        """Ask DNS now and apply the answer; on failure keep the last good view."""
        async with self._lock:
            self.refreshes += 1
            try:
                found = await self._lookup()
            except (dns.exception.DNSException, OSError, ValueError) as exc:
                self._failed(_describe(exc, self.qname))
                return self.peers
            if self.last_error is not None:
                log.info("peer discovery recovered: %d peer(s) in DNS", len(found))
            self.last_error = None
            self.last_success = time.time()
            self._apply(found)
            return self.peers

    def _failed(self, reason: str) -> None:
        # Log the first failure of a streak loudly; repeats every interval would drown the log.
        if reason != self.last_error:
            log.warning("peer discovery: %s; keeping %d known peer(s), retrying", reason, len(self._peers))
        else:
            log.debug("peer discovery: %s", reason)
        self.last_error = reason

    async def _lookup(self) -> dict[int, Peer]:
        answer = await self.resolver.resolve(self.qname, dns.rdatatype.SRV, search=False)
        glue: dict[dns.name.Name, list[str]] = {}
        for rrset in answer.response.additional:
            if rrset.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
                glue.setdefault(rrset.name, []).extend(r.address for r in rrset)
        candidates: dict[int, tuple[Any, dns.name.Name]] = {}
        self.self_seen = False
        # Lowest priority, then highest weight first, so a duplicate ordinal keeps the preferred record.
        for record in sorted(answer, key=lambda r: (r.priority, -r.weight, r.target.to_text())):
            target = record.target
            ordinal = parse_target(target.to_text(), self.statefulset)
            if ordinal is None or not target.is_subdomain(self.domain):
                self._warn_target(target.to_text(), "is not a StatefulSet pod of this Service")
                continue
            if ordinal == self.config.ordinal:
                self.self_seen = True
                continue
            if ordinal in candidates:
                self._warn_target(target.to_text(), f"repeats ordinal {ordinal}")
                continue
            candidates[ordinal] = (record, target)
        missing = [t for _, t in candidates.values() if t not in glue]
        if missing:
            addresses = await asyncio.gather(*(self._address(t) for t in missing))
            glue.update({t: a for t, a in zip(missing, addresses) if a})
        found: dict[int, Peer] = {}
        for ordinal, (record, target) in candidates.items():
            hosts = glue.get(target)
            if not hosts:
                old = self._peers.get(ordinal)
                if old is not None and old.peer_port == record.port:
                    found[ordinal] = old  # the address lookup failed this time: keep what we knew
                continue
            found[ordinal] = Peer(
                name=f"{self.statefulset}-{ordinal}", ordinal=ordinal, host=sorted(hosts)[0],
                peer_port=record.port, target=target.to_text(),
                priority=record.priority, weight=record.weight,
            )
        return found

    async def _address(self, target: dns.name.Name) -> list[str]:
        for rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
            try:
                answer = await self.resolver.resolve(target, rdtype, search=False)
            except (dns.resolver.NoAnswer, dns.resolver.NXDOMAIN):
                continue
            except (dns.exception.DNSException, OSError) as exc:
                log.debug("address of %s: %s", target, exc)
                return []
            return [r.address for r in answer]
        return []

    def _warn_target(self, target: str, why: str) -> None:
        if target not in self._warned_targets:
            self._warned_targets.add(target)
            log.warning("peer discovery: ignoring SRV target %s: %s", target, why)

    def _apply(self, found: dict[int, Peer]) -> None:
        old = self._peers
        joined = tuple(found[o] for o in sorted(found.keys() - old.keys()))
        left = tuple(old[o] for o in sorted(old.keys() - found.keys()))
        moved = tuple(found[o] for o in sorted(found.keys() & old.keys())
                      if (found[o].host, found[o].peer_port) != (old[o].host, old[o].peer_port))
        self._peers = found
        for peer in joined:
            log.info("%s joined (%s)", peer.name, peer.address)
        for peer in left:
            log.info("%s left", peer.name)
        for peer in moved:
            log.info("%s moved (%s)", peer.name, peer.address)
        if joined or left or moved:
            change = MembershipChange(joined, left, moved, self.peers)
            for callback in list(self._subscribers):
                try:
                    callback(change)
                except Exception:
                    log.exception("peer discovery subscriber failed")

    def status(self) -> dict[str, Any]:
        """The discovery part of ``GET /v1/status``."""
        return {
            "srv": self.qname,
            "peers": [p.to_dict() for _, p in sorted(self._peers.items())],
            "self_in_dns": self.self_seen,
            "last_error": self.last_error,
            "last_success": self.last_success,
        }


def _describe(exc: BaseException, qname: str) -> str:
    if isinstance(exc, dns.resolver.NXDOMAIN):
        return f"{qname} does not exist (NXDOMAIN: no endpoints yet?)"
    if isinstance(exc, dns.resolver.NoAnswer):
        return f"{qname} has no SRV records"
    if isinstance(exc, dns.exception.Timeout):
        return f"DNS timed out asking for {qname}"
    if isinstance(exc, dns.resolver.NoNameservers):
        return f"no DNS server answered {qname} (SERVFAIL or REFUSED)"
    return f"DNS lookup of {qname} failed: {exc}"
