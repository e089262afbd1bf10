"""What a test needs from the machine (a tool, root, a Docker engine), and what happens when it is missing.

Run by hand, a test whose tool is missing is skipped with a one-line reason
(``-rs`` in the pytest config prints every one). In CI (``CI`` set, as
``.ci/run`` runs as root on a fresh machine) nothing may be skipped silently:
a missing Debian package is installed with apt-get when running as root, and
what is still missing fails the test, saying what it is.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from typing import NoReturn

import pytest


def in_ci() -> bool:
    """Whether this run is CI's, where every test must run (``CI`` set and not empty or false)."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def missing(reason: str) -> NoReturn:
    """A skip with ``reason``; in CI a failure with it (CI must run every test)."""
    if in_ci():
        pytest.fail(f"CI runs every test, and this one cannot run here: {reason}", pytrace=False)
    pytest.skip(reason)


def apt_install(*packages: str) -> str | None:
    """Install Debian ``packages`` when running as root with apt-get; None, or why they could not be."""
    if os.geteuid() != 0:
        return "not root, so apt-get was not run"
    if shutil.which("apt-get") is None:
        return "no apt-get here"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, timeout=600)
        done = subprocess.run(["apt-get", "install", "-y", "-qq", *packages], env=env, capture_output=True,
                              text=True, timeout=900)
    except subprocess.TimeoutExpired:
        return "apt-get did not finish in time"
    if done.returncode != 0:
        return f"apt-get install {' '.join(packages)} failed: {done.stderr.strip()[-300:]}"
    return None


def tool(name: str, package: str) -> str:
    """The path of command ``name``, installing Debian ``package`` for it when root; else :func:`missing`."""
    found = shutil.which(name)
    if found is None:
        why = apt_install(package)
        found = shutil.which(name)
        if found is None:
            missing(f"{name} is not installed (apt-get install {package}; {why or 'it did not provide it'})")
    return found


def root(why: str) -> None:
    """:func:`missing` unless running as root; ``why`` says what needs it."""
    if os.geteuid() != 0:
        missing(f"{why} needs root")
