"""The dashboard's endpoints on a real replica: events, cluster view, live feed, static files, bad input."""

from __future__ import annotations

import json
import urllib.request
from http.client import HTTPConnection
from pathlib import Path
from typing import Iterator

import pytest

from local_cluster import http
from replica_process import ReplicaProcess, running

HOST = "127.0.81.1"


@pytest.fixture(scope="module")
def pod(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReplicaProcess]:
    with running(tmp_path_factory.mktemp("dash"), host=HOST) as proc:
        yield proc


def get_json(url: str) -> tuple[int, dict]:
    status, _, body = http("GET", url)
    return status, json.loads(body)


@pytest.mark.parametrize("query, needle", [
    ("after=-1", "after must be an integer"),
    ("after=abc", "after must be an integer"),
    ("after=99999999999999999999", "after must be an integer"),
    ("limit=0", "limit must be an integer from 1 to 500"),
    ("limit=501", "limit must be an integer from 1 to 500"),
    ("limit=1&limit=2", "given twice"),
    ("since=3", "unknown query parameter 'since'"),
    ("after=%zz", "invalid percent-encoding"),
])
def test_events_bad_input_is_a_400_naming_it(pod: ReplicaProcess, query: str, needle: str) -> None:
    status, body = get_json(f"{pod.url}/v1/events?{query}")
    assert status == 400 and body["error"] in ("bad_parameter", "unknown_parameter", "bad_encoding"), body
    assert needle in body["message"]


@pytest.mark.parametrize("method, path, status", [
    ("GET", "/v1/cluster?pods=all", 400), ("POST", "/v1/cluster", 405), ("DELETE", "/v1/events", 405),
    ("GET", "/ui/live?x=1", 400), ("GET", "/ui/../openapi.json", 404), ("GET", "/ui/nothing.js", 404),
    ("PUT", "/ui/app.js", 405),
])
def test_dashboard_routes_answer_bad_calls_in_json(pod: ReplicaProcess, method: str, path: str, status: int) -> None:
    got, _, body = http(method, pod.url + path, body=b"" if method in ("POST", "PUT") else None)
    assert got == status, body
    assert set(json.loads(body)) >= {"error", "message"}


def test_events_page_in_order(pod: ReplicaProcess) -> None:
    status, first = get_json(f"{pod.url}/v1/events?limit=1")
    assert status == 200 and first["pod"] == "kv-0"
    assert first["events"][0]["kind"] == "started" and first["events"][0]["seq"] == 1
    status, rest = get_json(f"{pod.url}/v1/events?after={first['next_after']}&limit=500")
    assert all(event["seq"] > first["next_after"] for event in rest["events"])
    assert rest["last_seq"] >= first["next_after"] and rest["boot"] == first["boot"]


def test_cluster_view_and_live_feed(pod: ReplicaProcess) -> None:
    status, view = get_json(pod.url + "/v1/cluster")
    assert status == 200 and view["served_by"] == "kv-0"
    [me] = view["pods"]
    assert (me["name"], me["role"], me["state"], me["serving"], me["restarts"]) == ("kv-0", "primary", "Ready", True, 0)
    with urllib.request.urlopen(pod.url + "/ui/live", timeout=10) as response:
        assert response.headers["Content-Type"].startswith("text/event-stream")
        assert "script-src 'self'" in response.headers["Content-Security-Policy"]
        for _ in range(20):  # bounded: "retry:" first, then a view within a second or two
            line = response.readline().decode()
            if line.startswith("data: "):
                assert json.loads(line[6:])["pods"][0]["name"] == "kv-0"
                break
        else:
            pytest.fail("no view on the live feed")


def test_static_files_carry_the_policy(pod: ReplicaProcess) -> None:
    for path, kind in (("/ui/", "text/html"), ("/ui/app.js", "text/javascript"), ("/ui/style.css", "text/css")):
        status, headers, _ = http("GET", pod.url + path)
        assert status == 200 and headers["Content-Type"].startswith(kind)
        assert "'unsafe-inline'" not in headers["Content-Security-Policy"]
        assert headers["X-Content-Type-Options"] == "nosniff"
    for path in ("/", "/ui"):
        connection = HTTPConnection(HOST, pod.http_port, timeout=10)  # urllib would follow it
        connection.request("GET", path)
        response = connection.getresponse()
        assert (response.status, response.getheader("Location")) == (302, "/ui/")
        connection.close()


def test_the_peer_view_needs_the_token(pod: ReplicaProcess) -> None:
    peer = f"http://{HOST}:{pod.peer_port}/v1/peer/view"
    assert http("GET", peer)[0] == 401
    status, _, body = http("GET", peer, headers={"Authorization": "Bearer test-token"})
    assert status == 200 and json.loads(body)["status"]["name"] == "kv-0"


def test_restarts_count_unclean_stops_only(tmp_path: Path) -> None:
    replica = ReplicaProcess(tmp_path, host="127.0.81.2")

    def restarts() -> int:
        return get_json(replica.url + "/v1/cluster")[1]["pods"][0]["restarts"]
    try:
        replica.start()
        assert restarts() == 0
        for expected in (1, 2):
            replica.kill()  # SIGKILL: like a crashed container
            replica.start()
            assert restarts() == expected
        kinds = [e["kind"] for e in get_json(replica.url + "/v1/events")[1]["events"]]
        assert kinds[0] == "restarted"
        assert replica.terminate() == 0  # SIGTERM: a clean stop, as when the pod is deleted
        replica.start()
        assert restarts() == 0
    finally:
        replica.stop()
