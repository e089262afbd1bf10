"""The controller's control API: HTTP over the Unix socket ``control.sock`` in the cluster dir.

A Unix socket rather than a TCP port: no port to collide with another
cluster, and file permissions (0600) decide who may scale or kill pods.

    GET  /v1/cluster             the state (same as cluster.json)
    POST /v1/scale {"replicas"}  set the replica count
    POST /v1/kill  {"pod"}       SIGKILL one pod's container
    POST /v1/down                stop every pod in reverse order, then exit

The pod template and its rollout (see :mod:`kvstore.local.rollout`); each
answers ``changed``, the update ``revision`` and where the ``rollout`` stands:

    POST /v1/template {"set": {NAME: VALUE}, "remove": [NAME]}   ``set env``
    POST /v1/rollout {"action": "restart"}                        a new restartedAt
    POST /v1/rollout {"action": "undo", "revision": N | null}     an earlier template
    POST /v1/rollout {"action": "partition", "partition": N}      only ordinals >= N are updated

Faults, for ``kvstore chaos``:

    POST /v1/hold {"pod"}        SIGKILL a pod and keep it down until released
                                 (answers once its container is gone)
    POST /v1/release {"pod"}     let a held pod start again
    POST /v1/stop-pods           delete every pod in reverse order, keep the replica
                                 count, create none (answers once all are gone)
    POST /v1/start-pods          create them again, in order
    POST /v1/dns {"drop", "hide"}  DNS drops every query (``drop``: true) and/or leaves
                                 the pods named in ``hide`` out of its answers; ``{}`` heals
    POST /v1/zombie {"action"}   a zombie of kv-0 (process runtime): ``start`` copies
                                 kv-0's volume while kv-0 is SIGSTOPped and runs a second
                                 kv-0 on the copy, at an address of its own; ``takeover``:
                                 DNS lists the zombie's address for kv-0; ``giveback``:
                                 the real kv-0's again; ``stop``: SIGKILL, copy removed,
                                 DNS given back. Each answers the zombie (address, url,
                                 pid); 409 when there is none, or one already runs
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from kvstore.local import rollout
from kvstore.local.state import SOCKET_FILE, ClusterError
from kvstore.local.statefulset import Pod, StatefulSet
from kvstore.local.zombie import Conflict

ZOMBIE_ACTIONS = ("start", "takeover", "giveback", "stop")
ROLLOUT_ACTIONS = ("restart", "undo", "partition")


class BadRequest(ClusterError):
    """The controller refused the request as malformed or out of range (it answered 400)."""


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


class ControlServer:
    """Serves the control API of one controller."""

    def __init__(self, statefulset: StatefulSet, directory: Path, stop: asyncio.Event) -> None:
        self.statefulset = statefulset
        self.path = directory / SOCKET_FILE
        self.stop_requested = stop
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        """Listen on ``control.sock`` (replacing a stale one left by a dead controller)."""
        app = web.Application()
        app.router.add_get("/v1/cluster", self._cluster)
        app.router.add_post("/v1/scale", self._scale)
        app.router.add_post("/v1/kill", self._kill)
        app.router.add_post("/v1/down", self._down)
        app.router.add_post("/v1/hold", self._hold)
        app.router.add_post("/v1/release", self._release)
        app.router.add_post("/v1/stop-pods", self._stop_pods)
        app.router.add_post("/v1/start-pods", self._start_pods)
        app.router.add_post("/v1/dns", self._dns)
        app.router.add_post("/v1/zombie", self._zombie)
        app.router.add_post("/v1/template", self._template)
        app.router.add_post("/v1/rollout", self._rollout)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        if self.path.exists():
            self.path.unlink()  # we hold the controller lock, so this socket is stale
        await web.UnixSite(self._runner, str(self.path)).start()
        os.chmod(self.path, 0o600)

    async def stop(self) -> None:
        """Stop serving; safe to call twice."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _json(self, request: web.Request) -> dict[str, Any]:
        try:
            body = await request.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise web.HTTPBadRequest(text='{"error": "expected a JSON object"}',
                                     content_type="application/json")
        return body

    async def _cluster(self, request: web.Request) -> web.Response:
        return web.json_response(self.statefulset.to_dict())

    async def _scale(self, request: web.Request) -> web.Response:
        replicas = (await self._json(request)).get("replicas")
        if not isinstance(replicas, int) or isinstance(replicas, bool):
            return _error(400, "replicas must be an integer")
        if self.statefulset.stopping:
            return _error(409, "the cluster is stopping")
        try:
            previous = self.statefulset.scale(replicas)
        except ValueError as exc:
            return _error(400, str(exc))
        return web.json_response({"replicas": replicas, "previous": previous})

    async def _pod(self, request: web.Request) -> Pod:
        name = (await self._json(request)).get("pod")
        pod = self.statefulset.pod(name) if isinstance(name, str) else None
        if pod is None:
            names = ", ".join(p.name for _, p in sorted(self.statefulset.pods.items())) or "none"
            raise web.HTTPNotFound(text=json.dumps({"error": f"pod {name} not found (pods: {names})"}),
                                   content_type="application/json")
        return pod

    async def _kill(self, request: web.Request) -> web.Response:
        pod = await self._pod(request)
        if not pod.kill():
            return _error(409, f"{pod.name} has no running container ({pod.status})")
        return web.json_response({"killed": pod.name})

    async def _down(self, request: web.Request) -> web.Response:
        self.stop_requested.set()
        return web.json_response({"stopping": True}, status=202)

    async def _hold(self, request: web.Request) -> web.Response:
        pod = await self._pod(request)
        if self.statefulset.stopping or pod.deleting:
            return _error(409, f"{pod.name} is being deleted")
        pid = await pod.hold()
        return web.json_response({"held": pod.name, "pid": pid})

    async def _release(self, request: web.Request) -> web.Response:
        pod = await self._pod(request)
        if not pod.release():
            return _error(409, f"{pod.name} is not held")
        return web.json_response({"released": pod.name})

    async def _stop_pods(self, request: web.Request) -> web.Response:
        if self.statefulset.stopping:
            return _error(409, "the cluster is stopping")
        return web.json_response({"stopped": await self.statefulset.stop_pods()})

    async def _start_pods(self, request: web.Request) -> web.Response:
        if not self.statefulset.start_pods():
            return _error(409, "the pods were not stopped")
        return web.json_response({"starting": self.statefulset.replicas})

    async def _dns(self, request: web.Request) -> web.Response:
        body = await self._json(request)
        drop, hide = body.get("drop", False), body.get("hide", [])
        unknown = sorted(set(body) - {"drop", "hide"})
        if unknown:
            return _error(400, f"unknown fields: {', '.join(unknown)} (expected drop, hide)")
        if not isinstance(drop, bool):
            return _error(400, "drop must be true or false")
        if not isinstance(hide, list) or not all(isinstance(name, str) for name in hide):
            return _error(400, "hide must be a list of pod names")
        return web.json_response({"dns_fault": self.statefulset.set_dns_fault(drop, hide)})

    async def _zombie(self, request: web.Request) -> web.Response:
        body = await self._json(request)
        unknown = sorted(set(body) - {"action"})
        if unknown:
            return _error(400, f"unknown fields: {', '.join(unknown)} (expected action)")
        action = body.get("action")
        if not isinstance(action, str) or action not in ZOMBIE_ACTIONS:
            return _error(400, f"action must be one of {', '.join(ZOMBIE_ACTIONS)}, not {json.dumps(action)[:60]}")
        statefulset = self.statefulset
        try:
            if action == "start":
                zombie = (await statefulset.zombies.start()).to_dict()
            elif action == "takeover":
                zombie = statefulset.zombies.takeover().to_dict()
            elif action == "giveback":
                zombie = statefulset.zombies.giveback().to_dict()
            else:
                stopped = await statefulset.zombies.stop()
                if stopped is None:
                    return _error(409, "no zombie is running")
                zombie = stopped
        except Conflict as exc:
            return _error(409, str(exc))
        except OSError as exc:  # the copy or the process could not be made: the controller's fault
            return _error(500, f"cannot {action} the zombie: {exc}")
        return web.json_response({"action": action, "zombie": zombie})


    async def _template(self, request: web.Request) -> web.Response:
        body = await self._json(request)
        changes, remove = body.get("set", {}), body.get("remove", [])
        unknown = sorted(set(body) - {"set", "remove"})
        if unknown:
            return _error(400, f"unknown fields: {', '.join(unknown)} (expected set, remove)")
        if not isinstance(changes, dict) or not all(isinstance(v, str) for v in changes.values()):
            return _error(400, "set must map names to string values")
        if not isinstance(remove, list) or not all(isinstance(n, str) for n in remove):
            return _error(400, "remove must be a list of names")
        try:
            rollout.parse_env_changes([f"{k}={v}" for k, v in changes.items()] + [f"{n}-" for n in remove])
        except ValueError as exc:
            return _error(400, str(exc))
        if self.statefulset.stopping:
            return _error(409, "the cluster is stopping")
        return web.json_response(self.statefulset.change_template(changes, remove))

    async def _rollout(self, request: web.Request) -> web.Response:
        body = await self._json(request)
        action = body.get("action")
        if not isinstance(action, str) or action not in ROLLOUT_ACTIONS:
            return _error(400, f"action must be one of {', '.join(ROLLOUT_ACTIONS)}, not {json.dumps(action)[:60]}")
        number = body.get("revision" if action == "undo" else "partition")
        if (number is not None or action == "partition") and (not isinstance(number, int) or isinstance(number, bool)):
            return _error(400, f"{'revision' if action == 'undo' else 'partition'} must be an integer")
        if self.statefulset.stopping:
            return _error(409, "the cluster is stopping")
        try:
            if action == "restart":
                answer = self.statefulset.change_template({}, [], restart=True)
            elif action == "undo":
                answer = self.statefulset.undo(number)
            else:
                answer = {"rollout": self.statefulset.set_partition(number)}
        except ValueError as exc:
            return _error(400, str(exc))
        return web.json_response(answer)


async def call(directory: Path, method: str, path: str, body: dict[str, Any] | None = None,
               timeout: float = 10.0) -> dict[str, Any]:
    """Call the control API of the controller in ``directory``.

    Returns the JSON answer of a 2xx; raises ClusterError with the
    controller's message otherwise, or when it does not answer.
    """
    sock = directory / SOCKET_FILE
    connector = aiohttp.UnixConnector(path=str(sock))
    try:
        async with aiohttp.ClientSession(connector=connector,
                                         timeout=aiohttp.ClientTimeout(total=timeout)) as session:
            async with session.request(method, f"http://controller{path}", json=body) as response:
                data = await response.json(content_type=None)
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError) as exc:
        raise ClusterError(f"the controller in {directory} does not answer on {sock}: "
                           f"{exc or type(exc).__name__}") from None
    if not 200 <= response.status < 300:
        message = data.get("error") if isinstance(data, dict) else None
        kind = BadRequest if response.status == 400 else ClusterError
        raise kind(message or f"controller answered HTTP {response.status}")
    return data


def call_blocking(directory: Path, method: str, path: str, body: dict[str, Any] | None = None,
                  timeout: float = 10.0) -> dict[str, Any]:
    """:func:`call` from synchronous code, even inside a running event loop (a cleanup in ``finally``)."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, call(directory, method, path, body, timeout)).result()
