"""The StatefulSet controller of the local cluster: pods, ordering, restarts and DNS.

It reproduces what Kubernetes does for a StatefulSet with a headless Service:

- Pods are ``<set>-0 … <set>-N-1``, each on its own loopback address
  (``base + ordinal``) with the ports the manifests use, and its own data
  dir ``data-<set>-N`` (the PVC), kept across restarts and scale-down.
- OrderedReady (default): pod N+1 is created only when pods 0…N are Running
  and Ready; scale-down removes the highest ordinal first, one at a time, and
  only while the others are healthy. Parallel: all at once.
- A pod whose container exits is restarted in place, same name and data dir,
  with exponential back-off (CrashLoopBackOff), like the kubelet.
- A change of the pod template (:mod:`kvstore.local.rollout`) replaces the
  pods under the update strategy: RollingUpdate, highest ordinal first, each
  deleted and recreated on its volume once the one before is Ready, down to
  the partition; OnDelete, a pod takes the new template when it is deleted
  (``cluster kill``).
- The headless Service publishes not-ready addresses: a pod is in DNS from
  its creation until it is deleted, Ready or not, restarting or not.
- Stop (``down``, Ctrl-C, SIGTERM) deletes pods in reverse ordinal order,
  each with SIGTERM and a grace period, then SIGKILL.

For fault injection (``kvstore chaos``) the controller can also hold a pod
down (its container SIGKILLed and not restarted until released, like a pod
whose node is gone: it stays in DNS), stop every pod and start them again
(a full stop, like scaling to 0 and back: the pods leave DNS), break its
DNS server (see :mod:`kvstore.local.dns`), and run a *zombie* of kv-0: a
second ``kvstore serve`` with kv-0's identity and environment, on a copy of
its volume and an address of its own, like the old process of a
force-deleted pod that still runs while its replacement starts. DNS can list
the zombie's address for kv-0 (it took the name over) and the real one again
(see :mod:`kvstore.local.zombie`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import aiohttp

from kvstore.aio import cancel_and_wait
from kvstore.config import Config
from kvstore.local.dns import DnsServer, Endpoint, HeadlessService
from kvstore.local.rollout import ON_DELETE, ROLLING_UPDATE, PodView, Revision, Rollout, Template, next_step, stale
from kvstore.local.runtime import PodProcess, PodRuntime, PodSpec
from kvstore.local.state import LOG_DIR
from kvstore.local.zombie import Zombie, ZombieKeeper

log = logging.getLogger("kvstore.local")

DEFAULTS = Config()  # the same defaults the manifests are checked against: one source
BACKOFF_INITIAL = 1.0  # the kubelet starts at 10s; a laptop cluster should heal faster
BACKOFF_MAX = 30.0
BACKOFF_RESET = 60.0  # a container that ran this long starts its back-off afresh
PROBE_PERIOD = 0.5
PROBE_TIMEOUT = 1.0
GRACE_PERIOD = 10.0
MAX_REPLICAS = 1000

PENDING = "Pending"
RUNNING = "Running"
BACKOFF = "CrashLoopBackOff"
TERMINATING = "Terminating"
HELD = "NodeLost"  # held down by hold(): what kubectl shows for a pod on a node that is gone
COPYING = ("catching up", "installing a snapshot")  # a /readyz reason of a pod making progress


@dataclass
class ClusterSpec:
    """What the cluster should look like; defaults come from :class:`Config`."""

    directory: Path
    replicas: int = DEFAULTS.replicas
    parallel: bool = False
    base_address: str = "127.0.0.10"
    dns_address: str = "127.0.0.2"
    dns_port: int = 0
    statefulset: str = DEFAULTS.service
    service: str = DEFAULTS.service
    namespace: str = DEFAULTS.namespace
    cluster_domain: str = DEFAULTS.cluster_domain
    http_port: int = DEFAULTS.http_port
    peer_port: int = DEFAULTS.peer_port
    grace: float = GRACE_PERIOD
    token_path: Path | None = None
    extra_env: dict[str, str] = field(default_factory=dict)  # the template's env at `up`
    update_strategy: str = ROLLING_UPDATE
    network: str = "127.0.0.0/8"  # where pod addresses live; the docker runtime sets its subnet

    @property
    def policy(self) -> str:
        """The podManagementPolicy this spec emulates."""
        return "Parallel" if self.parallel else "OrderedReady"

    def address(self, ordinal: int) -> str:
        """The loopback address of pod ``ordinal``."""
        return str(ipaddress.ip_address(self.base_address) + ordinal)

    def pod_name(self, ordinal: int) -> str:
        """``<set>-<ordinal>``."""
        return f"{self.statefulset}-{ordinal}"


def check_replicas(spec: ClusterSpec, replicas: int) -> None:
    """Raise ValueError unless ``replicas`` pods fit on loopback addresses from the base."""
    if replicas < 0 or replicas > MAX_REPLICAS:
        raise ValueError(f"replicas must be from 0 to {MAX_REPLICAS}, not {replicas}")
    if replicas == 0:
        return
    last = ipaddress.ip_address(spec.base_address) + (replicas - 1)
    network = ipaddress.ip_network(spec.network)
    if last not in network or str(last).endswith(".255"):
        raise ValueError(f"{replicas} pods from {spec.base_address} would run past the loopback "
                         "range; use a lower --base-address")


def volume_dir(directory: Path, pod: str) -> Path:
    """Pod ``pod``'s data dir in the cluster dir, named like its PVC: ``data-<pod>``."""
    return directory / f"data-{pod}"


def last_log_line(path: Path, tail: int = 4096) -> str:
    """The last non-empty line of a pod's log (what a crashing container said last)."""
    try:
        with open(path, "rb") as log_file:
            log_file.seek(max(0, log_file.seek(0, 2) - tail))
            lines = [line.strip() for line in log_file.read().decode(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "no log"
    return lines[-1][:300] if lines else "no output"


def format_age(seconds: float) -> str:
    """kubectl's AGE: 45s, 3m12s, 2h5m, 3d4h."""
    s = max(0, int(seconds))
    if s < 120:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60}s" if s < 600 else f"{s // 60}m"
    if s < 86400:
        return f"{s // 3600}h{(s % 3600) // 60}m"
    return f"{s // 86400}d{(s % 86400) // 3600}h"


class Pod:
    """One pod: its container restarted with back-off until the pod is deleted."""

    def __init__(self, spec: PodSpec, runtime: PodRuntime, session: aiohttp.ClientSession,
                 on_change: Callable[["Pod"], None], revision: str = "") -> None:
        self.spec = spec
        self.revision = revision  # controller-revision-hash: the template it was made from
        self.reason = ""  # what its last readiness probe said
        # Called when kill() deleted the pod: it comes back from the template the StatefulSet says.
        self.renew: Callable[["Pod"], None] | None = None
        self.runtime = runtime
        self.session = session
        self.on_change = on_change
        self.status = PENDING
        self.ready = False
        self.restarts = 0
        self.created_at = time.time()
        self.started_at: float | None = None
        self.ready_at: float | None = None
        self.last_exit: int | None = None
        self.process: PodProcess | None = None
        self.deleting = False
        self.held = False
        self._killed = False  # set by kill(): a deleted pod comes back without crash back-off
        self._wake = asyncio.Event()
        self._released = asyncio.Event()  # clear while held; release() and delete() set it
        self._released.set()
        self._idle = asyncio.Event()  # set while no container runs
        self._idle.set()
        self._task: asyncio.Task[None] | None = None

    @property
    def name(self) -> str:
        """The pod name, ``kv-N``."""
        return self.spec.name

    @property
    def ordinal(self) -> int:
        """The pod's ordinal."""
        return self.spec.ordinal

    @property
    def healthy(self) -> bool:
        """Running and Ready, as OrderedReady requires of predecessors."""
        return self.status == RUNNING and self.ready and not self.deleting

    def start(self) -> None:
        """Begin running the container (in the background)."""
        self._task = asyncio.create_task(self._run(), name=f"pod-{self.name}")

    def _set(self, **changes: Any) -> None:
        if any(getattr(self, k) != v for k, v in changes.items()):
            for key, value in changes.items():
                setattr(self, key, value)
            self.on_change(self)

    async def _run(self) -> None:
        backoff = BACKOFF_INITIAL
        while not self.deleting:
            if self.held:
                await self._released.wait()
                if self.deleting:
                    break
                self._set(restarts=self.restarts + 1)
                backoff = BACKOFF_INITIAL
            started = time.monotonic()
            self._idle.clear()
            try:
                self.process = await self.runtime.start(self.spec)
            except OSError as exc:
                log.error("%s: cannot start: %s", self.name, exc)
                code = -1
            else:
                self.started_at = time.time()
                if self.deleting:  # deleted while the container was starting
                    self.process.send_signal(signal.SIGTERM)
                elif self.held:  # held while the container was starting
                    self.process.send_signal(signal.SIGKILL)
                else:
                    self._set(status=RUNNING)
                probe = asyncio.create_task(self._probe())
                try:
                    code = await self.process.wait()
                finally:
                    await cancel_and_wait(probe)
                self.process = None
            self.last_exit = code
            if self.held and not self.deleting:
                self._set(status=HELD, ready=False)
            self._idle.set()
            if self.deleting:
                break
            if self.held:
                log.warning("%s exited with status %s; held down until released", self.name, code)
                continue
            if time.monotonic() - started > BACKOFF_RESET or self._killed:
                # `kubectl delete pod` gets a new pod, not CrashLoopBackOff: so does kill().
                backoff = BACKOFF_INITIAL
                if self._killed and self.renew is not None:
                    self.renew(self)
            log.warning("%s exited with status %s; restarting in %.0fs", self.name, code, backoff)
            self._set(status=PENDING if self._killed else BACKOFF, ready=False)
            self._killed = False
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), backoff)  # delete() and hold() cut the wait short
            backoff = min(backoff * 2, BACKOFF_MAX)
            if not self.deleting and not self.held:
                self._set(restarts=self.restarts + 1)

    async def _probe(self) -> None:
        url = f"http://{self.spec.address}:{self.spec.http_port}/readyz"
        timeout = aiohttp.ClientTimeout(total=PROBE_TIMEOUT)
        while True:
            try:
                async with self.session.get(url, timeout=timeout) as response:
                    ready = response.status == 200
                    body = await response.json(content_type=None)
                # Why it is not Ready, as it says (a Ready pod's reason changes with its lag: not kept).
                reason = "" if ready or not isinstance(body, dict) else str(body.get("message", ""))[:300]
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError):
                ready, reason = False, ""
            if ready and not self.ready:
                self.ready_at = time.time()
            self._set(ready=ready, reason=reason)
            await asyncio.sleep(PROBE_PERIOD)

    def kill(self) -> bool:
        """SIGKILL the container (like ``kubectl delete pod --grace-period=0``); False if not running."""
        if self.process is None:
            return False
        log.info("%s: SIGKILL", self.name)
        self._killed = True
        self.process.send_signal(signal.SIGKILL)
        return True

    async def hold(self) -> int | None:
        """SIGKILL the container and keep it down until :meth:`release`; returns the pid it had.

        Returns once no container runs, so the pod's data dir may be changed.
        A held pod stays in the StatefulSet and in DNS, like a pod whose node
        is gone. Idempotent.
        """
        pid = self.process.pid if self.process is not None else None
        if not self.held:
            log.warning("%s: held down (SIGKILL, no restart until released)", self.name)
        self.held = True
        self._released.clear()
        if not self.deleting:  # cut a back-off wait short: the loop then waits for release()
            self._wake.set()
            self._wake.clear()  # set() has already woken the waiter; later back-offs wait again
        if self.process is not None:
            self.process.send_signal(signal.SIGKILL)
        await self._idle.wait()
        if not self.deleting:
            self._set(status=HELD, ready=False)
        return pid

    def release(self) -> bool:
        """Let a held pod's container start again at once; False if it was not held."""
        if not self.held:
            return False
        log.warning("%s: released", self.name)
        self.held = False
        self._released.set()
        return True

    async def delete(self, grace: float) -> None:
        """Stop for good: SIGTERM, wait up to ``grace`` seconds, then SIGKILL."""
        self.deleting = True
        self._wake.set()
        self._released.set()
        self._set(status=TERMINATING, ready=False)
        if self.process is not None:
            self.process.send_signal(signal.SIGTERM)
        task = self._task
        if task is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(task), grace)
            return
        except asyncio.TimeoutError:
            pass
        log.warning("%s did not stop within %.0fs: SIGKILL", self.name, grace)
        if self.process is not None:
            self.process.send_signal(signal.SIGKILL)
        try:
            await asyncio.wait_for(task, 10)
        except asyncio.TimeoutError:
            log.error("%s: container did not exit after SIGKILL", self.name)

    def to_dict(self) -> dict[str, Any]:
        """The pod's entry in the state file."""
        return {
            "name": self.name, "ordinal": self.ordinal, "address": self.spec.address,
            "http_port": self.spec.http_port, "peer_port": self.spec.peer_port,
            "status": self.status, "ready": self.ready, "restarts": self.restarts,
            "created_at": self.created_at, "started_at": self.started_at, "ready_at": self.ready_at,
            "last_exit": self.last_exit, "pid": self.process.pid if self.process else None,
            "data_dir": str(self.spec.data_dir), "held": self.held, "revision": self.revision,
            "reason": self.reason,
        }


class StatefulSet:
    """The controller: keeps ``replicas`` pods running with StatefulSet semantics."""

    def __init__(self, spec: ClusterSpec, runtime: PodRuntime,
                 on_change: Callable[["StatefulSet", Pod | None], None] | None = None) -> None:
        self.spec = spec
        self.runtime = runtime
        self.replicas = spec.replicas
        self.pods: dict[int, Pod] = {}
        self.dns = DnsServer(
            HeadlessService(spec.service, spec.namespace, spec.cluster_domain,
                            {"http": spec.http_port, "peer": spec.peer_port}),
            spec.dns_address, spec.dns_port,
        )
        self.started_at = time.time()
        self.stopping = False
        self.suspended = False  # stop_pods(): no pod is created until start_pods()
        self._on_change = on_change
        self._session: aiohttp.ClientSession | None = None
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._deletions: dict[int, asyncio.Task[None]] = {}
        self.zombies = ZombieKeeper(self, lambda: self._changed(None))  # the zombie of kv-0 (zombie.py)
        image = getattr(runtime, "image", None) or runtime.name
        self.rollout = Rollout(spec.statefulset, Template.make(spec.extra_env, image), spec.update_strategy)

    async def start(self) -> None:
        """Start DNS and the reconcile loop; pods follow in the background."""
        await self.dns.start()
        self._session = aiohttp.ClientSession()
        self._loop_task = asyncio.create_task(self._reconcile_loop(), name="statefulset")
        self._changed(None)

    def scale(self, replicas: int) -> int:
        """Set the desired replica count; returns the previous one. ValueError if out of range."""
        check_replicas(self.spec, replicas)
        previous, self.replicas = self.replicas, replicas
        log.info("scale %d -> %d", previous, replicas)
        self._changed(None)
        self._wake.set()
        return previous

    @property
    def zombie(self) -> Zombie | None:
        """The zombie of kv-0 while one runs (see :mod:`kvstore.local.zombie`)."""
        return self.zombies.zombie

    def pod(self, name: str) -> Pod | None:
        """The pod called ``name``, if it exists."""
        return next((p for p in self.pods.values() if p.name == name), None)

    async def stop(self, force: bool = False) -> None:
        """Delete every pod in reverse ordinal order, then stop DNS. ``force``: SIGKILL at once."""
        self.stopping = True
        await cancel_and_wait(self._loop_task)
        await self.zombies.stop()
        await self._delete_all(force)
        await self.dns.stop()
        if self._session is not None:
            await self._session.close()

    async def stop_pods(self) -> list[str]:
        """Delete every pod in reverse ordinal order and create none until :meth:`start_pods`.

        A full stop, as ``kubectl scale --replicas=0``: the pods leave DNS and
        their data dirs stay; the replica count is kept for the start.
        Returns the names of the pods stopped.
        """
        self.suspended = True
        self._changed(None)
        return await self._delete_all(force=False)

    def start_pods(self) -> bool:
        """Create the pods again after :meth:`stop_pods`, under the set's policy; False if not stopped."""
        if not self.suspended:
            return False
        log.info("starting the pods again (%s)", self.spec.policy)
        self.suspended = False
        self._changed(None)
        return True

    def set_dns_fault(self, drop: bool, hide: list[str]) -> dict[str, Any] | None:
        """Break the Service's DNS (see :meth:`DnsServer.set_fault`); returns the fault now in place."""
        self.dns.set_fault(drop, hide)
        self._changed(None)
        return self.dns.fault

    async def _delete_all(self, force: bool) -> list[str]:
        for pod in self.pods.values():
            pod.deleting = True  # no more restarts while we stop the others
        stopped = []
        for ordinal in sorted(self.pods, reverse=True):
            pod = self.pods.get(ordinal)
            if pod is None:  # removed meanwhile by a scale-down
                continue
            log.info("stopping %s", pod.name)
            await pod.delete(0 if force else self.spec.grace)
            self.pods.pop(ordinal, None)
            self.dns.service.remove_endpoint(pod.name)
            stopped.append(pod.name)
            self._changed(None)
        for task in list(self._deletions.values()):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        return stopped

    def kill_all(self) -> None:
        """SIGKILL every container now (a second Ctrl-C)."""
        for pod in self.pods.values():
            pod.deleting = True
            pod.kill()
        if self.zombie is not None:
            self.zombie.process.send_signal(signal.SIGKILL)

    def _changed(self, pod: Pod | None) -> None:
        if self._on_change is not None:
            self._on_change(self, pod)
        self._wake.set()  # a pod became Ready or died: ordering may allow the next step

    async def _reconcile_loop(self) -> None:
        shown = None
        while not self.stopping:
            self._wake.clear()
            try:
                self._reconcile()
                # A rollout can halt with no pod changing (one not Ready for too long): say so.
                message = self.rollout_status().get("message")
                if message != shown:
                    shown = message
                    self._changed(None)
            except Exception:
                log.exception("reconcile failed")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), 1.0)

    def _reconcile(self) -> None:
        if self.suspended:
            return
        self._replace_stale()
        ordered = not self.spec.parallel
        for ordinal in range(self.replicas):
            pod = self.pods.get(ordinal)
            if pod is None:
                self._create(ordinal)
                if ordered:
                    return  # OrderedReady: the next pod waits for this one to be Ready
                continue
            if ordered and not pod.healthy:
                return
        condemned = sorted((o for o in self.pods if o >= self.replicas and o not in self._deletions),
                           reverse=True)
        if not condemned:
            self._update()
            return
        if ordered:
            # One at a time, highest first, and only while the rest are healthy.
            if self._deletions or not all(p.healthy for o, p in self.pods.items() if o < self.replicas):
                return
            condemned = condemned[:1]
        for ordinal in condemned:
            self._deletions[ordinal] = asyncio.create_task(self._delete(ordinal))
        if not ordered:
            self._update()

    def _create(self, ordinal: int) -> None:
        revision = self.rollout.created_revision(ordinal)
        spec = self._pod_spec(ordinal, revision)
        pod = Pod(spec, self.runtime, self._session, self._changed, revision.name)  # type: ignore[arg-type]
        pod.renew = self._renew
        self.pods[ordinal] = pod
        # publishNotReadyAddresses: in DNS from creation, before it is Ready.
        zombie = self.zombie
        address = zombie.spec.address if zombie and zombie.taken_over and zombie.pod == spec.name else spec.address
        self.dns.service.set_endpoint(spec.name, Endpoint(address, spec.name))
        log.info("creating %s at %s", spec.name, spec.address)
        pod.start()
        self._changed(pod)

    async def _delete(self, ordinal: int, why: str = "scale down") -> None:
        pod = self.pods[ordinal]
        log.info("deleting %s (%s; %s is kept)", pod.name, why, pod.spec.data_dir.name)
        try:
            await pod.delete(self.spec.grace)
        finally:
            self.pods.pop(ordinal, None)
            self.dns.service.remove_endpoint(pod.name)
            self._deletions.pop(ordinal, None)
            self._changed(None)

    def _pod_spec(self, ordinal: int, revision: Revision | None = None) -> PodSpec:
        s = self.spec
        name = s.pod_name(ordinal)
        address = s.address(ordinal)
        data_dir = volume_dir(s.directory, name)
        env = {
            "POD_NAME": name, "POD_NAMESPACE": s.namespace, "KV_SERVICE": s.service,
            "KV_CLUSTER_DOMAIN": s.cluster_domain, "KV_DATA_DIR": str(data_dir),
            "KV_BIND_ADDRESS": address, "KV_HTTP_PORT": str(s.http_port),
            "KV_PEER_PORT": str(s.peer_port), "KV_DNS_SERVER": self.dns.address,
            # Like an env var in the pod template: the count `up` was given;
            # `scale` leaves it, as kubectl scale leaves the template.
            "KV_REPLICAS": str(max(1, s.replicas)),
        }
        if s.token_path is not None:
            env["KV_CLUSTER_TOKEN_FILE"] = str(s.token_path)
        env.update(revision.template.env_dict if revision is not None else s.extra_env)
        if revision is not None:  # like the controller-revision-hash label, through the downward API
            env["KV_POD_REVISION"] = revision.name
        return PodSpec(name=name, ordinal=ordinal, address=address, http_port=s.http_port,
                       peer_port=s.peer_port, data_dir=data_dir,
                       log_path=s.directory / LOG_DIR / f"{name}.log", env=env)

    def to_dict(self) -> dict[str, Any]:
        """The state file's content."""
        s = self.spec
        return {
            "version": 1, "statefulset": s.statefulset, "service": s.service,
            "namespace": s.namespace, "cluster_domain": s.cluster_domain,
            "policy": s.policy, "replicas": self.replicas, "runtime": self.runtime.name,
            "dns": self.dns.address, "base_address": s.base_address,
            "http_port": s.http_port, "peer_port": s.peer_port, "started_at": self.started_at,
            "stopping": self.stopping, "suspended": self.suspended, "dns_fault": self.dns.fault,
            "pods": [p.to_dict() for _, p in sorted(self.pods.items())],
            "zombie": self.zombie.to_dict() if self.zombie is not None else None,
            "rollout": self.rollout_status(), "revisions": self.rollout.history.to_list(),
        }

    # ------------------------------------------------------------------ template and rollout
    def _renew(self, pod: Pod) -> None:
        """A pod that was deleted (``cluster kill``) comes back from the revision a new pod would get."""
        revision = self.rollout.created_revision(pod.ordinal)
        if revision.name != pod.revision:
            log.info("%s comes back at revision %s", pod.name, revision.name)
            pod.spec, pod.revision = self._pod_spec(pod.ordinal, revision), revision.name

    def _views(self) -> list[PodView]:
        now = time.time()
        return [PodView(o, p.revision, p.healthy, p.deleting, p.name, self._crashed(p),
                        now - p.created_at, self._why(p), p.reason.startswith(COPYING))
                for o, p in sorted(self.pods.items()) if o < self.replicas]

    @staticmethod
    def _crashed(pod: Pod) -> bool:
        """Whether its container exited since the pod was created, not by a kill (that is a delete)."""
        return (pod.restarts > 0 or pod.status == BACKOFF) and \
            pod.last_exit not in (None, -signal.SIGKILL, 128 + signal.SIGKILL)

    def _why(self, pod: Pod) -> str:
        """Why a pod is not Ready, in one line: its state, its last exit and log line, or its probe's answer."""
        if pod.healthy:
            return ""
        if self._crashed(pod):  # what it said last tells why
            return (f"{pod.status}, {pod.restarts} restart(s), last exit status {pod.last_exit}: "
                    f"{last_log_line(pod.spec.log_path)}")
        return f"{pod.status}: {pod.reason}" if pod.reason else pod.status

    def rollout_status(self) -> dict[str, Any]:
        """Where the rollout stands (see :meth:`Rollout.status`)."""
        return self.rollout.status(self._views(), self.replicas)

    def _in_use(self) -> set[str]:
        return {p.revision for p in self.pods.values()}

    def _replace_stale(self) -> None:
        """Replace at once each pod a broken rollout left behind (see :func:`stale`)."""
        r = self.rollout
        if r.strategy == ON_DELETE:
            return
        for view in self._views():
            if view.ordinal >= r.partition and view.ordinal not in self._deletions \
                    and stale(view, r.current.name, r.update.name):
                self._deletions[view.ordinal] = asyncio.create_task(
                    self._delete(view.ordinal, f"not Ready at {view.revision}, which is neither current nor update"))

    def _update(self) -> None:
        """The rolling update's next step: delete the highest pod not at the update revision."""
        r = self.rollout
        self.rollout_status()  # marks the update revision current once every pod has it
        action, ordinal = next_step(self._views(), r.strategy, r.partition, r.update.name)
        if action == "delete" and ordinal is not None and ordinal not in self._deletions:
            self._deletions[ordinal] = asyncio.create_task(
                self._delete(ordinal, f"rolling update to {r.update.name}"))

    def change_template(self, changes: dict[str, str], remove: list[str], restart: bool = False) -> dict[str, Any]:
        """``set env`` (``changes``, ``remove``) or ``rollout restart``: a new update revision."""
        before = self.rollout.update
        template = before.template.with_env(changes, remove)
        if restart:
            template = template.restarted(time.time())
            cause = "rollout restart"
        else:
            cause = "set env " + " ".join([*(f"{k}={v}" for k, v in changes.items()), *(f"{k}-" for k in remove)])
        revision = self.rollout.change(template, cause, self._in_use())
        return self._changed_to(before, revision)

    def undo(self, to_revision: int | None) -> dict[str, Any]:
        """``rollout undo``: the template of an earlier revision (ValueError when there is none)."""
        before = self.rollout.update
        revision, _ = self.rollout.undo(to_revision, self._in_use())
        return self._changed_to(before, revision)

    def set_partition(self, partition: int) -> dict[str, Any]:
        """``rollout partition N`` (ValueError outside 0..replicas)."""
        self.rollout.set_partition(partition, self.replicas)
        log.info("partition %d: only ordinals %d and up are updated", partition, partition)
        self._changed(None)
        return self.rollout_status()

    def _changed_to(self, before: Revision, revision: Revision) -> dict[str, Any]:
        changed = revision.name != before.name
        if changed:
            log.info("template changed: update revision %s (%d, %s)", revision.name, revision.number, revision.cause)
        self._changed(None)
        return {"changed": changed, "revision": revision.to_dict(), "rollout": self.rollout_status()}
