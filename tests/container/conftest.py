"""Fixtures for tests that build the image and run it under the local Docker engine.

Nothing here is faked: the image is built from the work tree (offline, see
kvstore.local.image), containers run on a bridge network the tests create on
a private subnet ($KV_TEST_SUBNET, default 172.30.78.0/24), and the project's
DNS server answers for them on that network's gateway. Everything created is
removed afterwards; only images stay, cached by tag.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from docker_pods import (  # noqa: E402
    IMAGE_TAG, ROOT, TEST_LABEL, LoopThread, client_leftovers, connect_or_skip, is_leftover, start_runtime)

from kvstore.local import image as image_mod  # noqa: E402
from kvstore.local.statefulset import ClusterSpec  # noqa: E402


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/container" in str(item.path):
            item.add_marker(pytest.mark.docker)


@pytest.fixture(scope="session")
def docker_client() -> Any:
    """The local engine; a skip saying so when there is none, a failure when it is there but broken."""
    client = connect_or_skip(dict(os.environ))
    try:
        yield client
    finally:
        client.close()


@pytest.fixture(scope="session")
def kv_image(docker_client: Any) -> str:
    """The project's image, built from the work tree; the first build on a fresh engine takes ~2 min."""
    try:
        return image_mod.build_image(docker_client, IMAGE_TAG, ROOT, say=lambda m: print(m, flush=True))
    except image_mod.ImageError as exc:
        pytest.fail(f"cannot build the image: {exc}")


@pytest.fixture(scope="module")
def loop_thread() -> Iterator[LoopThread]:
    thread = LoopThread()
    try:
        yield thread
    finally:
        thread.close()


@pytest.fixture(scope="session", autouse=True)
def remove_leftovers_of_killed_runs(docker_client: Any) -> None:
    """A test run that was SIGKILLed leaves containers, networks, volumes: remove them first.

    Only those whose creating process is gone: another run may be using the engine now.
    """
    selector = {"label": TEST_LABEL}
    for container in docker_client.containers.list(all=True, filters=selector):
        if is_leftover(container.labels):
            container.remove(force=True)
    for network in docker_client.networks.list(filters=selector):
        if is_leftover(network.attrs.get("Labels") or {}):
            network.remove()
    for volume in docker_client.volumes.list(filters=selector):
        if is_leftover(volume.attrs.get("Labels") or {}):
            volume.remove(force=True)


@pytest.fixture(scope="module")
def runtime(docker_client: Any, kv_image: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A DockerRuntime on a fresh network of a free test subnet, one Docker volume per pod.

    Teardown removes its containers, its volumes and the network.
    """
    spec = ClusterSpec(directory=tmp_path_factory.mktemp("cluster"), replicas=3)
    runtime = start_runtime(docker_client, kv_image, spec, volumes="named")
    try:
        runtime.spec = spec  # type: ignore[attr-defined]
        yield runtime
    finally:
        runtime.close_sync()
        runtime.remove_volumes()
        leftovers = client_leftovers(docker_client, runtime.scope)
        assert not leftovers, f"left behind: {leftovers}"
