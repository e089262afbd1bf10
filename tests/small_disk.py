"""A small tmpfs as a pod's volume, which a test fills to make its disk refuse writes (root only)."""

from __future__ import annotations

import contextlib
import errno
import subprocess
from pathlib import Path
from typing import Iterator

import needs


@contextlib.contextmanager
def small_disk(path: Path, size: str = "16m") -> Iterator[Path]:
    """Mount a tmpfs of ``size`` at ``path`` (a pod's data dir) for the block; without root a skip (CI: a failure)."""
    needs.root("mounting a small tmpfs as a pod's volume")
    path.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=False)


def fill(disk: Path) -> Path:
    """Write a file on ``disk`` until the filesystem has no room left (ENOSPC); delete it to make room."""
    filler = disk / "filler"
    with open(filler, "wb") as out:
        for _ in range(100_000):  # bounded: the tmpfs holds far fewer 64 KiB blocks
            try:
                out.write(b"\0" * 65536)
                out.flush()
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
                break
        else:
            raise AssertionError(f"{disk} never filled up")
    return filler
