"""Run real ``kvstore serve`` processes for tests: start, wait ready, SIGTERM, SIGKILL."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free on ``host`` a moment ago."""
    with contextlib.closing(socket.socket()) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class ReplicaProcess:
    """One ``kvstore serve`` process on loopback with its own data dir and log file."""

    def __init__(self, workdir: Path, pod_name: str = "kv-0", host: str = "127.0.0.1",
                 env: dict[str, str] | None = None) -> None:
        self.workdir = workdir
        self.pod_name = pod_name
        self.host = host
        self.http_port = free_port(host)
        self.peer_port = free_port(host)
        self.dns_port = free_port(host)
        self.data_dir = workdir / f"data-{pod_name}"
        self.log_path = workdir / f"{pod_name}.log"
        self.extra_env = dict(env or {})
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The client URL."""
        return f"http://{self.host}:{self.http_port}"

    def environment(self) -> dict[str, str]:
        """The pod's environment, Kubernetes style."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("KV_")}
        env.update({
            "POD_NAME": self.pod_name,
            "POD_NAMESPACE": "default",
            "KV_DATA_DIR": str(self.data_dir),
            "KV_BIND_ADDRESS": self.host,
            "KV_HTTP_PORT": str(self.http_port),
            "KV_PEER_PORT": str(self.peer_port),
            "KV_CLUSTER_TOKEN": "test-token",
            "KV_REPLICAS": "1",
            "KV_WRITE_CONCERN": "1",
            # kv-0 leads throughout unless a test turns failover and switchover on (test_failover.py).
            "KV_FAILOVER_AFTER": "0",
            "KV_SWITCHOVER_ON_STOP": "false",
            # Discovery runs even alone; keep its queries on loopback, where no
            # DNS server answers (a lone replica has no peers to find).
            "KV_DNS_SERVER": f"127.0.0.1:{self.dns_port}",
        })
        env.update(self.extra_env)
        return env

    def start(self, wait: bool = True) -> "ReplicaProcess":
        """Start the process; by default wait (bounded) until /readyz answers 200."""
        log = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen([sys.executable, "-m", "kvstore", "serve"],
                                         env=self.environment(), stdout=log, stderr=log)
        finally:
            log.close()
        if wait:
            try:
                self.wait_ready()
            except BaseException:
                self.kill()  # a replica that never got ready is not left running
                raise
        return self

    def wait_ready(self, timeout: float = 20.0) -> None:
        """Poll /readyz until 200; fail with the log's tail if the process died or hung."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"{self.pod_name} exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url + "/readyz", timeout=1) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.05)
        raise RuntimeError(f"{self.pod_name} not ready after {timeout}s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of the process log, for failure messages."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def terminate(self, timeout: float = 10.0) -> int:
        """SIGTERM and wait; returns the exit status (SIGKILL if it overstays)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            raise

    def kill(self) -> None:
        """SIGKILL, like a node dying; waits for the process to be gone."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        """Stop however possible (fixture teardown)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            self.terminate(timeout=5)
        except subprocess.TimeoutExpired:
            pass


@contextlib.contextmanager
def running(workdir: Path, **kwargs: object) -> Iterator[ReplicaProcess]:
    """A started replica that is always stopped afterwards."""
    replica = ReplicaProcess(workdir, **kwargs)  # type: ignore[arg-type]
    try:
        replica.start()
        yield replica
    finally:
        replica.stop()


def run_serve(env: dict[str, str], timeout: float = 20.0) -> subprocess.CompletedProcess[str]:
    """Run ``kvstore serve`` expecting it to stop by itself (bad configuration)."""
    full = {k: v for k, v in os.environ.items() if not k.startswith("KV_")}
    full.update(env)
    return subprocess.run([sys.executable, "-m", "kvstore", "serve"], env=full, capture_output=True,
                          text=True, timeout=timeout)
