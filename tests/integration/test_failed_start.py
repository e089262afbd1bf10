"""A cluster that fails to start leaves no process behind: not its controller, not its pods.

``kvstore cluster up --detach`` leaves a controller that did not get Ready
trying, for a person to look at. A program driving the handle (a test, a
benchmark, ``kvstore chaos``) would leave it running with its pods, parent 1,
so the handle stops it when ``up`` fails.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from kvstore.local.handle import LocalCluster
from kvstore.local.state import ClusterError, read_state, running_pid

NET = "127.0.22"


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for its parent counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


# Three pods cannot all be Ready within half a second (each is a Python process that starts,
# in order): `up` gives up, as on a machine too loaded for its timeout, while they start. Within
# a tenth of a second the controller (a Python process too) has not even taken its lock yet.
@pytest.mark.parametrize("ready_timeout", [0.5, 0.1], ids=["while-pods-start", "before-the-controller-locks"])
def test_a_cluster_that_never_gets_ready_is_stopped_when_up_fails(tmp_path: Path, ready_timeout: float) -> None:
    directory = tmp_path / "cluster"  # given, so it stays for the test to look at afterwards
    cluster = LocalCluster(directory, replicas=3, base_address=f"{NET}.10", dns_address=f"{NET}.2",
                           ready_timeout=ready_timeout)
    seen: set[int] = set()
    done = threading.Event()

    def watch() -> None:  # the controller's and the pods' pids while up runs
        while not done.wait(0.05):
            pid = running_pid(directory)
            if pid and pid > 0:
                seen.add(pid)
            try:
                seen.update(int(p["pid"]) for p in read_state(directory)["pods"] if p.get("pid"))
            except (ClusterError, OSError, ValueError, KeyError):
                pass

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        with pytest.raises(ClusterError) as failed:
            with cluster:
                pytest.fail(f"three pods got Ready within {ready_timeout}s")
        assert "not all pods Ready" in str(failed.value), failed.value
        assert any("controller.log" in note for note in failed.value.__notes__), "the logs come with the error"
        done.set()
        watcher.join()
        assert seen, "the controller was never seen running"
        # Stopped, they may take a moment to exit (a pod's SIGTERM, the controller's own stop);
        # one still running after that is left behind.
        deadline = time.monotonic() + 15
        while (left := sorted(pid for pid in seen if alive(pid))) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not left, f"processes of the failed cluster still running: {left}"
        assert running_pid(directory) is None
    finally:
        done.set()
        watcher.join()
        for pid in seen:  # only what this test's cluster started, if the handle left it
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
