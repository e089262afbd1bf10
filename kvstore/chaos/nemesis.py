"""The nemesis: faults injected into a running cluster, one at a time, each logged and always healed.

Faults:

- ``kill``: SIGKILL of a pod (the primary, kv-0, chosen often); the controller
  (or Kubernetes) brings it back with its data, like a StatefulSet.
- ``pause``: SIGSTOP, then SIGCONT after a few seconds.
- ``partition``: one pod cut off from its peers and DNS (the chaos client
  still reaches it, so its side of the partition is observed too).

Backends: the local cluster (``process`` and ``docker`` runtimes) and
Kubernetes (``kubectl``: kill only). Whatever a backend changes, its
synchronous ``cleanup()`` undoes, and ``Nemesis.heal_all()`` calls it: from
``finally`` blocks, on Ctrl-C and on errors.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import shlex
import shutil
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

log = logging.getLogger("kvstore.chaos")

FAULTS = ("kill", "pause", "partition")
NET_CLS_ROOT = Path("/sys/fs/cgroup/net_cls")
CLASSID_MAJOR = 0x4B56  # "KV": our net_cls class ids are 4b56:xxxx


class NemesisUnavailable(Exception):
    """A fault cannot be injected with this runtime or on this machine; one-line message."""


@dataclass
class PodInfo:
    """What the nemesis and the workload need to know about one pod."""

    name: str
    ordinal: int
    url: str
    address: str
    pid: int | None
    ready: bool
    uid: str | None = None  # Kubernetes: a deleted pod comes back as a new object with a new uid

    @property
    def incarnation(self) -> object:
        """What changes when the pod is replaced: its process, or its Kubernetes object."""
        return self.uid if self.uid is not None else self.pid


class Backend(Protocol):
    """How faults reach the pods of one kind of cluster."""

    supports: frozenset[str]

    def pods(self) -> list[PodInfo]:
        """The pods as they are now."""

    async def kill(self, pod: PodInfo) -> bool:
        """SIGKILL the pod; False if it was not running."""

    def pause(self, pod: PodInfo) -> int | None:
        """SIGSTOP the pod; the token to resume it."""

    def resume(self, token: int) -> None:
        """SIGCONT a paused pod."""

    def partition(self, pod: PodInfo) -> None:
        """Cut the pod off from its peers."""

    def heal(self, pod: PodInfo) -> None:
        """Undo ``partition``."""

    def cleanup(self) -> None:
        """Undo everything still in place (synchronous, idempotent)."""


def run_command(argv: list[str], timeout: float = 30.0, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a command (no shell), bounded in time; CalledProcessError with its stderr when ``check``."""
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    if check and result.returncode != 0:
        raise subprocess.CalledProcessError(result.returncode, argv, result.stdout, result.stderr)
    return result


# ----------------------------------------------------------------- partitions on loopback
def ensure_iptables() -> str:
    """The iptables binary, installed from Debian's package if missing and we are root."""
    path = shutil.which("iptables")
    if path:
        return path
    if os.geteuid() != 0:
        raise NemesisUnavailable("partition needs iptables and root; install iptables or drop partition")
    for argv in (["apt-get", "update"], ["apt-get", "install", "-y", "--no-install-recommends", "iptables"]):
        result = run_command(argv, timeout=600, check=False)
        if result.returncode != 0 and argv[1] == "install":
            raise NemesisUnavailable(f"cannot install iptables: {result.stderr.strip().splitlines()[-1:]}")
    path = shutil.which("iptables")
    if not path:
        raise NemesisUnavailable("iptables is still missing after apt-get install iptables")
    return path


class LoopbackPartitioner:
    """Cuts one pod off on loopback, where every pod shares the host's network namespace.

    Every pod's outgoing connections start from 127.0.0.1, so addresses alone
    cannot tell pods apart. The isolated pod's process is moved into a net_cls
    cgroup of this run, and two rules (tagged ``kvstore-chaos-<id>``) drop:

    1. everything its sockets send, except to the chaos client's own address;
    2. everything sent to its address, except by the chaos client.

    ``cleanup()`` removes every rule with this run's tag, moves every process
    out of the cgroup and removes it.
    """

    def __init__(self, run_id: str, client_address: str, classid_minor: int) -> None:
        self.tag = f"kvstore-chaos-{run_id}"
        self.client_address = client_address
        self.classid = (CLASSID_MAJOR << 16) | (classid_minor & 0xFFFF)
        self.cgroup = NET_CLS_ROOT / self.tag
        self.iptables = ""
        self._mounted = False
        self._ready = False

    def rules(self, address: str) -> list[list[str]]:
        """The iptables rule specs (for -I/-D OUTPUT) isolating the pod at ``address``."""
        comment = ["-m", "comment", "--comment", self.tag]
        return [
            ["-m", "cgroup", "--cgroup", hex(self.classid), "!", "-d", self.client_address, *comment, "-j", "DROP"],
            ["-d", address, "!", "-s", self.client_address, *comment, "-j", "DROP"],
        ]

    def setup(self) -> None:
        """iptables present, net_cls mounted, our cgroup created."""
        if self._ready:
            return
        self.iptables = ensure_iptables()
        if not (NET_CLS_ROOT / "net_cls.classid").exists():
            try:
                NET_CLS_ROOT.mkdir(parents=True, exist_ok=True)
                run_command(["mount", "-t", "cgroup", "-o", "net_cls", "net_cls", str(NET_CLS_ROOT)])
            except (OSError, subprocess.CalledProcessError) as exc:
                raise NemesisUnavailable(f"partition needs the net_cls cgroup (as root): {exc}") from None
            self._mounted = True
        self.cgroup.mkdir(exist_ok=True)
        (self.cgroup / "net_cls.classid").write_text(str(self.classid))
        self._ready = True

    def isolate(self, address: str, pid: int) -> None:
        """Move ``pid`` into our cgroup and insert the rules."""
        self.setup()
        (self.cgroup / "cgroup.procs").write_text(str(pid))
        for spec in self.rules(address):
            run_command([self.iptables, "-w", "5", "-I", "OUTPUT", *spec])

    def heal(self, address: str) -> None:
        """Delete this address's rules and let every process out of the cgroup."""
        for spec in self.rules(address):
            run_command([self.iptables, "-w", "5", "-D", "OUTPUT", *spec], check=False)
        self._release_processes()

    def _release_processes(self) -> None:
        try:
            pids = (self.cgroup / "cgroup.procs").read_text().split()
        except OSError:
            return
        for pid in pids:
            try:
                (NET_CLS_ROOT / "cgroup.procs").write_text(pid)
            except OSError:  # exited meanwhile
                pass

    def tagged_rules(self) -> list[list[str]]:
        """Every OUTPUT rule carrying this run's tag, as ``-A OUTPUT …`` argument lists."""
        if not self.iptables:
            return []
        listing = run_command([self.iptables, "-w", "5", "-S", "OUTPUT"], check=False).stdout
        return [shlex.split(line) for line in listing.splitlines() if self.tag in line and line.startswith("-A")]

    def cleanup(self) -> None:
        """Remove every rule with our tag, empty and remove our cgroup, unmount what we mounted."""
        for argv in self.tagged_rules():
            run_command([self.iptables, "-w", "5", "-D", *argv[1:]], check=False)
        self._release_processes()
        try:
            self.cgroup.rmdir()
        except OSError:
            pass
        if self._mounted and not any(p.is_dir() for p in NET_CLS_ROOT.iterdir()):
            run_command(["umount", str(NET_CLS_ROOT)], check=False)
            self._mounted = False
        self._ready = False


# -------------------------------------------------------------------- local cluster
def local_pods(directory: Path) -> list[PodInfo]:
    """The pods of the local cluster running in ``directory`` (none if it is not running)."""
    from kvstore.local.state import ClusterError, client_url, read_state
    try:
        state = read_state(directory)
    except ClusterError:
        return []
    return [PodInfo(p["name"], p["ordinal"], client_url(p), p["address"], p.get("pid"), bool(p.get("ready")))
            for p in sorted(state["pods"], key=lambda p: p["ordinal"])]


class LocalBackend:
    """The local StatefulSet in a cluster dir: kills through its controller, signals, partitions."""

    def __init__(self, directory: Path, runtime: str, run_id: str, client_address: str | None) -> None:
        self.directory = Path(directory)
        self.runtime = runtime
        self.supports = frozenset(FAULTS)
        self._paused: set[int] = set()
        self._partitioned: dict[str, PodInfo] = {}
        self.partitioner: LoopbackPartitioner | None = None
        if runtime == "process":
            if client_address is None:
                raise ValueError("the process runtime needs the chaos client's address for partitions")
            self.partitioner = LoopbackPartitioner(run_id, client_address, random.randrange(1, 0xFFFF))
        self._docker: Any = None
        self._docker_net: dict[str, tuple[str, str]] = {}  # pod -> (network, ip) while disconnected

    def pods(self) -> list[PodInfo]:
        return local_pods(self.directory)

    async def kill(self, pod: PodInfo) -> bool:
        from kvstore.local import control
        from kvstore.local.state import ClusterError
        try:
            await control.call(self.directory, "POST", "/v1/kill", {"pod": pod.name})
        except ClusterError as exc:
            log.info("kill %s: %s", pod.name, exc)
            return False
        return True

    def pause(self, pod: PodInfo) -> int | None:
        if not pod.pid:
            return None
        try:
            os.kill(pod.pid, signal.SIGSTOP)
        except ProcessLookupError:
            return None
        self._paused.add(pod.pid)
        return pod.pid

    def resume(self, token: int) -> None:
        try:
            os.kill(token, signal.SIGCONT)
        except ProcessLookupError:
            pass
        self._paused.discard(token)

    def partition(self, pod: PodInfo) -> None:
        if self.runtime == "docker":
            self._docker_disconnect(pod)
        else:
            assert self.partitioner is not None
            if not pod.pid:
                raise NemesisUnavailable(f"{pod.name} has no process to partition")
            self._partitioned[pod.name] = pod
            self.partitioner.isolate(pod.address, pod.pid)

    def heal(self, pod: PodInfo) -> None:
        if self.runtime == "docker":
            self._docker_reconnect(pod.name)
        else:
            assert self.partitioner is not None
            self.partitioner.heal(pod.address)
            self._partitioned.pop(pod.name, None)

    def cleanup(self) -> None:
        for pid in list(self._paused):
            self.resume(pid)
        if self.partitioner is not None:
            self.partitioner.cleanup()
            self._partitioned.clear()
        for name in list(self._docker_net):
            self._docker_reconnect(name)

    # Docker: disconnect the container from the network its runtime created, reconnect with the same IP.
    def _container(self, pod: str) -> Any:
        import hashlib

        import docker  # type: ignore[import-untyped]

        from kvstore.local.docker_runtime import LABEL
        if self._docker is None:
            self._docker = docker.from_env()
        scope = hashlib.sha256(str(self.directory.absolute()).encode()).hexdigest()[:10]
        found = self._docker.containers.list(
            filters={"label": [f"{LABEL}={scope}", f"org.kvstore.pod={pod}"]})
        if not found:
            raise NemesisUnavailable(f"no running container for {pod}")
        return found[0]

    def _docker_disconnect(self, pod: PodInfo) -> None:
        container = self._container(pod.name)
        networks = container.attrs["NetworkSettings"]["Networks"]
        name, settings = next(iter(networks.items()))
        self._docker_net[pod.name] = (name, settings["IPAddress"])
        self._docker.networks.get(name).disconnect(container, force=True)

    def _docker_reconnect(self, pod: str) -> None:
        name, ip = self._docker_net.pop(pod, (None, None))
        if name is None:
            return
        try:
            self._docker.networks.get(name).connect(self._container(pod), ipv4_address=ip)
        except Exception as exc:  # noqa: BLE001 - the container may have been replaced meanwhile
            log.warning("reconnect %s to %s: %s", pod, name, exc)


# ----------------------------------------------------------------------- Kubernetes
def kubectl_base(kubectl: str = "kubectl", namespace: str | None = None, context: str | None = None) -> list[str]:
    """``kubectl`` with an explicit context/namespace only when given (else the current ones)."""
    argv = [kubectl]
    if context:
        argv += ["--context", context]
    if namespace:
        argv += ["--namespace", namespace]
    return argv


def kubectl_get_pods(base: list[str], selector: str) -> list[str]:
    """The command listing the StatefulSet's pods as JSON."""
    return [*base, "get", "pods", "--selector", selector, "--output", "json"]


def kubectl_delete_pod(base: list[str], pod: str) -> list[str]:
    """The command that kills a pod like SIGKILL: no grace period, no waiting."""
    return [*base, "delete", "pod", pod, "--grace-period=0", "--force", "--wait=false"]


class KubernetesBackend:
    """A real cluster through ``kubectl`` (current context and namespace unless given): kill only.

    Pause needs a signal inside the container (pods/exec, and a ``kill`` binary
    the image does not ship) and a partition needs NetworkPolicy rights and a
    CNI that enforces them at once; neither is done, so the RBAC stays at
    pods get/list/delete.
    """

    supports = frozenset({"kill"})

    def __init__(self, kubectl: str = "kubectl", namespace: str | None = None, context: str | None = None,
                 selector: str = "app.kubernetes.io/name=kvstore", service: str = "kv",
                 cluster_domain: str = "cluster.local", http_port: int = 8080,
                 runner: Callable[[list[str]], subprocess.CompletedProcess[str]] | None = None) -> None:
        self.base = kubectl_base(kubectl, namespace, context)
        self.namespace = namespace
        self.selector = selector
        self.service = service
        self.cluster_domain = cluster_domain
        self.http_port = http_port
        self.run = runner or (lambda argv: run_command(argv, timeout=30))

    def pods(self) -> list[PodInfo]:
        argv = kubectl_get_pods(self.base, self.selector)
        try:
            data = json.loads(self.run(argv).stdout)
        except subprocess.CalledProcessError as exc:
            lines = (exc.stderr or "").strip().splitlines()
            raise NemesisUnavailable(f"{shlex.join(argv)}: {lines[-1] if lines else exc}") from None
        except (OSError, ValueError, subprocess.TimeoutExpired) as exc:
            raise NemesisUnavailable(f"{shlex.join(argv)}: {exc}") from None
        out = []
        for item in data.get("items", []):
            name = item["metadata"]["name"]
            namespace = item["metadata"].get("namespace") or self.namespace or "default"
            ordinal = int(name.rsplit("-", 1)[1])
            ready = any(c.get("type") == "Ready" and c.get("status") == "True"
                        for c in item.get("status", {}).get("conditions", []))
            # The headless Service's per-pod name: stable across restarts, unlike the pod IP.
            host = f"{name}.{self.service}.{namespace}.svc.{self.cluster_domain}"
            out.append(PodInfo(name, ordinal, f"http://{host}:{self.http_port}", host, None, ready,
                               uid=item["metadata"].get("uid")))
        return sorted(out, key=lambda p: p.ordinal)

    async def kill(self, pod: PodInfo) -> bool:
        result = await asyncio.to_thread(self.run, kubectl_delete_pod(self.base, pod.name))
        return result.returncode == 0

    def pause(self, pod: PodInfo) -> int | None:
        raise NemesisUnavailable("--runtime kubernetes supports the kill nemesis only")

    def resume(self, token: int) -> None:
        pass

    def partition(self, pod: PodInfo) -> None:
        raise NemesisUnavailable("--runtime kubernetes supports the kill nemesis only")

    def heal(self, pod: PodInfo) -> None:
        pass

    def cleanup(self) -> None:
        pass


# ------------------------------------------------------------------------ scheduler
@dataclass
class NemesisConfig:
    """How often and how hard."""

    faults: tuple[str, ...] = FAULTS
    interval: float = 1.0          # mean pause between faults
    primary_bias: float = 0.45     # chance that a kill targets kv-0
    kill_weight: float = 4.0       # relative frequency of kills vs. one pause / one partition
    pause_seconds: tuple[float, float] = (1.5, 4.0)
    partition_seconds: tuple[float, float] = (2.0, 5.0)
    restart_wait: float = 30.0     # after a kill, wait at most this long for the pod to come back
    seed: int | None = None


class Nemesis:
    """Injects faults until a deadline, one at a time, and logs each with a timestamp."""

    def __init__(self, backend: Backend, config: NemesisConfig, clock: Callable[[], float]) -> None:
        unsupported = set(config.faults) - backend.supports
        if unsupported:
            raise NemesisUnavailable(f"this runtime does not support: {', '.join(sorted(unsupported))} "
                                     f"(supported: {', '.join(sorted(backend.supports))})")
        self.backend = backend
        self.config = config
        self.clock = clock
        self.rng = random.Random(config.seed)
        self.log: list[dict[str, Any]] = []
        self._first = list(config.faults)
        self._kills = 0

    def _record(self, fault: str, pod: str, **detail: Any) -> None:
        entry = {"time": round(self.clock(), 6), "fault": fault, "pod": pod, **detail}
        self.log.append(entry)
        log.info("nemesis: %s", entry)

    def _choose(self) -> str:
        if self._first:  # every enabled fault once before chance decides (kill first, on kv-0)
            return self._first.pop(0)
        weights = [self.config.kill_weight if f == "kill" else 1.0 for f in self.config.faults]
        return self.rng.choices(self.config.faults, weights)[0]

    async def run(self, deadline: float) -> list[dict[str, Any]]:
        """Inject faults until ``deadline``; everything is healed when this returns or raises."""
        try:
            while self.clock() < deadline:
                await self._sleep_until(min(deadline, self.clock() + self.rng.uniform(0.5, 1.5) * self.config.interval))
                if self.clock() >= deadline:
                    break
                fault = self._choose()
                try:
                    pods = [p for p in self.backend.pods() if p.pid or fault == "kill"]
                except NemesisUnavailable as exc:  # e.g. the API server did not answer: try later
                    self._record("skipped", "", reason=str(exc))
                    continue
                if not pods:
                    continue
                if fault == "kill":
                    await self._kill(pods, deadline)
                elif fault == "pause":
                    await self._pause(self.rng.choice(pods), deadline)
                else:
                    await self._partition(self.rng.choice(pods), deadline)
        finally:
            self.heal_all()
        return self.log

    async def _sleep_until(self, when: float) -> None:
        delay = when - self.clock()
        if delay > 0:
            await asyncio.sleep(delay)

    async def _kill(self, pods: list[PodInfo], deadline: float) -> None:
        primary = [p for p in pods if p.ordinal == 0]
        others = [p for p in pods if p.ordinal != 0]
        self._kills += 1
        first = self._kills == 1
        pod = primary[0] if primary and (first or not others or self.rng.random() < self.config.primary_bias) \
            else self.rng.choice(others or pods)
        if not await self.backend.kill(pod):
            return
        self._record("kill", pod.name, pid=pod.pid)
        # Wait (bounded) until the pod runs again, so kills test recovery rather than pile up.
        limit = min(self.clock() + self.config.restart_wait, deadline + self.config.restart_wait)
        while self.clock() < limit:
            await asyncio.sleep(0.2)
            try:
                now = {p.name: p for p in self.backend.pods()}.get(pod.name)
            except NemesisUnavailable:
                continue
            if now is not None and now.incarnation != pod.incarnation and (now.pid or now.ready):
                self._record("restarted", pod.name, pid=now.pid)
                return
        self._record("not-restarted", pod.name, waited=self.config.restart_wait)

    async def _pause(self, pod: PodInfo, deadline: float) -> None:
        token = self.backend.pause(pod)
        if token is None:
            return
        self._record("pause", pod.name, pid=token)
        try:
            await self._sleep_until(min(deadline, self.clock() + self.rng.uniform(*self.config.pause_seconds)))
        finally:
            self.backend.resume(token)
            self._record("resume", pod.name, pid=token)

    async def _partition(self, pod: PodInfo, deadline: float) -> None:
        self.backend.partition(pod)
        self._record("partition", pod.name, address=pod.address)
        try:
            await self._sleep_until(min(deadline, self.clock() + self.rng.uniform(*self.config.partition_seconds)))
        finally:
            self.backend.heal(pod)
            self._record("heal", pod.name, address=pod.address)

    def heal_all(self) -> None:
        """Resume, reconnect, remove rules: synchronous so it also works from ``finally`` after Ctrl-C."""
        self.backend.cleanup()

