"""Helpers of the container tests: HTTP to the pods, readiness, the test's StatefulSet.

Kept out of conftest.py so test modules can import them by name.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import socket
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any, Coroutine, TypeVar

import pytest
import yaml

import needs

from kvstore.local import image as image_mod
from kvstore.local.dns import DnsServer, Endpoint, HeadlessService
from kvstore.local.docker_runtime import POD_OFFSET, ContainerPod, DockerRuntime
from kvstore.local.runtime import PodSpec, RuntimeUnavailable

T = TypeVar("T")

ROOT = Path(__file__).resolve().parents[2]
IMAGE_TAG = image_mod.DEFAULT_TAG
TEST_LABEL = "org.kvstore.test"  # on everything the tests create

# Direct connections only: a proxy from the environment must not see test traffic.
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def statefulset() -> dict[str, Any]:
    """k8s/base/statefulset.yaml as written (no kubectl needed)."""
    return yaml.safe_load((ROOT / "k8s/base/statefulset.yaml").read_text())


def http(method: str, url: str, body: bytes | None = None, timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    """One HTTP request; (status, headers, body) also for 4xx/5xx answers."""
    request = urllib.request.Request(url, data=body, method=method)
    try:
        with _opener.open(request, timeout=timeout) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def status_json(base_url: str) -> dict[str, Any]:
    status, _, body = http("GET", f"{base_url}/v1/status")
    assert status == 200, body
    return json.loads(body)


def wait_ready(base_url: str, container: Any, attempts: int = 240, pause: float = 0.25) -> None:
    """Poll /readyz until 200, at most ``attempts`` times; fail early if the container exits."""
    last = ""
    for _ in range(attempts):
        try:
            status, _, body = http("GET", f"{base_url}/readyz", timeout=2)
            if status == 200:
                return
            last = f"{status} {body[:200]!r}"
        except OSError as exc:
            last = str(exc)
        container.reload()
        if container.status in ("exited", "dead"):
            break
        time.sleep(pause)
    container.reload()
    logs = container.logs(tail=40).decode(errors="replace")
    pytest.fail(f"{container.name} not ready ({container.status}; last answer: {last}):\n{logs}")


class LoopThread:
    """An event loop in its own thread for the DNS server and the runtime's container watchers.

    The test body is synchronous (Docker SDK calls block); the DNS server must keep
    answering meanwhile, so it cannot share the test's thread.
    """

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="test-loop", daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 120.0) -> T:
        """Run a coroutine on the loop and return its result (bounded by ``timeout``)."""
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        if not self._thread.is_alive():
            self.loop.close()


def unique(prefix: str) -> str:
    """A name no other run (or a leftover of a killed one) is using."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def subnets() -> list[str]:
    """Candidate subnets for a test network: $KV_TEST_SUBNET only, else 172.30.78-97.0/24.

    Several runs may share the engine (a developer's and CI's): each takes the first
    candidate no other network holds.
    """
    chosen = os.environ.get("KV_TEST_SUBNET")
    return [chosen] if chosen else [f"172.30.{n}.0/24" for n in range(78, 98)]


def owner_labels() -> dict[str, str]:
    """Labels on everything a test run creates: which process made it."""
    return {TEST_LABEL: f"{socket.gethostname()}:{os.getpid()}"}


def is_leftover(labels: dict[str, str]) -> bool:
    """True when the test run that created this (on this host) is gone."""
    host, _, pid = labels.get(TEST_LABEL, "").rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def start_runtime(docker_client: Any, image: str, spec: Any, **options: Any) -> DockerRuntime:
    """A DockerRuntime configured for ``spec`` (a ClusterSpec) on the first free candidate subnet.

    ``image`` is the id the session built: another run on the engine may move the tag meanwhile.
    """
    problems = []
    for candidate in subnets():
        runtime = DockerRuntime(image=image, subnet=candidate, network=unique("kvtest"), build=False,
                                client=docker_client, labels=owner_labels(),
                                say=lambda m: print(m, flush=True), **options)
        try:
            runtime.configure(spec)
            return runtime
        except RuntimeUnavailable as exc:  # the subnet is taken (another run, another project)
            problems.append(str(exc))
    pytest.fail("no free subnet for a test network (set KV_TEST_SUBNET): " + "; ".join(problems))


def client_leftovers(client: Any, scope: str) -> list[str]:
    """Containers, networks and volumes of this runtime that still exist."""
    selector = {"label": f"org.kvstore.runtime={scope}"}
    return ([f"container {c.name}" for c in client.containers.list(all=True, filters=selector)]
            + [f"network {n.name}" for n in client.networks.list(filters=selector)]
            + [f"volume {v.name}" for v in client.volumes.list(filters=selector)])


class Pods:
    """Pods started through :class:`DockerRuntime`, published in the project's DNS server.

    Like the headless Service with publishNotReadyAddresses, a pod is in DNS from
    creation on, Ready or not.
    """

    def __init__(self, runtime: DockerRuntime, loop: LoopThread, directory: Path, token: str) -> None:
        self.runtime = runtime
        self.loop = loop
        self.directory = directory
        self.token_path = directory / "token"
        self.token_path.write_text(token + "\n")
        self.token_path.chmod(0o600)
        self.service = HeadlessService("kv", "default", "cluster.local", {"http": 8080, "peer": 8081})
        assert runtime.network is not None
        self.dns = DnsServer(self.service, runtime.network.gateway, 0)
        self.pods: dict[int, ContainerPod] = {}
        self.started = False

    def start_dns(self) -> None:
        self.loop.run(self.dns.start())
        self.started = True

    def address(self, ordinal: int) -> str:
        assert self.runtime.network is not None
        return self.runtime.network.address(POD_OFFSET + ordinal)

    def url(self, ordinal: int) -> str:
        return f"http://{self.address(ordinal)}:8080"

    def spec(self, ordinal: int, replicas: int = 3) -> PodSpec:
        name = f"kv-{ordinal}"
        env = {
            "POD_NAME": name, "POD_NAMESPACE": "default", "KV_SERVICE": "kv",
            "KV_CLUSTER_DOMAIN": "cluster.local", "KV_DNS_SERVER": self.dns.address,
            "KV_REPLICAS": str(replicas), "KV_CLUSTER_TOKEN_FILE": str(self.token_path),
            "KV_REFRESH_INTERVAL": "0.5", "KV_FAILOVER_AFTER": "0", "KV_SWITCHOVER_ON_STOP": "false",
        }
        return PodSpec(name=name, ordinal=ordinal, address=self.address(ordinal), http_port=8080,
                       peer_port=8081, data_dir=self.directory / f"data-{name}",
                       log_path=self.directory / f"{name}.log", env=env)

    def start(self, ordinal: int, replicas: int = 3, ready: bool = True) -> ContainerPod:
        """Create pod ``ordinal`` (its volume is reused if it exists) and wait until Ready."""
        spec = self.spec(ordinal, replicas)
        self.service.set_endpoint(spec.name, Endpoint(spec.address, spec.name))
        pod = self.loop.run(self.runtime.start(spec))
        self.pods[ordinal] = pod
        if ready:
            wait_ready(self.url(ordinal), pod.container)
        return pod

    def wait_writable(self, attempts: int = 120, pause: float = 0.25) -> None:
        """Wait until kv-0 has finished its start-up check (it is Ready before, for OrderedReady)."""
        for _ in range(attempts):
            try:
                status, _, body = http("GET", f"{self.url(0)}/v1/status", timeout=2)
                if status == 200 and json.loads(body).get("writable"):
                    return
            except OSError:
                pass
            time.sleep(pause)
        pytest.fail("kv-0 did not take writes: " + (self.directory / "kv-0.log").read_text(errors="replace")[-2000:])

    def wait_exit(self, ordinal: int, timeout: float = 120.0) -> int:
        """The pod's exit status once its container has exited (negative: that signal)."""
        return self.loop.run(self.pods[ordinal].wait(), timeout)

    def log(self, ordinal: int) -> str:
        path = self.directory / f"kv-{ordinal}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def exec(self, ordinal: int, argv: list[str]) -> tuple[int, str]:
        """``docker exec`` in the pod's container."""
        result = self.pods[ordinal].container.exec_run(argv)
        return result.exit_code, result.output.decode(errors="replace")

    def stop_all(self) -> None:
        """SIGKILL what still runs, wait for the containers to go, stop DNS."""
        for ordinal, pod in sorted(self.pods.items(), reverse=True):
            pod.send_signal(9)
            try:
                self.wait_exit(ordinal, 30)
            except Exception:
                pass
        if self.started:
            self.loop.run(self.dns.stop())
            self.started = False


DEFAULT_SOCKET = Path("/var/run/docker.sock")


def engine_address(environ: dict[str, str], socket_path: Path = DEFAULT_SOCKET) -> str | None:
    """Where a Docker engine is configured (DOCKER_HOST, else the default socket), or None: no engine here."""
    if environ.get("DOCKER_HOST"):
        return environ["DOCKER_HOST"]
    return f"unix://{socket_path}" if socket_path.exists() else None


def connect_or_skip(environ: dict[str, str], socket_path: Path = DEFAULT_SOCKET) -> Any:
    """A client of the configured engine; a skip only when none is configured (CI: a failure), a failure when broken."""
    import docker  # a dependency of kvstore itself: its absence is a broken install, not a skip

    address = engine_address(environ, socket_path)
    if address is None:
        needs.missing(f"no Docker engine here: DOCKER_HOST is unset and {socket_path} does not exist")
    try:
        client = docker.DockerClient(base_url=address, timeout=120)
        client.ping()
    except Exception as exc:  # the SDK raises several unrelated types; any of them means broken
        pytest.fail(f"the Docker engine at {address} is configured but does not answer "
                    f"({type(exc).__name__}: {exc})")
    return client
