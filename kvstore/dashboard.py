"""The live dashboard every pod serves on its client port, and the cluster view behind it.

The browser reaches one pod only (``kubectl port-forward svc/kv-client``), so
the pod it reaches assembles the whole picture: its own state plus every
peer's, asked over the peer port (``GET /v1/peer/view``, token-protected)
once a second while someone watches, and pushed to the page as Server-Sent
Events (``GET /ui/live``). Nobody watching costs nothing but a once-a-second
look at this pod's own state, which turns changes into events.

Routes (client port): ``/`` and ``/ui`` redirect to ``/ui/``; ``/ui/`` and its
static files (``kvstore/ui/``); ``/ui/live`` (SSE); ``/v1/cluster`` (the same
view as one JSON document); ``/v1/events`` (this pod's own events). The key
browser in the page uses the existing key API: the dashboard adds no way to
change data.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import re
import time
from importlib import resources
from typing import Any, Iterable

import aiohttp
from aiohttp import web

from kvstore.events import EventLog
from kvstore.discovery import MembershipChange, Peer
from kvstore.identity import parse_ordinal, role_of
from kvstore.metrics import Metrics
from kvstore.replica import Replica
from kvstore.routing import ApiError, Router, parse_int, parse_query

log = logging.getLogger("kvstore.dashboard")

RESTART_FILE = "kvstore-running.json"
PERIOD = 1.0  # seconds between updates pushed to an open dashboard
IDLE_AFTER = 15.0  # stop asking peers this long after the last viewer went away
PEER_TIMEOUT = 0.8  # a peer that does not answer within this is shown as down
SAMPLES = 60  # seconds of req/s and write p99 history per pod
CLUSTER_EVENTS = 300  # events of the other pods kept for the timeline
VIEW_EVENTS = 100  # events in one cluster view
PEER_EVENTS = 100  # events one peer answer carries at most
MAX_EVENTS_LIMIT = 500
KEY_ROUTE = "/v1/kv/{key}"
STATUS_FIELDS = ("epoch", "history", "fork", "primary")  # shown when a pod's status has them

# No inline script or style, nothing from another origin: user data shown by the
# page can never become code, and the page works offline.
UI_HEADERS = {
    "Content-Security-Policy": ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
                                "connect-src 'self'; base-uri 'none'; form-action 'none'; "
                                "frame-ancestors 'none'"),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
UI_FILES = {"index.html": "text/html", "app.js": "text/javascript", "style.css": "text/css",
            "favicon.svg": "image/svg+xml"}


# ------------------------------------------------------------------ restarts
class RestartCounter:
    """Container restarts, as ``kubectl get pods`` counts them, kept in the data dir.

    A file written at start and removed on a clean stop: found at start, it
    means the last run crashed or was killed, and the count goes up; a clean
    stop (SIGTERM, as when the pod is deleted or scaled away) resets it.
    """

    def __init__(self, data_dir: str) -> None:
        self.path = os.path.join(data_dir, RESTART_FILE)
        self.count = 0

    def start(self) -> int:
        """Count this start; returns the restarts so far (0 after a clean stop)."""
        try:
            with open(self.path, encoding="utf-8") as handle:
                previous = json.load(handle).get("restarts", 0)
            self.count = previous + 1 if isinstance(previous, int) and previous >= 0 else 1
        except FileNotFoundError:
            self.count = 0
        except (OSError, ValueError, AttributeError):
            self.count = 1  # unreadable: the last run did not stop cleanly either
        try:
            tmp = self.path + ".tmp"
            with open(tmp, "w", encoding="utf-8") as handle:
                json.dump({"restarts": self.count}, handle)
            os.replace(tmp, self.path)
        except OSError as exc:  # a read-only volume fails elsewhere first; never fatal here
            log.warning("cannot record the restart count in %s: %s", self.path, exc.strerror)
        return self.count

    def clean_stop(self) -> None:
        """This run ends cleanly: the next start is not a restart."""
        try:
            os.remove(self.path)
        except OSError:
            pass


# ------------------------------------------------------------------- metrics
def _labelled(metric: Any, suffix: str) -> Iterable[tuple[dict[str, str], float]]:
    for family in metric.collect():
        for sample in family.samples:
            if sample.name.endswith(suffix):
                yield sample.labels, sample.value


def histogram_quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """Prometheus' histogram_quantile over cumulative (upper bound, count) pairs, +Inf last."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower, below = 0.0, 0.0
    for upper, count in buckets:
        if count >= rank:
            if math.isinf(upper):
                return lower
            if count == below:
                return upper
            return lower + (upper - lower) * (rank - below) / (count - below)
        lower, below = upper, count
    return lower


class Sampler:
    """Once-a-second samples of this pod's key requests per second and write p99, from its metrics."""

    def __init__(self, metrics: Metrics, size: int = SAMPLES) -> None:
        self.metrics = metrics
        self.samples: list[list[Any]] = []
        self.size = size
        self._last: tuple[float, float, dict[float, float]] | None = None

    def _read(self) -> tuple[float, dict[float, float]]:
        requests = sum(value for labels, value in _labelled(self.metrics.requests, "_total")
                       if labels.get("route", "").startswith("/v1/kv"))
        buckets: dict[float, float] = {}
        for labels, value in _labelled(self.metrics.request_seconds, "_bucket"):
            if labels.get("route") == KEY_ROUTE and labels.get("method") in ("PUT", "DELETE"):
                bound = float(labels["le"])
                buckets[bound] = buckets.get(bound, 0.0) + value
        return requests, buckets

    def sample(self) -> list[list[Any]]:
        """Take a sample if the last is a second old; returns [[time, req/s, write p99 ms], ...]."""
        now = time.monotonic()
        if self._last is not None and now - self._last[0] < PERIOD * 0.9:
            return self.samples
        requests, buckets = self._read()
        if self._last is not None and now - self._last[0] < PERIOD * 3:
            then, old_requests, old_buckets = self._last
            delta = [(bound, buckets[bound] - old_buckets.get(bound, 0.0)) for bound in sorted(buckets)]
            p99 = histogram_quantile(0.99, delta)
            self.samples.append([round(time.time(), 3), round((requests - old_requests) / (now - then), 1),
                                 None if p99 is None else round(p99 * 1000, 2)])
            del self.samples[:-self.size]
        else:  # nobody watched for a while: start afresh, not from an average over the gap
            self.samples.clear()
        self._last = (now, requests, buckets)
        return self.samples


def _ordinal(name: str) -> int | None:
    try:
        return parse_ordinal(name)
    except ValueError:
        return None


# --------------------------------------------------------------- cluster view
class PeerState:
    """What the serving pod last heard from one peer."""

    def __init__(self, peer: Peer) -> None:
        self.peer = peer
        self.answer: dict[str, Any] | None = None
        self.last_ok: float | None = None
        self.down_since: float | None = None
        self.error: str | None = None
        self.boot: str | None = None
        self.events_after = 0


# A pod's own state word (in its status when it has one) -> what the dashboard shows.
REPLICA_STATES = {"diverged": "Diverged", "stalled": "Stalled", "recovering": "Recovering",
                  "installing_snapshot": "Recovering"}


def pod_state(ready: bool, reason: str, primary: bool, writable: Any, state: Any = None) -> str:
    """``Ready``, ``Recovering`` (restoring, catching up, snapshot), ``Diverged``, ``Stalled`` or ``NotReady``."""
    if state in REPLICA_STATES:
        return REPLICA_STATES[state]
    if primary and writable is False:
        return "Recovering"
    if ready:
        return "Ready"
    if re.search(r"restor|recover|snapshot|catching up|waiting", reason):
        return "Recovering"
    return "NotReady"


def _row(name: str, ordinal: int, answer: dict[str, Any], client_host: str) -> dict[str, Any]:
    status = answer.get("status", {})
    following = status.get("following") or {}
    role = status.get("role", role_of(ordinal))
    row: dict[str, Any] = {
        "name": name, "ordinal": ordinal, "role": role,
        "address": f"{client_host}:{answer.get('client_port', '')}",
        "up": True, "ready": bool(answer.get("ready")), "reason": answer.get("reason", ""),
        "state": pod_state(bool(answer.get("ready")), answer.get("reason", ""), role == "primary",
                           status.get("writable"), status.get("state")),
        "restarts": answer.get("restarts", 0), "uptime_seconds": status.get("uptime_seconds"),
        "lsn": status.get("lsn"), "history_id": status.get("history_id"), "revision": status.get("revision"),
        "follows": following.get("upstream"), "upstream_connected": following.get("connected"),
        "samples": answer.get("samples", []),
        # voter, learner (a new pod catching up) or leaving (deleted, not yet removed): as the pod sees it
        "member": (status.get("membership") or {}).get("members", {}).get(name),
    }
    for field in STATUS_FIELDS:
        if field in status:
            row[field] = status[field]
    return row


def assemble(me: dict[str, Any], peers: Iterable[PeerState], cluster_events: list[dict[str, Any]],
             now: float | None = None) -> dict[str, Any]:
    """The cluster view: every pod in ordinal order with its lag, and the merged timeline.

    ``me`` is this pod's own answer (the shape of ``/v1/peer/view``) with its
    ``name``, ``ordinal`` and ``host``; ``peers`` what was last heard from the others.
    """
    now = time.monotonic() if now is None else now
    rows = [dict(_row(me["name"], me["ordinal"], me, me["host"]), last_contact_seconds=0.0, serving=True)]
    for state in peers:
        peer = state.peer
        if state.answer is not None and state.down_since is None:
            row = _row(peer.name, peer.ordinal, state.answer, peer.host)
        else:  # never heard, or stopped answering: what we last knew, marked down
            row = _row(peer.name, peer.ordinal, state.answer or {}, peer.host)
            row.update(up=False, ready=False, state="Down", reason=state.error or "not answering",
                       follows=None, upstream_connected=None)
        row["last_contact_seconds"] = None if state.last_ok is None else round(now - state.last_ok, 1)
        row["serving"] = False
        rows.append(row)
    rows.sort(key=lambda r: r["ordinal"])
    primary = next((r for r in rows if r["role"] == "primary" and r["up"]), None)
    known = [r["lsn"] for r in rows if isinstance(r.get("lsn"), int)]
    reference = primary["lsn"] if primary and isinstance(primary.get("lsn"), int) else max(known, default=None)
    for row in rows:
        lsn = row.get("lsn")
        known_now = row["up"] and isinstance(lsn, int) and reference is not None  # a down pod's LSN is stale
        row["lag"] = max(0, reference - lsn) if known_now else None
    timeline = sorted(cluster_events, key=lambda e: (e.get("time", 0), e.get("pod", ""), e.get("seq", 0)))
    return {"served_by": me["name"], "time": round(time.time(), 3), "primary_lsn": reference,
            "leader": leader_of(rows), "pods": rows, "events": timeline[-VIEW_EVENTS:][::-1],
            "rollout": rollout_of(rows)}


def leader_of(rows: list[dict[str, Any]]) -> str:
    """Who leads and why, in words: ``kv-0 leads``, or ``kv-1 is the acting primary since … (failover …)``."""
    primary = next((r for r in rows if r["role"] == "primary" and r["up"]), None)
    if primary is None:
        return "no primary answers"
    about = primary.get("primary") or {}
    if primary["ordinal"] == 0:
        return "kv-0 leads"
    kv0 = next((r for r in rows if r["ordinal"] == 0), None)
    away = "kv-0 away" if kv0 is None or not kv0["up"] else "kv-0 catching up"
    since = about.get("since")
    when = time.strftime(" since %H:%M:%S", time.localtime(since)) if isinstance(since, (int, float)) else ""
    return f"{primary['name']} is the acting primary{when} ({about.get('why', 'elected')}; {away})"


def rollout_of(rows: list[dict[str, Any]]) -> dict[str, list[str]] | None:
    """Revision -> its pods, when the pods run more than one template revision (a rollout in progress)."""
    by_revision: dict[str, list[str]] = {}
    for row in rows:
        if row.get("revision"):
            by_revision.setdefault(row["revision"], []).append(row["name"])
    return by_revision if len(by_revision) > 1 else None


class Dashboard:
    """The dashboard of one pod: static page, live feed, cluster view, events, self-observation."""

    def __init__(self, replica: Replica, event_log: EventLog) -> None:
        self.replica = replica
        self.config = replica.config
        self.events = event_log  # this replica's ring, shared with its replication (server.serve)
        self.restarts = RestartCounter(self.config.data_dir)
        self.sampler = Sampler(replica.metrics)
        self.peers: dict[int, PeerState] = {}
        self.peer_events: list[dict[str, Any]] = []
        self.view: dict[str, Any] | None = None
        self.view_at = 0.0
        self.viewers = 0
        self.last_interest = 0.0
        self._tick = asyncio.Event()  # set (and replaced) whenever a new view is ready
        self._refresh_lock = asyncio.Lock()
        self._watch_task: asyncio.Task[None] | None = None
        self._observe_task: asyncio.Task[None] | None = None
        self._closing = False
        self._observed: dict[str, Any] = {}
        self._files = {name: resources.files("kvstore").joinpath("ui", name).read_bytes() for name in UI_FILES}

    # ---------------------------------------------------------- lifecycle
    def start(self) -> None:
        """Count this start, record it, and begin watching this pod's own state."""
        restarts = self.restarts.start()
        store = self.replica.store
        if restarts:
            self.events.record("restarted", f"{self.config.pod_name} restarted after an unclean stop "
                               f"(restart {restarts}) at lsn {store.lsn}", restarts=restarts, lsn=store.lsn)
        else:
            self.events.record("started", f"{self.config.pod_name} started as {self.replica.role} at lsn "
                               f"{store.lsn}", lsn=store.lsn)
        r = self.replica.replication
        if r is not None:
            r.directory.subscribe(self._membership_changed)
        self._observe_task = asyncio.create_task(self._observe(), name="dashboard-observe")

    def close(self) -> None:
        """End the live feeds now (a stopping pod waits for its open requests)."""
        self._closing = True
        for task in (self._watch_task, self._observe_task):
            if task is not None:
                task.cancel()
        self._publish()

    def stopped_cleanly(self) -> None:
        """The pod stopped on request: its next start is not a restart."""
        self.restarts.clean_stop()

    def _publish(self) -> None:
        tick, self._tick = self._tick, asyncio.Event()
        tick.set()

    # ------------------------------------------------------- own events
    def _membership_changed(self, change: MembershipChange) -> None:
        for peer in change.joined:
            self.events.record("joined", f"{peer.name} joined ({peer.address})", peer=peer.name)
        for peer in change.left:
            self.events.record("left", f"{peer.name} left (no longer in DNS)", peer=peer.name)
        for peer in change.moved:
            self.events.record("moved", f"{peer.name} moved to {peer.address}", peer=peer.name)

    def _own_state(self) -> dict[str, Any]:
        """What events are made of, read from the pod's status (not from replication's internals).

        Recovery, divergence, stalls and snapshots are recorded where they
        happen (the replication package); this adds what only a change of
        state shows.
        """
        replica = self.replica
        ready, reason = replica.readiness()
        status = replica.local_status()
        following = status.get("following") or {}
        upstream = following.get("upstream")
        return {"ready": ready, "reason": re.sub(r"\d+", "N", reason), "why": reason,
                "epoch": status.get("epoch"), "upstream": upstream,
                "cascade": bool(upstream) and _ordinal(str(upstream)) != 0}

    def observe_once(self) -> None:
        """Turn what changed in this pod's state since the last look into events."""
        new, old = self._own_state(), self._observed
        self._observed = new
        if not old:
            return
        me, lsn = self.config.pod_name, self.replica.store.lsn
        if new.get("epoch") is not None and old.get("epoch") is not None and new["epoch"] != old["epoch"]:
            self.events.record("epoch", f"{me} is at epoch {new['epoch']} (was {old['epoch']})", epoch=new["epoch"])
        if new.get("upstream") and new.get("upstream") != old.get("upstream"):
            upstream = new["upstream"]
            cascade = " (cascade)" if new.get("cascade") else ""
            self.events.record("following", f"{me} follows {upstream}{cascade} from lsn {lsn}", upstream=upstream)
        if (new["ready"], new["reason"]) != (old["ready"], old["reason"]):
            if new["reason"].startswith("catching up"):
                self.events.record("catching_up", f"{me} is {new['why']}", lsn=lsn)
            elif new["ready"] != old["ready"]:
                kind = "ready" if new["ready"] else "not_ready"
                self.events.record(kind, f"{me} is {'Ready' if new['ready'] else 'not Ready'}: {new['why']}")

    async def _observe(self) -> None:
        while True:
            try:
                self.observe_once()
            except Exception:  # an event missed is not worth a stopped observer
                log.exception("observing this pod's state failed")
            await asyncio.sleep(PERIOD)

    # ------------------------------------------------------- the watcher
    def own_answer(self, boot: str = "", after: int = 0) -> dict[str, Any]:
        """This pod's part of the cluster view (also what ``/v1/peer/view`` answers)."""
        ready, reason = self.replica.readiness()
        if boot != self.events.boot:
            after = 0
        return {"status": self.replica.local_status(), "ready": ready, "reason": reason,
                "restarts": self.restarts.count, "boot": self.events.boot,
                "client_port": self.config.http_port, "samples": self.sampler.sample(),
                "events": self.events.since(after)[-PEER_EVENTS:]}

    async def _ask(self, state: PeerState) -> None:
        r = self.replica.replication
        assert r is not None
        url = state.peer.peer_url + "/v1/peer/view"
        params = {"boot": state.boot or "", "after": str(state.events_after)}
        try:
            async with r.client.session.get(url, params=params,
                                            timeout=aiohttp.ClientTimeout(total=PEER_TIMEOUT)) as response:
                if response.status != 200:
                    raise ValueError(f"HTTP {response.status}")
                answer = await response.json()
            if not isinstance(answer, dict) or not isinstance(answer.get("status"), dict):
                raise ValueError("not a pod view")
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
            if isinstance(exc, aiohttp.ClientConnectorError):
                reason = f"cannot connect: {exc.os_error.strerror or exc.os_error}"
            elif isinstance(exc, asyncio.TimeoutError):
                reason = f"no answer within {PEER_TIMEOUT}s"
            else:
                reason = str(exc) or type(exc).__name__
            if state.down_since is None:
                state.down_since = time.monotonic()
                self.events.record("down", f"{state.peer.name} does not answer "
                                   f"{self.config.pod_name} ({reason})", peer=state.peer.name)
            state.error = reason
            return
        now = time.monotonic()
        restarted = state.boot is not None and answer.get("boot") != state.boot
        if state.down_since is not None or restarted:
            how = f"as a new process (restarts {answer.get('restarts', 0)})" if restarted else "again"
            self.events.record("up", f"{state.peer.name} answers {self.config.pod_name} {how}",
                               peer=state.peer.name, restarts=answer.get("restarts", 0))
        if answer.get("boot") != state.boot:
            state.events_after = 0
        state.boot, state.answer, state.last_ok, state.down_since, state.error = (
            answer.get("boot"), answer, now, None, None)
        fresh = [e for e in answer.get("events", []) if isinstance(e, dict) and e.get("seq", 0) > state.events_after]
        if fresh:
            state.events_after = max(e["seq"] for e in fresh)
            self.peer_events.extend(fresh)
            del self.peer_events[:-CLUSTER_EVENTS]

    async def refresh(self) -> dict[str, Any]:
        """Ask every peer for its view and assemble the cluster view."""
        async with self._refresh_lock:
            r = self.replica.replication
            if r is not None:
                current = dict(r.directory.peers)
                for ordinal in list(self.peers):
                    if ordinal not in current:
                        del self.peers[ordinal]  # left DNS: scaled away
                for ordinal, peer in current.items():
                    state = self.peers.get(ordinal)
                    if state is None:
                        self.peers[ordinal] = PeerState(peer)
                    else:  # SRV weights change as pods come and go: same pod, same events
                        state.peer = peer
                await asyncio.gather(*(self._ask(s) for s in self.peers.values()))
            me = {**self.own_answer(), "name": self.config.pod_name, "ordinal": self.config.ordinal,
                  "host": self.config.bind_address}
            self.view = assemble(me, list(self.peers.values()),
                                 [*self.peer_events, *self.events.recent(CLUSTER_EVENTS)])
            self.view_at = time.monotonic()
        self._publish()
        return self.view

    def _interest(self) -> None:
        self.last_interest = time.monotonic()
        if self._watch_task is None and not self._closing:
            self._watch_task = asyncio.create_task(self._watch(), name="dashboard-watch")

    async def _watch(self) -> None:
        try:
            while self.viewers or time.monotonic() - self.last_interest < IDLE_AFTER:
                started = time.monotonic()
                try:
                    await self.refresh()
                except Exception:
                    log.exception("assembling the cluster view failed")
                await asyncio.sleep(max(0.05, PERIOD - (time.monotonic() - started)))
        finally:
            self._watch_task = None

    async def current_view(self) -> dict[str, Any]:
        """A cluster view at most a period old."""
        self._interest()
        if self.view is None or time.monotonic() - self.view_at > PERIOD * 1.5:
            return await self.refresh()
        return self.view

    # ---------------------------------------------------------- handlers
    async def redirect(self, request: web.BaseRequest) -> web.Response:
        """``/`` and ``/ui``: to the dashboard."""
        return web.Response(status=302, headers={"Location": "/ui/"})

    async def static(self, request: web.BaseRequest) -> web.Response:
        """The page and its files, with a policy that forbids inline script."""
        parse_query(request, ())
        name = request.path[len("/ui/"):] or "index.html"
        body = self._files.get(name)
        if body is None:
            raise ApiError(404, "not_found", "no such dashboard file; open /ui/")
        return web.Response(body=body, headers={**UI_HEADERS, "Content-Type": f"{UI_FILES[name]}; charset=utf-8"})

    async def live(self, request: web.BaseRequest) -> web.StreamResponse:
        """``/ui/live``: the cluster view as Server-Sent Events, once a second."""
        parse_query(request, ())
        response = web.StreamResponse(headers={**UI_HEADERS, "Content-Type": "text/event-stream",
                                               "X-Accel-Buffering": "no"})
        await response.prepare(request)
        self.viewers += 1
        try:
            self._interest()
            await response.write(b"retry: 1000\n\n")
            sent_at = 0.0
            while not self._closing:
                if self.view is not None and self.view_at > sent_at:
                    sent_at = self.view_at
                    await response.write(b"data: " + json.dumps(self.view, separators=(",", ":")).encode()
                                         + b"\n\n")
                try:
                    await asyncio.wait_for(self._tick.wait(), PERIOD * 3)
                except asyncio.TimeoutError:
                    await response.write(b": keepalive\n\n")
                self._interest()
        except (ConnectionError, RuntimeError):  # the browser went away
            pass
        finally:
            self.viewers -= 1
        return response

    async def cluster(self, request: web.BaseRequest) -> web.Response:
        """``GET /v1/cluster``: every pod as this pod sees it, and the merged timeline."""
        parse_query(request, ())
        return web.json_response(await self.current_view())

    async def events_list(self, request: web.BaseRequest) -> web.Response:
        """``GET /v1/events?after=N&limit=M``: this pod's own events, oldest first."""
        params = parse_query(request, ("after", "limit"))
        after = parse_int(params, "after", 0, 2**63 - 1, 0)
        limit = parse_int(params, "limit", 1, MAX_EVENTS_LIMIT, 100)
        found = self.events.since(after, limit + 1)
        page = found[:limit]
        return web.json_response({"pod": self.config.pod_name, "boot": self.events.boot,
                                  "last_seq": self.events.last_seq, "events": page,
                                  "more": len(found) > limit,
                                  "next_after": page[-1]["seq"] if page else after})

    async def peer_view(self, request: web.BaseRequest) -> web.Response:
        """``GET /v1/peer/view?boot=B&after=N`` (peer port): this pod's part of a cluster view."""
        params = parse_query(request, ("boot", "after"))
        after = parse_int(params, "after", 0, 2**63 - 1, 0)
        return web.json_response(self.own_answer(params.get("boot", ""), after))

    def add_client_routes(self, router: Router) -> None:
        """The dashboard's routes on the client port."""
        router.add("GET", "/", self.redirect)
        router.add("GET", "/ui", self.redirect)
        router.add("GET", "/ui/live", self.live)
        router.add_prefix("GET", "/ui/", self.static)
        router.add("GET", "/v1/cluster", self.cluster)
        router.add("GET", "/v1/events", self.events_list)

    def add_peer_routes(self, router: Router) -> None:
        """The route other pods' dashboards ask on the peer port."""
        router.add("GET", "/v1/peer/view", self.peer_view)
