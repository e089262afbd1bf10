"""`kvstore cluster --runtime docker`: the local StatefulSet controller running pods as containers.

The controller (kvstore.local.statefulset) is the one `kvstore cluster up` runs;
here it drives DockerRuntime directly: ordered start, a SIGKILLed pod restarted
in place with its data, and a graceful stop in reverse order.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Iterator

import pytest
from docker_pods import LoopThread, client_leftovers, http, start_runtime

from kvstore.local.docker_runtime import DockerRuntime
from kvstore.local.state import ensure_token
from kvstore.local.statefulset import ClusterSpec, StatefulSet

pytestmark = pytest.mark.timeout(600)


def snapshot(loop: LoopThread, sts: StatefulSet) -> list[dict[str, Any]]:
    """The pods as the controller sees them, read on the controller's own loop."""
    async def read() -> list[dict[str, Any]]:
        return [p.to_dict() for _, p in sorted(sts.pods.items())]
    return loop.run(read())


def wait_for(loop: LoopThread, sts: StatefulSet, what: str, check: Any,
             attempts: int = 240, pause: float = 0.25) -> list[dict[str, Any]]:
    """Poll the controller until ``check(pods)`` holds, at most ``attempts`` times."""
    pods: list[dict[str, Any]] = []
    for _ in range(attempts):
        pods = snapshot(loop, sts)
        if check(pods):
            return pods
        time.sleep(pause)
    pytest.fail(f"not reached: {what}; pods: {pods}")


@pytest.fixture
def controller(docker_client: Any, kv_image: str, tmp_path: Path) -> Iterator[tuple[LoopThread, StatefulSet]]:
    loop = LoopThread()
    spec = ClusterSpec(directory=tmp_path, replicas=3)
    (tmp_path / "logs").mkdir()
    spec.token_path = ensure_token(tmp_path)
    sts: StatefulSet | None = None
    runtime: DockerRuntime | None = None
    try:
        # Before the DNS server binds the network's gateway; bind-mounted data dirs, as `kvstore cluster` uses.
        runtime = start_runtime(docker_client, kv_image, spec)
        sts = StatefulSet(spec, runtime)
        loop.run(sts.start())
        yield loop, sts
    finally:
        if sts is not None:
            loop.run(sts.stop(force=True), timeout=180)  # no-op when the test stopped it
        if runtime is not None:
            loop.run(runtime.close())
        loop.close()
        if runtime is not None:
            assert not client_leftovers(docker_client, runtime.scope)


def test_ordered_start_restart_in_place_and_graceful_stop(controller: tuple[LoopThread, StatefulSet]) -> None:
    loop, sts = controller
    pods = wait_for(loop, sts, "3 pods ready", lambda ps: len(ps) == 3 and all(p["ready"] for p in ps))
    # OrderedReady: each pod was created only after its predecessor was Ready.
    for before, after in zip(pods, pods[1:]):
        assert after["created_at"] >= before["ready_at"], (before, after)
    url = f"http://{pods[0]['address']}:{pods[0]['http_port']}"
    # Ready is not writable: kv-0 is Ready while it still waits to hear its followers (OrderedReady).
    deadline = time.monotonic() + 30
    while (status := http("PUT", f"{url}/v1/kv/k?w=1", b"v")[0]) == 503 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert status == 200

    async def kill() -> bool:
        pod = sts.pod("kv-0")
        assert pod is not None
        return pod.kill()
    assert loop.run(kill())
    pods = wait_for(loop, sts, "kv-0 restarted and ready",
                    lambda ps: ps[0]["restarts"] >= 1 and ps[0]["ready"])
    assert pods[0]["last_exit"] == -9
    assert http("GET", f"{url}/v1/kv/k")[::2] == (200, b"v")  # same address, same data dir

    loop.run(sts.stop(), timeout=180)  # SIGTERM in reverse order, grace period, then SIGKILL
    assert snapshot(loop, sts) == []
    logs = {n: (sts.spec.directory / "logs" / f"kv-{n}.log").read_text() for n in range(3)}
    for n, text in logs.items():
        assert "stopped cleanly" in text, f"kv-{n} did not stop cleanly:\n{text[-2000:]}"
