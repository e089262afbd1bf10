"""Hints name the command as the user runs it (``./kv`` through the launcher), never a bare ``kvstore``.

After the Quick start ``kvstore`` is not on the PATH: a hint that says
```kvstore cluster up``` names a command that is not found.
"""

from __future__ import annotations

import ast
import contextlib
import io
from pathlib import Path

import pytest

import kvstore
from kvstore import cli
from kvstore.local.state import ControllerLock

PACKAGE = Path(kvstore.__file__).resolve().parent


def run(*args: str) -> tuple[int, str]:
    """``kvstore ARGS`` in this process: (exit status, what it printed on stderr)."""
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        try:
            status = cli.main(list(args))
        except SystemExit as exc:  # argparse refusing a flag
            status = int(exc.code or 0)
    return status, stderr.getvalue()


@pytest.fixture(autouse=True)
def through_the_launcher(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KVSTORE_COMMAND", "./kv")  # what ./kv sets
    monkeypatch.delenv("KV_URL", raising=False)
    monkeypatch.chdir(tmp_path)  # no ./kvstore-cluster here


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
        status, stderr = run(*args)
        assert status in (1, 2) and hint in stderr, (args, stderr)
        assert "`kvstore " not in stderr, (args, stderr)


def test_a_second_cluster_up_says_how_to_stop_the_first(tmp_path: Path) -> None:
    directory = tmp_path / "cluster"
    directory.mkdir()
    lock = ControllerLock(directory)  # held here as a running controller holds it
    lock.acquire()
    try:
        status, stderr = run("cluster", "up", "--dir", str(directory), "--base-address", "127.0.34.10")
    finally:
        lock.release()
    assert status == 1, stderr
    assert "already running" in stderr and f"`./kv cluster down --dir {directory}`" in stderr
    assert "Ctrl-C" in stderr


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
