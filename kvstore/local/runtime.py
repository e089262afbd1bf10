"""Pod runtimes: how the local StatefulSet runs one pod's container.

The controller only needs a :class:`PodRuntime` (``configure``, ``start(spec)
-> PodProcess``, ``close``) and, from the process, ``wait()`` and
``send_signal()``. :class:`ProcessRuntime` here runs ``kvstore serve`` as a
child process on a loopback address; :mod:`kvstore.local.docker_runtime` runs
each pod as a container of the project's image. ``kvstore cluster up
--runtime`` chooses between them (:func:`kvstore.local.cli.get_runtime`).
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import os
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

class RuntimeUnavailable(Exception):
    """The chosen runtime cannot be used here; the message says what to do."""


@dataclass(frozen=True)
class PodSpec:
    """Everything needed to start one pod: its identity, address, env and volume."""

    name: str
    ordinal: int
    address: str
    http_port: int
    peer_port: int
    data_dir: Path
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)


class PodProcess(Protocol):
    """A started pod container."""

    pid: int | None

    async def wait(self) -> int:
        """Wait for the container to exit; return its exit status (negative: killed by signal)."""

    def send_signal(self, sig: int) -> None:
        """Deliver a signal; a container that already exited is not an error."""


class PodRuntime(Protocol):
    """Starts pod containers."""

    name: str

    def configure(self, spec: Any) -> None:
        """Prepare before any pod starts (blocking; may set the ClusterSpec's addresses)."""

    async def start(self, spec: PodSpec) -> PodProcess:
        """Start the pod's container; raise OSError if it cannot be started."""

    async def close(self) -> None:
        """Release what ``configure`` made, after every pod has stopped."""


class _Process:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self._proc = proc
        self.pid: int | None = proc.pid

    async def wait(self) -> int:
        return await self._proc.wait()

    def send_signal(self, sig: int) -> None:
        if self._proc.returncode is None:
            try:
                self._proc.send_signal(sig)
            except ProcessLookupError:
                pass


def _die_with_parent() -> Callable[[], None] | None:
    """A pre-exec hook making the child die if the controller dies (Linux PR_SET_PDEATHSIG).

    Pods run in their own session (so Ctrl-C reaches only the controller, which
    stops them in order); this makes sure a SIGKILLed controller leaves no pods.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None
    parent = os.getpid()

    def hook() -> None:
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the controller died before prctl took effect
            os._exit(1)

    return hook


class ProcessRuntime:
    """Pods as ``python -m kvstore serve`` processes on loopback addresses."""

    name = "process"

    def __init__(self, command: list[str] | None = None) -> None:
        self.command = command or [sys.executable, "-m", "kvstore", "serve"]
        self._hook = _die_with_parent()

    def configure(self, spec: Any) -> None:
        """Nothing to prepare: pods share this machine's loopback."""

    async def close(self) -> None:
        """Nothing to release."""

    async def start(self, spec: PodSpec) -> PodProcess:
        spec.data_dir.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("KV_", "POD_"))}
        env.update(spec.env)
        env["PYTHONUNBUFFERED"] = "1"
        with open(spec.log_path, "ab") as log:
            proc = await asyncio.create_subprocess_exec(
                *self.command, env=env, cwd=str(spec.data_dir),
                stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=asyncio.subprocess.STDOUT,
                start_new_session=True, preexec_fn=self._hook,
            )
        return _Process(proc)
