"""The image build says which Dockerfile step runs, and a failing step is an ImageError with its output."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import docker.errors
import pytest

from kvstore.local import image as image_mod
from kvstore.progress import ProgressLine

TAG = "kvstore-progress-test:1"


def _context(tmp_path: Path, base: str, last: str) -> str:
    (tmp_path / "Dockerfile").write_text(f"FROM {base}\nRUN echo first\n{last}\n")
    return str(tmp_path)


def test_each_build_step_is_shown(docker_client: Any, tmp_path: Path) -> None:
    base = image_mod.ensure_base_image(docker_client)
    out = io.StringIO()
    line = ProgressLine(out, plain_every=0.0)  # not a terminal: every status on a line of its own
    try:
        image_id = image_mod.docker_build(docker_client, "image test", line, path=_context(tmp_path, base, "RUN true"),
                                          tag=TAG, network_mode="none", rm=True, forcerm=True)
        assert docker_client.images.get(TAG).id == image_id
    finally:
        try:
            docker_client.images.remove(TAG, force=True)
        except docker.errors.ImageNotFound:
            pass
    shown = out.getvalue().splitlines()
    assert shown == [f"image test: docker build step 1/3: FROM {base}",
                     "image test: docker build step 2/3: RUN echo first",
                     "image test: docker build step 3/3: RUN true"]


def test_a_failing_step_is_an_image_error_with_its_output(docker_client: Any, tmp_path: Path) -> None:
    base = image_mod.ensure_base_image(docker_client)
    with pytest.raises(image_mod.ImageError) as failed:
        image_mod.docker_build(docker_client, "image test", None,
                               path=_context(tmp_path, base, "RUN echo broken-step-output && false"),
                               tag=TAG, network_mode="none", rm=True, forcerm=True)
    message = str(failed.value)
    assert message.startswith("docker build of image test failed:")
    assert "broken-step-output" in message and "returned a non-zero code" in message
    with pytest.raises(docker.errors.ImageNotFound):
        docker_client.images.get(TAG)
