"""Transactions on a real ``kvstore serve``: all or nothing, which branch ran, each key's new version,
the restart, and every bad body answered with a clear code."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from local_cluster import http
from replica_process import ReplicaProcess, running


def txn(replica: ReplicaProcess, body: Any, query: str = "") -> tuple[int, Any]:
    """POST /v1/txn with ``body`` (JSON unless bytes): (status, decoded answer)."""
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    status, headers, answer = http("POST", f"{replica.url}/v1/txn{query}", raw,
                                   {"Content-Type": "application/json"})
    assert headers.get("Content-Type", "").startswith("application/json"), answer[:200]
    return status, json.loads(answer)


def get(replica: ReplicaProcess, key: str) -> tuple[int, bytes, str | None]:
    status, headers, body = http("GET", f"{replica.url}/v1/kv/{key}")
    return status, body, headers.get("ETag")


def put(replica: ReplicaProcess, key: str, value: bytes) -> int:
    status, _, body = http("PUT", f"{replica.url}/v1/kv/{key}", value)
    assert status == 200, body
    return json.loads(body)["version"]


def test_the_success_branch_writes_every_key_at_one_version(shared_replica: ReplicaProcess) -> None:
    version = put(shared_replica, "s/old", b"gone soon")
    status, answer = txn(shared_replica, {
        "compare": [{"key": "s/old", "version": version}, {"key": "s/new", "absent": True},
                    {"key": "s/old", "value": "gone soon"}],
        "success": [{"op": "put", "key": "s/new", "value": "a"},
                    {"op": "put", "key": "s/bin", "value_base64": "AAEC"},
                    {"op": "delete", "key": "s/old"}],
        "failure": [{"op": "put", "key": "s/failed", "value": "x"}]})
    assert status == 200, answer
    lsn = answer["version"]
    assert answer["succeeded"] is True and answer["branch"] == "success" and lsn > version
    assert answer["keys"] == [{"key": "s/new", "version": lsn, "deleted": False},
                              {"key": "s/bin", "version": lsn, "deleted": False},
                              {"key": "s/old", "version": lsn, "deleted": True}]
    assert get(shared_replica, "s/new") == (200, b"a", f'"{lsn}"')
    assert get(shared_replica, "s/bin") == (200, b"\0\1\2", f'"{lsn}"')
    assert get(shared_replica, "s/old")[0] == 404
    assert get(shared_replica, "s/failed")[0] == 404
    status, answer = txn(shared_replica, {"success": [{"op": "delete", "key": "s/never"},
                                                      {"op": "put", "key": "s/new", "value": "b"}]})
    assert answer["keys"] == [{"key": "s/new", "version": lsn + 1, "deleted": False}]  # a delete of nothing is left out
    status, answer = txn(shared_replica, {"success": [{"op": "put", "key": "s/never", "value": "1"},
                                                      {"op": "delete", "key": "s/never"}]})
    assert (status, answer["version"], answer["keys"]) == (200, None, [])  # the last change of a key counts
    lsn += 1
    # One log entry: the next write is the very next LSN.
    assert put(shared_replica, "s/after", b"1") == lsn + 1


def test_a_failed_comparison_runs_the_failure_branch_and_nothing_of_the_success_one(
        shared_replica: ReplicaProcess) -> None:
    version = put(shared_replica, "f/counter", b"1")
    put(shared_replica, "f/counter", b"2")  # the version moved on
    status, answer = txn(shared_replica, {
        "compare": [{"key": "f/counter", "version": version}],
        "success": [{"op": "put", "key": "f/counter", "value": "3"}, {"op": "put", "key": "f/other", "value": "x"}],
        "failure": [{"op": "put", "key": "f/conflict", "value": "seen"}]})
    assert status == 200, answer
    assert answer["succeeded"] is False and answer["branch"] == "failure"
    assert answer["keys"] == [{"key": "f/conflict", "version": answer["version"], "deleted": False}]
    assert get(shared_replica, "f/counter")[1] == b"2"
    assert get(shared_replica, "f/other")[0] == 404
    assert get(shared_replica, "f/conflict")[1] == b"seen"


def test_comparisons_on_an_absent_key_and_on_a_value(shared_replica: ReplicaProcess) -> None:
    create = {"compare": [{"key": "a/lock", "absent": True}],
              "success": [{"op": "put", "key": "a/lock", "value": "me"}]}
    status, first = txn(shared_replica, create)
    assert status == 200 and first["succeeded"] is True
    status, second = txn(shared_replica, create)  # it exists now: the empty failure branch writes nothing
    assert status == 200 and second == {"succeeded": False, "branch": "failure", "version": None, "keys": []}
    status, third = txn(shared_replica, {"compare": [{"key": "a/lock", "value": "you"}],
                                         "failure": [{"op": "delete", "key": "a/lock"}]})
    assert status == 200 and third["succeeded"] is False and third["keys"][0]["deleted"] is True
    assert get(shared_replica, "a/lock")[0] == 404
    status, fourth = txn(shared_replica, {"compare": [{"key": "a/lock", "version": first["version"]}],
                                          "success": [{"op": "put", "key": "a/x", "value": "1"}]})
    assert status == 200 and fourth["succeeded"] is False  # a version compare on an absent key fails


def test_a_transaction_survives_a_restart(tmp_path: Path) -> None:
    with running(tmp_path) as replica:
        status, answer = txn(replica, {"success": [{"op": "put", "key": "r/a", "value": "1"},
                                                   {"op": "put", "key": "r/b", "value": "2"}]}, "?w=1")
        assert status == 200, answer
        replica.terminate()
        replica.start()
        assert get(replica, "r/a") == (200, b"1", f'"{answer["version"]}"')
        assert get(replica, "r/b") == (200, b"2", f'"{answer["version"]}"')


BIG = "v" * 4096  # shared_replica's KV_MAX_VALUE_BYTES


@pytest.mark.parametrize("body, status, code", [
    (b"not json", 400, "bad_txn"),
    (b"[]", 400, "bad_txn"),
    (b"[" * 50_000, 400, "bad_txn"),
    ({"compare": {}}, 400, "bad_txn"),
    ({"success": [], "extra": 1}, 400, "bad_txn"),
    ({"compare": [{"key": "k"}]}, 400, "bad_txn"),
    ({"compare": [{"key": "k", "version": 1, "absent": True}]}, 400, "bad_txn"),
    ({"compare": [{"key": "k", "version": 0}]}, 400, "bad_txn"),
    ({"compare": [{"key": "k", "version": True}]}, 400, "bad_txn"),
    ({"compare": [{"key": "k", "absent": False}]}, 400, "bad_txn"),
    ({"compare": [{"key": "", "absent": True}]}, 400, "bad_txn"),
    ({"compare": [{"key": "k", "value_base64": "%%%"}]}, 400, "bad_txn"),
    ({"success": [{"op": "put", "key": "k"}]}, 400, "bad_txn"),
    ({"success": [{"op": "upsert", "key": "k", "value": "v"}]}, 400, "bad_txn"),
    ({"success": [{"op": "delete", "key": "k", "value": "v"}]}, 400, "bad_txn"),
    ({"success": [{"op": "put", "key": 7, "value": "v"}]}, 400, "bad_txn"),
    ({"success": [{"op": "put", "key": "k", "value": 7}]}, 400, "bad_txn"),
    ({"success": [{"op": "put", "key": "\ud800", "value": "v"}]}, 400, "bad_txn"),
    ({"success": [{"op": "put", "key": "k", "value": "v", "ttl": 0}]}, 400, "bad_txn"),
    ({"success": [{"op": "put", "key": "k", "value": "v", "ttl": "5"}]}, 400, "bad_txn"),
    ({"success": [{"op": "put", "key": f"k{i}", "value": "v"} for i in range(129)]}, 413, "too_many_operations"),
    ({"compare": [{"key": "k", "absent": True}] * 129}, 413, "too_many_operations"),
    ({"success": [{"op": "put", "key": "k" * 65, "value": "v"}]}, 413, "key_too_large"),
    ({"success": [{"op": "put", "key": "k", "value": BIG + "v"}]}, 413, "value_too_large"),
    ({"success": [{"op": "put", "key": "k1", "value": BIG}, {"op": "put", "key": "k2", "value": BIG}]},
     413, "txn_too_large"),
    (b"{" + b" " * (3 * (64 + 4096) + 64 * 1024) + b"}", 413, "txn_too_large"),
])
def test_bad_transactions_get_clear_errors_and_change_nothing(shared_replica: ReplicaProcess, body: Any,
                                                              status: int, code: str) -> None:
    before = json.loads(http("GET", shared_replica.url + "/v1/status")[2])["lsn"]
    got, answer = txn(shared_replica, body)
    assert (got, answer["error"]) == (status, code), answer
    assert answer["message"]
    assert json.loads(http("GET", shared_replica.url + "/v1/status")[2])["lsn"] == before


def test_bad_query_and_method(shared_replica: ReplicaProcess) -> None:
    assert txn(shared_replica, {}, "?w=2")[1]["error"] == "bad_parameter"
    assert txn(shared_replica, {}, "?x=1")[1]["error"] == "unknown_parameter"
    status, _, body = http("GET", shared_replica.url + "/v1/txn")
    assert status == 405 and json.loads(body)["error"] == "method_not_allowed"


def kvstore(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kvstore", *args], input=None if stdin is None else stdin.decode(),
                          capture_output=True, text=True, timeout=60)


def test_the_txn_command(shared_replica: ReplicaProcess, tmp_path: Path) -> None:
    body = json.dumps({"compare": [{"key": "cli/a", "absent": True}],
                       "success": [{"op": "put", "key": "cli/a", "value": "1"}]})
    ran = kvstore("txn", body, "--url", shared_replica.url, "-w", "1")
    assert ran.returncode == 0, ran.stderr
    answer = json.loads(ran.stdout)
    assert answer["succeeded"] is True and answer["keys"][0]["key"] == "cli/a"
    (tmp_path / "t.json").write_text(body)
    ran = kvstore("txn", f"@{tmp_path / 't.json'}", "--url", shared_replica.url)
    assert ran.returncode == 3 and json.loads(ran.stdout)["branch"] == "failure"  # it exists now
    ran = kvstore("txn", "-", "--url", shared_replica.url, stdin=b"{nope")
    assert ran.returncode == 1 and "400 bad_txn" in ran.stderr
    ran = kvstore("txn", "@/nonexistent.json", "--url", shared_replica.url)
    assert ran.returncode == 2 and "cannot read /nonexistent.json" in ran.stderr
