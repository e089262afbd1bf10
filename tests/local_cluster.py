"""A `kvstore cluster` for tests: started detached, driven by the real CLI, always stopped."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable

from kvstore.local.state import client_url, read_state, running_pid


def kvstore(*args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    """Run the real command line."""
    return subprocess.run([sys.executable, "-m", "kvstore", *args], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def wait_for(what: str, check: Callable[[], Any], timeout: float = 30.0, interval: float = 0.1) -> Any:
    """Poll ``check`` until it returns something truthy; bounded in time."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}")


class LocalCluster:
    """One detached local StatefulSet in its own temp dir and loopback range."""

    def __init__(self, base_address: str, dns_address: str, replicas: int = 3,
                 env: dict[str, str] | None = None, parallel: bool = False) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="kvc-"))
        self.base_address = base_address
        self.dns_address = dns_address
        self.replicas = replicas
        self.env = dict(env or {})
        self.parallel = parallel

    def up(self) -> "LocalCluster":
        """Start the controller and wait until every pod is Ready."""
        args = ["cluster", "up", "--detach", "--dir", str(self.directory), "--replicas", str(self.replicas),
                "--base-address", self.base_address, "--dns-address", self.dns_address,
                "--grace", "5", "--timeout", "90"]
        if self.parallel:
            args.append("--parallel")
        for name, value in self.env.items():
            args.append(f"--env={name}={value}")
        result = kvstore(*args, timeout=150)
        if result.returncode != 0:
            self.down()
            raise RuntimeError(f"cluster up failed: {result.stderr}\n{self.logs()}")
        return self

    def down(self) -> None:
        """`cluster down`, SIGKILL of the controller if that fails, then remove the dir."""
        try:
            if running_pid(self.directory) is not None:
                kvstore("cluster", "down", "--dir", str(self.directory), "--timeout", "30", timeout=60)
        finally:
            pid = running_pid(self.directory)
            if pid and pid > 0:
                os.kill(pid, signal.SIGKILL)
                wait_for("controller to die", lambda: running_pid(self.directory) is None, 10)
            shutil.rmtree(self.directory, ignore_errors=True)

    # ------------------------------------------------------------- pods
    def pods(self) -> dict[str, dict[str, Any]]:
        """The controller's view of the pods."""
        return {p["name"]: p for p in read_state(self.directory)["pods"]}

    def url(self, name: str) -> str:
        """A pod's client URL."""
        return client_url(self.pods()[name])

    def pid(self, name: str) -> int:
        """A pod's process id (changes when it restarts)."""
        pid = self.pods()[name]["pid"]
        assert pid, f"{name} has no process"
        return pid

    def kill(self, name: str) -> None:
        """SIGKILL a pod through the CLI, like kubectl delete pod --grace-period=0."""
        result = kvstore("cluster", "kill", name, "--dir", str(self.directory))
        assert result.returncode == 0, result.stderr

    def pause(self, name: str) -> int:
        """SIGSTOP a pod: it holds its connections but answers nothing."""
        pid = self.pid(name)
        os.kill(pid, signal.SIGSTOP)
        return pid

    @staticmethod
    def resume(pid: int) -> None:
        """SIGCONT a paused pod."""
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass

    def wait_ready(self, names: list[str] | None = None, timeout: float = 60.0) -> None:
        """Wait until the named pods (default: all) are Running and Ready."""
        def ready() -> bool:
            pods = self.pods()
            wanted = names or list(pods)
            return all(n in pods and pods[n]["ready"] and pods[n]["pid"] for n in wanted)
        wait_for(f"pods {names or 'all'} Ready", ready, timeout)

    def wait_restarted(self, name: str, old_pid: int, timeout: float = 60.0) -> None:
        """Wait until ``name`` runs as a new process and is Ready again."""
        def restarted() -> bool:
            pod = self.pods().get(name)
            return bool(pod and pod["pid"] and pod["pid"] != old_pid and pod["ready"])
        wait_for(f"{name} to restart and be Ready", restarted, timeout)

    def scale(self, replicas: int) -> None:
        """`cluster scale N --wait`."""
        result = kvstore("cluster", "scale", str(replicas), "--wait", "--dir", str(self.directory),
                         "--timeout", "90", timeout=150)
        assert result.returncode == 0, result.stderr
        self.replicas = replicas

    def logs(self) -> str:
        """Every pod's log tail, for failure messages."""
        out = []
        for path in sorted((self.directory / "logs").glob("*.log")):
            lines = path.read_text(errors="replace").splitlines()[-25:]
            out.append(f"--- {path.name}\n" + "\n".join(lines))
        return "\n".join(out)


def http(method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None,
         timeout: float = 15) -> tuple[int, dict[str, str], bytes]:
    """One request; answers (status, headers, body) for every status."""
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()
