"""HTTP plumbing both ports share, on aiohttp's low-level server.

Routing, strict parsing of the query string and path components, JSON errors
for everything (no HTML page, plain-text parser message or traceback reaches
a client), request metrics and the in-flight count a stopping replica waits
on.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from typing import Any, Awaitable, Callable, Mapping
from urllib.parse import unquote_to_bytes

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError, LineTooLong

log = logging.getLogger("kvstore.api")

# The HTTP parser's limits. A header line may be as long as aiohttp's default
# allows; the request line must hold the longest request the API accepts (a
# listing whose prefix and start_after are both the largest key,
# percent-encoded at three bytes a byte). The two limits differ, which is how
# a refused line is known to be the request line or a header.
MAX_HEADER_LINE = 8190
MIN_REQUEST_LINE = 16384

Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]

# The error codes of aiohttp's own refusals (an HTTPException a handler let out), by status.
AIOHTTP_CODES = {400: "bad_request", 413: "too_large"}
AIOHTTP_OTHER = "http_error"


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


# -- request parsing: the query string and path components, strictly --------------------

_BAD_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")


def decode_component(raw: str, what: str) -> str:
    """Strictly percent-decode ``raw`` to UTF-8 text; ApiError 400 if malformed."""
    if _BAD_PERCENT.search(raw):
        raise ApiError(400, "bad_encoding", f"{what} has invalid percent-encoding: "
                       "every % must be followed by two hex digits")
    try:
        return unquote_to_bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError(400, "bad_encoding", f"{what} is not valid UTF-8 once percent-decoded") from None


def parse_query(request: web.BaseRequest, allowed: tuple[str, ...]) -> dict[str, str]:
    """Decode the query string; unknown or repeated parameters are a 400."""
    raw = request.rel_url.raw_query_string
    params: dict[str, str] = {}
    if not raw:
        return params
    for part in raw.split("&"):
        if not part:
            continue
        name_raw, _, value_raw = part.partition("=")
        name = decode_component(name_raw.replace("+", " "), "a query parameter name")
        value = decode_component(value_raw.replace("+", " "), f"query parameter {name!r}")
        if name not in allowed:
            accepted = ", ".join(allowed) or "none"
            raise ApiError(400, "unknown_parameter",
                           f"unknown query parameter {name!r}; this call accepts: {accepted}")
        if name in params:
            raise ApiError(400, "bad_parameter", f"query parameter {name!r} given twice")
        params[name] = value
    return params


def parse_int(params: Mapping[str, str], name: str, low: int, high: int, default: int) -> int:
    """An integer parameter within bounds, else ApiError 400 naming it."""
    text = params.get(name)
    if text is None:
        return default
    if not text.isascii() or not text.isdigit() or len(text) > 19:
        raise ApiError(400, "bad_parameter", f"{name} must be an integer from {low} to {high}")
    value = int(text)
    if not low <= value <= high:
        raise ApiError(400, "bad_parameter", f"{name} must be an integer from {low} to {high}")
    return value


def request_line_limit(max_key_bytes: int) -> int:
    """The longest request line a replica with this key limit accepts."""
    return max(MIN_REQUEST_LINE, 2 * 3 * max_key_bytes + 1024)


def one_line(text: str, limit: int = 200) -> str:
    """The parser's multi-line message (it draws a caret under the fault) as one short line."""
    return " ".join(text.split())[:limit]


def refusal(status: int, exc: BaseException | None, line_limit: int) -> web.Response:
    """The JSON answer to a request aiohttp refused before any handler ran.

    ``status`` and ``exc`` are what aiohttp's protocol passes to its error
    hook: a parser error (400) or, for a handler that raised, 500/504.
    """
    if isinstance(exc, LineTooLong):
        limit = exc.args[1] if len(exc.args) > 1 else None
        if limit == line_limit:
            return error_response(414, "request_line_too_long",
                                  f"the request line is longer than {line_limit} bytes; shorten the key or query")
        return error_response(431, "header_too_large",
                              f"a request header is longer than {MAX_HEADER_LINE} bytes")
    if isinstance(exc, HttpProcessingError):
        detail = one_line(str(exc.message))
        return error_response(exc.code if 400 <= exc.code < 500 else 400, "bad_request",
                              f"malformed HTTP request: {detail}")
    if status == 504:
        return error_response(504, "timeout", "the request timed out; retry")
    return error_response(500, "internal", "internal error; see the replica's log")


class _JsonErrorProtocol(web.RequestHandler):
    """aiohttp's connection handler, answering its own errors in the API's JSON shape."""

    def handle_error(self, request: web.BaseRequest, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        """Called by aiohttp for parser errors and for exceptions a handler let out."""
        if request.writer.output_size > 0:  # part of an answer is out: only closing is left
            raise ConnectionError("an answer was already started; cannot send an error")
        if isinstance(exc, HttpProcessingError):  # the client's mistake: one line, no traceback
            log.info("refused a malformed request from %s: %s", request.remote, one_line(str(exc.message)))
        else:
            log.error("error handling a request from %s", request.remote, exc_info=exc)
        response = refusal(status, exc, self.max_line_size)
        response.force_close()  # the parser's state is unknown: never reuse the connection
        return response


class JsonErrorServer(web.Server):
    """aiohttp's low-level server whose every answer, parser errors included, is the API's JSON.

    aiohttp answers a request its parser refuses (a request line or header
    over the limit, a malformed request) with plain text, before any handler
    runs; its connection handler's ``handle_error`` hook is the one place to
    change that, so this server makes its connections with that hook replaced.
    """

    def __init__(self, handler: "Handler", *, max_key_bytes: int, **kwargs: Any) -> None:
        super().__init__(handler, max_line_size=request_line_limit(max_key_bytes),
                         max_field_size=MAX_HEADER_LINE, **kwargs)

    def __call__(self) -> web.RequestHandler:
        # web.Server.__call__ builds aiohttp's own RequestHandler; the same, with our hook.
        return _JsonErrorProtocol(self, loop=self._loop, **self._kwargs)


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


def _body_cut_short(request: web.BaseRequest) -> web.Response:
    """The answer (if the client still reads one) to a request whose body the client never finished."""
    log.info("%s %s: the client closed the connection before its body was complete; nothing was done",
             request.method, request.rel_url.path)
    response = error_response(400, "bad_body", "the connection closed before the body was complete")
    response.force_close()
    return response


def _internal(request: web.BaseRequest) -> web.Response:
    """A bug: logged with its traceback, answered in the contract's shape (called in an except block)."""
    log.exception("unhandled error on %s %s", request.method, request.rel_url)
    return error_response(500, "internal", "internal error; see the replica's log")


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
                code = AIOHTTP_CODES.get(exc.status, AIOHTTP_OTHER)
                response = error_response(exc.status, code, exc.text or exc.reason)
            except web.RequestPayloadError as exc:  # a body the parser refused while the handler read it
                response = error_response(400, "bad_body", f"the request body is malformed: {one_line(str(exc))}")
                response.force_close()  # the rest of the body cannot be told from a next request
                # Nothing more of it will be read: without this aiohttp drains the broken body
                # after the answer and logs the same error again, with a traceback.
                request.content.feed_eof()
            except ConnectionResetError:
                # The client hung up before its body was complete, or else (not the request's own
                # body) a bug.
                response = _body_cut_short(request) if request.content.exception() else _internal(request)
            except Exception:  # a bug: log it, still answer in the contract's shape
                response = _internal(request)
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
