"""Shared fixtures: real replica processes on loopback."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Iterator

import pytest
from hypothesis import settings

# CI replays the same generated cases every run (a red CI is then reproducible);
# local runs explore new ones. KV_SCHEMATHESIS_EXAMPLES=500 explores harder.
settings.register_profile("ci", derandomize=True, database=None)
if os.environ.get("CI"):
    settings.load_profile("ci")

sys.path.insert(0, str(Path(__file__).parent))

from replica_process import ReplicaProcess, running  # noqa: E402


@pytest.fixture
def replica(tmp_path: Path) -> Iterator[ReplicaProcess]:
    """A fresh single replica (kv-0) with its own data dir, stopped afterwards."""
    with running(tmp_path) as proc:
        yield proc


@pytest.fixture
def workdir(tmp_path: Path) -> Iterator[Path]:
    """A temp dir for a test's pods, removed as soon as the test ends (their data can be large)."""
    yield tmp_path
    shutil.rmtree(tmp_path, ignore_errors=True)


@pytest.fixture(scope="module")
def shared_replica(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReplicaProcess]:
    """One replica shared by a module's read-mostly tests (keeps the suite fast)."""
    with running(tmp_path_factory.mktemp("shared"),
                 env={"KV_MAX_KEY_BYTES": "64", "KV_MAX_VALUE_BYTES": "4096"}) as proc:
        yield proc


def pytest_addoption(parser: pytest.Parser) -> None:
    """``--soak``: also run the 10-minute chaos soak (tests/chaos)."""
    parser.addoption("--soak", action="store_true", default=False, help="run the long chaos soak")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    """A failed test that used a local cluster shows the tails of its pods' logs (CI keeps nothing else)."""
    outcome = yield
    report = outcome.get_result()
    cluster = getattr(item, "funcargs", {}).get("cluster")
    if report.when == "call" and report.failed and callable(getattr(cluster, "logs", None)):
        try:
            report.sections.append(("pod logs", cluster.logs(40)))
        except OSError as exc:
            report.sections.append(("pod logs", f"unreadable: {exc}"))
