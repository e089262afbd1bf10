"""The nemesis: faults injected into a running cluster, one at a time, each logged and always healed.

Faults:

- ``kill``: SIGKILL of a pod (kv-0 or the current primary chosen often);
  the controller (or Kubernetes) brings it back with its data, like a
  StatefulSet.
- ``pause``: SIGSTOP, then SIGCONT after a few seconds.
- ``partition``: one pod cut off from its peers and DNS (the chaos client
  still reaches it, so its side of the partition is observed too).
- ``freeze-primary``: the current primary (whichever pod ``/v1/status``
  names) SIGSTOPped for longer than the followers' ``KV_FAILOVER_AFTER``,
  then SIGCONT: a partitioned node whose process lives on and wakes up
  believing it leads, after another pod took over.
- ``volume-loss``: a pod's data dir removed while the pod is down: either
  held down by the controller (like a pod whose node is gone) and released
  with an empty volume, or during a full stop and start of every pod.
- ``volume-rollback``: a data dir replaced by an older copy of itself (a
  restored backup): copied while the pod is held down for a moment, put
  back a few seconds of writes later while it is held down again.
- ``dns``: the cluster's DNS drops every query, or leaves some pods out of
  its answers, for a few seconds; sometimes kv-0 is restarted meanwhile, so
  it starts up without a true view of its peers.
- ``restart-all``: every pod stopped in reverse order and started again
  under the StatefulSet's policy (OrderedReady: kv-0 first); while the pods
  are down and coming back, every client aims at kv-0 (:meth:`Nemesis.aim`),
  so writes reach it the moment it answers.
- ``zombie-primary``: a second kv-0, as when a force-deleted pod's old
  process still runs while the StatefulSet starts its replacement. The
  controller copies kv-0's volume while kv-0 is SIGSTOPped and starts
  ``kvstore serve`` with kv-0's env on the copy, at an address of its own.
  For a few seconds a third of the operations (chosen per operation by
  :meth:`Nemesis.aim`) go to the zombie, recorded as sent to ``kv-0-zombie``;
  then DNS lists the zombie's address for kv-0 (it took the name over: the
  followers and forwarded requests find it) for a few seconds; then the real
  kv-0's again for a few seconds; then the zombie is SIGKILLed and its copy
  removed. The checker judges its answers like any pod's.
- ``rolling-restart``: ``kvstore cluster rollout restart`` while the
  workload runs: every pod replaced from a new template revision, highest
  ordinal first, each once the one before is Ready; about half of the time a
  pod is killed midway (one already replaced, or the one being waited on),
  and the rollout must still complete.
- ``node-loss``: the current primary held down by the controller for
  10-40 s, like a pod whose node is gone, then released: the followers fail
  over, and kv-0 takes the role back once it is current (failback).
- ``switchover``: a planned handover, ``kvstore switchover`` to a random
  voter or to none (the primary picks the most up-to-date follower).

Kills, pauses and partitions aimed at "the primary" (``primary_bias``) aim
at kv-0 or at the current primary, as often at one as at the other: once a
failover or a switchover has happened, they are different pods.

Backends: the local cluster (``process`` and ``docker`` runtimes; the faults
through the controller and the rollout with ``process`` only) and Kubernetes
(``kubectl``: kill only).
Whatever a backend changes, its synchronous ``cleanup()`` undoes, and
``Nemesis.heal_all()`` calls it: from ``finally`` blocks, on Ctrl-C and on
errors.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import random
import shlex
import shutil
import signal
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol, cast

import aiohttp

from kvstore.local import control
from kvstore.local.state import ClusterError, client_url, read_state
from kvstore.local.statefulset import volume_dir
from kvstore.local.zombie import ZOMBIE_SUFFIX

log = logging.getLogger("kvstore.chaos")

SIGNAL_FAULTS = ("kill", "pause", "partition", "freeze-primary")
# Faults the local controller injects (hold, full stop, DNS, a second kv-0), process runtime only.
CONTROLLER_FAULTS = ("volume-loss", "volume-rollback", "dns", "restart-all", "zombie-primary", "scale")
# Faults through the StatefulSet's rollout (its template and revisions), process runtime only.
ROLLOUT_FAULTS = ("rolling-restart",)
# Faults that move the primary's role: a lost node (held down) and planned handovers, process runtime only.
FAILOVER_FAULTS = ("node-loss", "switchover")
FAULTS = SIGNAL_FAULTS + CONTROLLER_FAULTS + ROLLOUT_FAULTS + FAILOVER_FAULTS
NET_CLS_ROOT = Path("/sys/fs/cgroup/net_cls")
CLASSID_MAJOR = 0x4B56  # "KV": our net_cls class ids are 4b56:xxxx


class NemesisUnavailable(Exception):
    """A fault cannot be injected with this runtime or on this machine; one-line message."""


class FaultFailed(Exception):
    """One fault could not be injected this time (e.g. the pod was being replaced); the run goes on."""


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


class ControllerBackend(Backend, Protocol):
    """A backend whose controller can hold pods down, stop them all, change volumes and break DNS."""

    async def hold(self, pod: str) -> int | None:
        """SIGKILL the pod and keep it down until released; returns once it is down (its old pid)."""

    async def release(self, pod: str) -> None:
        """Let a held pod start again."""

    async def stop_pods(self) -> list[str]:
        """Stop every pod in reverse order and keep them stopped; returns once all are gone."""

    async def start_pods(self) -> None:
        """Start the pods again, under the StatefulSet's policy."""

    async def set_dns(self, drop: bool, hide: list[str]) -> None:
        """Make DNS drop every query and/or leave out pods; ``(False, [])`` heals."""

    def remove_volume(self, pod: str) -> bool:
        """Remove a stopped pod's data dir; False if it had none."""

    def snapshot_volume(self, pod: str) -> Path:
        """Copy a stopped pod's data dir; returns the copy."""

    def restore_volume(self, pod: str, snapshot: Path) -> None:
        """Replace a stopped pod's data dir with ``snapshot`` (which is used up)."""

    async def zombie(self, action: str) -> dict[str, Any]:
        """Drive the zombie of kv-0: ``start``, ``takeover``, ``giveback`` or ``stop``; returns it
        (``address``, ``url``, ``pid``, ``exit_code``…)."""

    async def scale(self, replicas: int) -> None:
        """Set the StatefulSet's replica count (``kubectl scale``); the pod template stays as it is."""

    async def rollout_restart(self) -> str:
        """``rollout restart``: a new template revision the pods are replaced with; returns its name."""

    def rollout(self) -> dict[str, Any]:
        """Where the rollout stands (``state``, ``updated``, ``update_revision``, ``message``…)."""

    async def switchover(self, to: str | None, via: str | None) -> tuple[bool, str]:
        """``kvstore switchover [--to TO]``, asked of ``via`` (default kv-0): (done, what it printed)."""


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
    try:
        state = read_state(directory)
    except ClusterError:
        return []
    return [PodInfo(p["name"], p["ordinal"], client_url(p), p["address"], p.get("pid"), bool(p.get("ready")))
            for p in sorted(state["pods"], key=lambda p: p["ordinal"])]


class LocalBackend:
    """The local StatefulSet in a cluster dir: its controller (kill, hold, full stop, DNS), signals, partitions."""

    def __init__(self, directory: Path, runtime: str, run_id: str, client_address: str | None) -> None:
        self.directory = Path(directory)
        self.runtime = runtime
        self.supports = frozenset(FAULTS if runtime == "process" else SIGNAL_FAULTS)
        self.snapshots = self.directory / f"chaos-snapshots-{run_id}"
        self._copies = 0
        self._held: set[str] = set()
        self._stopped = False
        self._dns_broken = False
        self._zombie = False  # a zombie may run: cleanup stops it
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

    # The controller's fault operations (see kvstore.local.control).
    async def _control(self, path: str, body: dict[str, Any] | None = None, timeout: float = 30.0) -> dict[str, Any]:
        try:
            return await control.call(self.directory, "POST", path, body or {}, timeout)
        except ClusterError as exc:
            raise FaultFailed(f"{path}: {exc}") from None

    async def hold(self, pod: str) -> int | None:
        self._held.add(pod)
        answer = await self._control("/v1/hold", {"pod": pod})
        return answer.get("pid")

    async def release(self, pod: str) -> None:
        await self._control("/v1/release", {"pod": pod})
        self._held.discard(pod)

    async def stop_pods(self) -> list[str]:
        self._stopped = True
        # Each pod gets its grace period in turn: allow for all of them.
        return list((await self._control("/v1/stop-pods", timeout=300))["stopped"])

    async def start_pods(self) -> None:
        await self._control("/v1/start-pods")
        self._stopped = False

    async def set_dns(self, drop: bool, hide: list[str]) -> None:
        self._dns_broken = drop or bool(hide)
        await self._control("/v1/dns", {"drop": drop, "hide": hide})

    async def zombie(self, action: str) -> dict[str, Any]:
        if action == "start":
            self._zombie = True  # before the call: a start that times out may still have started one
        answer = await self._control("/v1/zombie", {"action": action}, timeout=60)
        if action == "stop":
            self._zombie = False
        return dict(answer["zombie"])

    async def scale(self, replicas: int) -> None:
        await self._control("/v1/scale", {"replicas": replicas})

    async def rollout_restart(self) -> str:
        answer = await self._control("/v1/rollout", {"action": "restart"})
        return str(answer["revision"]["name"])

    def rollout(self) -> dict[str, Any]:
        try:
            return dict(read_state(self.directory).get("rollout") or {})
        except ClusterError as exc:
            raise FaultFailed(str(exc)) from None

    async def switchover(self, to: str | None, via: str | None) -> tuple[bool, str]:
        # The command itself, as an operator runs it: it finds the pod's peer port and token in the dir.
        argv = [sys.executable, "-m", "kvstore", "switchover", "--dir", str(self.directory), "--timeout", "15",
                *(["--to", to] if to else []), *(["--pod", via] if via else [])]
        try:
            result = await asyncio.to_thread(run_command, argv, 40.0, False)
        except subprocess.TimeoutExpired:
            raise FaultFailed("kvstore switchover did not answer within 40s") from None
        return result.returncode == 0, (result.stdout.strip() or result.stderr.strip())[-300:]

    def _stopped_volume(self, pod: str) -> Path:
        """The pod's data dir, after checking that no container of the pod runs (never touch a live LevelDB)."""
        try:
            state = read_state(self.directory)
        except ClusterError as exc:
            raise FaultFailed(str(exc)) from None
        entry = next((p for p in state["pods"] if p["name"] == pod), None)
        if entry is not None and not (entry.get("held") and entry.get("pid") is None):
            raise FaultFailed(f"{pod} is not held down (status {entry.get('status')}, pid {entry.get('pid')}): "
                              "its data dir is left alone")
        if entry is None and not state.get("suspended"):
            raise FaultFailed(f"{pod} is not a stopped pod of the cluster in {self.directory}")
        return volume_dir(self.directory, pod)

    def remove_volume(self, pod: str) -> bool:
        path = self._stopped_volume(pod)
        if not path.exists():
            return False
        shutil.rmtree(path)
        return True

    def snapshot_volume(self, pod: str) -> Path:
        source = self._stopped_volume(pod)
        self.snapshots.mkdir(exist_ok=True)
        self._copies += 1
        target = self.snapshots / f"{source.name}-{self._copies}"
        shutil.copytree(source, target, symlinks=True)
        return target

    def restore_volume(self, pod: str, snapshot: Path) -> None:
        path = self._stopped_volume(pod)
        if path.exists():
            shutil.rmtree(path)
        snapshot.rename(path)  # same file system: the old copy appears whole or not at all

    def cleanup(self) -> None:
        for pid in list(self._paused):
            self.resume(pid)
        if self.partitioner is not None:
            self.partitioner.cleanup()
            self._partitioned.clear()
        for name in list(self._docker_net):
            self._docker_reconnect(name)
        self._heal_controller()
        shutil.rmtree(self.snapshots, ignore_errors=True)

    def _heal_controller(self) -> None:
        calls: list[tuple[str, dict[str, Any]]] = [("/v1/release", {"pod": pod}) for pod in sorted(self._held)]
        if self._stopped:
            calls.append(("/v1/start-pods", {}))
        if self._dns_broken:
            calls.append(("/v1/dns", {}))
        if self._zombie:
            calls.append(("/v1/zombie", {"action": "stop"}))
        for path, body in calls:
            try:
                control.call_blocking(self.directory, "POST", path, body, timeout=30)
            except ClusterError as exc:  # e.g. already released, or the controller is gone
                log.info("heal %s %s: %s", path, body, exc)
        self._held.clear()
        self._stopped = self._dns_broken = self._zombie = False

    # Docker: disconnect the container from the network its runtime created, reconnect with the same IP.
    def _container(self, pod: str) -> Any:
        # Imported here, not at the top: every kvstore command loads this module (through
        # kvstore.chaos.cli), the Docker SDK adds 40-60 ms to each (measured after the rest is
        # loaded), and only a chaos run against --runtime docker needs it.
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

    faults: tuple[str, ...] = SIGNAL_FAULTS
    interval: float = 1.0          # mean pause between faults
    primary_bias: float = 0.45     # chance that a kill or a volume fault targets kv-0
    kill_weight: float = 4.0       # relative frequency of kills vs. one of any other fault
    pause_seconds: tuple[float, float] = (1.5, 4.0)
    partition_seconds: tuple[float, float] = (2.0, 5.0)
    dns_seconds: tuple[float, float] = (2.0, 5.0)
    rollback_age: tuple[float, float] = (2.0, 6.0)  # writes between the copy and its return
    full_stop_chance: float = 0.35  # a volume-loss during a full stop rather than of one held pod
    dns_drop_chance: float = 0.5    # a DNS fault that drops queries rather than leaving pods out
    dns_restart_chance: float = 0.5  # kv-0 restarted while DNS is broken
    zombie_seconds: tuple[float, float] = (3.0, 6.0)  # each phase: beside kv-0, in its place, beside it again
    zombie_share: float = 1 / 3    # of the operations, sent to the zombie while it runs
    scale_range: tuple[int, int] = (3, 7)  # pods a scale chooses between (the template's KV_REPLICAS stays)
    settle_wait: float = 45.0      # after a scale, wait at most this long for kv-0's voters to match the pods
    restart_wait: float = 30.0     # after a kill or a hold, wait at most this long for the pod to come back
    rollout_kill_chance: float = 0.5  # a rolling restart interrupted by a kill
    ready_wait: float = 90.0       # after a full stop, wait at most this long for every pod to be Ready
    node_loss_seconds: tuple[float, float] = (10.0, 40.0)  # the current primary held down, like a lost node
    freeze_extra: tuple[float, float] = (2.0, 8.0)  # a frozen primary stays stopped KV_FAILOVER_AFTER + this
    failover_after: float = 3.0    # KV_FAILOVER_AFTER when no follower's /v1/status says it
    seed: int | None = None


@dataclass
class Leadership:
    """Who leads as the pods' ``/v1/status`` tell it."""

    primary: PodInfo | None        # None: no pod answered, or none names a pod that runs
    failover_after: float | None   # the followers' KV_FAILOVER_AFTER, when one says it
    voters: list[str]              # the primary's voters (by name), as far as known


class Nemesis:
    """Injects faults until a deadline, one at a time, and logs each with a timestamp.

    Each fault's first entry in the log carries its name (what the report
    counts); the entries that follow say how it ended: ``restarted``,
    ``resume``, ``heal``, ``release``, ``start-pods``, ``dns-heal``,
    ``zombie-takeover``, ``zombie-giveback``, ``zombie-stop``, ``switched``
    or ``switchover-refused``, and ``ready`` (or ``not-ready``) once the pods
    it stopped serve again. ``end`` closes each fault that :meth:`run`
    injected: ``of`` names it and ``began`` says when it began (the report's
    outage per fault kind, :mod:`kvstore.chaos.outage`).
    """

    def __init__(self, backend: Backend, config: NemesisConfig, clock: Callable[[], float]) -> None:
        unsupported = set(config.faults) - backend.supports
        if unsupported:
            raise NemesisUnavailable(f"this runtime does not support: {', '.join(sorted(unsupported))} "
                                     f"(supported: {', '.join(f for f in FAULTS if f in backend.supports)})")
        self.backend = backend
        self.config = config
        self.clock = clock
        self.rng = random.Random(config.seed)
        self.log: list[dict[str, Any]] = []
        self.focus: str | None = None  # while set, the pod every client should use (kv-0 coming back)
        self.zombie_target: tuple[str, str] | None = None  # (name, URL) of a running zombie of kv-0
        self._aim_rng = random.Random(config.seed)  # the clients' draws leave the faults' sequence alone
        self._first = list(config.faults)
        self._targeted: set[str] = set()  # faults that already chose a pod (the first choice is kv-0)
        self.most_pods = 0  # the most pods a scale asked for: the run ends with that many again

    @property
    def controller(self) -> ControllerBackend:
        """The backend, for the faults only a controller can inject (checked in ``__init__``)."""
        return cast(ControllerBackend, self.backend)

    def aim(self, urls: dict[str, str]) -> dict[str, str]:
        """The pods a client should use for its next operation (called once per operation).

        All of ``urls``; only kv-0 while it comes back from a full stop; and while
        a zombie of kv-0 runs, only the zombie for ``zombie_share`` of the calls.
        """
        if self.focus is not None and self.focus in urls:
            return {self.focus: urls[self.focus]}
        zombie = self.zombie_target
        if zombie is not None and self._aim_rng.random() < self.config.zombie_share:
            return {zombie[0]: zombie[1]}
        return urls

    def _record(self, fault: str, pod: str, /, **detail: Any) -> None:
        entry = {"time": round(self.clock(), 6), "fault": fault, "pod": pod, **detail}
        self.log.append(entry)
        log.info("nemesis: %s", entry)

    def _choose(self) -> str:
        if self._first:  # every enabled fault once before chance decides (kill first, on kv-0)
            return self._first.pop(0)
        weights = [self.config.kill_weight if f == "kill" else 1.0 for f in self.config.faults]
        return self.rng.choices(self.config.faults, weights)[0]

    def _target(self, fault: str, pods: list[PodInfo]) -> PodInfo:
        """kv-0 the first time a fault picks a pod, then with ``primary_bias``; else another pod."""
        primary = [p for p in pods if p.ordinal == 0]
        others = [p for p in pods if p.ordinal != 0]
        first = fault not in self._targeted
        self._targeted.add(fault)
        if primary and (first or not others or self.rng.random() < self.config.primary_bias):
            return primary[0]
        return self.rng.choice(others or pods)

    async def _victim(self, fault: str, pods: list[PodInfo]) -> PodInfo:
        """Like :meth:`_target`, but a choice of kv-0 after the first goes to the current primary half
        of the time (the same pod until a failover or a switchover)."""
        first = fault not in self._targeted
        pod = self._target(fault, pods)
        if pod.ordinal == 0 and not first and self.rng.random() < 0.5:
            pod = (await self._leadership(pods)).primary or pod
        return pod

    def _uniform(self, bounds: tuple[float, float], deadline: float) -> float:
        """Seconds drawn from ``bounds``, cut at the deadline (but not below half a second)."""
        return min(self.rng.uniform(*bounds), max(0.5, deadline - self.clock()))

    async def run(self, deadline: float) -> list[dict[str, Any]]:
        """Inject faults until ``deadline``; everything is healed when this returns or raises."""
        try:
            while self.config.faults and self.clock() < deadline:  # --nemesis none: the workload alone
                await self._sleep_until(min(deadline, self.clock() + self.rng.uniform(0.5, 1.5) * self.config.interval))
                if self.clock() >= deadline:
                    break
                fault = self._choose()
                try:
                    pods = self.backend.pods()
                except NemesisUnavailable as exc:  # e.g. the API server did not answer: try later
                    self._record("skipped", "", reason=str(exc))
                    continue
                if fault in ("pause", "partition"):
                    pods = [p for p in pods if p.pid]
                if not pods:
                    continue
                began = self.clock()
                try:
                    await self._inject(fault, pods, deadline)
                except FaultFailed as exc:  # the cluster was in the way this time: heal, go on
                    self._record("skipped", "", of=fault, reason=str(exc))
                    self.heal_all()
                self._record("end", "", of=fault, began=round(began, 6))
            await self._scale_back()
        finally:
            self.focus = self.zombie_target = None
            self.heal_all()
        return self.log

    async def _inject(self, fault: str, pods: list[PodInfo], deadline: float) -> None:
        if fault == "kill":
            await self._kill(pods, deadline)
        elif fault == "pause":
            await self._pause(await self._victim(fault, pods), self._uniform(self.config.pause_seconds, deadline))
        elif fault == "partition":
            await self._partition(await self._victim(fault, pods), deadline)
        elif fault == "freeze-primary":
            await self.freeze_primary(pods)
        elif fault == "node-loss":
            await self.node_loss(pods, deadline)
        elif fault == "switchover":
            await self.switchover(pods)
        elif fault == "volume-loss":
            pod = self._target(fault, pods)
            if self.rng.random() < self.config.full_stop_chance:
                await self.restart_all(lose=pod.name)
            else:
                await self.volume_loss(pod)
        elif fault == "volume-rollback":
            await self.volume_rollback(self._target(fault, pods), self._uniform(self.config.rollback_age, deadline))
        elif fault == "dns":
            names = [p.name for p in pods]
            drop = self.rng.random() < self.config.dns_drop_chance
            hide = [] if drop else sorted(self.rng.sample(names, self.rng.randint(1, max(1, len(names) - 1))))
            primary = next((p for p in pods if p.ordinal == 0), None)
            restart = primary if self.rng.random() < self.config.dns_restart_chance else None
            await self.dns(drop, hide, self._uniform(self.config.dns_seconds, deadline), restart)
        elif fault == "restart-all":
            await self.restart_all()
        elif fault == "zombie-primary":
            primary = next((p for p in pods if p.ordinal == 0), None)
            if primary is not None:
                await self.zombie_primary(primary, deadline)
        elif fault == "scale":
            await self.scale(pods)
        elif fault == "rolling-restart":
            await self.rolling_restart(len(pods))
        else:
            raise ValueError(f"unknown fault {fault!r}")

    async def _sleep_until(self, when: float) -> None:
        delay = when - self.clock()
        if delay > 0:
            await asyncio.sleep(delay)

    async def _kill(self, pods: list[PodInfo], deadline: float) -> None:
        pod = await self._victim("kill", pods)
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

    async def _pause(self, pod: PodInfo, seconds: float, fault: str = "pause", /, **detail: Any) -> None:
        token = self.backend.pause(pod)
        if token is None:
            return
        self._record(fault, pod.name, pid=token, **detail)
        try:
            await asyncio.sleep(seconds)
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

    # ----------------------------------------------------- faults that move the primary's role
    async def freeze_primary(self, pods: list[PodInfo]) -> None:
        """SIGSTOP the current primary for longer than the followers wait before they fail over
        (``KV_FAILOVER_AFTER`` + ``freeze_extra``, not cut at the deadline), then SIGCONT: it wakes up
        believing it leads."""
        lead = await self._leadership(pods)
        if lead.primary is None or not lead.primary.pid:
            self._record("skipped", "", of="freeze-primary", reason="no pod says who leads")
            return
        after = self.config.failover_after if lead.failover_after is None else lead.failover_after
        seconds = after + self.rng.uniform(*self.config.freeze_extra)
        await self._pause(lead.primary, seconds, "freeze-primary", seconds=round(seconds, 3), failover_after=after)

    async def node_loss(self, pods: list[PodInfo], deadline: float) -> None:
        """Hold the current primary down for ``node_loss_seconds`` (cut at the deadline), like a pod
        whose node is gone, then release it and wait (bounded) until it is Ready again.

        Clients keep aiming at every pod: finding the new primary is the store's job.
        """
        lead = await self._leadership(pods)
        if lead.primary is None:
            self._record("skipped", "", of="node-loss", reason="no pod says who leads")
            return
        name = lead.primary.name
        seconds = self._uniform(self.config.node_loss_seconds, deadline)
        pid = await self.controller.hold(name)
        self._record("node-loss", name, pid=pid, seconds=round(seconds, 3))
        try:
            await asyncio.sleep(seconds)
            led_by = (await self._leadership([p for p in pods if p.name != name])).primary
        finally:
            await self.controller.release(name)
        self._record("release", name, led_by=led_by.name if led_by else None)
        await self._wait_ready({name: pid}, self.config.restart_wait)

    async def switchover(self, pods: list[PodInfo]) -> None:
        """``kvstore switchover`` asked of the current primary: to a random other voter, or to none
        (the primary picks). A refusal (the target is behind, no quorum…) is logged, not a failure."""
        lead = await self._leadership(pods)
        via = lead.primary.name if lead.primary else None
        to = self.rng.choice([*(v for v in lead.voters if v != via), None])
        self._record("switchover", via or "", to=to)
        done, answer = await self.controller.switchover(to, via)
        self._record("switched" if done else "switchover-refused", via or "", to=to, answer=answer)

    async def _leadership(self, pods: list[PodInfo]) -> Leadership:
        """Who leads now, among ``pods``: the one whose ``/v1/status`` says it is the writable primary
        (the newest epoch if several do), else the pod most of them name."""
        statuses = await asyncio.gather(*(self._status(p) for p in pods))
        answered = [(p, s) for p, s in zip(pods, statuses) if isinstance(s, dict)]
        by_name = {p.name: p for p in pods}
        serving = sorted((s.get("epoch") or 0, p.ordinal, p, s) for p, s in answered
                         if s.get("role") == "primary" and s.get("writable"))
        named = Counter(str((s.get("primary") or {}).get("name")) for _, s in answered)
        primary, status = (serving[-1][2], serving[-1][3]) if serving else (None, None)
        if primary is None and named:
            primary = by_name.get(named.most_common(1)[0][0])
            status = next((s for p, s in answered if p is primary), None)
        afters = [(s.get("primary") or {}).get("failover_after") for _, s in answered]
        after = next((float(a) for a in afters if isinstance(a, (int, float))), None)
        voters = ((status or {}).get("membership") or {}).get("voters")
        return Leadership(primary, after, [str(v) for v in voters] if isinstance(voters, list) else
                          sorted(by_name, key=lambda n: by_name[n].ordinal))

    # ----------------------------------------------------- faults through the controller
    async def _while_held(self, pod: PodInfo, change: Callable[[], Any]) -> Any:
        """Hold ``pod`` down, run ``change`` in a thread (it copies or removes files), release the pod
        and wait (bounded) until it is Ready again. Returns what ``change`` returned.

        The pod is released even when ``change`` fails; clients aim at kv-0 while it is held.
        """
        if pod.ordinal == 0:
            self.focus = pod.name
        try:
            pid = await self.controller.hold(pod.name)
            self._record("hold", pod.name, pid=pid)
            try:
                result = await asyncio.to_thread(change)
            finally:
                await self.controller.release(pod.name)
                self._record("release", pod.name)
            await self._wait_ready({pod.name: pid}, self.config.restart_wait)
            return result
        finally:
            self.focus = None

    async def volume_loss(self, pod: PodInfo) -> None:
        """Hold ``pod`` down (its node is gone), remove its data dir, release it with an empty volume."""
        def lose() -> None:
            removed = self.controller.remove_volume(pod.name)
            self._record("volume-loss", pod.name, mode="held", removed=removed)
        await self._while_held(pod, lose)

    async def volume_rollback(self, pod: PodInfo, age: float) -> None:
        """Copy ``pod``'s data dir while it is held down for a moment, let ``age`` seconds of
        writes pass, then hold it down again and put the old copy back."""
        lsn_of_copy = await self._lsn(pod)
        snapshot: Path = await self._while_held(pod, lambda: self.controller.snapshot_volume(pod.name))
        taken = self.clock()
        self._record("snapshot", pod.name, path=str(snapshot), lsn=lsn_of_copy)
        await asyncio.sleep(age)
        lsn_before = await self._lsn(pod)

        def restore() -> None:
            self.controller.restore_volume(pod.name, snapshot)
            self._record("volume-rollback", pod.name, age=round(self.clock() - taken, 3),
                         lsn_of_copy=lsn_of_copy, lsn_before=lsn_before)
        await self._while_held(pod, restore)

    async def dns(self, drop: bool, hide: list[str], seconds: float, restart: PodInfo | None = None) -> None:
        """Break the cluster's DNS for ``seconds``: drop every query, or leave ``hide`` out of answers.

        With ``restart`` (kv-0), that pod is killed once DNS is broken, so it starts up while
        DNS is still broken; DNS heals no sooner than a second after it runs again.
        """
        self._record("dns", "", mode="drop" if drop else "omit", hidden=hide,
                     restart=restart.name if restart else None, seconds=round(seconds, 3))
        try:
            await self.controller.set_dns(drop, hide)
            heal_at = self.clock() + seconds
            if restart is not None and await self.backend.kill(restart):
                if restart.ordinal == 0:
                    self.focus = restart.name
                started = await self._wait_for(lambda pods: any(
                    p.name == restart.name and p.pid and p.pid != restart.pid for p in pods), self.config.restart_wait)
                heal_at = max(heal_at, self.clock() + 1.0) if started else self.clock()
            await self._sleep_until(heal_at)
        finally:
            await self.controller.set_dns(False, [])
            self._record("dns-heal", "")
        if restart is not None:
            await self._wait_ready({restart.name: restart.pid}, self.config.restart_wait)
            self.focus = None

    async def restart_all(self, lose: str | None = None) -> None:
        """Stop every pod (reverse order) and start them again under the StatefulSet's policy.

        With ``lose``, that pod's data dir is removed while everything is stopped
        (a volume-loss during a full stop). From the first stop until every pod
        is Ready, clients aim at kv-0 only.
        """
        before = self.backend.pods()
        if lose is None:
            self._record("restart-all", "", pids={p.name: p.pid for p in before})
        primary = next((p.name for p in before if p.ordinal == 0), None)
        self.focus = primary
        try:
            stopped = await self.controller.stop_pods()
            self._record("stop-pods", "", stopped=stopped)
            if lose is not None:
                removed = await asyncio.to_thread(self.controller.remove_volume, lose)
                self._record("volume-loss", lose, mode="full-stop", removed=removed)
            await self.controller.start_pods()
            self._record("start-pods", "")
            await self._wait_ready({p.name: p.pid for p in before}, self.config.ready_wait)
        finally:
            self.focus = None

    async def zombie_primary(self, primary: PodInfo, deadline: float) -> None:
        """A second ``primary`` (kv-0): started beside it, then in its place in DNS, then beside it
        again, then killed; each phase lasts ``zombie_seconds``, cut at the deadline.

        While the zombie runs, ``zombie_share`` of the operations go to it (:meth:`aim`),
        recorded as sent to ``<primary>-zombie``. It is stopped (SIGKILL, DNS given back,
        its copy removed) even when a phase fails or the run is cancelled.
        """
        name = primary.name + ZOMBIE_SUFFIX
        zombie = await self.controller.zombie("start")
        try:
            self._record("zombie-primary", primary.name, zombie=name, address=zombie.get("address"),
                         url=zombie.get("url"), pid=zombie.get("pid"))
            self.zombie_target = (name, str(zombie["url"]))
            await asyncio.sleep(self._uniform(self.config.zombie_seconds, deadline))
            await self.controller.zombie("takeover")
            self._record("zombie-takeover", primary.name, address=zombie.get("address"))
            await asyncio.sleep(self._uniform(self.config.zombie_seconds, deadline))
            await self.controller.zombie("giveback")
            self._record("zombie-giveback", primary.name, address=primary.address)
            await asyncio.sleep(self._uniform(self.config.zombie_seconds, deadline))
        finally:
            self.zombie_target = None
            stopped = await self.controller.zombie("stop")
            self._record("zombie-stop", primary.name, pid=stopped.get("pid"), exit_code=stopped.get("exit_code"))

    async def scale(self, pods: list[PodInfo]) -> None:
        """Scale the StatefulSet to another count within ``scale_range``, as ``kubectl scale`` does.

        Down only once kv-0's voters match the pods (the removals of an earlier
        scale-down are done) and to no fewer than a majority of them: a scale
        that deletes more voters at once leaves too few to remove anyone
        (docs/design.md, Membership). Then waits (bounded) for the pods, and
        for kv-0's configuration to match them, and logs what it saw.
        """
        current = len(pods)
        primary = next((p for p in pods if p.ordinal == 0), None)
        voters = await self._voters(primary) if primary is not None else None
        low, high = self.config.scale_range
        options = [n for n in range(low, high + 1) if n > current
                   or (n < current and voters == current and n >= current // 2 + 1)]
        if not options:
            self._record("skipped", "", of="scale", reason=f"{current} pods, voters {voters}: no count to go to")
            return
        target = self.rng.choice(options)
        self._record("scale", "", replicas=target, pods=current, voters=voters)
        await self.controller.scale(target)
        self.most_pods = max(self.most_pods, target, current)
        await self._settle_scale(target)

    async def _settle_scale(self, target: int) -> None:
        """Wait (bounded) until ``target`` pods are Ready and kv-0 counts as many voters; log it."""
        ready = await self._wait_for(lambda ps: len(ps) == target and all(p.ready for p in ps),
                                     self.config.ready_wait)
        until = self.clock() + self.config.settle_wait
        voters = None
        while self.clock() < until:
            primary = next((p for p in self.backend.pods() if p.ordinal == 0), None)
            voters = await self._voters(primary) if primary is not None else None
            if voters == target:
                break
            await asyncio.sleep(max(0.0, min(0.5, until - self.clock())))  # no later than the wait's end
        self._record("scaled" if ready and voters == target else "scale-unsettled", "", replicas=target,
                     voters=voters, ready=ready)

    async def _scale_back(self) -> None:
        """End the run with as many pods as it ever had, so every pod a client used has a final view."""
        if self.most_pods > len(self.backend.pods()):
            self._record("scale", "", replicas=self.most_pods, reason="end of run")
            await self.controller.scale(self.most_pods)
            await self._settle_scale(self.most_pods)

    async def _voters(self, primary: PodInfo) -> int | None:
        """How many voters kv-0's configuration has (None when it does not say)."""
        voters = ((await self._status(primary) or {}).get("membership") or {}).get("voters")
        return len(voters) if isinstance(voters, list) else None

    async def rolling_restart(self, replicas: int) -> None:
        """``rollout restart``, then wait (bounded by ``ready_wait``) until every pod has the new revision
        and is Ready. With ``rollout_kill_chance``, once a random number of pods has been replaced, a
        pod is killed (like ``kubectl delete pod``): the rollout must go on from there."""
        revision = await self.controller.rollout_restart()
        self._record("rolling-restart", "", revision=revision)
        kill_after = self.rng.randint(1, max(1, replicas)) if self.rng.random() < self.config.rollout_kill_chance \
            else None
        until = self.clock() + self.config.ready_wait
        state: dict[str, Any] = {}
        while self.clock() < until:
            await asyncio.sleep(0.2)
            state = self.controller.rollout()
            if state.get("state") == "complete" and state.get("update_revision") == revision:
                self._record("rolled", "", revision=revision)
                return
            if kill_after is not None and state.get("updated", 0) >= kill_after:
                kill_after = None
                running = [p for p in self.backend.pods() if p.pid]
                victim = self._target("rolling-restart", running) if running else None
                if victim is not None and await self.backend.kill(victim):
                    self._record("rollout-kill", victim.name, pid=victim.pid, updated=state.get("updated"))
        self._record("not-rolled", "", waited=self.config.ready_wait, rollout=state.get("message"))

    async def _lsn(self, pod: PodInfo) -> int | None:
        """The pod's LSN from ``/v1/status`` (None when it does not answer): for the log only."""
        lsn = (await self._status(pod) or {}).get("lsn")
        return lsn if isinstance(lsn, int) else None

    async def _status(self, pod: PodInfo) -> dict[str, Any] | None:
        """The pod's ``/v1/status`` (None when it does not answer within 2 s, or not with an object)."""
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
                async with session.get(f"{pod.url}/v1/status") as response:
                    status = await response.json(content_type=None)
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError):
            return None
        return status if isinstance(status, dict) else None

    async def _wait_for(self, done: Callable[[list[PodInfo]], bool], limit: float) -> bool:
        """Poll the pods (bounded by ``limit`` seconds) until ``done`` holds."""
        until = self.clock() + limit
        while self.clock() < until:
            try:
                if done(self.backend.pods()):
                    return True
            except NemesisUnavailable:
                pass
            await asyncio.sleep(0.2)
        return False

    async def _wait_ready(self, old: dict[str, int | None], limit: float) -> None:
        """Wait until each pod of ``old`` (name -> its pid before) runs anew and is Ready;
        log ``ready`` or ``not-ready``."""
        now: dict[str, PodInfo] = {}

        def ready(current: list[PodInfo]) -> bool:
            now.clear()
            now.update((p.name, p) for p in current)
            return all(n in now and now[n].ready and now[n].pid and now[n].pid != pid for n, pid in old.items())
        if await self._wait_for(ready, limit):
            self._record("ready", ",".join(old), pids={n: now[n].pid for n in old})
        else:
            self._record("not-ready", ",".join(old), waited=limit,
                         pods={n: (now[n].pid, now[n].ready) if n in now else None for n in old})

    def heal_all(self) -> None:
        """Resume, reconnect, remove rules, release, restart, heal DNS: synchronous so it also works
        from ``finally`` after Ctrl-C."""
        self.backend.cleanup()
