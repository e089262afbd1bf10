"""The client API of a real ``kvstore serve`` process, happy paths and bad input."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from replica_process import ReplicaProcess, free_port, run_serve


class Answer:
    def __init__(self, status: int, headers: http.client.HTTPMessage, body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def json(self) -> Any:
        assert self.headers.get_content_type() == "application/json", self.body
        return json.loads(self.body)


def call(replica: ReplicaProcess, method: str, path: str, body: bytes | None = None,
         headers: dict[str, str] | None = None) -> Answer:
    """Send a request with the path exactly as given (no client-side normalisation)."""
    conn = http.client.HTTPConnection(replica.host, replica.http_port, timeout=10)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        for name, value in (headers or {}).items():
            conn.putheader(name, value)
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        response = conn.getresponse()
        return Answer(response.status, response.headers, response.read())
    finally:
        conn.close()


def error_of(answer: Answer, status: int) -> str:
    """Assert the JSON error contract and return the error code."""
    assert answer.status == status, (answer.status, answer.body)
    data = answer.json()
    assert set(data) >= {"error", "message"} and data["message"], data
    return data["error"]


# ------------------------------------------------------------------ happy paths
def test_put_get_delete_round_trip(shared_replica: ReplicaProcess) -> None:
    value = bytes(range(256))
    put = call(shared_replica, "PUT", "/v1/kv/round/trip", value)
    assert put.status == 200
    version = put.json()["version"]
    assert put.headers["ETag"] == f'"{version}"'
    assert put.headers["X-Kv-Role"] == "primary" and int(put.headers["X-Kv-Lsn"]) >= version

    got = call(shared_replica, "GET", "/v1/kv/round/trip")
    assert got.status == 200 and got.body == value
    assert got.headers["ETag"] == f'"{version}"'
    assert got.headers["X-Kv-Pod"] == "kv-0"

    assert call(shared_replica, "GET", "/v1/kv/round/trip",
                headers={"If-None-Match": f'"{version}"'}).status == 304

    gone = call(shared_replica, "DELETE", "/v1/kv/round/trip")
    assert gone.status == 200 and gone.json()["deleted"] is True
    assert error_of(call(shared_replica, "GET", "/v1/kv/round/trip"), 404) == "not_found"
    assert error_of(call(shared_replica, "DELETE", "/v1/kv/round/trip"), 404) == "not_found"


def test_keys_are_percent_encoded_utf8_with_slashes(shared_replica: ReplicaProcess) -> None:
    assert call(shared_replica, "PUT", "/v1/kv/%E2%82%AC%2Fa b".replace(" ", "%20"), b"euro").status == 200
    got = call(shared_replica, "GET", "/v1/kv/%E2%82%AC/a%20b")
    assert got.status == 200 and got.body == b"euro"
    listing = call(shared_replica, "GET", "/v1/kv?prefix=%E2%82%AC").json()
    assert listing["keys"] == ["€/a b"]


def test_keys_with_control_characters(shared_replica: ReplicaProcess) -> None:
    # A newline in a key once fell through the router's pattern to a 404.
    assert call(shared_replica, "PUT", "/v1/kv/line%0Abreak%00nul", b"x").status == 200
    assert call(shared_replica, "GET", "/v1/kv/line%0Abreak%00nul").body == b"x"


def test_empty_value_is_a_value(shared_replica: ReplicaProcess) -> None:
    assert call(shared_replica, "PUT", "/v1/kv/empty", b"").status == 200
    got = call(shared_replica, "GET", "/v1/kv/empty")
    assert got.status == 200 and got.body == b""


def test_compare_and_set_and_create_only(shared_replica: ReplicaProcess) -> None:
    first = call(shared_replica, "PUT", "/v1/kv/cas", b"1", {"If-None-Match": "*"})
    assert first.status == 200
    version = first.json()["version"]
    assert error_of(call(shared_replica, "PUT", "/v1/kv/cas", b"x", {"If-None-Match": "*"}), 412) \
        == "precondition_failed"
    stale = call(shared_replica, "PUT", "/v1/kv/cas", b"x", {"If-Match": f'"{version + 1000}"'})
    assert error_of(stale, 412) == "precondition_failed"
    assert stale.json()["current_version"] == version
    ok = call(shared_replica, "PUT", "/v1/kv/cas", b"2", {"If-Match": f'"{version}"'})
    assert ok.status == 200 and ok.json()["version"] > version
    assert error_of(call(shared_replica, "DELETE", "/v1/kv/cas", headers={"If-Match": f'"{version}"'}),
                    412) == "precondition_failed"
    assert call(shared_replica, "GET", "/v1/kv/cas").body == b"2"
    assert error_of(call(shared_replica, "PUT", "/v1/kv/never", b"x", {"If-Match": "*"}), 412) \
        == "precondition_failed"


def test_listing_is_ordered_and_paginated(shared_replica: ReplicaProcess) -> None:
    for i in range(5):
        assert call(shared_replica, "PUT", f"/v1/kv/list/{i}", b"x").status == 200
    page = call(shared_replica, "GET", "/v1/kv?prefix=list/&limit=2").json()
    assert page["keys"] == ["list/0", "list/1"] and page["more"] is True
    page = call(shared_replica, "GET", f"/v1/kv?prefix=list/&limit=2&start_after={page['next_start_after']}").json()
    assert page["keys"] == ["list/2", "list/3"]
    page = call(shared_replica, "GET", "/v1/kv?prefix=list/&start_after=list/3").json()
    assert page["keys"] == ["list/4"] and page["more"] is False and page["next_start_after"] is None


def test_status_health_ready_metrics_openapi(shared_replica: ReplicaProcess) -> None:
    status = call(shared_replica, "GET", "/v1/status").json()
    assert status["name"] == "kv-0" and status["ordinal"] == 0 and status["role"] == "primary"
    assert len(status["history_id"]) == 32 and status["lsn"] >= 0
    assert call(shared_replica, "GET", "/healthz").status == 200
    assert call(shared_replica, "GET", "/readyz").status == 200
    call(shared_replica, "PUT", "/v1/kv/metric", b"x")
    metrics = call(shared_replica, "GET", "/metrics")
    assert metrics.status == 200 and metrics.headers.get_content_type() == "text/plain"
    text = metrics.body.decode()
    for name in ("kv_http_requests_total", "kv_http_request_duration_seconds_bucket", "kv_lsn",
                 "kv_commit_batch_size_bucket", "kv_commit_fsync_seconds_bucket"):
        assert name in text, name
    assert 'route="/v1/kv/{key}",status="200"' in text
    spec = call(shared_replica, "GET", "/openapi.json").json()
    assert spec["openapi"].startswith("3.") and "/v1/kv/{key}" in spec["paths"]


# -------------------------------------------------------------------- bad input
@pytest.mark.parametrize("method, path, body, headers, status, code", [
    ("PUT", "/v1/kv/", b"x", {}, 400, "bad_key"),
    ("GET", "/v1/kv/", None, {}, 400, "bad_key"),
    ("PUT", "/v1/kv/" + "k" * 65, b"x", {}, 413, "key_too_large"),
    ("PUT", "/v1/kv/big", b"x" * 4097, {}, 413, "value_too_large"),
    ("PUT", "/v1/kv/%zz", b"x", {}, 400, "bad_encoding"),
    ("PUT", "/v1/kv/abc%4", b"x", {}, 400, "bad_encoding"),
    ("GET", "/v1/kv/%FF%FE", None, {}, 400, "bad_encoding"),
    ("GET", "/v1/kv?limit=abc", None, {}, 400, "bad_parameter"),
    ("GET", "/v1/kv?limit=0", None, {}, 400, "bad_parameter"),
    ("GET", "/v1/kv?limit=100000", None, {}, 400, "bad_parameter"),
    ("GET", "/v1/kv?limit=-1", None, {}, 400, "bad_parameter"),
    ("GET", "/v1/kv?limit=1&limit=2", None, {}, 400, "bad_parameter"),
    ("GET", "/v1/kv?prefix=%zz", None, {}, 400, "bad_encoding"),
    ("GET", "/v1/kv?colour=red", None, {}, 400, "unknown_parameter"),
    ("GET", "/v1/kv/a?colour=red", None, {}, 400, "unknown_parameter"),
    ("PUT", "/v1/kv/a?w=2", b"x", {}, 400, "bad_parameter"),
    ("GET", "/v1/kv/a?consistency=eventual", None, {}, 400, "bad_parameter"),
    ("GET", "/v1/kv/a?min_lsn=x", None, {}, 400, "bad_parameter"),
    ("GET", "/v1/kv/a?min_lsn=99999999999999999999999", None, {}, 400, "bad_parameter"),
    ("PUT", "/v1/kv/a", b"x", {"If-Match": "4x2"}, 400, "bad_header"),
    ("PUT", "/v1/kv/a", b"x", {"If-Match": 'W/"42"'}, 400, "bad_header"),
    ("PUT", "/v1/kv/a", b"x", {"If-Match": '"abc"'}, 400, "bad_header"),
    ("PUT", "/v1/kv/a", b"x", {"If-None-Match": '"3"'}, 400, "bad_header"),
    ("PUT", "/v1/kv/a", b"x", {"If-Match": "*", "If-None-Match": "*"}, 412, "precondition_failed"),
    ("GET", "/v1/kv/a?min_lsn=999999", None, {}, 412, "min_lsn_ahead"),
    ("GET", "/v1/kv/a", b"body", {}, 400, "unexpected_body"),
    ("DELETE", "/v1/kv/a", b"body", {}, 400, "unexpected_body"),
    ("GET", "/v1/kv", b"body", {}, 400, "unexpected_body"),
    ("POST", "/v1/kv/a", b"x", {}, 405, "method_not_allowed"),
    ("PATCH", "/v1/status", None, {}, 405, "method_not_allowed"),
    ("DELETE", "/v1/kv", None, {}, 405, "method_not_allowed"),
    ("GET", "/v2/kv/a", None, {}, 404, "not_found"),
    ("GET", "/index.html", None, {}, 404, "not_found"),  # "/" is the dashboard (a redirect)
])
def test_bad_requests_get_json_errors(shared_replica: ReplicaProcess, method: str, path: str,
                                      body: bytes | None, headers: dict[str, str], status: int,
                                      code: str) -> None:
    assert error_of(call(shared_replica, method, path, body, headers), status) == code


def test_rejected_writes_change_nothing(shared_replica: ReplicaProcess) -> None:
    before = call(shared_replica, "GET", "/v1/status").json()["lsn"]
    call(shared_replica, "PUT", "/v1/kv/%zz", b"x")
    call(shared_replica, "PUT", "/v1/kv/big", b"x" * 5000)
    call(shared_replica, "PUT", "/v1/kv/a?w=7", b"x")
    assert call(shared_replica, "GET", "/v1/status").json()["lsn"] == before
    metrics = call(shared_replica, "GET", "/metrics").body.decode()
    assert 'status="500"' not in metrics


def test_405_lists_allowed_methods(shared_replica: ReplicaProcess) -> None:
    answer = call(shared_replica, "POST", "/v1/kv/a", b"x")
    assert set(answer.headers["Allow"].split(",")) >= {"GET", "PUT", "DELETE"}


def test_value_limit_with_chunked_body(shared_replica: ReplicaProcess) -> None:
    conn = http.client.HTTPConnection(shared_replica.host, shared_replica.http_port, timeout=10)
    try:
        conn.request("PUT", "/v1/kv/chunked", body=iter([b"x" * 3000, b"y" * 3000]),
                     encode_chunked=True, headers={"Transfer-Encoding": "chunked"})
        response = conn.getresponse()
        assert response.status == 413
        assert json.loads(response.read())["error"] == "value_too_large"
    finally:
        conn.close()
    assert error_of(call(shared_replica, "GET", "/v1/kv/chunked"), 404) == "not_found"


def test_expect_100_continue_is_answered(shared_replica: ReplicaProcess) -> None:
    # curl sends Expect: 100-continue for bodies over 1 KiB and holds the body back
    # until the 100 (or a second) comes; a server that ignores it costs every such PUT 1 s.
    with socket.create_connection((shared_replica.host, shared_replica.http_port), timeout=5) as sock:
        sock.sendall(b"PUT /v1/kv/expect HTTP/1.1\r\nHost: x\r\nContent-Length: 2000\r\n"
                     b"Expect: 100-continue\r\n\r\n")
        assert sock.recv(64).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
        sock.sendall(b"e" * 2000)
        assert sock.recv(4096).startswith(b"HTTP/1.1 200")
    assert call(shared_replica, "GET", "/v1/kv/expect").body == b"e" * 2000
    answer = call(shared_replica, "PUT", "/v1/kv/expect", b"x", headers={"Expect": "something-else"})
    assert error_of(answer, 417) == "expectation_failed"
    assert call(shared_replica, "GET", "/v1/kv/expect").body == b"e" * 2000


def test_a_body_shorter_than_its_content_length_is_refused_and_not_written(shared_replica: ReplicaProcess) -> None:
    with socket.create_connection((shared_replica.host, shared_replica.http_port), timeout=5) as sock:
        sock.sendall(b"PUT /v1/kv/short-body HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n12345")
        sock.shutdown(socket.SHUT_WR)  # the client stops sending: 5 of the 10 bytes came
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
    # aiohttp takes the half-close for a closed connection, so there may be no answer at all;
    # if there is one, it refuses the write.
    head, _, body = answer.partition(b"\r\n\r\n")
    assert answer == b"" or (head.startswith(b"HTTP/1.1 400") and json.loads(body)["error"] == "bad_body"), answer
    assert error_of(call(shared_replica, "GET", "/v1/kv/short-body"), 404) == "not_found"
    assert "Traceback" not in shared_replica.log_tail()


# ----------------------------------------------------------- process lifecycle
def test_sigkill_loses_no_acknowledged_write(tmp_path: Path) -> None:
    replica = ReplicaProcess(tmp_path)
    try:
        replica.start()
        acknowledged = {}
        for i in range(200):
            answer = call(replica, "PUT", f"/v1/kv/durable/{i}", f"value-{i}".encode())
            assert answer.status == 200
            acknowledged[i] = answer.json()["version"]
        replica.kill()
        replica.start()
        for i, version in acknowledged.items():
            got = call(replica, "GET", f"/v1/kv/durable/{i}")
            assert got.status == 200 and got.body == f"value-{i}".encode()
            assert got.headers["ETag"] == f'"{version}"'
        assert call(replica, "GET", "/v1/status").json()["lsn"] == max(acknowledged.values())
    finally:
        replica.stop()


def test_sigterm_finishes_in_flight_and_exits_zero(tmp_path: Path) -> None:
    replica = ReplicaProcess(tmp_path)
    try:
        replica.start()
        assert call(replica, "PUT", "/v1/kv/before-term", b"x").status == 200
        # A PUT whose body is half sent when SIGTERM arrives still completes.
        conn = http.client.HTTPConnection(replica.host, replica.http_port, timeout=10)
        conn.putrequest("PUT", "/v1/kv/in-flight")
        conn.putheader("Content-Length", "10")
        conn.endheaders(b"12345")
        time.sleep(0.2)  # the request is being handled when the signal lands
        assert replica.proc is not None
        replica.proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        conn.send(b"67890")
        response = conn.getresponse()
        assert response.status == 200, response.read()
        conn.close()
        started = time.monotonic()
        assert replica.proc.wait(10) == 0
        assert time.monotonic() - started < 10  # bounded wait, not a speed claim
        assert "stopped cleanly" in replica.log_tail()
        replica.start()  # LevelDB closed cleanly: the lock is free and data is there
        assert call(replica, "GET", "/v1/kv/before-term").body == b"x"
        assert call(replica, "GET", "/v1/kv/in-flight").body == b"1234567890"
    finally:
        replica.stop()


# --------------------------------------------------------- configuration errors
def _one_line_exit_2(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def _base_env(tmp_path: Path) -> dict[str, str]:
    return {"POD_NAME": "kv-0", "KV_DATA_DIR": str(tmp_path / "data"),
            "KV_BIND_ADDRESS": "127.0.0.1", "KV_HTTP_PORT": str(free_port()),
            "KV_PEER_PORT": str(free_port())}


@pytest.mark.parametrize("override, needle", [
    ({"POD_NAME": "kvstore"}, "POD_NAME"),
    ({"KV_HTTP_PORT": "eighty"}, "KV_HTTP_PORT"),
    ({"KV_MAX_VALUE_BYTES": "lots"}, "KV_MAX_VALUE_BYTES"),
    ({"KV_WRITE_CONCERN": "3"}, "KV_WRITE_CONCERN"),
    ({"KV_DATA_DIR": "/proc/kvstore/data"}, "data dir"),
    ({"KV_BIND_ADDRESS": "192.0.2.1"}, "not an address of this machine"),
    ({"KV_CLUSTER_TOKEN_FILE": "/nonexistent/token"}, "KV_CLUSTER_TOKEN_FILE"),
    ({"KV_DNS_SERVER": "dns.example:53"}, "KV_DNS_SERVER"),  # a name, not an address
])
def test_bad_configuration_stops_with_one_line(tmp_path: Path, override: dict[str, str], needle: str) -> None:
    _one_line_exit_2(run_serve({**_base_env(tmp_path), **override}), needle)


def test_bad_flag_stops_with_one_line(tmp_path: Path) -> None:
    env = {**os.environ, **_base_env(tmp_path)}
    result = subprocess.run([sys.executable, "-m", "kvstore", "serve", "--http-port", "x"],
                            env=env, capture_output=True, text=True, timeout=20)
    _one_line_exit_2(result, "--http-port")
    result = subprocess.run([sys.executable, "-m", "kvstore", "serve", "--no-such-flag"],
                            env=env, capture_output=True, text=True, timeout=20)
    assert result.returncode == 2 and "unrecognized arguments" in result.stderr
    assert "Traceback" not in result.stderr


def test_same_ports_stop_with_one_line(tmp_path: Path) -> None:
    _one_line_exit_2(run_serve({**_base_env(tmp_path), "KV_PEER_PORT": "18123",
                                "KV_HTTP_PORT": "18123"}), "must differ")


def test_port_in_use_and_locked_data_dir(replica: ReplicaProcess, tmp_path: Path) -> None:
    env = _base_env(tmp_path)
    _one_line_exit_2(run_serve({**env, "KV_HTTP_PORT": str(replica.http_port)}), "already in use")
    _one_line_exit_2(run_serve({**env, "KV_DATA_DIR": str(replica.data_dir)}), "in use by another replica")
    assert call(replica, "GET", "/healthz").status == 200  # the running replica is untouched
