"""HTTP plumbing both ports share, on aiohttp's low-level server.

Routing, JSON errors for everything (no HTML page or traceback reaches a
client), request metrics and the in-flight count a stopping replica waits on.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Awaitable, Callable, Mapping

from aiohttp import web

log = logging.getLogger("kvstore.api")

Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


class ApiError(Exception):
    """An error the client caused or must react to, rendered as JSON."""

    def __init__(self, status: int, code: str, message: str,
                 headers: Mapping[str, str] | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})
        self.extra = extra


def error_response(status: int, code: str, message: str,
                   headers: Mapping[str, str] | None = None, **extra: Any) -> web.Response:
    """The JSON error body every endpoint uses."""
    body = {"error": code, "message": message, **extra}
    return web.json_response(body, status=status, headers=dict(headers or {}))


class Router:
    """Method and path to handler, for aiohttp's low-level server (``web.Server``).

    aiohttp's Application (URL dispatcher, middleware chain, per-request app
    context) was ~40% of a minimal request's cost on this machine (13k vs 23k
    req/s for one GET handler); the API has a few fixed paths and one
    prefix, so a dict and a startswith do the same job.
    """

    def __init__(self) -> None:
        self._exact: dict[str, dict[str, Handler]] = {}
        self._prefixes: list[tuple[str, dict[str, Handler]]] = []

    def add(self, method: str, path: str, handler: Handler) -> None:
        """Route ``method path`` (GET also answers HEAD)."""
        self._register(self._exact.setdefault(path, {}), method, handler)

    def add_prefix(self, method: str, prefix: str, handler: Handler) -> None:
        """Route ``method`` on every path that starts with ``prefix`` (the rest is the key)."""
        for known, table in self._prefixes:
            if known == prefix:
                break
        else:
            table = {}
            self._prefixes.append((prefix, table))
        self._register(table, method, handler)

    @staticmethod
    def _register(table: dict[str, Handler], method: str, handler: Handler) -> None:
        table[method] = handler
        if method == "GET":
            table.setdefault("HEAD", handler)

    def resolve(self, request: web.BaseRequest) -> tuple[str, Handler]:
        """(route name for metrics, handler); ApiError 404 or 405 (with Allow) otherwise."""
        route = request.path
        table = self._exact.get(route)
        if table is None:
            raw = request.raw_path
            for prefix, candidates in self._prefixes:
                if raw.startswith(prefix):
                    route, table = prefix + "{key}", candidates
                    break
            else:
                raise ApiError(404, "not_found", "no such endpoint; see /openapi.json")
        handler = table.get(request.method)
        if handler is None:
            allowed = ",".join(table)
            raise ApiError(405, "method_not_allowed",
                           f"{request.method} is not allowed here; allowed: {allowed}",
                           headers={"Allow": allowed})
        return route, handler


class InFlight:
    """Requests being handled, so a stopping replica can let them finish."""

    def __init__(self) -> None:
        self.count = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def enter(self) -> None:
        self.count += 1
        self._idle.clear()

    def leave(self) -> None:
        self.count -= 1
        if self.count == 0:
            self._idle.set()

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until no request is in flight; False if some still are after ``timeout``."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        return True


Guard = Callable[[web.BaseRequest], "web.StreamResponse | None"]


async def _expect(request: web.BaseRequest) -> None:
    """Answer ``Expect: 100-continue`` (curl sends it for bodies over 1 KiB and waits a
    second for it); web.Application did this per route, the low-level server does not."""
    if request.headers["Expect"].lower() != "100-continue" or request.version < (1, 1):
        raise ApiError(417, "expectation_failed", "only Expect: 100-continue is supported")
    await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    request.writer.output_size = 0  # the 100 is not part of the answer's size


def make_handler(router: Router, metrics: Any, in_flight: InFlight | None = None,
                 guard: Guard | None = None) -> Handler:
    """The low-level server's handler: guard, route, JSON errors, request metrics, in-flight count.

    ``guard`` answers first when it returns a response (the peer port's token check).
    """
    in_flight = in_flight or InFlight()
    series: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        started = time.perf_counter()
        in_flight.enter()
        route = "unmatched"
        try:
            try:
                refused = guard(request) if guard is not None else None
                if refused is not None:
                    response = refused
                else:
                    route, handler = router.resolve(request)
                    if "Expect" in request.headers:
                        await _expect(request)
                    response = await handler(request)
            except ApiError as exc:
                response = error_response(exc.status, exc.code, exc.message, exc.headers, **exc.extra)
            except web.HTTPException as exc:  # from aiohttp itself, e.g. a refused WebSocket handshake
                code = {400: "bad_request", 413: "too_large"}.get(exc.status, "http_error")
                response = error_response(exc.status, code, exc.text or exc.reason)
            except Exception:  # a bug: log it, still answer in the contract's shape
                log.exception("unhandled error on %s %s", request.method, request.rel_url)
                response = error_response(500, "internal", "internal error; see the replica's log")
            # The labelled children are looked up once per label set: labels() costs a lock
            # and validation on every request otherwise.
            key = (route, request.method, response.status)
            children = series.get(key)
            if children is None:
                children = series[key] = (metrics.requests.labels(route, request.method, str(response.status)),
                                          metrics.request_seconds.labels(route, request.method))
            children[0].inc()
            children[1].observe(time.perf_counter() - started)
            return response
        finally:
            in_flight.leave()

    return handle
