"""Shared fixtures: real replica processes on loopback."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Iterator

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from replica_process import ReplicaProcess  # noqa: E402


@pytest.fixture
def replica(tmp_path: Path) -> Iterator[ReplicaProcess]:
    """A fresh single replica (kv-0) with its own data dir, stopped afterwards."""
    proc = ReplicaProcess(tmp_path)
    try:
        proc.start()
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def shared_replica(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReplicaProcess]:
    """One replica shared by a module's read-mostly tests (keeps the suite fast)."""
    proc = ReplicaProcess(tmp_path_factory.mktemp("shared"),
                          env={"KV_MAX_KEY_BYTES": "64", "KV_MAX_VALUE_BYTES": "4096"})
    try:
        proc.start()
        yield proc
    finally:
        proc.stop()
