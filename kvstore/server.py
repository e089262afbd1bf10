"""``kvstore serve``: run one replica until SIGTERM/SIGINT.

Start-up problems (data dir, LevelDB lock, a port in use) end the process with
one line and exit status 2; SIGTERM stops accepting, lets in-flight requests
finish, closes LevelDB and exits 0.
"""

from __future__ import annotations

import asyncio
import errno
import hmac
import logging
import signal
import sys
from typing import Any, Callable

from aiohttp import web

from kvstore import api, routing
from kvstore.backup import Backups
from kvstore.config import Config, ConfigError
from kvstore.dashboard import Dashboard
from kvstore.discovery import PeerDirectory
from kvstore.events import EventLog
from kvstore.replication import Replication
from kvstore.replication.handover import SwitchoverRefused
from kvstore.replication.versions import HEADER, REFUSAL
from kvstore.metrics import Metrics
from kvstore.replica import Replica
from kvstore.storage import Store, StorageError, commit_hook
from kvstore.watch import Watches

log = logging.getLogger("kvstore")

SHUTDOWN_GRACE = 5.0


class StartupError(Exception):
    """The replica cannot start; the message is the one line to print."""


def make_peer_handler(replica: Replica, token: str, in_flight: routing.InFlight | None = None,
                      add_routes: Callable[[routing.Router], None] | None = None) -> routing.Handler:
    """The peer port: replication, snapshots, forwarded client calls.

    Every call needs the cluster token.
    """
    expected = f"Bearer {token}".encode()

    def require_token(request: web.BaseRequest) -> web.Response | None:
        # surrogateescape: aiohttp keeps a non-UTF-8 header's bytes that way; it is a 401, not a 500.
        given = request.headers.get("Authorization", "").encode("utf-8", "surrogateescape")
        # Constant-time so the token cannot be guessed byte by byte.
        if token and hmac.compare_digest(given, expected):
            return check_version(request)
        replica.metrics.peer_auth_failures.inc()
        log.warning("peer call refused: missing or wrong token from %s for %s",
                    request.remote, request.rel_url.path)
        return routing.error_response(401, "unauthorized",
                                      "the peer port needs the cluster token (Authorization: Bearer)")

    versions = replica.replication.client.versions if replica.replication is not None else None

    def check_version(request: web.BaseRequest) -> web.Response | None:
        """Refuse a peer that speaks no peer protocol version this pod speaks (see replication/versions.py)."""
        if versions is None:
            return None
        try:
            refused = versions.check_call(request.headers, request.remote)
        except ValueError as exc:
            return routing.error_response(400, "bad_request", str(exc))
        if refused is None:
            return None
        return routing.error_response(409, REFUSAL, refused, headers={"X-Kv-Error": REFUSAL, HEADER: versions.text})

    async def peer_status(request: web.BaseRequest) -> web.Response:
        return web.json_response(replica.local_status())

    async def recover(request: web.BaseRequest) -> web.Response:
        """POST /v1/peer/recover {"action": "fresh" | "from" | "resync", "peer": "kv-2"}: kvstore recover."""
        try:
            body = await request.json()
            action, peer = body["action"], body.get("peer")
            if not isinstance(action, str) or (peer is not None and not isinstance(peer, str)):
                raise TypeError
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError):  # nested past the parser
            return routing.error_response(400, "bad_request",
                                          'expected JSON {"action": "fresh" | "from" | "resync", "peer": "kv-N"}')
        assert replica.replication is not None
        try:
            result = replica.replication.recover(action, peer)
        except ValueError as exc:
            return routing.error_response(409, "not_applicable", str(exc))
        log.warning("kvstore recover %s%s from %s: %s", action, f" {peer}" if peer else "", request.remote, result)
        return web.json_response({"result": result})

    router = routing.Router()
    if replica.replication is not None:
        replica.replication.add_routes(router)
        router.add("GET", "/v1/peer/status", peer_status)
        router.add("POST", "/v1/peer/recover", recover)
    api.add_key_routes(router, api.ClientApi(replica))
    if add_routes is not None:
        add_routes(router)
    return routing.make_handler(router, replica.metrics, in_flight, guard=require_token)


async def _start_site(runner: web.BaseRunner, host: str, port: int, what: str) -> None:
    site = web.TCPSite(runner, host, port, reuse_address=True)
    try:
        await site.start()
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise StartupError(f"{what} port {host}:{port} is already in use") from None
        if exc.errno == errno.EADDRNOTAVAIL:
            raise StartupError(f"{what} address {host} is not an address of this machine") from None
        raise StartupError(f"cannot listen on {host}:{port} ({what}): {exc.strerror}") from None


async def _first_of(*waits: Any) -> None:
    """Wait until one of the coroutines ``waits`` is done; cancel the others."""
    tasks = [asyncio.ensure_future(w) for w in waits]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()


async def serve(config: Config) -> int:
    """Run one replica until a stop signal (0) or until its store cannot go on (1); StartupError on a bad start."""
    exit_status = 0
    metrics = Metrics()
    try:
        token = config.token()
    except ConfigError as exc:
        raise StartupError(str(exc)) from None
    try:
        store = Store.open(config.data_dir, fsync=config.fsync,
                           log_retention=config.log_retention, on_commit=metrics.observe_commit,
                           commit_hook=commit_hook(config.test_hold_commit))
    except StorageError as exc:
        raise StartupError(str(exc)) from None
    await store.start()
    # Always on, even for KV_REPLICAS=1: a StatefulSet may be scaled up later.
    try:
        directory = PeerDirectory(config)
    except ValueError as exc:  # no resolver to be had (KV_DNS_SERVER unset, no /etc/resolv.conf)
        await store.close()
        raise StartupError(str(exc)) from None
    event_log = EventLog(config.pod_name)  # this replica's recent events: replication records, the dashboard serves
    replication = Replication(config, store, metrics, directory, token, event_log)
    replica = Replica(config, store, metrics, replication)
    dashboard = Dashboard(replica, event_log)
    watches = Watches(replica)
    backups = Backups(replica)

    def client_routes(router: routing.Router) -> None:
        dashboard.add_client_routes(router)
        watches.add_client_routes(router)
        backups.add_client_routes(router)
    in_flight = routing.InFlight()
    # aiohttp's low-level server: see routing.Router for why not an Application.
    # Both answer even what aiohttp's HTTP parser refuses in JSON (see routing.JsonErrorServer).
    client_runner = web.ServerRunner(
        routing.JsonErrorServer(api.create_handler(replica, in_flight, client_routes), max_key_bytes=config.max_key_bytes,
                                access_log=None),
        shutdown_timeout=SHUTDOWN_GRACE, handle_signals=False)
    peer_runner = web.ServerRunner(
        routing.JsonErrorServer(make_peer_handler(replica, token, in_flight, dashboard.add_peer_routes), max_key_bytes=config.max_key_bytes,
                                access_log=None),
        shutdown_timeout=SHUTDOWN_GRACE, handle_signals=False)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    started = False
    try:
        await client_runner.setup()
        await peer_runner.setup()
        await _start_site(client_runner, config.bind_address, config.http_port, "client")
        await _start_site(peer_runner, config.bind_address, config.peer_port, "peer")
        started = True
        dashboard.start()
        # Only now: peers may call back as soon as they learn of us.
        await directory.start()
        await replication.start()
        log.info("%s serving as %s at lsn %d: client %s:%d, peer %s:%d, data %s%s",
                 config.pod_name, replica.role, store.lsn, config.bind_address, config.http_port,
                 config.bind_address, config.peer_port, config.data_dir,
                 "" if config.fsync else " (fsync OFF: benchmark mode, writes are not durable)")
        if not token:
            log.warning("no cluster token set (KV_CLUSTER_TOKEN / KV_CLUSTER_TOKEN_FILE): "
                        "the peer port refuses every call")
        await _first_of(stop.wait(), store.fatal.wait())
        if store.fatal.is_set():  # its database could not be reopened: a new process opens it again
            exit_status = 1
        if not store.fatal.is_set() and config.switchover_on_stop and replication.writable:
            # Hand the role over before the log streams close: writes pause instead of failing.
            try:
                log.warning("stopping: %s", await replication.switchover(None, "the primary is stopping"))
            except SwitchoverRefused as exc:
                log.warning("stopping without a switchover: %s", exc)
        log.info("%s stopping: finishing %d in-flight request(s)", config.pod_name, in_flight.count)
        # Stop listening but keep open connections reading: aiohttp's own
        # shutdown stops reading at once, which would cut a half-sent body.
        replication.server.close()  # open log streams end now
        dashboard.close()  # and so do open dashboards' live feeds
        watches.close()  # and watches, each with a line that says to watch again
        for site in [*client_runner.sites, *peer_runner.sites]:
            await site.stop()
        if not await in_flight.wait_idle(SHUTDOWN_GRACE):
            log.warning("%d request(s) still in flight after %.0fs; closing", in_flight.count, SHUTDOWN_GRACE)
    finally:
        replication.server.close()
        dashboard.close()
        await watches.stop()
        await directory.stop()
        await replication.stop()
        await client_runner.cleanup()
        await peer_runner.cleanup()
        await store.close()
        if started and exit_status:
            log.critical("%s stopped at lsn %d: %s", config.pod_name, store.lsn, store.failed)
        elif started:  # a failed start prints its one line and nothing else
            if stop.is_set():
                dashboard.stopped_cleanly()
            log.info("%s stopped cleanly at lsn %d", config.pod_name, store.lsn)
    return exit_status


def run(config: Config) -> int:
    """Entry point of ``kvstore serve``: exit status 0, 1 when its database could not be reopened (a
    restart opens it again), or 2 with one line on a bad start."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format=f"%(asctime)s {config.pod_name} %(levelname)s %(name)s: %(message)s")
    try:
        # uvloop's event loop (libuv, in C): measured +15% replicated writes at 32
        # clients and -20% single-client write latency over asyncio's own loop.
        import uvloop
        run_loop: Any = uvloop.run
    except ImportError:  # not built for this platform: asyncio's loop works too
        run_loop = asyncio.run
    try:
        return run_loop(serve(config))
    except StartupError as exc:
        print(f"kvstore serve: {exc}", file=sys.stderr)
        return 2
