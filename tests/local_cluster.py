"""A `kvstore cluster` for tests: the project's local-cluster handle, with test conveniences."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import urllib.error
import urllib.request

from kvstore.local import control, handle
from kvstore.local.handle import wait_for


STEADY_PRIMARY = {"KV_FAILOVER_AFTER": "0", "KV_SWITCHOVER_ON_STOP": "false"}


class LocalCluster(handle.LocalCluster):
    """One detached local StatefulSet in its own temp dir and loopback range."""

    def __init__(self, base_address: str, dns_address: str, replicas: int = 3,
                 env: dict[str, str] | None = None, parallel: bool = False,
                 update_strategy: str | None = None) -> None:
        # kv-0 leads throughout unless a test turns failover and switchover on (test_failover.py).
        env = {**STEADY_PRIMARY, **(env or {})}
        super().__init__(replicas=replicas, base_address=base_address, dns_address=dns_address,
                         parallel=parallel, env=env, grace=5.0, ready_timeout=90.0,
                         update_strategy=update_strategy)

    def up(self) -> "LocalCluster":  # type: ignore[override]
        """Start the controller and wait until every pod is Ready; on failure (stopped by then) show the logs."""
        try:
            super().up()
        except handle.ClusterError as exc:
            raise RuntimeError("\n".join([str(exc), *getattr(exc, "__notes__", [])])) from None
        return self

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
        """Wait until ``name`` runs as a new process and is Ready again (kv-0: and takes writes).

        A restarted kv-0 is Ready while it still waits to hear from its
        followers (so that OrderedReady goes on); tests that write next need
        it to have finished that start-up check.
        """
        def restarted() -> bool:
            pod = self.pods().get(name)
            return bool(pod and pod["pid"] and pod["pid"] != old_pid and pod["ready"]
                        and (pod["ordinal"] != 0 or self.writable()))
        wait_for(f"{name} to restart and be Ready", restarted, timeout)

    def control(self, path: str, body: dict[str, object] | None = None, timeout: float = 60.0) -> dict[str, object]:
        """A call to the controller's control API (hold, release, dns, ...)."""
        return asyncio.run(control.call(self.directory, "POST", path, body or {}, timeout))

    def writable(self) -> bool:
        """Whether kv-0 says it takes writes."""
        try:
            status, _, body = http("GET", self.url("kv-0") + "/v1/status", timeout=5)
        except OSError:
            return False
        return status == 200 and json.loads(body).get("writable") is True


def http(method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None,
         timeout: float = 15) -> tuple[int, dict[str, str], bytes]:
    """One request; answers (status, headers, body) for every status."""
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()
