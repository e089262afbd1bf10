"""What every ``kvstore`` command shares on the command line.

The argument parser (one error line and exit status 2), range-checked value
parsers used by flags and environment variables alike, the default cluster
directory, and the command's name as hints should spell it.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Callable, NoReturn, TypeVar

T = TypeVar("T")

DEFAULT_CLUSTER_DIR = "kvstore-cluster"


class Parser(argparse.ArgumentParser):
    """argparse with its contract kept to one error line: the usage, the error, exit status 2."""

    def error(self, message: str) -> NoReturn:
        """Print the usage and one error line, then exit 2."""
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n")


def int_range(low: int, high: int) -> Callable[[str], int]:
    """A parser of integers from ``low`` to ``high``; its ValueError says which are accepted."""
    expected = f"expected an integer from {low} to {high}"

    def parse(text: str) -> int:
        try:
            value = int(text.strip(), 10)
        except ValueError:
            raise ValueError(expected) from None
        if not low <= value <= high:
            raise ValueError(expected)
        return value

    return parse


def float_range(low: float, high: float, what: str = "a number") -> Callable[[str], float]:
    """A parser of numbers from ``low`` to ``high`` (``what`` names them: "seconds"); rejects nan."""
    expected = f"expected {what} from {low:g} to {high:g}"

    def parse(text: str) -> float:
        try:
            value = float(text.strip())
        except ValueError:
            raise ValueError(expected) from None
        if not low <= value <= high:  # also false for nan
            raise ValueError(expected)
        return value

    return parse


def flag(parse: Callable[[str], T]) -> Callable[[str], T]:
    """An argparse ``type=`` from a parser that raises ValueError: its message, then what was given."""
    def convert(text: str) -> T:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"{exc}, got {text!r}") from None

    return convert


def command_name() -> str:
    """How the user runs kvstore here (``./kv`` through the launcher), for hints to type next."""
    return os.environ.get("KVSTORE_COMMAND") or "kvstore"


def dir_flag(directory: str | os.PathLike[str]) -> str:
    """`` --dir X`` for a hint, or nothing for the default cluster dir."""
    if Path(directory).absolute() == Path(DEFAULT_CLUSTER_DIR).absolute():
        return ""
    return f" --dir {directory}"


def hint(arguments: str, directory: str | os.PathLike[str] | None = None) -> str:
    """A command to type next, quoted: ```./kv cluster up --dir X``` (``--dir`` only when not the default)."""
    where = dir_flag(directory) if directory is not None else ""
    return f"`{command_name()} {arguments}{where}`"
