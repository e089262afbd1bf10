"""A ``kvstore serve`` process started through a wrapper command (strace, unshare, ...)."""

from __future__ import annotations

import os
import signal
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
            # Its own process group: a wrapper such as strace leaves its child running when it
            # is signalled itself, so stopping signals the whole group.
            self.proc = subprocess.Popen([*self.wrapper, sys.executable, "-m", "kvstore", "serve"],
                                         env=self.environment(), stdout=log, stderr=log,
                                         start_new_session=True)
        finally:
            log.close()
        if wait:
            try:
                self.wait_ready(timeout=self.ready_timeout)
            except BaseException:
                self.kill()  # a replica that never got ready is not left running
                raise
        return self

    def stop(self) -> None:
        """SIGTERM the whole group (wrapper and replica), SIGKILL what is left after 10 s."""
        self._signal_group(signal.SIGTERM)
        try:
            if self.proc is not None:
                self.proc.wait(10)
        except subprocess.TimeoutExpired:
            pass
        self.kill()

    def kill(self) -> None:
        """SIGKILL every process of the group."""
        self._signal_group(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(10)

    def _signal_group(self, sig: int) -> None:
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass
