"""The zombie of kv-0: a second process of a pod, as when a force-deleted pod's old process still runs.

For fault injection (``kvstore chaos``, nemesis ``zombie-primary``) the
controller can run a second ``kvstore serve`` with a pod's identity and
environment, on a copy of its volume (taken while the pod is SIGSTOPped) and
an address of its own. DNS can list the zombie's address for the pod (it took
the name over) and the real one again. :class:`ZombieKeeper` does this for
the :class:`~kvstore.local.statefulset.StatefulSet`, at most one zombie at a
time; the control API answers its :class:`Conflict` with 409.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import shutil
import signal
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

from kvstore.local.dns import DnsServer, Endpoint
from kvstore.local.runtime import PodProcess, PodRuntime, PodSpec

log = logging.getLogger("kvstore.local")

ZOMBIE_SUFFIX = "-zombie"  # the zombie of kv-0 is "kv-0-zombie" in logs and file names
ZOMBIE_WAIT = 10.0  # seconds for a SIGKILLed zombie to be reaped


class Conflict(Exception):
    """The request does not fit the cluster as it is now (the control API answers 409)."""


class PodSet(Protocol):
    """What a zombie needs of the StatefulSet beside which it runs."""

    spec: Any  # its ClusterSpec: addresses, ports, cluster dir
    runtime: PodRuntime
    replicas: int
    pods: dict[int, Any]  # ordinal -> Pod
    dns: DnsServer
    stopping: bool
    suspended: bool

    def pod(self, name: str) -> Any:
        """The pod called ``name``, if it exists."""


@dataclass
class Zombie:
    """A second process of pod ``pod`` (kv-0): its env, its own data dir (a copy) and address."""

    pod: str
    spec: PodSpec
    process: PodProcess
    started_at: float
    taken_over: bool = False  # DNS lists the zombie's address for ``pod``
    exit_code: int | None = None  # set once the process has exited
    waiter: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        """The zombie's client URL."""
        return f"http://{self.spec.address}:{self.spec.http_port}"

    def to_dict(self) -> dict[str, Any]:
        """The zombie's entry in the state file and in control answers."""
        return {
            "name": self.spec.name + ZOMBIE_SUFFIX, "pod": self.pod, "address": self.spec.address,
            "url": self.url, "http_port": self.spec.http_port, "peer_port": self.spec.peer_port,
            "pid": self.process.pid, "running": self.exit_code is None, "exit_code": self.exit_code,
            "data_dir": str(self.spec.data_dir), "log": str(self.spec.log_path),
            "taken_over": self.taken_over, "started_at": self.started_at,
        }


def zombie_dir(directory: Path, pod: str) -> Path:
    """Where a zombie of ``pod`` keeps its copy of the pod's volume."""
    return directory / f"zombie-data-{pod}"


def _bindable(address: str, ports: tuple[int, ...]) -> bool:
    """Whether nothing holds ``address`` on any of ``ports`` (so a new process can listen there)."""
    for port in ports:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((address, port))
            except OSError as exc:
                if exc.errno in (errno.EADDRINUSE, errno.EADDRNOTAVAIL):
                    return False
                raise
    return True


class ZombieKeeper:
    """Starts, redirects and stops the one zombie a StatefulSet may have."""

    def __init__(self, statefulset: PodSet, on_change: Callable[[], None]) -> None:
        self._set = statefulset
        self._changed = on_change
        self.zombie: Zombie | None = None
        self._zombie_lock = asyncio.Lock()  # start and stop of the zombie never interleave

    def address(self) -> str:
        """A free address for a zombie: in the /24 of the pods, used by no pod, DNS or the chaos client.

        Taken from the top of the range down (.249 first; .250 is where ``kvstore
        chaos`` puts its client), skipping the addresses of every ordinal up to
        the replica count, so a scale-up cannot collide with it.
        """
        s = self._set.spec
        base = ipaddress.ip_address(s.base_address)
        network = ipaddress.ip_network(f"{base}/24", strict=False)
        if not network.subnet_of(ipaddress.ip_network(s.network)):  # type: ignore[arg-type]
            network = ipaddress.ip_network(s.network)
        ordinals = max([self._set.replicas, *(o + 1 for o in self._set.pods)])
        taken = {s.address(o) for o in range(ordinals)} | {s.dns_address}
        for host in range(249, 0, -1):
            address = str(network.network_address + host)
            if (ipaddress.ip_address(address) in network and address not in taken
                    and _bindable(address, (s.http_port, s.peer_port))):
                return address
        raise Conflict(f"no free address for a zombie in {network}")

    async def start(self, name: str | None = None) -> Zombie:
        """Start a zombie of pod ``name`` (default: ordinal 0, the primary).

        Its volume is a copy of the pod's, taken while the pod is SIGSTOPped (a
        consistent image, as after a crash; SIGCONT follows even when the copy
        fails); its env is the pod's except ``KV_DATA_DIR`` and
        ``KV_BIND_ADDRESS``; its log is ``logs/<pod>-zombie.log``. Raises
        Conflict when a zombie exists or the pod has no running container.
        """
        name = name or self._set.spec.pod_name(0)
        async with self._zombie_lock:
            if self.zombie is not None:
                raise Conflict(f"a zombie of {self.zombie.pod} is already running "
                               f"(pid {self.zombie.process.pid}); stop it first")
            if self._set.runtime.name != "process":
                raise Conflict(f"a zombie needs the process runtime, not {self._set.runtime.name}")
            if self._set.stopping or self._set.suspended:
                raise Conflict("the pods are stopped" if self._set.suspended else "the cluster is stopping")
            pod = self._set.pod(name)
            if pod is None or pod.process is None or pod.held or pod.deleting:
                raise Conflict(f"{name} has no running container to copy "
                               f"({pod.status if pod else 'no such pod'})")
            address = self.address()
            copy = zombie_dir(self._set.spec.directory, name)
            env = {**pod.spec.env, "KV_DATA_DIR": str(copy), "KV_BIND_ADDRESS": address}
            spec = PodSpec(name=name, ordinal=pod.ordinal, address=address, http_port=pod.spec.http_port,
                           peer_port=pod.spec.peer_port, data_dir=copy,
                           log_path=pod.spec.log_path.with_name(f"{name}{ZOMBIE_SUFFIX}.log"), env=env)
            await asyncio.to_thread(shutil.rmtree, copy, True)  # a copy left by a killed controller
            try:
                await self._copy_stopped(pod, copy)
                process = await self._set.runtime.start(spec)
            except BaseException:
                await asyncio.to_thread(shutil.rmtree, copy, True)
                raise
            zombie = Zombie(name, spec, process, time.time())
            zombie.waiter = asyncio.create_task(self._watch_zombie(zombie), name=f"zombie-{name}")
            self.zombie = zombie
            log.warning("%s: zombie started at %s (pid %s) on a copy of %s", name, address, process.pid,
                        pod.spec.data_dir.name)
            self._changed()
            return zombie

    async def _copy_stopped(self, pod: Any, target: Path) -> None:
        """Copy the pod's data dir while its process is SIGSTOPped; SIGCONT always follows."""
        process = pod.process
        assert process is not None
        process.send_signal(signal.SIGSTOP)
        try:
            await asyncio.to_thread(shutil.copytree, pod.spec.data_dir, target, symlinks=True)
        finally:
            process.send_signal(signal.SIGCONT)

    async def _watch_zombie(self, zombie: Zombie) -> None:
        zombie.exit_code = await zombie.process.wait()
        log.warning("%s: zombie (pid %s) exited with status %s", zombie.pod, zombie.process.pid,
                    zombie.exit_code)
        self._changed()

    def _live_zombie(self) -> Zombie:
        if self.zombie is None:
            raise Conflict("no zombie is running")
        return self.zombie

    def takeover(self) -> Zombie:
        """DNS lists the zombie's address for its pod (SRV target and A record): it took the name over."""
        zombie = self._live_zombie()
        zombie.taken_over = True
        if self._set.pod(zombie.pod) is not None:  # a pod deleted meanwhile has no name to take over
            self._set.dns.service.set_endpoint(zombie.pod, Endpoint(zombie.spec.address, zombie.pod))
        log.warning("%s: DNS lists the zombie at %s", zombie.pod, zombie.spec.address)
        self._changed()
        return zombie

    def giveback(self) -> Zombie:
        """DNS lists the real pod's address again."""
        zombie = self._live_zombie()
        self._give_back(zombie)
        self._changed()
        return zombie

    def _give_back(self, zombie: Zombie) -> None:
        zombie.taken_over = False
        pod = self._set.pod(zombie.pod)
        if pod is not None:
            self._set.dns.service.set_endpoint(pod.name, Endpoint(pod.spec.address, pod.name))
            log.warning("%s: DNS lists the pod at %s again", pod.name, pod.spec.address)

    async def stop(self) -> dict[str, Any] | None:
        """SIGKILL the zombie, wait for it, give DNS back, remove its copy; None if there was none."""
        async with self._zombie_lock:
            zombie = self.zombie
            if zombie is None:
                return None
            try:
                zombie.process.send_signal(signal.SIGKILL)
                if zombie.waiter is not None:
                    try:
                        await asyncio.wait_for(asyncio.shield(zombie.waiter), ZOMBIE_WAIT)
                    except asyncio.TimeoutError:
                        log.error("%s: zombie (pid %s) did not exit after SIGKILL", zombie.pod,
                                  zombie.process.pid)
            finally:
                self._give_back(zombie)
                self.zombie = None
                await asyncio.to_thread(shutil.rmtree, zombie.spec.data_dir, True)
                self._changed()
            return zombie.to_dict()

