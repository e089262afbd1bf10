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
- The headless Service publishes not-ready addresses: a pod is in DNS from
  its creation until it is deleted, Ready or not, restarting or not.
- Stop (``down``, Ctrl-C, SIGTERM) deletes pods in reverse ordinal order,
  each with SIGTERM and a grace period, then SIGKILL.

For fault injection (``kvstore chaos``) the controller can also hold a pod
down (its container SIGKILLed and not restarted until released, like a pod
whose node is gone: it stays in DNS), stop every pod and start them again
(a full stop, like scaling to 0 and back: the pods leave DNS), and break its
DNS server (see :mod:`kvstore.local.dns`).
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
from kvstore.local.runtime import PodProcess, PodRuntime, PodSpec
from kvstore.local.state import LOG_DIR

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
    extra_env: dict[str, str] = field(default_factory=dict)
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
                 on_change: Callable[["Pod"], None]) -> None:
        self.spec = spec
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
                self._killed = False
            log.warning("%s exited with status %s; restarting in %.0fs", self.name, code, backoff)
            self._set(status=BACKOFF, ready=False)
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
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
                ready = False
            if ready and not self.ready:
                self.ready_at = time.time()
            self._set(ready=ready)
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
            "data_dir": str(self.spec.data_dir), "held": self.held,
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

    def pod(self, name: str) -> Pod | None:
        """The pod called ``name``, if it exists."""
        return next((p for p in self.pods.values() if p.name == name), None)

    async def stop(self, force: bool = False) -> None:
        """Delete every pod in reverse ordinal order, then stop DNS. ``force``: SIGKILL at once."""
        self.stopping = True
        await cancel_and_wait(self._loop_task)
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

    def _changed(self, pod: Pod | None) -> None:
        if self._on_change is not None:
            self._on_change(self, pod)
        self._wake.set()  # a pod became Ready or died: ordering may allow the next step

    async def _reconcile_loop(self) -> None:
        while not self.stopping:
            self._wake.clear()
            try:
                self._reconcile()
            except Exception:
                log.exception("reconcile failed")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), 1.0)

    def _reconcile(self) -> None:
        if self.suspended:
            return
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
            return
        if ordered:
            # One at a time, highest first, and only while the rest are healthy.
            if self._deletions or not all(p.healthy for o, p in self.pods.items() if o < self.replicas):
                return
            condemned = condemned[:1]
        for ordinal in condemned:
            self._deletions[ordinal] = asyncio.create_task(self._delete(ordinal))

    def _create(self, ordinal: int) -> None:
        spec = self._pod_spec(ordinal)
        pod = Pod(spec, self.runtime, self._session, self._changed)  # type: ignore[arg-type]
        self.pods[ordinal] = pod
        # publishNotReadyAddresses: in DNS from creation, before it is Ready.
        self.dns.service.set_endpoint(spec.name, Endpoint(spec.address, spec.name))
        log.info("creating %s at %s", spec.name, spec.address)
        pod.start()
        self._changed(pod)

    async def _delete(self, ordinal: int) -> None:
        pod = self.pods[ordinal]
        log.info("deleting %s (scale down; %s is kept)", pod.name, pod.spec.data_dir.name)
        try:
            await pod.delete(self.spec.grace)
        finally:
            self.pods.pop(ordinal, None)
            self.dns.service.remove_endpoint(pod.name)
            self._deletions.pop(ordinal, None)
            self._changed(None)

    def _pod_spec(self, ordinal: int) -> PodSpec:
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
        env.update(s.extra_env)
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
        }
