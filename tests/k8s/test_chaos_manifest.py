"""k8s/chaos/: the chaos Job and the least RBAC it needs, valid and consistent with the chaos command."""

from __future__ import annotations

import re
import shlex
from typing import Any

import pytest
import yaml

from k8s.test_manifests import K8S, ROOT, one, validate_strictly  # the manifest tests' shared helpers
from kvstore.cli import build_parser
from kvstore.local import image as image_mod

CHAOS = K8S / "chaos"


@pytest.fixture(scope="module")
def objects() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted(CHAOS.glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def test_objects_validate_strictly(objects: list[dict[str, Any]]) -> None:
    assert sorted(o["kind"] for o in objects) == ["Job", "Role", "RoleBinding", "ServiceAccount"]
    validate_strictly(objects, "k8s/chaos")


def test_role_allows_deleting_pods_and_nothing_more(objects: list[dict[str, Any]]) -> None:
    role = one(objects, "Role", "kv-chaos")
    assert "namespace" not in role["metadata"]  # applied into the kv namespace, not cluster-wide
    assert role["rules"] == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "delete"]}]
    binding = one(objects, "RoleBinding", "kv-chaos")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "kv-chaos"}
    assert [(s["kind"], s["name"]) for s in binding["subjects"]] == [("ServiceAccount", "kv-chaos")]


def test_job_runs_kubernetes_chaos_with_what_the_cli_accepts(objects: list[dict[str, Any]]) -> None:
    job = one(objects, "Job", "kv-chaos")
    spec = job["spec"]["template"]["spec"]
    assert spec["serviceAccountName"] == "kv-chaos"
    assert spec["restartPolicy"] == "Never" and job["spec"]["backoffLimit"] == 0
    (container,) = spec["containers"]
    args = [a.replace("$(POD_NAMESPACE)", "kv") for a in container["args"]]
    parsed = build_parser().parse_args(args)
    assert parsed.runtime == "kubernetes"
    assert set(parsed.nemesis) == {"kill"}  # the only fault the Role permits
    assert parsed.duration + 300 <= job["spec"]["activeDeadlineSeconds"], shlex.join(args)
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert parsed.out in mounts and container["securityContext"]["readOnlyRootFilesystem"]



def test_job_image_is_the_one_the_project_builds(objects: list[dict[str, Any]]) -> None:
    """One name for the chaos image in the Job, the build tooling, its Dockerfile and the README."""
    (container,) = one(objects, "Job", "kv-chaos")["spec"]["template"]["spec"]["containers"]
    assert container["image"] == image_mod.CHAOS_TAG
    dockerfile = (ROOT / image_mod.CHAOS_DOCKERFILE).read_text()
    assert f"ARG KVSTORE_IMAGE={image_mod.DEFAULT_TAG}\n" in dockerfile   # built on the kvstore image
    readme = (ROOT / "README.md").read_text()
    assert image_mod.CHAOS_TAG in readme and "python -m kvstore.local.image --chaos" in readme
    tags = set(re.findall(r"kvstore-chaos:[\w.-]+", readme + dockerfile + (CHAOS / "job.yaml").read_text()))
    assert tags == {image_mod.CHAOS_TAG}, tags
