"""The container tests skip only where no Docker engine is configured; a broken one fails them."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from docker_pods import connect_or_skip, engine_address
from k8s.test_manifests import outcome


def test_no_engine_configured_is_a_skip_that_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    missing = tmp_path / "docker.sock"
    assert engine_address({}, missing) is None
    skipped = outcome(lambda: connect_or_skip({}, missing))
    assert isinstance(skipped, pytest.skip.Exception), repr(skipped)
    assert f"DOCKER_HOST is unset and {missing} does not exist" in str(skipped)
    monkeypatch.setenv("CI", "true")  # CI runs every test: there it fails, saying the same
    failed = outcome(lambda: connect_or_skip({}, missing))
    assert isinstance(failed, pytest.fail.Exception), repr(failed)
    assert f"DOCKER_HOST is unset and {missing} does not exist" in str(failed)


def test_configured_engine_that_does_not_answer_fails(tmp_path: Path) -> None:
    # A socket file nobody listens on (a stopped dockerd leaves one behind).
    dead = tmp_path / "docker.sock"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(dead))
    assert engine_address({}, dead) == f"unix://{dead}"
    failed = outcome(lambda: connect_or_skip({}, dead))
    assert isinstance(failed, pytest.fail.Exception), repr(failed)
    assert "configured but does not answer" in str(failed)
    # DOCKER_HOST wins over the socket, and a dead address there fails the same way.
    failed = outcome(lambda: connect_or_skip({"DOCKER_HOST": "tcp://127.0.64.1:9"}, dead))
    assert isinstance(failed, pytest.fail.Exception) and "tcp://127.0.64.1:9" in str(failed), repr(failed)
