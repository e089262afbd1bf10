"""A ``kvstore serve`` process started through a wrapper command (strace, unshare, ...)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from replica_process import ReplicaProcess


class WrappedReplica(ReplicaProcess):
    """A replica run as ``wrapper + [python, -m, kvstore, serve]``; waits longer to be Ready (wrappers are slow)."""

    def __init__(self, workdir: Path, pod_name: str, host: str, wrapper: list[str],
                 env: dict[str, str] | None = None, ready_timeout: float = 60.0) -> None:
        super().__init__(workdir, pod_name, host, env=env)
        self.wrapper = list(wrapper)
        self.ready_timeout = ready_timeout

    def start(self, wait: bool = True) -> "WrappedReplica":
        log = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen([*self.wrapper, sys.executable, "-m", "kvstore", "serve"],
                                         env=self.environment(), stdout=log, stderr=log)
        finally:
            log.close()
        if wait:
            self.wait_ready(timeout=self.ready_timeout)
        return self
