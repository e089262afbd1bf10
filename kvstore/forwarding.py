"""Forwarding of client calls a secondary cannot answer (writes, strong reads) to kv-0's peer port."""

from __future__ import annotations

import asyncio

import aiohttp
import yarl
from aiohttp import web

from kvstore.client import why_unanswered
from kvstore.discovery import Peer
from kvstore.replication.peer_client import PeerClient


class ForwardFailed(Exception):
    """The primary could not be reached (nothing was sent): safe to retry."""


class ForwardTimeout(Exception):
    """The primary took the request but did not answer in time: outcome unknown."""


FORWARDED_HEADERS = ("If-Match", "If-None-Match", "Content-Type")
# The answer's headers passed back: kv-0's pod and role say who answered, as on any answer.
RETURNED_HEADERS = ("ETag", "Content-Type", "Retry-After", "X-Kv-Lsn", "X-Kv-Primary-Lsn", "X-Kv-Pod", "X-Kv-Role")
CONNECT_TIMEOUT = 1.0


async def forward(client: PeerClient, peer: Peer, request: web.BaseRequest, body: bytes | None,
                  timeout: float, forwarded_by: str) -> web.Response:
    """Send a client request to ``peer``'s peer port and return its answer as ours."""
    headers = {name: request.headers[name] for name in FORWARDED_HEADERS if name in request.headers}
    headers["X-Kv-Forwarded-By"] = forwarded_by
    url = peer.peer_url + request.rel_url.raw_path_qs
    try:
        async with client.session.request(
                request.method, yarl_url(url), data=body, headers=headers,
                timeout=aiohttp.ClientTimeout(total=timeout, connect=CONNECT_TIMEOUT)) as response:
            payload = await response.read()
            out = {name: response.headers[name] for name in RETURNED_HEADERS if name in response.headers}
            out["X-Kv-Answered-By"] = response.headers.get("X-Kv-Pod", peer.name)
            return web.Response(status=response.status, body=payload, headers=out)
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
