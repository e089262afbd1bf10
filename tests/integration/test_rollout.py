"""Rolling updates of the local StatefulSet: real controllers, real pods, real SIGTERMs.

Each test starts its own cluster in its own temp dir and loopback range
(127.0.23.x … 127.0.27.x) and stops it, logs kept on failure in the assertion.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any, Iterator

import pytest

from kvstore.local.state import LOG_DIR, read_state
from kvstore.local.writer import SteadyWriter
from local_cluster import LocalCluster, http, wait_for


@pytest.fixture
def cluster(request: pytest.FixtureRequest) -> Iterator[LocalCluster]:
    """A 3-pod cluster; ``@pytest.mark.parametrize("cluster", [(range, kwargs)], indirect=True)``."""
    third, kwargs = request.param
    handle = LocalCluster(f"127.0.{third}.10", f"127.0.{third}.2", **kwargs).up()
    try:
        yield handle
    finally:
        handle.down()


def state(cluster: LocalCluster) -> dict[str, Any]:
    return read_state(cluster.directory)


def revisions(cluster: LocalCluster) -> dict[str, str]:
    return {p["name"]: p["revision"] for p in state(cluster)["pods"]}


def rollout_status(cluster: LocalCluster, timeout: float = 120) -> Any:
    return cluster.cli("rollout", "status", "--timeout", f"{timeout:g}", timeout=timeout + 30)


def controller_events(cluster: LocalCluster) -> list[str]:
    """``deleting kv-N`` / ``creating kv-N`` in the controller's log, in order."""
    text = (cluster.directory / LOG_DIR / "controller.log").read_text()
    return [f"{verb} {pod}" for verb, pod in re.findall(r"(deleting|creating) (kv-\d)", text)]


def one_line(result: Any, code: int, text: str) -> None:
    """Exit ``code``, no traceback, ``text`` in the last stderr line (argparse adds its usage first)."""
    assert result.returncode == code, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert text in lines[-1], lines
    assert len([line for line in lines if not line.startswith(("usage:", " "))]) == 1, lines


@pytest.mark.parametrize("cluster", [(23, {}), (29, {"parallel": True})], indirect=True,
                         ids=["OrderedReady", "Parallel"])
def test_rollout_restart_replaces_highest_first_each_once_the_previous_is_ready(cluster: LocalCluster) -> None:
    """The same order under Parallel pod management, as in Kubernetes without maxUnavailable."""
    assert http("PUT", cluster.url("kv-0") + "/v1/kv/kept?w=all", b"on the volume")[0] == 200
    before = state(cluster)
    old_revision = before["rollout"]["update_revision"]
    assert {p["revision"] for p in before["pods"]} == {old_revision}
    result = cluster.cli("rollout", "restart")
    assert result.returncode == 0 and "restarted: revision 2" in result.stdout, result
    done = rollout_status(cluster)
    assert done.returncode == 0, cluster.logs()
    assert "rolling update complete 3 pods" in done.stdout
    after = state(cluster)
    new_revision = after["rollout"]["update_revision"]
    assert new_revision != old_revision and after["rollout"]["current_revision"] == new_revision
    assert revisions(cluster) == {f"kv-{o}": new_revision for o in range(3)}
    pods = {p["name"]: p for p in after["pods"]}
    old_pids = {p["name"]: p["pid"] for p in before["pods"]}
    assert all(pods[n]["pid"] != old_pids[n] for n in pods), "every pod was replaced"
    # Highest ordinal first; each next pod deleted only once the one before is Ready again.
    replaced = controller_events(cluster)[3:]
    assert replaced == ["deleting kv-2", "creating kv-2", "deleting kv-1", "creating kv-1",
                        "deleting kv-0", "creating kv-0"], replaced
    assert pods["kv-2"]["ready_at"] <= pods["kv-1"]["created_at"]
    assert pods["kv-1"]["ready_at"] <= pods["kv-0"]["created_at"]
    cluster.wait_restarted("kv-0", old_pids["kv-0"])
    for name in pods:  # same volume: the write is still there on every pod
        status, _, body = http("GET", cluster.url(name) + "/v1/kv/kept")
        assert (status, body) == (200, b"on the volume"), name
    # The replica count is not part of the template: a scale-up starts no rollout.
    cluster.scale(4)
    assert revisions(cluster)["kv-3"] == new_revision
    assert [r["number"] for r in state(cluster)["revisions"]] == [1, 2]
    table = cluster.cli("status").stdout
    assert f"{new_revision} (2)" in table and table.splitlines()[3].split()[-1] == "REVISION"


@pytest.mark.parametrize("cluster", [(24, {})], indirect=True)
def test_a_template_that_never_becomes_ready_halts_at_kv2_and_undo_recovers(cluster: LocalCluster) -> None:
    before = state(cluster)
    good = before["rollout"]["update_revision"]
    pids = {p["name"]: p["pid"] for p in before["pods"]}
    result = cluster.cli("set", "env", "KV_WRITE_CONCERN=bogus")
    assert result.returncode == 0 and "env updated: revision 2" in result.stdout, result
    assert "warning: KV_WRITE_CONCERN='bogus'" in result.stderr
    halted = rollout_status(cluster, 60)
    assert halted.returncode == 1, (halted.stdout, halted.stderr)
    assert "rollout halted at kv-2" in halted.stderr and "KV_WRITE_CONCERN='bogus'" in halted.stderr, halted.stderr
    now = state(cluster)
    assert now["rollout"]["state"] == "halted" and now["rollout"]["pod"] == "kv-2"
    pods = {p["name"]: p for p in now["pods"]}
    assert pods["kv-2"]["revision"] != good and not pods["kv-2"]["ready"]
    assert [(pods[n]["revision"], pods[n]["pid"]) for n in ("kv-0", "kv-1")] == [(good, pids["kv-0"]),
                                                                              (good, pids["kv-1"])]
    assert "halted" in cluster.cli("status").stdout.splitlines()[1]
    undo = cluster.cli("rollout", "undo")
    assert undo.returncode == 0 and "rollout undo to revision 1 is revision 3" in undo.stdout, undo
    assert rollout_status(cluster, 60).returncode == 0, cluster.logs()
    cluster.wait_ready()
    after = {p["name"]: p for p in state(cluster)["pods"]}
    assert {p["revision"] for p in after.values()} == {good}
    assert after["kv-0"]["pid"] == pids["kv-0"] and after["kv-1"]["pid"] == pids["kv-1"], "undo left them alone"
    assert http("PUT", cluster.url("kv-0") + "/v1/kv/after-undo?w=all", b"x")[0] == 200
    # Bad input: one line, exit 2, nothing changed.
    one_line(cluster.cli("rollout", "undo", "--to-revision", "9"), 2, "unable to find revision 9")
    one_line(cluster.cli("rollout", "partition", "4"), 2, "partition must be from 0 to 3")
    one_line(cluster.cli("rollout", "partition", "-1"), 2, "partition")
    one_line(cluster.cli("rollout", "history", "--revision", "9"), 2, "unable to find revision 9")
    one_line(cluster.cli("set", "env", "KV_WRITE_CONCERN"), 2, "expected NAME=VALUE to set or NAME- to remove")
    one_line(cluster.cli("set", "env", "KV_NOPE=1"), 2, "is not one of the KV_* settings")
    one_line(cluster.cli("set", "env", "KV_DATA_DIR=/tmp"), 2, "set by the controller")
    one_line(cluster.cli("set", "env", "KV_READ_WAIT=1", "KV_READ_WAIT-"), 2, "both set and removed")
    assert state(cluster)["rollout"]["update_number"] == 3


@pytest.mark.parametrize("cluster", [(25, {})], indirect=True)
def test_partition_stages_the_update_and_a_scale_up_joins_at_the_update_revision(cluster: LocalCluster) -> None:
    old = state(cluster)["rollout"]["update_revision"]
    assert cluster.cli("rollout", "partition", "2").returncode == 0
    assert cluster.cli("set", "env", "KV_READ_WAIT=4").returncode == 0
    staged = rollout_status(cluster)
    assert staged.returncode == 0 and "partitioned roll out complete: 1 new pods" in staged.stdout, staged
    new = state(cluster)["rollout"]["update_revision"]
    assert revisions(cluster) == {"kv-0": old, "kv-1": old, "kv-2": new}
    assert state(cluster)["rollout"]["current_revision"] == old
    cluster.scale(4)  # a pod created at or above the partition gets the update revision
    assert revisions(cluster) == {"kv-0": old, "kv-1": old, "kv-2": new, "kv-3": new}
    cluster.scale(3)
    assert cluster.cli("rollout", "partition", "0").returncode == 0
    assert rollout_status(cluster).returncode == 0, cluster.logs()
    assert set(revisions(cluster).values()) == {new} and state(cluster)["rollout"]["current_revision"] == new
    status, _, body = http("GET", cluster.url("kv-1") + "/v1/status")
    assert status == 200 and json.loads(body)["role"] == "secondary"


@pytest.mark.parametrize("cluster", [(26, {"update_strategy": "OnDelete"})], indirect=True)
def test_on_delete_replaces_a_pod_only_when_it_is_deleted(cluster: LocalCluster) -> None:
    old = state(cluster)["rollout"]["update_revision"]
    pids = {p["name"]: p["pid"] for p in state(cluster)["pods"]}
    assert cluster.cli("set", "env", "KV_READ_WAIT=4").returncode == 0
    time.sleep(3)  # a RollingUpdate would have deleted kv-2 by now
    now = state(cluster)
    assert {p["name"]: p["pid"] for p in now["pods"]} == pids and set(revisions(cluster).values()) == {old}
    assert now["rollout"]["state"] == "waiting" and "kv-0, kv-1, kv-2" in now["rollout"]["message"]
    cluster.kill("kv-1")
    cluster.wait_restarted("kv-1", pids["kv-1"])
    new = state(cluster)["rollout"]["update_revision"]
    assert revisions(cluster) == {"kv-0": old, "kv-1": new, "kv-2": old}


@pytest.mark.parametrize("cluster", [(27, {})], indirect=True)
def test_a_rollout_under_a_steady_writer_loses_no_acknowledged_write(cluster: LocalCluster) -> None:
    urls = {name: cluster.url(name) for name in ("kv-0", "kv-1", "kv-2")}
    writer = SteadyWriter(urls, prefix="roll").start()
    try:
        wait_for("the first acknowledged writes", lambda: len(writer.acks) >= 20, 30)
        assert cluster.cli("rollout", "restart").returncode == 0
        done = rollout_status(cluster)
        assert done.returncode == 0, cluster.logs()
        cluster.wait_ready()
        count = len(writer.acks)
        wait_for("writes after the rollout", lambda: len(writer.acks) >= count + 20, 30)
    finally:
        writer.stop()
    assert writer.acks, writer.errors
    for name, url in urls.items():  # every acknowledged write is on every pod (a strong read each)
        for ack in writer.acks:
            status, _, body = http("GET", f"{url}/v1/kv/{ack.key}?consistency=strong")
            assert (status, body.decode()) == (200, ack.value), (name, ack.key, status, body[:200])


@pytest.mark.parametrize("cluster", [(28, {})], indirect=True)
def test_a_pod_that_cannot_speak_the_peer_protocol_says_so(cluster: LocalCluster) -> None:
    assert cluster.cli("set", "env", "KV_TEST_PEER_PROTOCOL=5").returncode == 0
    waited = rollout_status(cluster, 10)  # not Ready, not crashed: rollout status says why and gives up
    assert waited.returncode == 1 and "kv-0 speaks peer protocol 2-4, this pod 5" in waited.stderr, waited.stderr
    status, _, body = http("GET", cluster.url("kv-2") + "/readyz")
    assert status == 503 and "kv-0 speaks peer protocol 2-4, this pod 5" in json.loads(body)["message"]
    status, _, body = http("GET", cluster.url("kv-0") + "/v1/status")
    assert json.loads(body)["peer_protocol"]["mismatches"] == ["kv-2 speaks peer protocol 5, this pod 2-4"]
    logged = (cluster.directory / LOG_DIR / "kv-2.log").read_text().count("kv-0 speaks peer protocol 2-4, this pod 5:")
    assert logged == 1
    assert cluster.cli("rollout", "undo").returncode == 0
    assert rollout_status(cluster, 60).returncode == 0, cluster.logs()
    # A build that still speaks 4 meets the others: the rollout goes through.
    assert cluster.cli("set", "env", "KV_TEST_PEER_PROTOCOL=4-5").returncode == 0
    assert rollout_status(cluster).returncode == 0, cluster.logs()
