"""The benchmark scripts parse their flags (they are not run here: speed is never a test)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import compare_etcd  # noqa: E402
import pipelining  # noqa: E402
import primary_restart  # noqa: E402
import scale_figures  # noqa: E402
from wrk import Figures  # noqa: E402


def test_compare_etcd_defaults_and_flags() -> None:
    args = compare_etcd.parse_args([])
    assert (args.seconds, args.connections, args.no_ceiling) == (10, [1, 32], False)
    args = compare_etcd.parse_args(["--seconds", "3", "--connections", "4,64", "--no-ceiling"])
    assert (args.seconds, args.connections, args.no_ceiling) == (3, [4, 64], True)
    assert (args.watchers, args.watch_writes, args.watch_writers) == (100, 2000, 16)
    args = compare_etcd.parse_args(["--watchers", "0", "--watch-writes", "10", "--watch-writers", "1"])
    assert (args.watchers, args.watch_writes, args.watch_writers) == (0, 10, 1)


@pytest.mark.parametrize("argv", [["--seconds", "0"], ["--connections", "1,x"], ["--connections", "0"],
                                  ["--watchers", "-1"], ["--watch-writes", "5"], ["--watch-writers", "0"]])
def test_compare_etcd_rejects_bad_flags(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        compare_etcd.parse_args(argv)
    assert exc.value.code == 2


def test_compare_etcd_prints_the_watch_figures_side_by_side(capsys: pytest.CaptureFixture[str]) -> None:
    def phase(events_per_s: int, p50: float, p99: float) -> dict[str, float]:
        return {"events_per_s": events_per_s, "latency_ms_p50": p50, "latency_ms_p99": p99}

    compare_etcd.print_watch({
        "watchers": 100, "writes": 2000, "writers": 16,
        "etcd": {"one_writer": phase(900, 8.0, 100.0), "writers": phase(20000, 60.0, 200.0)},
        "kvstore": {"one_writer": phase(800, 12.0, 25.0), "writers": phase(40000, 48.0, 120.0)}})
    out = capsys.readouterr().out
    assert "events/s, 16 writers" in out and "20000 |     40000 |   2.00x" in out, out
    assert "write-to-event p50 ms, 1 writer" in out and "8.00 |     12.00 |   1.50x" in out, out
    assert "write-to-event p99 ms, 1 writer" in out and "0.25x" in out, out


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


def test_pipelining_flags() -> None:
    args = pipelining.parse_args([])
    assert (args.seconds, args.rounds, args.connections) == (10, 2, [1, 32])
    for argv in (["--rounds", "0"], ["--seconds", "0"], ["--connections", "x"], ["--connections", "2000"]):
        with pytest.raises(SystemExit) as exc:
            pipelining.parse_args(argv)
        assert exc.value.code == 2


def _pair(kind: str, conns: int, etcd: tuple[float, float, float, float], kv: tuple[float, float, float, float]) -> dict:
    """A compare_etcd pair from (req/s, p50 ms, p99 ms, cpu us) per side, over a 10 s run."""
    def fig(side: tuple[float, float, float, float]) -> Figures:
        return Figures(kind, conns, int(side[0] * 10), 10.0, side[1], side[2], 0, 0)
    return {"kind": kind, "connections": conns, "etcd": fig(etcd), "kvstore": fig(kv),
            "etcd_cpu_us_per_request": {"a": etcd[3]}, "kvstore_cpu_us_per_request": {"a": kv[3]}}


def test_compare_etcd_verdicts_judge_each_target_from_the_figures() -> None:
    pairs = [_pair("durable PUT", 1, (1000, 1.0, 3.0, 1200), (900, 0.75, 2.0, 500)),
             _pair("durable PUT", 32, (6000, 5.0, 14.0, 250), (8000, 4.0, 15.0, 180)),
             _pair("strong GET", 1, (2000, 0.4, 3.0, 600), (5000, 0.2, 2.0, 140)),
             _pair("strong GET", 32, (8000, 3.0, 12.0, 200), (7000, 1.5, 4.0, 50)),
             _pair("local GET", 32, (10000, 2.5, 11.0, 150), (13000, 1.3, 4.0, 45))]
    judged = {v["target"]: v["met"] for v in compare_etcd.verdicts(pairs, [])}
    assert judged == {
        "single-client w=majority PUT p50 <= 0.8x etcd's put p50": True,   # 0.75 <= 0.8
        "w=majority PUT at 32 conns >= 1.5x etcd put": False,              # 1.33x
        "w=majority PUT p99 at 32 conns <= etcd's": False,                 # 15 > 14
        "server CPU per replicated write at 1 conns <= 0.5x etcd's": True,  # 500 <= 600
        "server CPU per replicated write at 32 conns <= 0.5x etcd's": False,  # 180 > 125
        "local GET at 32 conns >= 1.25x etcd serializable": True,          # 1.3x
        "strong GET at 1 conns >= 1.0x etcd linearizable": True,
        "strong GET at 32 conns >= 1.0x etcd linearizable": False,         # 0.875x
    }
