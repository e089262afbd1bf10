"""The image itself: what it declares, how PID 1 starts and stops, how a bad config ends.

These build the image from the work tree (offline: tests/container/conftest.py)
and run it with the restrictions of the StatefulSet's pod (non-root, read-only
root filesystem, no capabilities).
"""

from __future__ import annotations

import secrets
from typing import Any

import pytest

from docker_pods import Pods, http, statefulset

pytestmark = pytest.mark.timeout(600)  # the first build on a fresh engine takes ~2 minutes


def test_image_declares_what_the_manifests_rely_on(docker_client: Any, kv_image: str) -> None:
    """User, entrypoint, ports and data dir agree with k8s/base/statefulset.yaml."""
    config = docker_client.images.get(kv_image).attrs["Config"]
    pod = statefulset()["spec"]["template"]["spec"]
    security = pod["securityContext"]
    assert config["User"] == f"{security['runAsUser']}:{security['runAsGroup']}"
    assert security["fsGroup"] == security["runAsGroup"]
    [container] = pod["containers"]
    assert config["Entrypoint"] == ["kvstore"]  # exec form: kvstore is PID 1
    assert config["Cmd"] == container["args"] == ["serve"]
    assert set(config["ExposedPorts"]) == {f"{p['containerPort']}/tcp" for p in container["ports"]}
    data_mount = next(m["mountPath"] for m in container["volumeMounts"] if m["name"] == "data")
    assert f"KV_DATA_DIR={data_mount}" in config["Env"]
    assert not config.get("Volumes")  # no anonymous volumes left behind by `docker run`


def test_image_has_no_build_leftovers(docker_client: Any, kv_image: str) -> None:
    """No wheels, sources or pip in the final image; /data belongs to the image's user."""
    out = docker_client.containers.run(
        kv_image, entrypoint=["/bin/sh", "-c"],
        command=["ls /src /wheels 2>&1; /opt/kvstore/bin/python -m pip --version 2>&1; stat -c '%u:%g %a' /data"],
        network_mode="none", remove=True, read_only=True,
    ).decode()
    assert "No such file or directory" in out.splitlines()[0]
    assert "No module named pip" in out
    assert out.splitlines()[-1] == "10001:10001 750"


def test_bad_configuration_exits_2_with_one_line(docker_client: Any, kv_image: str) -> None:
    """PID 1's exit status is kvstore's own: a bad variable ends the container with 2 and one line."""
    container = docker_client.containers.run(
        kv_image, environment={"POD_NAME": "kv-0", "KV_HTTP_PORT": "http"},
        network_mode="none", detach=True, read_only=True, cap_drop=["ALL"],
    )
    try:
        assert container.wait(timeout=60)["StatusCode"] == 2
        lines = container.logs().decode().strip().splitlines()
        assert len(lines) == 1, lines
        assert "KV_HTTP_PORT" in lines[0]
    finally:
        container.remove(force=True)


def test_docker_stop_ends_pid1_cleanly_within_the_grace_period(runtime: Any, loop_thread: Any,
                                                                 tmp_path: Any) -> None:
    """SIGTERM reaches kvstore as PID 1; it exits 0 before the grace period's SIGKILL would come.

    ``docker stop -t <terminationGracePeriodSeconds>`` sends SIGTERM, then SIGKILL
    when the period is over: exit status 0 (not -9) proves the clean exit came first.
    The data written before is there on the next start with the same volume.
    """
    grace = statefulset()["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    pods = Pods(runtime, loop_thread, tmp_path, secrets.token_hex(16))
    try:
        pods.start_dns()
        pod = pods.start(0, replicas=1)
        code, cmdline = pods.exec(0, ["cat", "/proc/1/cmdline"])
        assert code == 0
        assert cmdline.split("\0")[1:3] == ["/opt/kvstore/bin/kvstore", "serve"], cmdline
        status, _, body = http("PUT", f"{pods.url(0)}/v1/kv/before-stop?w=1", b"kept")
        assert status == 200, body
        pod.container.stop(timeout=grace)
        assert pods.wait_exit(0) == 0, pods.log(0)
        assert "stopped cleanly" in pods.log(0)
        pods.start(0, replicas=1)
        assert http("GET", f"{pods.url(0)}/v1/kv/before-stop")[::2] == (200, b"kept")
    finally:
        pods.stop_all()


def test_chaos_image_runs_kvstore_chaos_with_kubectl(docker_client: Any, kv_image: str) -> None:
    """The chaos Job's image, built offline by the project's tooling, has kubectl and the chaos command."""
    from kvstore.local import image as image_mod

    image_id = image_mod.build_chaos_image(docker_client, image_mod.CHAOS_TAG, say=lambda m: print(m, flush=True))
    assert docker_client.images.get(image_mod.CHAOS_TAG).id == image_id
    config = docker_client.images.get(image_id).attrs["Config"]
    assert config["User"] == "10001:10001" and config["Entrypoint"] == ["kvstore"]  # the Job's securityContext
    kubectl = docker_client.containers.run(image_id, entrypoint=["kubectl"], command=["version", "--client"],
                                           network_mode="none", remove=True, read_only=True).decode()
    assert "Client Version" in kubectl
    usage = docker_client.containers.run(image_id, command=["chaos", "--help"], network_mode="none",
                                         remove=True, read_only=True).decode()
    assert "--runtime {process,docker,kubernetes}" in usage
