"""The benchmark scripts parse their flags (they are not run here: speed is never a test)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import compare_etcd  # noqa: E402
import primary_restart  # noqa: E402
import scale_figures  # noqa: E402


def test_compare_etcd_defaults_and_flags() -> None:
    args = compare_etcd.parse_args([])
    assert (args.seconds, args.connections, args.no_ceiling) == (10, [1, 32], False)
    args = compare_etcd.parse_args(["--seconds", "3", "--connections", "4,64", "--no-ceiling"])
    assert (args.seconds, args.connections, args.no_ceiling) == (3, [4, 64], True)


@pytest.mark.parametrize("argv", [["--seconds", "0"], ["--connections", "1,x"], ["--connections", "0"]])
def test_compare_etcd_rejects_bad_flags(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        compare_etcd.parse_args(argv)
    assert exc.value.code == 2


def test_scale_figures_defaults_and_bad_flags() -> None:
    args = scale_figures.parse_args([])
    assert (args.keys, args.small, args.catchup_writes, args.seconds) == (1_000_000, 10_000, 100_000, 10)
    for argv in (["--keys", "5", "--small", "10"], ["--catchup-writes", "0"], ["--seconds", "601"]):
        with pytest.raises(SystemExit):
            scale_figures.parse_args(argv)


def test_primary_restart_flags() -> None:
    assert primary_restart.parse_args([]).rounds == 5
    for argv in (["--rounds", "0"], ["--rounds", "x"], ["--rounds", "51"]):
        with pytest.raises(SystemExit) as exc:
            primary_restart.parse_args(argv)
        assert exc.value.code == 2
