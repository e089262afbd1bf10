"""The cluster directory: how `kvstore cluster` commands find a running cluster.

Layout of the cluster dir (default ``./kvstore-cluster``)::

    controller.lock   held (flock) by the running controller; holds its pid
    cluster.json      state written by the controller on every change
    control.sock      the controller's control API (HTTP over a Unix socket)
    token             the cluster token, mode 0600 (the Kubernetes Secret)
    data-kv-N/        each pod's data dir (its PVC), kept across restarts and scale-down
    logs/             kv-N.log per pod, controller.log when detached

A cluster is running exactly when ``controller.lock`` is locked: the kernel
drops the lock when the controller dies, however it dies, so a stale
``cluster.json`` is never mistaken for a live cluster.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import secrets
import shutil
from pathlib import Path
from typing import Any

from kvstore.cmdline import hint

STATE_FILE = "cluster.json"
LOCK_FILE = "controller.lock"
SOCKET_FILE = "control.sock"
TOKEN_FILE = "token"
LOG_DIR = "logs"
# sun_path is 108 bytes on Linux; keep a margin for the terminating NUL.
MAX_SOCKET_PATH = 100


class ClusterError(Exception):
    """A user-facing problem with the cluster or its directory; the message is one line."""


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc)


def prepare_dir(path: str | os.PathLike[str]) -> Path:
    """Create the cluster dir if needed and check that it is writable; return it absolute."""
    directory = Path(path).absolute()
    try:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / LOG_DIR).mkdir(exist_ok=True)
        probe = directory / f".probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except FileExistsError:
        raise ClusterError(f"--dir {path}: exists and is not a directory") from None
    except OSError as exc:
        raise ClusterError(f"--dir {path}: not a writable directory ({_reason(exc)})") from None
    if len(str(directory / SOCKET_FILE)) > MAX_SOCKET_PATH:
        raise ClusterError(f"--dir {path}: path too long for the control socket; choose a shorter --dir")
    return directory


def ensure_token(directory: Path) -> Path:
    """The cluster token file, created once per cluster dir with mode 0600."""
    path = directory / TOKEN_FILE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        os.chmod(path, 0o600)
        if not path.read_text(encoding="utf-8").strip():
            raise ClusterError(f"{path} is empty; delete it to have a new token made") from None
        return path
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(secrets.token_urlsafe(32) + "\n")
    return path


class ControllerLock:
    """The exclusive lock that marks a running controller in a cluster dir."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise ClusterError naming the controller that holds it."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise already_running(self.path.parent, running_pid(self.path.parent)) from None
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        """Drop the lock (also dropped by the kernel when the process exits)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def already_running(directory: Path, pid: int | None) -> ClusterError:
    """The error of a second ``cluster up`` in a directory whose controller runs."""
    return ClusterError(f"a cluster is already running in {directory} (controller pid {pid}); stop it with "
                        f"{hint('cluster down', directory)} (or Ctrl-C where it runs in the foreground), "
                        "or choose another --dir")


def no_cluster(directory: str | os.PathLike[str]) -> ClusterError:
    """The error of a command that needs a running cluster in ``directory``."""
    return ClusterError(f"no cluster is running in {directory}: start one with {hint('cluster up', directory)}")


def running_pid(directory: str | os.PathLike[str]) -> int | None:
    """The pid of the controller running in ``directory``, or None when none is."""
    path = Path(directory) / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            text = os.pread(fd, 32, 0).decode(errors="replace").strip()
            return int(text) if text.isdigit() else -1
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def copy_logs(directory: str | os.PathLike[str], to: Path) -> bool:
    """Copy the cluster's logs (every pod's and the controller's) into ``to``; False when it has none.

    A running cluster's logs are copied as far as they are written.
    """
    logs = Path(directory) / LOG_DIR
    if not logs.is_dir():
        return False
    shutil.copytree(logs, to, dirs_exist_ok=True)
    return True


def write_state(directory: Path, state: dict[str, Any]) -> None:
    """Replace ``cluster.json`` atomically so readers never see half a file."""
    tmp = directory / f".{STATE_FILE}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(state, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, directory / STATE_FILE)


def remove_state(directory: Path) -> None:
    """Remove the state file and control socket of a stopped controller."""
    for name in (STATE_FILE, SOCKET_FILE):
        try:
            (directory / name).unlink()
        except FileNotFoundError:
            pass


def read_state(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """The state of the cluster running in ``directory``; ClusterError if none is running."""
    directory = Path(directory)
    if not directory.is_dir() or running_pid(directory) is None:
        raise no_cluster(directory)
    try:
        state = json.loads((directory / STATE_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ClusterError(f"the cluster in {directory} is starting; try again in a moment") from None
    except (OSError, ValueError) as exc:
        raise ClusterError(f"cannot read {directory / STATE_FILE}: {exc}") from None
    if not isinstance(state, dict) or not isinstance(state.get("pods"), list):
        raise ClusterError(f"{directory / STATE_FILE} is not a cluster state file")
    return state


def client_url(pod: dict[str, Any]) -> str:
    """The client URL of one pod entry of the state file."""
    return f"http://{pod['address']}:{pod['http_port']}"


def read_client_url(directory: str | os.PathLike[str]) -> str:
    """A client URL of the cluster in ``directory``: a Ready pod, the primary first.

    Raises ValueError, with the ClusterError's one-line message, when no cluster is running there.
    """
    try:
        state = read_state(directory)
    except ClusterError as exc:
        raise ValueError(str(exc)) from None
    pods = sorted(state["pods"], key=lambda p: p["ordinal"])
    ready = [p for p in pods if p.get("ready")]
    chosen = (ready or pods or [None])[0]
    if chosen is None:
        raise ValueError(f"the cluster in {directory} has no pods (scaled to 0?)")
    return client_url(chosen)
