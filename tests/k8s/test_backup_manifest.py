"""k8s/backup/: the backup CronJob and its PVC, valid and consistent with the CLI, the client Service and
the image."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from k8s.test_manifests import K8S, one, render, validate_strictly  # the manifest tests' shared helpers
from kvstore.cli import build_parser
from kvstore.local import image as image_mod

BACKUP = K8S / "backup"


@pytest.fixture(scope="module")
def objects() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted(BACKUP.glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


@pytest.fixture(scope="module")
def pod(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return one(objects, "CronJob", "kv-backup")["spec"]["jobTemplate"]["spec"]["template"]["spec"]


def test_objects_validate_strictly(objects: list[dict[str, Any]]) -> None:
    assert sorted(o["kind"] for o in objects) == ["CronJob", "PersistentVolumeClaim"]
    validate_strictly(objects, "k8s/backup")


def test_cronjob_runs_a_backup_the_cli_accepts_into_the_pvc(objects: list[dict[str, Any]],
                                                             pod: dict[str, Any]) -> None:
    (container,) = pod["containers"]
    parsed = build_parser().parse_args(container["args"])
    assert parsed.command == "backup" and parsed.keep and parsed.keep >= 1
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volume = next(v for v in pod["volumes"] if v["name"] == mounts[parsed.file])
    pvc = one(objects, "PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"])
    assert pvc["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert one(objects, "CronJob", "kv-backup")["spec"]["concurrencyPolicy"] == "Forbid"


def test_cronjob_backs_up_through_the_client_service(pod: dict[str, Any]) -> None:
    client = one(render("k8s"), "Service", "kv-client")
    ports = {p["port"] for p in client["spec"]["ports"]}
    (container,) = pod["containers"]
    url = build_parser().parse_args(container["args"]).url
    assert any(url == f"http://{client['metadata']['name']}:{port}" for port in ports), url


def test_cronjob_runs_the_project_image_restricted(pod: dict[str, Any]) -> None:
    (container,) = pod["containers"]
    assert container["image"] == image_mod.DEFAULT_TAG
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["fsGroup"] == 10001
    assert container["securityContext"]["readOnlyRootFilesystem"]
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
