"""Each test module that listens on loopback has /24s of its own, below 127.0.100.0.

``./kv test`` runs test files in parallel (pytest-xdist, one file per worker at
a time), all in one network namespace: two files that start pods on the same
addresses would fail each other now and then. ``kvstore chaos`` (and the chaos
tests' partition test) picks a random free /24 in 127.0.100-249 for its own
cluster, so fixed ranges stay below it. This reads the ranges from the source,
as written: ``"127.0.X..."`` literals, ``Cluster(workdir, X)`` of
tests/dns_cluster.py and the rollout tests' ``(X, {...})`` parameters.
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
CHAOS_RANGES = range(100, 250)  # kvstore.chaos.cli.free_loopback_range picks its /24 here

# Addresses these files only write into answers or fake pods, and never listen on.
NOT_LISTENED_ON = {
    "unit/test_chaos_nemesis.py": "fake pods and partition rules, never bound",
    "unit/test_discovery.py": "DNS answer data; its DNS server is on 127.0.0.3",
    "integration/test_dns_server.py": "DNS answer data; its DNS server is on 127.0.0.4",
}

LITERAL = re.compile(r"127\.0\.(\d+)(?:\.\d+)?\b")
DNS_CLUSTER = re.compile(r"\bCluster\(\w+, (\d+)\b")
ROLLOUT_PARAM = re.compile(r"\((\d+), \{")


def ranges_of(path: Path) -> set[int]:
    """The third octets of the 127.0.X.0/24s ``path`` uses (127.0.0.0/24, with free ports, is shared)."""
    text = path.read_text()
    found = {int(x) for x in LITERAL.findall(text)}
    found |= {int(x) for x in DNS_CLUSTER.findall(text)}
    for line in text.splitlines():
        if 'parametrize("cluster"' in line:
            found |= {int(x) for x in ROLLOUT_PARAM.findall(line)}
    return found - {0}


def modules() -> dict[str, set[int]]:
    out = {}
    for path in sorted(TESTS.rglob("test_*.py")):
        name = path.relative_to(TESTS).as_posix()
        if name.startswith("container/") or name in NOT_LISTENED_ON or path == Path(__file__).resolve():
            continue  # container tests use the Docker network; see NOT_LISTENED_ON
        out[name] = ranges_of(path)
    return out


def test_no_two_test_modules_share_a_loopback_range() -> None:
    users: dict[int, list[str]] = defaultdict(list)
    for name, ranges in modules().items():
        for x in ranges:
            users[x].append(name)
    shared = {f"127.0.{x}.0/24": names for x, names in sorted(users.items()) if len(names) > 1}
    assert not shared, f"test modules that would start pods on the same addresses in parallel: {shared}"


def test_fixed_ranges_stay_out_of_the_chaos_clusters_random_ones() -> None:
    inside = {name: sorted(r for r in ranges if r in CHAOS_RANGES) for name, ranges in modules().items()}
    offenders = {name: ranges for name, ranges in inside.items() if ranges}
    assert not offenders, f"fixed ranges among those kvstore chaos picks at random: {offenders}"


def test_the_scan_finds_each_kind_of_range() -> None:
    # The scan must see what it checks: a literal, a dns_cluster net and a rollout parameter.
    found = modules()
    assert 20 in found["integration/test_failover.py"]
    assert {41, 50} <= found["integration/test_recovery.py"]
    assert {23, 29} <= found["integration/test_rollout.py"]
