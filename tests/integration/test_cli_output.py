"""What a newcomer sees: the launcher's first run, `get` on a terminal, `cluster up`'s next steps."""

from __future__ import annotations

import os
import pty
import selectors
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

from local_cluster import LocalCluster
from replica_process import ReplicaProcess, running

ROOT = Path(__file__).resolve().parents[2]
HOST = "127.0.31.2"
CLUSTER_BASE, CLUSTER_DNS = "127.0.32.10", "127.0.32.2"


# ------------------------------------------------------------------ ./kv first run
def test_first_run_keeps_pip_output_in_a_log_it_names(tmp_path: Path) -> None:
    """pip's lines go to .venv/install.log; the terminal gets kv's lines, and on failure the log's name."""
    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(ROOT / "kv", project / "kv")
    (project / "pyproject.toml").write_text("this is not [toml\n")  # pip install -e must fail
    # Offline: pip's self-upgrade finds nothing newer, then the broken pyproject.toml stops it.
    env = {**os.environ, "PYTHON": sys.executable, "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    result = subprocess.run([str(project / "kv"), "version"], capture_output=True, text=True, env=env,
                            timeout=240, stdin=subprocess.DEVNULL)
    log = project / ".venv" / "install.log"
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    # kv's own lines, then the log's last lines indented under the one that names it.
    named = next(i for i, line in enumerate(lines) if "failed" in line)
    assert str(log) in lines[named]
    assert all(line.startswith("kv: ") for line in lines[:named + 1]), lines
    assert all(line.startswith("    ") for line in lines[named + 1:]), lines
    text = log.read_text()
    assert "Requirement already satisfied: pip" in text  # pip's noise, kept out of the terminal
    assert "Requirement already satisfied" not in result.stderr
    assert "pyproject.toml" in text or "TOML" in text


@pytest.mark.parametrize("args, workers", [([], 4), (["-n", "0"], 0), (["-n", "2"], 2)])
def test_kv_test_runs_four_files_side_by_side_unless_told(args: list[str], workers: int) -> None:
    """`./kv test` adds `-n 4 --dist loadfile`; a `-n` of the caller's own replaces it."""
    if not (ROOT / ".venv" / "bin" / "python").exists():
        pytest.skip("the suite runs from a .venv that ./kv did not make")
    env = {name: value for name, value in os.environ.items() if not name.startswith(("PYTEST_", "COV_"))}
    result = subprocess.run([str(ROOT / "kv"), "test", *args, "-p", "no:cacheprovider",
                             "tests/unit/test_watch_position.py"],
                            capture_output=True, text=True, env=env, timeout=120, stdin=subprocess.DEVNULL,
                            cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert " passed" in result.stdout
    if workers:
        assert f"{workers} workers" in result.stdout, result.stdout
    else:
        assert "workers" not in result.stdout, result.stdout


# ------------------------------------------------------------------ get
@pytest.fixture(scope="module")
def own_replica(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReplicaProcess]:
    """One replica on this file's own loopback address."""
    with running(tmp_path_factory.mktemp("cli-output"), host=HOST) as proc:
        yield proc


def _get_on_a_terminal(args: list[str]) -> bytes:
    """Run the command with stdout on a pseudo-terminal; everything it wrote there."""
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen(args, stdout=slave, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    finally:
        os.close(slave)
    out = b""
    deadline = time.monotonic() + 30
    try:
        while time.monotonic() < deadline:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            out += chunk
    finally:
        os.close(master)
        proc.wait(10)
    assert proc.returncode == 0, proc.stderr.read() if proc.stderr else ""
    return out


def test_get_ends_with_a_newline_on_a_terminal_and_is_raw_when_piped(own_replica: ReplicaProcess) -> None:
    value = b"no newline at the end"
    request = urllib.request.Request(own_replica.url + "/v1/kv/greeting", data=value, method="PUT")
    with urllib.request.urlopen(request, timeout=10) as answer:
        assert answer.status == 200
    args = [sys.executable, "-m", "kvstore", "get", "greeting", "--url", own_replica.url]
    piped = subprocess.run(args, capture_output=True, timeout=30, stdin=subprocess.DEVNULL)
    assert piped.returncode == 0, piped.stderr
    assert piped.stdout == value  # the exact bytes, for scripts
    # The terminal turns "\n" into "\r\n": the value then a line end, so the prompt starts afresh.
    assert _get_on_a_terminal(args) == value + b"\r\n"


# ------------------------------------------------------------------ cluster up
def test_cluster_up_in_the_foreground_prints_next_steps_once_ready(tmp_path: Path) -> None:
    directory = tmp_path / "cluster"
    proc = subprocess.Popen(
        [sys.executable, "-m", "kvstore", "cluster", "up", "--dir", str(directory), "--replicas", "1",
         "--base-address", CLUSTER_BASE, "--dns-address", CLUSTER_DNS, "--grace", "5"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True,
        env={**os.environ, "KVSTORE_COMMAND": "./kv"})
    seen = b""
    try:
        assert proc.stdout is not None
        selector = selectors.DefaultSelector()
        selector.register(proc.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and b"\ndashboard:" not in seen:
            if selector.select(timeout=1):
                chunk = os.read(proc.stdout.fileno(), 65536)  # unbuffered: select() sees what is left
                if not chunk:
                    break
                seen += chunk
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            rest, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            rest, _ = proc.communicate()
    output = seen.decode()
    lines = output.splitlines()
    ready = next(i for i, line in enumerate(lines) if line.startswith("kv-0") and "1/1" in line)
    hint = next(i for i, line in enumerate(lines) if line.startswith("next:"))
    assert hint > ready, output  # printed once the pod is Ready, not before
    assert f"./kv put greeting hello --dir {directory}" in lines[hint]
    assert "Ctrl-C" in lines[hint]
    assert lines[hint + 1] == f"dashboard: http://{CLUSTER_BASE}:8080/ui/"
    assert (output + rest).count("dashboard:") == 1
    assert proc.returncode == 0


def test_cluster_up_detached_prints_next_steps() -> None:
    cluster = LocalCluster(CLUSTER_BASE, CLUSTER_DNS, replicas=1)  # its directory, and its teardown
    directory = cluster.directory
    env = {k: v for k, v in os.environ.items() if k != "KVSTORE_COMMAND"}  # as if run as `kvstore`
    try:
        result = subprocess.run(
            [sys.executable, "-m", "kvstore", "cluster", "up", "--detach", "--dir", str(directory),
             "--replicas", "1", "--base-address", CLUSTER_BASE, "--dns-address", CLUSTER_DNS, "--grace", "5"],
            capture_output=True, text=True, env=env, timeout=150, stdin=subprocess.DEVNULL)
        assert result.returncode == 0, result.stderr
        lines = result.stdout.splitlines()
        assert f"stop with `kvstore cluster down --dir {directory}`" in lines[-2], lines
        assert lines[-1] == f"dashboard: http://{CLUSTER_BASE}:8080/ui/"
        # The background controller's log gets no hints meant for a terminal.
        assert "dashboard" not in (directory / "logs" / "controller.log").read_text()
    finally:
        cluster.down()
