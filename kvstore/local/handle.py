"""One handle on a local cluster, for the programs that drive one: tests, benchmarks, ``kvstore chaos``.

It goes through the real command line, as a user would: ``kvstore cluster up
--detach`` in a child process, ``scale --wait``, ``kill`` and ``down``; pods,
URLs and PIDs come from the cluster directory's state file. ``down`` never
leaves anything running: when ``cluster down`` fails or hangs, the controller
(found through its lock file) is SIGKILLed, and its pods die with it
(``PR_SET_PDEATHSIG``, see :mod:`kvstore.local.runtime`).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Callable, TypeVar

from kvstore.local.state import LOG_DIR, ClusterError, client_url, copy_logs, read_state, running_pid


T = TypeVar("T")


def wait_for(what: str, check: Callable[[], T], timeout: float = 30.0, interval: float = 0.1) -> T:
    """Poll ``check`` until it returns something truthy, and return that; TimeoutError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


def run_cli(*args: str, timeout: float = 90.0) -> subprocess.CompletedProcess[str]:
    """Run ``kvstore ARGS`` as a child process; its output is captured, never inherited."""
    return subprocess.run([sys.executable, "-m", "kvstore", *args], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def _last_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = (result.stderr or result.stdout).strip().splitlines()
    return lines[-1] if lines else f"exit status {result.returncode}"


class LocalCluster:
    """A detached local StatefulSet in ``directory`` (a new temporary one when None, removed by ``down``)."""

    def __init__(self, directory: str | os.PathLike[str] | None = None, *, replicas: int = 3,
                 runtime: str = "process", base_address: str | None = None, dns_address: str | None = None,
                 parallel: bool = False, env: dict[str, str] | None = None, grace: float = 5.0,
                 ready_timeout: float = 90.0, update_strategy: str | None = None) -> None:
        self.owns_directory = directory is None
        self.directory = Path(tempfile.mkdtemp(prefix="kvc-") if directory is None else directory)
        self.replicas = replicas
        self.runtime = runtime
        self.base_address = base_address
        self.dns_address = dns_address
        self.parallel = parallel
        self.env = dict(env or {})
        self.grace = grace
        self.ready_timeout = ready_timeout
        self.update_strategy = update_strategy
        self.restore: str | None = None  # a backup file ``up`` seeds kv-0's volume from

    def __enter__(self) -> "LocalCluster":
        self.up()  # stops what it started when it fails: __exit__ does not run then
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.down()

    # ------------------------------------------------------------ lifecycle
    def up(self) -> subprocess.CompletedProcess[str]:
        """``cluster up --detach``: returns once every pod is Ready; ClusterError (its last line) if not.

        ``up --detach`` leaves a controller that did not get Ready trying, for a
        person to look at; a program driving this handle would leave it behind
        (with its pods, parent 1). So a start that fails or is interrupted
        stops the cluster first; the pods' logs are added to the error as a note.
        """
        args = ["cluster", "up", "--detach", "--dir", str(self.directory), "--replicas", str(self.replicas),
                "--runtime", self.runtime, "--grace", f"{self.grace:g}", "--timeout", f"{self.ready_timeout:g}"]
        if self.base_address is not None:
            args += ["--base-address", self.base_address]
        if self.dns_address is not None:
            args += ["--dns-address", self.dns_address]
        if self.parallel:
            args.append("--parallel")
        if self.update_strategy is not None:
            args += ["--update-strategy", self.update_strategy]
        if self.restore is not None:
            args += ["--restore", self.restore]
        args += [f"--env={name}={value}" for name, value in self.env.items()]
        try:
            # Room beyond the readiness timeout for the controller's own start (an image build with docker).
            result = run_cli(*args, timeout=self.ready_timeout + 90)
            if result.returncode != 0:
                raise ClusterError(f"cluster up failed: {_last_line(result)}")
        except BaseException as exc:
            exc.add_note(self.logs())
            self.down()
            raise
        return result

    def down(self, timeout: float = 30.0, keep_logs: Path | None = None) -> None:
        """``cluster down``, SIGKILL of the controller if it is still there, then the logs and the dir.

        ``keep_logs``: copy the pods' logs there first. A directory this handle
        made is removed; one it was given is left.
        """
        try:
            if running_pid(self.directory) is not None:
                run_cli("cluster", "down", "--dir", str(self.directory), "--timeout", f"{timeout:g}",
                        timeout=timeout + 30)
        except subprocess.TimeoutExpired:
            pass
        finally:
            self._kill_controller()
            if keep_logs is not None:
                copy_logs(self.directory, keep_logs)
            if self.owns_directory:
                shutil.rmtree(self.directory, ignore_errors=True)

    def _kill_controller(self) -> None:
        pid = running_pid(self.directory)
        if not pid or pid < 0:
            return
        try:
            os.kill(pid, signal.SIGKILL)  # our own controller, named by its lock file
        except ProcessLookupError:
            return
        wait_for("the controller to die", lambda: running_pid(self.directory) is None, 10)

    # ------------------------------------------------------------ pods
    def pods(self) -> dict[str, dict[str, Any]]:
        """The controller's view of the pods: name -> state entry (address, pid, ready, ...)."""
        return {p["name"]: p for p in read_state(self.directory)["pods"]}

    def url(self, name: str) -> str:
        """A pod's client URL."""
        return client_url(self.pods()[name])

    def pid(self, name: str) -> int:
        """A pod's process id (it changes when the pod restarts); ClusterError when it has none."""
        pid = self.pods()[name]["pid"]
        if not pid:
            raise ClusterError(f"{name} has no process now")
        return int(pid)

    def kill(self, name: str) -> None:
        """``cluster kill``: SIGKILL a pod, like ``kubectl delete pod --grace-period=0``."""
        result = run_cli("cluster", "kill", name, "--dir", str(self.directory))
        if result.returncode != 0:
            raise ClusterError(f"cluster kill {name} failed: {_last_line(result)}")

    def scale(self, replicas: int, timeout: float = 90.0) -> None:
        """``cluster scale N --wait``."""
        result = run_cli("cluster", "scale", str(replicas), "--wait", "--dir", str(self.directory),
                         "--timeout", f"{timeout:g}", timeout=timeout + 60)
        if result.returncode != 0:
            raise ClusterError(f"cluster scale {replicas} failed: {_last_line(result)}")
        self.replicas = replicas

    def cli(self, *args: str, timeout: float = 90.0) -> subprocess.CompletedProcess[str]:
        """``kvstore cluster ARGS --dir <this cluster>``, output captured."""
        return run_cli("cluster", *args, "--dir", str(self.directory), timeout=timeout)

    def logs(self, lines: int = 25) -> str:
        """The last lines of every pod's (and the controller's) log, for failure messages."""
        out = []
        for path in sorted((self.directory / LOG_DIR).glob("*.log")):
            tail = path.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"--- {path.name}\n" + "\n".join(tail))
        return "\n".join(out)
