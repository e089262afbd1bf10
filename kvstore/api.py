"""The client HTTP API (aiohttp): keys, listing, status, health and metrics.

Every error is JSON ``{"error": code, "message": what to do}`` with the right
status; a middleware turns anything unexpected into JSON too, so no request
gets an HTML page or a traceback.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from importlib import resources
import time
from typing import Any, Awaitable, Callable, Mapping

from aiohttp import web

from kvstore import storage, txn
from kvstore.config import WRITE_CONCERNS
from kvstore.forwarding import Forwardable, Forwarded, forwardable
from kvstore.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from kvstore.refusals import (
    LsnAhead, NoPrimary, NotConfirmed, PrimaryTimeout, ReadTimeout, WriteConcernTimeout,
)
from kvstore.replica import Replica
from kvstore.routing import (
    ApiError, Handler, InFlight, Router, decode_component, make_handler, parse_int, parse_query,
)

log = logging.getLogger(__name__)

KV_PREFIX = "/v1/kv/"
MAX_LIST_LIMIT = 1000
DEFAULT_LIST_LIMIT = 100

# Strong ETags are quoted ("42"); a bare 42 is accepted too, as curl users type it.
_ETAG = re.compile(r'^("?)(0|[1-9][0-9]{0,17})\1$')


def unavailable(exc: NoPrimary) -> ApiError:
    """503 for no primary or a recovering one: retry after a second."""
    return ApiError(503, exc.code, str(exc), headers={"Retry-After": "1"})


# ------------------------------------------------------------------ parsing
def parse_etags(header: str, name: str) -> tuple[int, ...] | str:
    """``*`` or a list of strong ETags ``"N"``; ApiError 400 otherwise."""
    header = header.strip()
    if header == "*":
        return "*"
    versions: list[int] = []
    for tag in header.split(","):
        match = _ETAG.match(tag.strip())
        if not match:
            raise ApiError(400, "bad_header", f'{name} must be * or ETags like "42" '
                           "(the version from a previous answer)")
        versions.append(int(match.group(2)))
    return tuple(versions)


def write_answer(key: bytes, version: int, deleted: bool) -> str:
    """A write's JSON answer, ``{"key": ..., "version": N, "deleted": false}``.

    Formatted here rather than by json.dumps of a dict: only the key needs
    escaping, and the general encoder was ~3% of kv-0's time per PUT.
    """
    return f'{{"key": {json.dumps(key.decode())}, "version": {version}, "deleted": {"true" if deleted else "false"}}}'


def etag(version: int) -> str:
    """The ETag for a key's version."""
    return f'"{version}"'


def call_of(request: web.BaseRequest, body: bytes | None) -> Forwardable:
    """The client call as a follower would pass it on to the primary (the replica never sees ``request``)."""
    return forwardable(request.method, request.rel_url.raw_path_qs, request.headers, body)


def passed_back(answer: Forwarded) -> web.Response:
    """The primary's answer to a forwarded call, as this pod's response."""
    return web.Response(status=answer.status, body=answer.body, headers=dict(answer.headers))


class ClientApi:
    """Handlers of the client port, bound to one replica (``Node``)."""

    def __init__(self, node: Replica) -> None:
        self.node = node
        self.config = node.config
        self.metrics = node.metrics

    # ------------------------------------------------------------ helpers
    def key_of(self, request: web.BaseRequest) -> bytes:
        raw = request.rel_url.raw_path[len(KV_PREFIX):]
        if not raw:
            raise ApiError(400, "bad_key", "the key is empty: use /v1/kv/<key>")
        key = decode_component(raw, "the key").encode("utf-8")
        if len(key) > self.config.max_key_bytes:
            raise ApiError(413, "key_too_large",
                           f"the key is {len(key)} bytes; the limit is {self.config.max_key_bytes}")
        return key

    def headers(self, lsn: int | None = None) -> dict[str, str]:
        """Freshness headers every answer carries.

        ``X-Kv-Lsn`` is a lower bound: the answer reflects every write up to it.
        A read passes the LSN it saw *before* reading, because a write that
        lands while the read runs may or may not be in what it returns.
        """
        out = {"X-Kv-Pod": self.config.pod_name, "X-Kv-Role": self.node.role,
               "X-Kv-Lsn": str(self.node.store.lsn if lsn is None else lsn),
               "X-Kv-History": self.node.store.history_id}
        primary_lsn = self.node.primary_lsn()
        if primary_lsn is not None:
            out["X-Kv-Primary-Lsn"] = str(primary_lsn)
        return out

    @staticmethod
    def reject_body(request: web.BaseRequest) -> None:
        if request.body_exists and request.content_length != 0:
            raise ApiError(400, "unexpected_body", f"{request.method} takes no request body")

    def write_concern(self, params: Mapping[str, str]) -> str:
        w = params.get("w", self.config.write_concern).lower()
        if w not in WRITE_CONCERNS:
            raise ApiError(400, "bad_parameter", "w must be one of 1, majority, all")
        return w

    def conditions(self, request: web.BaseRequest) -> tuple[tuple[int, ...] | str | None, bool]:
        if_match = request.headers.get("If-Match")
        if_none = request.headers.get("If-None-Match")
        match = parse_etags(if_match, "If-Match") if if_match is not None else None
        if if_none is not None and if_none.strip() != "*":
            raise ApiError(400, "bad_header", "If-None-Match on a write only accepts * (create only)")
        return match, if_none is not None

    async def read_body(self, request: web.BaseRequest, txn_limit: int | None = None) -> bytes:
        """A PUT's value (or, with ``txn_limit``, a transaction's body), refused with a 413 over its limit."""
        limit = self.config.max_value_bytes if txn_limit is None else txn_limit
        if request.content_length is not None and request.content_length > limit:
            raise _too_large(f"is {request.content_length} bytes; the limit is {limit}", txn_limit is not None)
        if request.content_length == 0:
            return b""  # aiohttp's empty body refuses even readexactly(0)
        if request.content_length is not None:
            # The usual case: one read of a known length (iterating in chunks cost kv-0's event
            # loop ~5% of its time per small PUT). A chunked body is read piece by piece below.
            try:
                return await request.content.readexactly(request.content_length)
            except asyncio.IncompleteReadError as exc:
                raise ApiError(400, "bad_body", f"the body ended after {len(exc.partial)} of its "
                               f"{request.content_length} bytes (Content-Length)") from None
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.content.iter_chunked(64 * 1024):
            size += len(chunk)
            if size > limit:
                raise _too_large(f"exceeds the limit of {limit} bytes", txn_limit is not None)
            chunks.append(chunk)
        return b"".join(chunks)

    async def settle(self, lsn: int) -> None:
        """A secondary's answer waits until ``lsn`` is committed; 504 ``not_confirmed`` if it is not in time."""
        try:
            await self.node.settle(lsn)
        except NotConfirmed as exc:
            raise ApiError(504, "not_confirmed", str(exc)) from None

    # ----------------------------------------------------------- handlers
    async def put(self, request: web.BaseRequest) -> web.Response:
        return await self._write(request, storage.PUT)

    async def delete(self, request: web.BaseRequest) -> web.Response:
        return await self._write(request, storage.DELETE)

    async def _write(self, request: web.BaseRequest, op: int) -> web.Response:
        key = self.key_of(request)
        params = parse_query(request, ("w", "ttl") if op == storage.PUT else ("w",))
        w = self.write_concern(params)
        # The absolute expiry from this pod's clock; a secondary forwards the ttl and the primary counts it again.
        ttl = parse_int(params, "ttl", 1, txn.MAX_TTL, 0)
        expires = int(time.time() * 1000) + ttl * 1000 if ttl else 0
        if_match, if_none_match = self.conditions(request)
        if op == storage.PUT:
            value: bytes | None = await self.read_body(request)
        else:
            self.reject_body(request)
            value = None
        mutation = storage.Mutation(op, key, value, if_match, if_none_match, expires)
        result = await self._committed(self.node.write(mutation, w, call_of(request, value)))
        if isinstance(result, Forwarded):  # answered by the primary
            return passed_back(result)
        headers = self.headers()
        headers["ETag"] = etag(result)
        return web.Response(text=write_answer(key, result, op == storage.DELETE), content_type="application/json",
                            headers=headers)

    async def txn(self, request: web.BaseRequest) -> web.Response:
        """``POST /v1/txn``: compare, then one branch of puts and deletes as one log entry (txn.py)."""
        w = self.write_concern(parse_query(request, ("w",)))
        max_key, max_value = self.config.max_key_bytes, self.config.max_value_bytes
        body = await self.read_body(request, txn.max_body_bytes(max_key, max_value))
        result = await self._committed(self.node.transact(
            lambda now: txn.parse(body, max_key, max_value, now), w, call_of(request, body)))
        if isinstance(result, Forwarded):  # answered by the primary
            return passed_back(result)
        return web.json_response(result.to_json(), headers=self.headers())

    async def _committed(self, write: Awaitable[Any]) -> Any:
        """A write's outcome, its failures as the answers a PUT gives."""
        try:
            return await write
        except NotConfirmed as exc:
            raise ApiError(504, "not_confirmed", str(exc)) from None
        except storage.PreconditionFailed as exc:
            raise ApiError(412, "precondition_failed",
                           "the key's current version does not match the condition; "
                           "read it again and retry with its ETag",
                           current_version=exc.current_version) from None
        except storage.NotFound:
            raise ApiError(404, "not_found", "no such key") from None
        except WriteConcernTimeout as exc:
            raise ApiError(504, "write_concern_timeout", str(exc), version=exc.lsn,
                           confirmed=exc.confirmed, required=exc.required,
                           headers={"ETag": etag(exc.lsn)}) from None
        except NoPrimary as exc:
            raise unavailable(exc) from None
        except PrimaryTimeout as exc:
            raise ApiError(504, "primary_timeout", str(exc)) from None
        except storage.StorageError as exc:
            raise ApiError(503, "storage_unavailable", f"{exc}; retry later",
                           headers={"Retry-After": "1"}) from None

    async def get(self, request: web.BaseRequest) -> web.StreamResponse:
        key = self.key_of(request)
        params = parse_query(request, ("consistency", "min_lsn"))
        self.reject_body(request)
        consistency = params.get("consistency", "local")
        if consistency not in ("local", "strong"):
            raise ApiError(400, "bad_parameter", "consistency must be local or strong")
        min_lsn = parse_int(params, "min_lsn", 0, 2**63 - 1, 0)
        if_none = request.headers.get("If-None-Match")
        cached = parse_etags(if_none, "If-None-Match") if if_none is not None else None
        try:
            # Only a strong read may be passed on (and only it needs the call described).
            strong = call_of(request, None) if consistency == "strong" else None
            forwarded = await self.node.prepare_read(min_lsn, strong)
        except ReadTimeout as exc:
            raise ApiError(504, "min_lsn_timeout", str(exc)) from None
        except NotConfirmed as exc:
            raise ApiError(504, "not_confirmed", str(exc)) from None
        except LsnAhead as exc:
            raise ApiError(412, "min_lsn_ahead", str(exc)) from None
        except NoPrimary as exc:
            raise unavailable(exc) from None
        except PrimaryTimeout as exc:
            raise ApiError(504, "primary_timeout", str(exc)) from None
        if forwarded is not None:
            return passed_back(forwarded)
        # A strong read is confirmed below, which makes kv-0's own line the cluster's.
        seen_lsn = self.node.store.lsn if consistency == "strong" else self.node.read_lsn()
        version = self.node.store.lineage_version
        record = await self.node.store.get(key)
        if record is not None and record.expires and self.node.hides_expired() \
                and record.expires <= time.time() * 1000:
            record = None  # expired: this primary's expirer is about to write its delete (expiry.py)
        based_on = record.version if record else self.node.store.lsn
        if consistency == "strong":
            try:
                await self.node.confirm_read(based_on, version)
            except NotConfirmed as exc:
                raise ApiError(504, "not_confirmed", str(exc)) from None
            except NoPrimary as exc:
                raise unavailable(exc) from None
        elif pending := self.node.unsettled(key):
            await self.settle(pending)
        headers = self.headers(seen_lsn)
        if record is None:
            raise ApiError(404, "not_found", "no such key", headers=headers)
        headers["ETag"] = etag(record.version)
        if cached is not None and (cached == "*" or record.version in cached):
            return web.Response(status=304, headers=headers)
        return web.Response(body=record.value, headers=headers,
                            content_type="application/octet-stream")

    async def list_keys(self, request: web.BaseRequest) -> web.Response:
        params = parse_query(request, ("prefix", "start_after", "limit"))
        self.reject_body(request)
        try:
            self.node.check_local_read()
        except NoPrimary as exc:
            raise unavailable(exc) from None
        limit = parse_int(params, "limit", 1, MAX_LIST_LIMIT, DEFAULT_LIST_LIMIT)
        prefix = params.get("prefix", "").encode()
        # Neither is a key: a prefix longer than any key matches none, and keys sort after any
        # start_after (the request line's own limit bounds both).
        start_after = params["start_after"].encode() if "start_after" in params else None
        seen_lsn = self.node.read_lsn()
        scanned_at = self.node.store.lsn
        rows = await self.node.store.scan(prefix, start_after, limit + 1)
        if pending := self.node.unsettled_listing(max([scanned_at, *(v for _, v in rows)])):
            await self.settle(pending)
        more = len(rows) > limit
        rows = rows[:limit]
        keys = [key.decode() for key, _ in rows]
        body = {"keys": keys, "versions": [version for _, version in rows],
                "more": more, "next_start_after": keys[-1] if more else None}
        return web.json_response(body, headers=self.headers(seen_lsn))

    async def status(self, request: web.BaseRequest) -> web.Response:
        parse_query(request, ())
        self.reject_body(request)
        return web.json_response(await self.node.status(), headers=self.headers())

    async def healthz(self, request: web.BaseRequest) -> web.Response:
        parse_query(request, ())
        return web.json_response({"status": "ok"})

    async def readyz(self, request: web.BaseRequest) -> web.Response:
        parse_query(request, ())
        ready, reason = self.node.readiness()
        if not ready:
            raise ApiError(503, "not_ready", reason, headers={"Retry-After": "1"})
        return web.json_response({"status": "ready", "reason": reason})

    async def metrics_text(self, request: web.BaseRequest) -> web.Response:
        parse_query(request, ())
        self.node.update_gauges()
        return web.Response(body=self.metrics.render(), headers={"Content-Type": METRICS_CONTENT_TYPE})

    async def openapi(self, request: web.BaseRequest) -> web.Response:
        parse_query(request, ())
        return web.Response(body=openapi_document(), content_type="application/json")


def _too_large(said: str, txn_body: bool) -> ApiError:
    if txn_body:
        return ApiError(413, "txn_too_large", f"the transaction body {said}")
    return ApiError(413, "value_too_large", f"the value {said}")


def openapi_document() -> bytes:
    """The OpenAPI 3 document of the client API, shipped in the package."""
    return resources.files("kvstore").joinpath("openapi.json").read_bytes()


def add_key_routes(router: Router, api: ClientApi) -> None:
    """The key routes and transactions; the peer port mounts them too, for writes forwarded to the primary."""
    router.add_prefix("GET", KV_PREFIX, api.get)
    router.add_prefix("PUT", KV_PREFIX, api.put)
    router.add_prefix("DELETE", KV_PREFIX, api.delete)
    router.add("POST", "/v1/txn", api.txn)


def create_handler(node: Replica, in_flight: InFlight | None = None,
                   add_routes: Callable[[Router], None] | None = None) -> Handler:
    """The client port of one replica, as a handler for ``web.Server``; ``add_routes`` adds more (the dashboard)."""
    api = ClientApi(node)
    router = Router()
    if add_routes is not None:
        add_routes(router)
    router.add("GET", "/v1/kv", api.list_keys)
    add_key_routes(router, api)
    router.add("GET", "/v1/status", api.status)
    router.add("GET", "/healthz", api.healthz)
    router.add("GET", "/readyz", api.readyz)
    router.add("GET", "/metrics", api.metrics_text)
    router.add("GET", "/openapi.json", api.openapi)
    return make_handler(router, node.metrics, in_flight)
