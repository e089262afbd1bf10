"""Requests aiohttp's HTTP parser refuses get the same JSON errors as the rest, on both ports.

Raw sockets against a real ``kvstore serve``: no client library would send these.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any, Iterator

import pytest

from replica_process import ReplicaProcess, running

HOST = "127.0.33.1"


@pytest.fixture(scope="module")
def own_replica(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReplicaProcess]:
    """One replica on this file's own loopback address."""
    with running(tmp_path_factory.mktemp("http-errors"), host=HOST) as proc:
        yield proc


def exchange(port: int, data: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send ``data`` as is and read the answer until the server closes (it does, after an error)."""
    with socket.create_connection((HOST, port), timeout=10) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers, body


def json_error(port: int, data: bytes, status: int) -> dict[str, Any]:
    """Assert the API's error contract on the answer to ``data``; return the body."""
    got, headers, body = exchange(port, data)
    assert got == status, (got, body[:300])
    assert headers["content-type"].startswith("application/json"), (headers, body[:300])
    error = json.loads(body)
    assert set(error) == {"error", "message"} and error["message"], error
    assert "\n" not in error["message"]
    return error


def ports(replica: ReplicaProcess) -> dict[str, int]:
    return {"client": replica.http_port, "peer": replica.peer_port}


@pytest.mark.parametrize("port", ["client", "peer"])
def test_oversized_request_line(own_replica: ReplicaProcess, port: str) -> None:
    line = b"GET /v1/kv/" + b"k" * 20_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    error = json_error(ports(own_replica)[port], line, 414)
    assert error["error"] == "request_line_too_long"


def test_a_10kb_key_is_refused_by_the_api_not_the_parser(own_replica: ReplicaProcess) -> None:
    line = b"GET /v1/kv/" + b"k" * 10_000 + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    assert json_error(own_replica.http_port, line, 413)["error"] == "key_too_large"


@pytest.mark.parametrize("port", ["client", "peer"])
def test_oversized_header(own_replica: ReplicaProcess, port: str) -> None:
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 10_000 + b"\r\n\r\n"
    assert json_error(ports(own_replica)[port], request, 431)["error"] == "header_too_large"


@pytest.mark.parametrize("port", ["client", "peer"])
@pytest.mark.parametrize("request_line", [
    b"GARBAGE\r\n\r\n",                       # no method, target or version
    b"GET / HTTP/9.9\r\nHost: x\r\n\r\n",     # a version that does not exist
    b"GET /v1/kv/a HTTP/1.1\r\nBad Header\r\n\r\n",  # a header line without a colon
], ids=["garbage", "version", "header-line"])
def test_malformed_request(own_replica: ReplicaProcess, port: str, request_line: bytes) -> None:
    assert json_error(ports(own_replica)[port], request_line, 400)["error"] == "bad_request"


@pytest.mark.parametrize("port", ["client", "peer"])
def test_undecodable_body_is_a_400_not_a_500(own_replica: ReplicaProcess, port: str) -> None:
    request = (b"PUT /v1/kv/gz HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer test-token\r\n"
               b"Content-Encoding: gzip\r\nContent-Length: 7\r\n\r\nnotgzip")
    assert json_error(ports(own_replica)[port], request, 400)["error"] == "bad_body"
    _, _, body = exchange(own_replica.http_port, b"GET /v1/kv/gz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert json.loads(body)["error"] == "not_found"  # nothing was written


def test_the_replica_keeps_serving_after_refusals(own_replica: ReplicaProcess, tmp_path: Path) -> None:
    json_error(own_replica.http_port, b"GARBAGE\r\n\r\n", 400)
    status, _, body = exchange(own_replica.http_port, b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert status == 200
    assert b'status="500"' not in body
    assert "Traceback" not in own_replica.log_path.read_text(errors="replace")
