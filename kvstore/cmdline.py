"""What every ``kvstore`` command shares on the command line."""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_CLUSTER_DIR = "kvstore-cluster"


def command_name() -> str:
    """How the user runs kvstore here (``./kv`` through the launcher), for hints to type next."""
    return os.environ.get("KVSTORE_COMMAND") or "kvstore"


def dir_flag(directory: str | os.PathLike[str]) -> str:
    """`` --dir X`` for a hint, or nothing for the default cluster dir."""
    if Path(directory).absolute() == Path(DEFAULT_CLUSTER_DIR).absolute():
        return ""
    return f" --dir {directory}"
