"""Forwarding of client calls a secondary cannot answer (writes, strong reads) to the primary's peer port.

The HTTP handlers describe a call in this module's terms (:class:`Forwardable`:
method, target, the headers passed on, body, the pods it passed through) and
get the primary's answer back as a :class:`Forwarded`, which they turn into
their response: the replica layer never sees the HTTP server's request or
response objects.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Mapping

import aiohttp
import yarl

from kvstore.client import why_unanswered
from kvstore.discovery import Peer
from kvstore.replication.peer_client import PeerClient
from kvstore.replication.protocol import FORWARDED_BY


class ForwardFailed(Exception):
    """The primary could not be reached (nothing was sent): safe to retry."""


class ForwardTimeout(Exception):
    """The primary took the request but did not answer in time: outcome unknown."""


MAX_HOPS = 2  # a forwarded call reaches the primary in at most two hops (one after a change of primary)
FORWARDED_HEADERS = ("If-Match", "If-None-Match", "Content-Type")
# The answer's headers passed back: kv-0's pod and role say who answered, as on any answer.
RETURNED_HEADERS = ("ETag", "Content-Type", "Retry-After", "X-Kv-Lsn", "X-Kv-Primary-Lsn", "X-Kv-Pod", "X-Kv-Role")
CONNECT_TIMEOUT = 1.0


@dataclass(frozen=True)
class Forwardable:
    """A client call as this pod would pass it on to the primary."""

    method: str
    target: str  # the path and query string, percent-encoding untouched (keys keep their exact bytes)
    headers: tuple[tuple[str, str], ...]  # those of FORWARDED_HEADERS the client sent
    body: bytes | None
    hops: tuple[str, ...] = ()  # the pods that forwarded it already (X-Kv-Forwarded-By), at most MAX_HOPS


@dataclass(frozen=True)
class Forwarded:
    """The primary's answer to a forwarded call, passed back to the client as it is."""

    status: int
    body: bytes
    headers: tuple[tuple[str, str], ...]  # RETURNED_HEADERS and X-Kv-Answered-By


def forwardable(method: str, target: str, headers: Mapping[str, str], body: bytes | None) -> Forwardable:
    """A client call (its request headers as received) in the terms :func:`forward` takes.

    Every write is described so, on the primary too: the usual call (no hop
    header) costs a few header lookups and no string splitting.
    """
    by = headers.get(FORWARDED_BY)
    hops = tuple([hop for hop in by.split(",") if hop][:MAX_HOPS]) if by else ()
    passed = tuple([(name, headers[name]) for name in FORWARDED_HEADERS if name in headers])
    return Forwardable(method, target, passed, body, hops)


async def forward(client: PeerClient, peer: Peer, call: Forwardable, timeout: float,
                  forwarded_by: str) -> Forwarded:
    """Send a client call to ``peer``'s peer port and return its answer, to be passed back as ours."""
    headers = dict(call.headers)
    headers[FORWARDED_BY] = forwarded_by
    url = peer.peer_url + call.target
    try:
        async with client.session.request(
                call.method, yarl_url(url), data=call.body, headers=headers,
                timeout=aiohttp.ClientTimeout(total=timeout, connect=CONNECT_TIMEOUT)) as response:
            payload = await response.read()
            out = {name: response.headers[name] for name in RETURNED_HEADERS if name in response.headers}
            out["X-Kv-Answered-By"] = response.headers.get("X-Kv-Pod", peer.name)
            return Forwarded(response.status, payload, tuple(out.items()))
    except (aiohttp.ClientConnectorError, ConnectionRefusedError) as exc:
        raise ForwardFailed(f"{peer.name} does not answer on its peer port ({peer.address}: "
                            f"{why_unanswered(exc)})") from None
    except aiohttp.ConnectionTimeoutError:
        raise ForwardTimeout(f"{peer.name} did not accept a connection on its peer port within "
                             f"{CONNECT_TIMEOUT:g}s") from None
    except asyncio.TimeoutError:
        raise ForwardTimeout(f"{peer.name} took the request but did not answer within {timeout:g}s") from None
    except aiohttp.ClientError as exc:
        raise ForwardTimeout(f"{peer.name} took the request, then {why_unanswered(exc)}") from None


def yarl_url(url: str) -> yarl.URL:
    """The URL as given, percent-encoding untouched (keys keep their exact bytes)."""
    return yarl.URL(url, encoded=True)
