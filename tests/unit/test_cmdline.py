"""The command-line helpers every kvstore command shares."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from kvstore.cmdline import DEFAULT_CLUSTER_DIR, Parser, dir_flag, flag, float_range, int_range


@pytest.mark.parametrize("text", ["", "x", "1.5", "-1", "11", "1e3"])
def test_int_range_rejects_with_the_range(text: str) -> None:
    with pytest.raises(ValueError, match="^expected an integer from 0 to 10$"):
        int_range(0, 10)(text)


@pytest.mark.parametrize("text", ["", "soon", "nan", "inf", "-0.1", "3600.5"])
def test_float_range_rejects_nan_infinity_and_out_of_range(text: str) -> None:
    with pytest.raises(ValueError, match="^expected seconds from 0 to 3600$"):
        float_range(0, 3600, "seconds")(text)


def test_ranges_accept_their_bounds() -> None:
    assert int_range(0, 10)(" 10 ") == 10 and int_range(0, 10)("0") == 0
    assert float_range(0.1, 1)("0.1") == 0.1 and float_range(0.1, 1)("1") == 1.0


def test_a_flag_is_one_error_line_naming_what_was_given(capsys: pytest.CaptureFixture[str]) -> None:
    parser = Parser(prog="kvstore test")
    parser.add_argument("--replicas", type=flag(int_range(0, 9)))
    assert parser.parse_args(["--replicas", "3"]).replicas == 3
    with pytest.raises(SystemExit) as exc:
        parser.parse_args(["--replicas", "many"])
    assert exc.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[0].startswith("usage:")
    assert lines[-1] == "kvstore test: error: argument --replicas: expected an integer from 0 to 9, got 'many'"
    with pytest.raises(argparse.ArgumentTypeError):
        flag(int_range(0, 9))("10")


def test_dir_flag_only_for_a_directory_other_than_the_default(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert dir_flag(DEFAULT_CLUSTER_DIR) == ""
    assert dir_flag(tmp_path / DEFAULT_CLUSTER_DIR) == ""
    assert dir_flag("elsewhere") == " --dir elsewhere"
