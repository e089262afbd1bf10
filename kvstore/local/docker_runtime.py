"""Pods as Docker containers: the ``docker`` runtime of the local StatefulSet.

Each pod is a container of the project's image (built offline by
:mod:`kvstore.local.image`) on a user-defined bridge network that this runtime
creates, with the fixed address ``base + ordinal`` (as ``kvstore cluster``
gives pods loopback addresses). The host reaches the containers directly on
that network; the cluster's DNS server listens on the network's gateway
address, which is the host's side of the bridge, so pods resolve the headless
Service's SRV records through ``KV_DNS_SERVER`` as they would through CoreDNS.

Containers run as the manifests run pods: the image's non-root user, a
read-only root filesystem with a tmpfs ``/tmp``, every capability dropped and
no privilege escalation. The pod's data dir (its PVC) is bind-mounted at
``/data`` (or, with ``volumes="named"``, a Docker volume per pod is, kept
until :meth:`DockerRuntime.remove_volumes`), and the token file at
``/var/run/secrets/kvstore/token``.

Lifecycle: :meth:`DockerRuntime.configure` (build the image, create the network,
point the cluster spec at it), :meth:`DockerRuntime.start` per pod container,
:meth:`DockerRuntime.close` (remove what is left and the network). Everything
created carries the label ``org.kvstore.runtime`` with the runtime's name, so
leftovers of a controller that died are found and removed by the next one.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable

import docker
import docker.errors
import docker.types

from kvstore.local import image as image_mod
from kvstore.local.runtime import PodSpec, RuntimeUnavailable
from kvstore.progress import ProgressLine

log = logging.getLogger("kvstore.local.docker")

LABEL = "org.kvstore.runtime"
IMAGE_UID = 10001  # the Dockerfile's USER; tests/k8s checks it against the manifests
DATA_DIR = "/data"
TOKEN_PATH = "/var/run/secrets/kvstore/token"
DEFAULT_SUBNET = "172.30.77.0/24"  # private; override with KVSTORE_DOCKER_SUBNET or --subnet
POD_OFFSET = 10                    # pods at .10, .11, ...; .1 is the gateway (the host)
WAIT_SLICE = 30                    # seconds per container-wait request, so no request hangs forever
ENGINE_FAILURES = 60               # consecutive failed calls (1 s apart) before a pod counts as lost
LOG_DRAIN = 5.0                    # seconds to let the log follower write the last lines


def docker_client() -> docker.DockerClient:
    """A client of the local engine, or RuntimeUnavailable saying why not."""
    try:
        return image_mod.client_or_error(timeout=120)
    except image_mod.ImageError as exc:
        raise RuntimeUnavailable(f"--runtime docker: {exc}") from None


def exit_status(code: int) -> int:
    """Docker's 128+N for a container killed by signal N, as the process runtime reports it (-N)."""
    return -(code - 128) if 128 < code < 160 else code


class Network:
    """A user-defined bridge network on a chosen private subnet."""

    def __init__(self, client: docker.DockerClient, name: str, subnet: str, labels: dict[str, str]) -> None:
        self.client = client
        self.name = name
        self.subnet = ipaddress.ip_network(subnet)
        self.labels = labels
        self.gateway = str(self.subnet.network_address + 1)
        self._network: Any = None

    def address(self, index: int) -> str:
        """The ``index``-th address of the subnet (raises ValueError past its end)."""
        address = self.subnet.network_address + index
        if address not in self.subnet or address == self.subnet.broadcast_address:
            raise ValueError(f"address #{index} is outside {self.subnet}")
        return str(address)

    def create(self) -> None:
        """Create the network, replacing a leftover of the same name."""
        with contextlib.suppress(docker.errors.NotFound):
            self.client.networks.get(self.name).remove()
        ipam = docker.types.IPAMConfig(pool_configs=[
            docker.types.IPAMPool(subnet=str(self.subnet), gateway=self.gateway)])
        try:
            self._network = self.client.networks.create(
                self.name, driver="bridge", ipam=ipam, labels=self.labels, check_duplicate=True)
        except docker.errors.APIError as exc:
            raise RuntimeUnavailable(
                f"cannot create Docker network {self.name} on {self.subnet}: {exc.explanation}; "
                "choose another subnet (KVSTORE_DOCKER_SUBNET)") from None

    def remove(self) -> None:
        """Remove the network; a network already gone is fine."""
        with contextlib.suppress(docker.errors.NotFound):
            self.client.networks.get(self.name).remove()


class ContainerPod:
    """A started pod container: ``wait()`` and ``send_signal()`` as the controller needs them."""

    def __init__(self, container: Any, client: docker.DockerClient, log_path: Path | None,
                 remove: bool = True) -> None:
        self.container = container
        self.client = client
        self.remove_on_exit = remove
        container.reload()
        self.pid: int | None = container.attrs["State"].get("Pid") or None
        self.name: str = container.name
        self._done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._exit: int | None = None
        # Dedicated threads: the default executor is small, and these block for the pod's life.
        self._logs: threading.Thread | None = None
        if log_path is not None:
            self._logs = threading.Thread(target=self._follow_logs, args=(log_path,),
                                          name=f"logs-{self.name}", daemon=True)
            self._logs.start()
        threading.Thread(target=self._wait_thread, args=(asyncio.get_running_loop(),),
                         name=f"wait-{self.name}", daemon=True).start()

    def _wait_thread(self, loop: asyncio.AbstractEventLoop) -> None:
        code = -1
        failures = 0
        while failures < ENGINE_FAILURES:
            try:
                code = int(self.container.wait(timeout=WAIT_SLICE)["StatusCode"])
                break
            except docker.errors.NotFound:
                break
            except Exception:  # the wait timed out while the container runs on, or the engine is gone
                try:
                    self.container.reload()
                    failures = 0
                except docker.errors.NotFound:
                    break
                except Exception:
                    failures += 1
                    time.sleep(1)
        self._exit = code
        if self._logs is not None:
            self._logs.join(LOG_DRAIN)  # the last lines, before the container goes
        if self.remove_on_exit:
            with contextlib.suppress(docker.errors.APIError):
                self.container.remove(force=True)
        with contextlib.suppress(RuntimeError):  # the loop may be closed already
            loop.call_soon_threadsafe(self._set_result, exit_status(code))

    def _set_result(self, code: int) -> None:
        if not self._done.done():
            self._done.set_result(code)

    def _follow_logs(self, log_path: Path) -> None:
        with contextlib.suppress(Exception), open(log_path, "ab") as out:
            for chunk in self.container.logs(stream=True, follow=True, stdout=True, stderr=True):
                out.write(chunk)
                out.flush()

    async def wait(self) -> int:
        """Wait for the container to exit; its status (negative: killed by that signal)."""
        return await asyncio.shield(self._done)

    def send_signal(self, sig: int) -> None:
        """``docker kill --signal``; a container that already exited is not an error."""
        if self._exit is not None:
            return
        with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
            self.container.kill(signal=int(sig))


class DockerRuntime:
    """Starts pod containers on a network of their own."""

    name = "docker"

    def __init__(self, *, image: str = image_mod.DEFAULT_TAG, subnet: str | None = None,
                 network: str | None = None, build: bool = True, volumes: str = "bind",
                 client: docker.DockerClient | None = None, labels: dict[str, str] | None = None,
                 say: Callable[[str], None] = lambda m: log.info("%s", m),
                 progress: ProgressLine | None = None) -> None:
        self.image = image
        self.subnet = subnet or os.environ.get("KVSTORE_DOCKER_SUBNET") or DEFAULT_SUBNET
        self.network_name = network
        self.build = build
        if volumes not in ("bind", "named"):
            raise ValueError("volumes must be 'bind' (the pod's data dir) or 'named' (Docker volumes)")
        self.volumes = volumes
        self.extra_labels = dict(labels or {})
        self.say = say
        self.progress = progress  # shows the image build's step
        self._client = client
        self.network: Network | None = None
        self.scope = ""
        self._pods: dict[str, ContainerPod] = {}

    @property
    def client(self) -> docker.DockerClient:
        """The engine client, created on first use."""
        if self._client is None:
            self._client = docker_client()
        return self._client

    def container_name(self, pod: str) -> str:
        """The container of pod ``pod``: unique per cluster, recognisable in ``docker ps``."""
        return f"{self.network_name}-{pod}"

    def volume_name(self, pod: str) -> str:
        """The named volume of pod ``pod`` (``volumes="named"``), like the PVC ``data-kv-N``."""
        return f"{self.network_name}-data-{pod}"

    def remove_volumes(self) -> list[str]:
        """Delete this cluster's named volumes (its data); returns their names."""
        removed = []
        for volume in self.client.volumes.list(filters={"label": f"{LABEL}={self.scope}"}):
            with contextlib.suppress(docker.errors.APIError):
                volume.remove(force=True)
                removed.append(volume.name)
        return removed

    def configure(self, spec: Any) -> None:
        """Before the DNS server starts: image, network, and the spec's addresses on that network.

        ``spec`` is the controller's ClusterSpec; its ``base_address`` and
        ``dns_address`` are set to this network's pod range and gateway.
        """
        directory = Path(getattr(spec, "directory", ".")).absolute()
        self.scope = hashlib.sha256(str(directory).encode()).hexdigest()[:10]
        self.network_name = self.network_name or f"kvstore-{self.scope}"
        self.cleanup_leftovers()
        if self.build:
            try:
                image_mod.ensure_image(self.image, self.say, self.progress)
            except image_mod.ImageError as exc:
                raise RuntimeUnavailable(f"--runtime docker: {exc}") from None
        self.network = Network(self.client, self.network_name, self.subnet, self._labels())
        replicas = int(getattr(spec, "replicas", 1))
        try:
            self.network.address(POD_OFFSET + max(replicas, 1) - 1)
        except ValueError:
            raise RuntimeUnavailable(f"{replicas} pods do not fit in {self.subnet}") from None
        self.network.create()
        spec.base_address = self.network.address(POD_OFFSET)
        spec.dns_address = self.network.gateway
        spec.network = str(self.network.subnet)  # for check_replicas: pods must fit in this subnet
        self.say(f"network {self.network_name} {self.subnet}: DNS at {self.network.gateway}, "
                 f"pods from {spec.base_address}")

    def _labels(self, pod: str | None = None) -> dict[str, str]:
        labels = {**self.extra_labels, LABEL: self.scope}
        if pod is not None:
            labels["org.kvstore.pod"] = pod
        return labels

    def cleanup_leftovers(self) -> None:
        """Remove containers and the network of an earlier controller of this cluster that died."""
        for container in self.client.containers.list(all=True, filters={"label": f"{LABEL}={self.scope}"}):
            with contextlib.suppress(docker.errors.APIError):
                container.remove(force=True)
        for network in self.client.networks.list(filters={"label": f"{LABEL}={self.scope}"}):
            with contextlib.suppress(docker.errors.APIError):
                network.remove()

    def _identity(self, spec: PodSpec) -> str:
        """The container user, and the ownership of what it must read and write.

        As root on the host, the data dir and token are handed to the image's user
        (as fsGroup does on Kubernetes); otherwise the container runs as the host user,
        who owns them already.
        """
        token = spec.env.get("KV_CLUSTER_TOKEN_FILE")
        if os.geteuid() != 0:
            if self.volumes == "bind":
                spec.data_dir.mkdir(parents=True, exist_ok=True)
                return f"{os.getuid()}:{os.getgid()}"
            return f"{IMAGE_UID}:{IMAGE_UID}"  # the token must then be readable by all
        if token and Path(token).stat().st_uid != IMAGE_UID:
            os.chown(token, IMAGE_UID, IMAGE_UID)
        if self.volumes == "named":
            return f"{IMAGE_UID}:{IMAGE_UID}"
        spec.data_dir.mkdir(parents=True, exist_ok=True)
        if spec.data_dir.stat().st_uid != IMAGE_UID:  # like fsGroupChangePolicy: OnRootMismatch
            for root, dirs, files in os.walk(spec.data_dir):
                for name in [root, *(os.path.join(root, n) for n in dirs + files)]:
                    os.chown(name, IMAGE_UID, IMAGE_UID, follow_symlinks=False)
        return f"{IMAGE_UID}:{IMAGE_UID}"

    def _run(self, spec: PodSpec) -> Any:
        assert self.network is not None, "configure() first"
        name = self.container_name(spec.name)
        with contextlib.suppress(docker.errors.NotFound):
            self.client.containers.get(name).remove(force=True)  # the previous run of this pod
        user = self._identity(spec)
        env = dict(spec.env)
        env.update({"KV_DATA_DIR": DATA_DIR, "KV_BIND_ADDRESS": "0.0.0.0"})
        if self.volumes == "named":
            # A new volume takes /data's owner (the image's user) from the image.
            volume = self.volume_name(spec.name)
            try:
                self.client.volumes.get(volume)
            except docker.errors.NotFound:
                self.client.volumes.create(volume, labels=self._labels(spec.name))
            mounts = [docker.types.Mount(DATA_DIR, volume, type="volume")]
        else:
            mounts = [docker.types.Mount(DATA_DIR, str(spec.data_dir.absolute()), type="bind")]
        if env.get("KV_CLUSTER_TOKEN_FILE"):
            mounts.append(docker.types.Mount(TOKEN_PATH, str(Path(env["KV_CLUSTER_TOKEN_FILE"]).absolute()),
                                             type="bind", read_only=True))
            env["KV_CLUSTER_TOKEN_FILE"] = TOKEN_PATH
        endpoint = self.client.api.create_endpoint_config(ipv4_address=spec.address)
        return self.client.containers.run(
            self.image, ["serve"], name=name, hostname=spec.name, detach=True,
            environment=env, user=user, mounts=mounts,
            network=self.network.name, networking_config={self.network.name: endpoint},
            labels=self._labels(spec.name),
            # The restricted Pod Security profile of k8s/base/statefulset.yaml.
            read_only=True, tmpfs={"/tmp": "size=64m"}, cap_drop=["ALL"],
            security_opt=["no-new-privileges"],
        )

    async def start(self, spec: PodSpec) -> ContainerPod:
        """Start the pod's container; OSError if the engine refuses."""
        loop = asyncio.get_running_loop()
        try:
            container = await loop.run_in_executor(None, self._run, spec)
        except (docker.errors.APIError, docker.errors.ImageNotFound) as exc:
            raise OSError(f"docker: {exc}") from None
        pod = ContainerPod(container, self.client, spec.log_path)
        self._pods[spec.name] = pod
        return pod

    async def close(self) -> None:
        """After the controller stopped every pod: remove what is left, then the network."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self.close_sync)

    def close_sync(self) -> None:
        """:meth:`close` for callers without an event loop."""
        if self._client is None:
            return
        for pod in self._pods.values():
            with contextlib.suppress(docker.errors.APIError):
                pod.container.remove(force=True)
        self._pods.clear()
        if self.scope:
            self.cleanup_leftovers()
        if self.network is not None:
            self.network.remove()
