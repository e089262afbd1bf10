"""Hints name the command as the user runs it (``./kv`` through the launcher), never a bare ``kvstore``.

After the Quick start ``kvstore`` is not on the PATH: a hint that says
```kvstore cluster up``` names a command that is not found.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import kvstore
from kvstore.local.state import ControllerLock

PACKAGE = Path(kvstore.__file__).resolve().parent


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KVSTORE_COMMAND": "./kv"}
    env.pop("KV_URL", None)
    return subprocess.run([sys.executable, "-m", "kvstore", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=60, stdin=subprocess.DEVNULL)


def test_hints_name_the_launcher(tmp_path: Path) -> None:
    nowhere = tmp_path / "nowhere"
    expected = {
        ("get", "greeting", "--dir", str(nowhere)): f"`./kv cluster up --dir {nowhere}`",
        ("cluster", "status", "--dir", str(nowhere)): f"`./kv cluster up --dir {nowhere}`",
        ("cluster", "kill", "kv-0"): "`./kv cluster up`",  # the default dir needs no --dir
        ("cluster", "up", "--env", "KV_NO_SUCH=1"): "`./kv serve --help`",
        ("recover", "from"): "`./kv recover from kv-2`",
    }
    for args, hint in expected.items():
        result = run(*args, cwd=tmp_path)
        assert result.returncode in (1, 2) and hint in result.stderr, (args, result.stderr)
        assert "`kvstore " not in result.stderr, (args, result.stderr)


def test_a_second_cluster_up_says_how_to_stop_the_first(tmp_path: Path) -> None:
    directory = tmp_path / "cluster"
    directory.mkdir()
    lock = ControllerLock(directory)  # held here as a running controller holds it
    lock.acquire()
    try:
        result = run("cluster", "up", "--dir", str(directory), "--base-address", "127.0.93.10", cwd=tmp_path)
    finally:
        lock.release()
    assert result.returncode == 1, result.stderr
    assert "already running" in result.stderr and f"`./kv cluster down --dir {directory}`" in result.stderr
    assert "Ctrl-C" in result.stderr


def test_no_message_hard_codes_the_command_name() -> None:
    # Docstrings may say `kvstore serve` (the command's name); a message built for the user must not.
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text())
        docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                      if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                      and node.body and isinstance(node.body[0], ast.Expr)}
        for node in ast.walk(tree):
            if (isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
                    and "`kvstore " in node.value):
                offenders.append(f"{path.relative_to(PACKAGE)}:{node.lineno}: {node.value.strip()[:60]}")
    assert offenders == [], "use cmdline.hint() so the hint names ./kv when run through it: " + "; ".join(offenders)
