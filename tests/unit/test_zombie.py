"""ZombieKeeper without processes: what it copies, starts, lists in DNS and cleans up.

The keeper's process boundary is the pod runtime (``PodRuntime.start``) and
the pod's process (``send_signal``, ``wait``). Here both are fakes
(:class:`FakeRuntime`, :class:`FakeProcess`) that record what they are asked
and "exit" on SIGKILL; they start nothing. Volumes (real directories), DNS
records (a real, unstarted HeadlessService) and the address probe (real
sockets on loopback) are the real thing. That a real zombie serves and gets
fenced is tests/chaos/test_nemeses.py's job.
"""

from __future__ import annotations

import asyncio
import dataclasses
import signal
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from kvstore.local.dns import DnsServer, Endpoint, HeadlessService
from kvstore.local.runtime import PodSpec
from kvstore.local.statefulset import ClusterSpec
from kvstore.local.zombie import ZOMBIE_SUFFIX, Conflict, ZombieKeeper, zombie_dir

NET = "127.0.21"  # this file's /24 (no other test module uses it)


class FakeProcess:
    """Stands in for a pod's OS process: records the signals sent; SIGKILL makes it exit with -9."""

    def __init__(self, pid: int, on_signal: Any = None) -> None:
        self.pid: int | None = pid
        self.signals: list[int] = []
        self.on_signal = on_signal  # called with each signal, before it is recorded
        self.exited: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    async def wait(self) -> int:
        return await self.exited

    def send_signal(self, sig: int) -> None:
        if self.on_signal is not None:
            self.on_signal(sig)
        self.signals.append(sig)
        if sig == signal.SIGKILL and not self.exited.done():
            self.exited.set_result(-signal.SIGKILL)


class FakeRuntime:
    """Stands in for the process runtime: records each PodSpec it is asked to start, starts nothing."""

    def __init__(self, name: str = "process", fail: bool = False) -> None:
        self.name = name
        self.fail = fail
        self.started: list[PodSpec] = []
        self.processes: list[FakeProcess] = []

    def configure(self, spec: Any) -> None:
        pass

    async def start(self, spec: PodSpec) -> FakeProcess:
        if self.fail:
            raise OSError("cannot start (a fake failure)")
        self.started.append(spec)
        process = FakeProcess(4000 + len(self.started))
        self.processes.append(process)
        return process

    async def close(self) -> None:
        pass


@dataclass
class Pod:
    """The parts of a StatefulSet pod the keeper reads."""

    name: str
    ordinal: int
    spec: PodSpec
    process: FakeProcess | None
    held: bool = False
    deleting: bool = False
    status: str = "Running"


@dataclass
class PodSet:
    """The parts of a StatefulSet the keeper reads (kvstore.local.zombie.PodSet)."""

    spec: ClusterSpec
    runtime: FakeRuntime
    replicas: int = 3
    pods: dict[int, Pod] = field(default_factory=dict)
    dns: DnsServer = field(default_factory=lambda: DnsServer(
        HeadlessService("kv", "default", "cluster.local", {"http": 8080, "peer": 8081})))
    stopping: bool = False
    suspended: bool = False

    def pod(self, name: str) -> Pod | None:
        return next((p for p in self.pods.values() if p.name == name), None)


def listed(podset: PodSet) -> dict[str | None, str]:
    """What DNS lists: pod name -> address."""
    return {e.hostname: e.ip for e in podset.dns.service.endpoints()}


@pytest.fixture
async def podset(tmp_path: Path) -> PodSet:
    """Three running pods kv-0..kv-2 on NET.10+, each with a volume holding one file, listed in DNS."""
    spec = ClusterSpec(directory=tmp_path, base_address=f"{NET}.10", dns_address=f"{NET}.2")
    s = PodSet(spec, FakeRuntime())
    for ordinal in range(3):
        name = spec.pod_name(ordinal)
        data = tmp_path / f"data-{name}"
        data.mkdir()
        (data / "CURRENT").write_text(f"volume of {name}")
        pod_spec = PodSpec(name, ordinal, spec.address(ordinal), 8080, 8081, data, tmp_path / "logs" / f"{name}.log",
                           env={"POD_NAME": name, "KV_DATA_DIR": str(data), "KV_BIND_ADDRESS": spec.address(ordinal),
                                "KV_REPLICAS": "3"})
        s.pods[ordinal] = Pod(name, ordinal, pod_spec, FakeProcess(1000 + ordinal))
        s.dns.service.set_endpoint(name, Endpoint(pod_spec.address, name))
    return s


def keeper_of(podset: PodSet) -> tuple[ZombieKeeper, list[None]]:
    changes: list[None] = []
    return ZombieKeeper(podset, lambda: changes.append(None)), changes


async def test_a_zombie_runs_on_a_copy_taken_while_the_pod_was_stopped(podset: PodSet, tmp_path: Path) -> None:
    copy = zombie_dir(tmp_path, "kv-0")
    kv0 = podset.pods[0]
    seen_at_signal: list[tuple[int, bool]] = []
    # What the pod's process sees at each signal: has the copy been made yet?
    kv0.process.on_signal = (  # type: ignore[union-attr]
        lambda sig: seen_at_signal.append((sig, (copy / "CURRENT").exists())))
    keeper, changes = keeper_of(podset)

    zombie = await keeper.start()

    # SIGSTOP before the copy, SIGCONT once it is complete.
    assert seen_at_signal == [(signal.SIGSTOP, False), (signal.SIGCONT, True)]
    assert (copy / "CURRENT").read_text() == "volume of kv-0"
    [started] = podset.runtime.started
    assert started.name == "kv-0" and started.ordinal == 0 and started.data_dir == copy
    assert started.address == f"{NET}.249"  # the top of the /24 (.250 is the chaos client's)
    assert (started.http_port, started.peer_port) == (8080, 8081)
    assert started.log_path == kv0.spec.log_path.with_name("kv-0-zombie.log")
    # The pod's env, but for its own volume and address.
    assert started.env == {**kv0.spec.env, "KV_DATA_DIR": str(copy), "KV_BIND_ADDRESS": f"{NET}.249"}
    assert kv0.spec.env["KV_DATA_DIR"] == str(tmp_path / "data-kv-0")  # the pod's own spec is untouched
    info = zombie.to_dict()
    assert info["name"] == "kv-0" + ZOMBIE_SUFFIX and info["running"] is True and info["taken_over"] is False
    assert info["url"] == f"http://{NET}.249:8080" and info["pid"] == podset.runtime.processes[0].pid
    assert listed(podset)["kv-0"] == f"{NET}.10"  # DNS is untouched until a takeover
    assert len(changes) == 1
    await keeper.stop()


async def test_takeover_lists_the_zombie_for_the_pod_and_giveback_the_pod_again(podset: PodSet) -> None:
    keeper, changes = keeper_of(podset)
    await keeper.start()
    keeper.takeover()
    assert listed(podset) == {"kv-0": f"{NET}.249", "kv-1": f"{NET}.11", "kv-2": f"{NET}.12"}
    assert keeper.zombie is not None and keeper.zombie.taken_over
    keeper.giveback()
    assert listed(podset) == {"kv-0": f"{NET}.10", "kv-1": f"{NET}.11", "kv-2": f"{NET}.12"}
    assert keeper.zombie is not None and not keeper.zombie.taken_over
    assert len(changes) == 3
    await keeper.stop()


async def test_stop_kills_the_zombie_gives_dns_back_and_removes_its_copy(podset: PodSet, tmp_path: Path) -> None:
    keeper, changes = keeper_of(podset)
    await keeper.start()
    keeper.takeover()
    process = podset.runtime.processes[0]
    stopped = await keeper.stop()
    assert process.signals == [signal.SIGKILL]
    assert stopped is not None and stopped["exit_code"] == -signal.SIGKILL and stopped["running"] is False
    assert stopped["taken_over"] is False
    assert listed(podset)["kv-0"] == f"{NET}.10"
    assert not zombie_dir(tmp_path, "kv-0").exists()
    assert keeper.zombie is None
    assert podset.pods[0].process.signals == [signal.SIGSTOP, signal.SIGCONT]  # the pod itself: never killed
    assert await keeper.stop() is None  # nothing left to stop
    with pytest.raises(Conflict, match="no zombie"):
        keeper.takeover()
    # Once stopped, another may start (at the same address, free again).
    assert (await keeper.start()).spec.address == f"{NET}.249"
    await keeper.stop()


async def test_one_zombie_at_a_time_and_only_of_a_running_pod_of_the_process_runtime(podset: PodSet) -> None:
    keeper, _ = keeper_of(podset)
    await keeper.start()
    with pytest.raises(Conflict, match="already running"):
        await keeper.start("kv-1")
    await keeper.stop()

    podset.pods[1].held = True
    with pytest.raises(Conflict, match="kv-1 has no running container"):
        await keeper.start("kv-1")
    with pytest.raises(Conflict, match=r"kv-7 has no running container to copy \(no such pod\)"):
        await keeper.start("kv-7")
    podset.stopping = True
    with pytest.raises(Conflict, match="stopping"):
        await keeper.start()
    podset.stopping, podset.suspended = False, True
    with pytest.raises(Conflict, match="the pods are stopped"):
        await keeper.start()
    podset.suspended = False
    podset.runtime.name = "docker"
    with pytest.raises(Conflict, match="needs the process runtime"):
        await keeper.start()
    assert [spec.name for spec in podset.runtime.started] == ["kv-0"]  # the first one only
    assert keeper.zombie is None


async def test_a_failed_copy_or_start_leaves_no_zombie_no_copy_and_a_running_pod(
        podset: PodSet, tmp_path: Path) -> None:
    keeper, changes = keeper_of(podset)
    kv1 = podset.pods[1]
    kv1.spec = dataclasses.replace(kv1.spec, data_dir=tmp_path / "gone")  # nothing to copy
    with pytest.raises(FileNotFoundError):
        await keeper.start("kv-1")
    assert kv1.process.signals == [signal.SIGSTOP, signal.SIGCONT]  # continued although the copy failed
    podset.runtime.fail = True
    with pytest.raises(OSError, match="a fake failure"):
        await keeper.start("kv-2")
    assert podset.pods[2].process.signals == [signal.SIGSTOP, signal.SIGCONT]
    assert not zombie_dir(tmp_path, "kv-1").exists() and not zombie_dir(tmp_path, "kv-2").exists()
    assert keeper.zombie is None and changes == []


async def test_the_address_is_no_pods_not_dns_and_not_in_use(podset: PodSet) -> None:
    keeper, _ = keeper_of(podset)
    podset.replicas = 239  # kv-0..kv-238 at .10-.248: .249 is free
    assert keeper.address() == f"{NET}.249"
    podset.replicas = 240  # kv-239 would be at .249: every ordinal up to the replica count is skipped
    assert keeper.address() == f"{NET}.9"
    podset.replicas = 3
    podset.pods[239] = Pod("kv-239", 239, podset.pods[0].spec, None)  # a pod beyond the replica count counts too
    assert keeper.address() == f"{NET}.9"
    del podset.pods[239]
    with socket.socket() as taken:  # something else listens on .249's HTTP port
        taken.bind((f"{NET}.249", 8080))
        taken.listen()
        assert keeper.address() == f"{NET}.248"
    podset.spec.dns_address = f"{NET}.249"
    assert keeper.address() == f"{NET}.248"
