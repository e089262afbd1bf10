"""``kvstore cluster up|status|scale|kill|down``: a StatefulSet on this machine.

``up`` runs the controller in the foreground (``--detach``: in the
background, logging to ``logs/controller.log``). The other commands find it
through the cluster dir: ``controller.lock`` says whether it runs,
``cluster.json`` holds its state, ``control.sock`` takes scale/kill/down.
Every failure is one line on stderr and exit status 1 (2 for bad flags).
``set env`` and ``rollout …`` (the pod template and its rolling update) are
in :mod:`kvstore.local.rollout_cli`.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import ipaddress
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable

import aiohttp

from kvstore.cmdline import DEFAULT_CLUSTER_DIR, flag, float_range, hint, int_range
from kvstore.local import control, rollout, rollout_cli
from kvstore.local.runtime import PodRuntime, ProcessRuntime, RuntimeUnavailable
from kvstore.local.state import (
    LOG_DIR, ClusterError, ControllerLock, already_running, client_url, ensure_token, no_cluster, prepare_dir,
    read_state, remove_state, running_pid, write_state,
)
from kvstore.local.statefulset import (
    DEFAULTS, GRACE_PERIOD, MAX_REPLICAS, ClusterSpec, Pod, StatefulSet, check_replicas, format_age,
    last_log_line, volume_dir,
)
from kvstore.progress import ProgressLine

COLUMNS = ("NAME", "READY", "STATUS", "RESTARTS", "AGE", "ADDRESS", "ROLE", "LSN", "REVISION")
CONTROLLER_START_WAIT = 30.0  # seconds `up --detach` waits, past its timeout, for the controller to hold its lock


# -- flag types: each rejects bad input with one line --------------------------------------

def _loopback(text: str) -> str:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an IPv4 loopback address like 127.0.0.10, got {text!r}") from None
    if address.version != 4 or not address.is_loopback:
        raise argparse.ArgumentTypeError(f"expected an address in 127.0.0.0/8, got {text!r}")
    return str(address)


_replicas = flag(int_range(0, MAX_REPLICAS))
_port = flag(int_range(0, 65535))
_seconds = flag(float_range(0.1, 3600, "seconds"))


def _env_var(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    try:
        if not sep:
            raise ValueError(f"expected NAME=VALUE with NAME one of the KV_* settings (see {hint('serve --help')})")
        rollout.check_env_name(name)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from None
    problem = rollout.value_problem(name, value)
    if problem is not None:
        raise argparse.ArgumentTypeError(problem)
    return name, value


RUNTIMES = ("process", "docker")


def get_runtime(name: str) -> PodRuntime:
    """The pod runtime called ``name``."""
    if name == "docker":
        # Imported here, not at the top: the Docker SDK adds 70-100 ms to every kvstore
        # command (measured after the rest is loaded) and only --runtime docker needs it.
        from kvstore.local.docker_runtime import DockerRuntime

        # The controller's stdout: a terminal, or controller.log when detached.
        return DockerRuntime(progress=ProgressLine(sys.stdout))
    return ProcessRuntime()


def register(subparsers: Any) -> None:
    """Add ``cluster`` and its sub-commands to the ``kvstore`` parser."""
    cluster = subparsers.add_parser("cluster", help="a local StatefulSet: up, status, scale, kill, set env, "
                                                    "rollout, down",
                                    description="Run kvstore as a StatefulSet on this machine.")
    cluster.set_defaults(handler=handle)
    sub = cluster.add_subparsers(dest="cluster_command", required=True, metavar="COMMAND")

    def with_dir(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
        parser.add_argument("--dir", default=DEFAULT_CLUSTER_DIR,
                            help=f"cluster directory (default: ./{DEFAULT_CLUSTER_DIR})")
        return parser

    up = with_dir(sub.add_parser("up", help="start DNS and the pods, ordered; Ctrl-C stops in reverse"))
    up.add_argument("--replicas", type=_replicas, default=DEFAULTS.replicas,
                    help=f"number of pods (default {DEFAULTS.replicas})")
    up.add_argument("--parallel", action="store_true",
                    help="podManagementPolicy Parallel: start and stop pods all at once")
    up.add_argument("--runtime", choices=RUNTIMES, default="process", help="how pods run (default process)")
    up.add_argument("--detach", action="store_true",
                    help="run the controller in the background; return once all pods are Ready")
    up.add_argument("--base-address", type=_loopback, default="127.0.0.10",
                    help="address of kv-0; kv-N gets base+N (default 127.0.0.10)")
    up.add_argument("--dns-address", type=_loopback, default="127.0.0.2",
                    help="address of the cluster DNS server (default 127.0.0.2)")
    up.add_argument("--dns-port", type=_port, default=0, help="DNS port (default: any free port)")
    up.add_argument("--grace", type=_seconds, default=GRACE_PERIOD,
                    help=f"seconds a pod gets to stop after SIGTERM (default {GRACE_PERIOD:g})")
    up.add_argument("--timeout", type=_seconds, default=120.0,
                    help="with --detach: seconds to wait for all pods to be Ready (default 120)")
    # The controller `--detach` starts in the background: it logs, and `up` prints the hints.
    up.add_argument("--controller-only", action="store_true", help=argparse.SUPPRESS)
    up.add_argument("--restore", metavar="FILE", default=None,
                    help="a new cluster only: seed kv-0's volume from this backup first (checked whole "
                         "before anything is written); the followers copy kv-0 as usual")
    up.add_argument("--env", type=_env_var, action="append", default=[], metavar="NAME=VALUE",
                    help="extra pod environment, like env: in the pod template (repeatable), "
                         "e.g. --env KV_WRITE_CONCERN=all")
    up.add_argument("--update-strategy", choices=rollout.STRATEGIES, default=rollout.ROLLING_UPDATE,
                    help="how a template change reaches the pods: RollingUpdate (default: highest ordinal "
                         "first, one at a time) or OnDelete (a pod changes when deleted)")

    with_dir(sub.add_parser("status", help="the pods, like kubectl get pods"))

    scale = with_dir(sub.add_parser("scale", help="set the number of pods"))
    scale.add_argument("replicas", type=_replicas, metavar="N")
    scale.add_argument("--wait", action="store_true", help="wait until exactly N pods are Ready")
    scale.add_argument("--timeout", type=_seconds, default=120.0, help="with --wait: seconds (default 120)")

    kill = with_dir(sub.add_parser("kill", help="SIGKILL a pod; the controller restarts it"))
    kill.add_argument("pod", metavar="POD", help="pod name, like kv-1")
    kill.add_argument("--hold", action="store_true",
                      help="keep it down until `cluster release POD`, like a pod on a lost node")
    release = with_dir(sub.add_parser("release", help="let a pod held down by `cluster kill --hold` start again"))
    release.add_argument("pod", metavar="POD", help="pod name, like kv-0")

    down = with_dir(sub.add_parser("down", help="stop every pod in reverse order and the controller"))
    down.add_argument("--timeout", type=_seconds, default=120.0, help="seconds to wait (default 120)")

    rollout_cli.register(sub, with_dir)


def handle(args: argparse.Namespace) -> int:
    """Run one ``kvstore cluster`` sub-command; returns the exit status."""
    handlers: dict[str, Callable[[argparse.Namespace], int]] = {
        "up": _up, "status": _status, "scale": _scale, "kill": _kill, "release": _release, "down": _down,
        "set": rollout_cli.handle, "rollout": rollout_cli.handle,
    }
    try:
        return handlers[args.cluster_command](args)
    except (ClusterError, RuntimeUnavailable) as exc:
        print(f"kvstore cluster {args.cluster_command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


# -- up ----------------------------------------------------------------------------------

def _up(args: argparse.Namespace) -> int:
    runtime = get_runtime(args.runtime)
    directory = prepare_dir(args.dir)
    spec = ClusterSpec(directory=directory, replicas=args.replicas, parallel=args.parallel,
                       base_address=args.base_address, dns_address=args.dns_address,
                       dns_port=args.dns_port, grace=args.grace, extra_env=dict(args.env),
                       update_strategy=args.update_strategy)
    try:
        check_replicas(spec, args.replicas)
    except ValueError as exc:
        raise ClusterError(str(exc)) from None
    pid = running_pid(directory)
    if pid is not None:
        raise already_running(Path(args.dir), pid)
    if args.runtime == "process":
        _check_ports(spec)
    if args.restore is not None:
        _restore(args.restore, volume_dir(directory, spec.pod_name(0)))
    if args.detach:
        return _detach(args, directory)
    return asyncio.run(_run_controller(spec, runtime, watch=True, hints=not args.controller_only))


def _restore(path: str, data_dir: Path) -> None:
    """Seed kv-0's volume from a backup before any pod starts; ClusterError (nothing written) if it cannot."""
    from kvstore import backup  # LevelDB is loaded only when a restore needs it

    try:
        info = asyncio.run(backup.restore(path, str(data_dir)))
    except backup.BackupError as exc:
        raise ClusterError(f"--restore: {exc}") from None
    print(f"restored {backup.describe(info)} into {data_dir}", flush=True)


def _check_ports(spec: ClusterSpec) -> None:
    """Fail early, in one line, when a pod's address or port is taken (another cluster?)."""
    for ordinal in range(spec.replicas):
        for port in (spec.http_port, spec.peer_port):
            address = spec.address(ordinal)
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    probe.bind((address, port))
                except OSError as exc:
                    why = "is in use (another cluster? try --base-address)" \
                        if exc.errno == errno.EADDRINUSE else f"cannot be used: {exc.strerror}"
                    raise ClusterError(f"{address}:{port} for {spec.pod_name(ordinal)} {why}") from None


def next_steps(directory: Path, kv0_address: str, detached: bool) -> str:
    """What to do once every pod is Ready: two lines to print."""
    stop = hint("cluster down", directory) if detached else "Ctrl-C"
    return (f"next: {hint('put greeting hello', directory)}, then {hint('get greeting', directory)}; "
            f"stop with {stop}\n"
            f"dashboard: http://{kv0_address}:{DEFAULTS.http_port}/ui/")


class _Watch:
    """Prints pod changes like ``kubectl get pods -w`` and keeps cluster.json current."""

    def __init__(self, directory: Path, echo: bool, hints: bool) -> None:
        self.directory = directory
        self.echo = echo
        self._last: dict[str, tuple[Any, ...]] = {}
        self._announced = not hints  # the next steps, printed once when every pod first is Ready

    def __call__(self, statefulset: StatefulSet, pod: Pod | None) -> None:
        try:
            write_state(self.directory, statefulset.to_dict())
        except OSError as exc:
            print(f"cannot write cluster state: {exc}", file=sys.stderr)
        if not self.echo:
            return
        for _, p in sorted(statefulset.pods.items()):
            row = (p.ready, p.status, p.restarts)
            if self._last.get(p.name) != row:
                self._last[p.name] = row
                print(_row(p.name, p.ready, p.status, p.restarts, p.created_at,
                           f"{p.spec.address}:{p.spec.http_port}"), flush=True)
        for name in set(self._last) - {p.name for p in statefulset.pods.values()}:
            del self._last[name]
            print(f"{name:<8}deleted", flush=True)
        ready = [p for o, p in statefulset.pods.items() if o < statefulset.replicas and p.ready]
        if not self._announced and statefulset.replicas > 0 and len(ready) == statefulset.replicas:
            self._announced = True
            kv0 = statefulset.pods[0].spec.address
            print(next_steps(self.directory, kv0, detached=False), flush=True)


def _row(name: str, ready: bool, status: str, restarts: int, created: float, address: str) -> str:
    return (f"{name:<8}{'1/1' if ready else '0/1':<7}{status:<18}{restarts:<10}"
            f"{format_age(time.time() - created):<8}{address}")


async def _run_controller(spec: ClusterSpec, runtime: Any, watch: bool, hints: bool) -> int:
    directory = spec.directory
    # On a terminal the watch lines say it all; in a log file (--detach) the details help.
    logging.basicConfig(level=logging.WARNING if sys.stdout.isatty() else logging.INFO,
                        stream=sys.stdout, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    lock = ControllerLock(directory)
    lock.acquire()
    try:
        spec.token_path = ensure_token(directory)
        # docker: builds the image and the network, and moves the spec's addresses onto it.
        await asyncio.get_running_loop().run_in_executor(None, runtime.configure, spec)
        stop = asyncio.Event()
        statefulset = StatefulSet(spec, runtime, on_change=_Watch(directory, echo=watch, hints=hints))
        loop = asyncio.get_running_loop()
        force = False

        def on_signal() -> None:
            nonlocal force
            if stop.is_set():  # a second Ctrl-C: do not wait for graceful stops
                force = True
                print("killing all pods", flush=True)
                statefulset.kill_all()
            stop.set()

        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.add_signal_handler(sig, on_signal)
        server = control.ControlServer(statefulset, directory, stop)
        try:
            try:
                await statefulset.start()
            except OSError as exc:
                raise ClusterError(f"cannot start DNS on {spec.dns_address}:{spec.dns_port}: "
                                   f"{exc.strerror or exc}") from None
            # Printed before the first await lets the reconcile loop create pods.
            print(f"StatefulSet {spec.statefulset}: {spec.replicas} replicas, {spec.policy}; "
                  f"DNS {statefulset.dns.address} for {statefulset.dns.service.domain}; "
                  f"dir {directory}", flush=True)
            if watch:
                print(f"{'NAME':<8}{'READY':<7}{'STATUS':<18}{'RESTARTS':<10}{'AGE':<8}ADDRESS", flush=True)
            await server.start()
            await stop.wait()
            print("stopping pods in reverse order (Ctrl-C again to kill them)", flush=True)
        finally:
            await server.stop()
            await statefulset.stop(force=force)
            await runtime.close()
            remove_state(directory)
        print("cluster stopped", flush=True)
        return 0
    finally:
        lock.release()


def _detach(args: argparse.Namespace, directory: Path) -> int:
    command = [sys.executable, "-m", "kvstore", "cluster", "up", "--dir", str(directory),
               "--replicas", str(args.replicas), "--runtime", args.runtime,
               "--base-address", args.base_address, "--dns-address", args.dns_address,
               "--dns-port", str(args.dns_port), "--grace", str(args.grace), "--controller-only",
               "--update-strategy", args.update_strategy]
    if args.parallel:
        command.append("--parallel")
    for name, value in args.env:
        command.append(f"--env={name}={value}")
    log_path = directory / LOG_DIR / "controller.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)  # survives this terminal
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ClusterError(f"the controller exited: {last_log_line(log_path)} (log: {log_path})")
        try:
            state = read_state(directory)
        except ClusterError:
            state = None
        if state is not None:
            ready = sum(1 for p in state["pods"] if p.get("ready") and p["ordinal"] < args.replicas)
            # A Ready kv-0 may still be recovering (it is Ready so that OrderedReady goes on):
            # "up" means the cluster takes writes.
            if ready == args.replicas and _primary_writable(state):
                print(f"cluster up in {directory}: {ready}/{args.replicas} pods Ready "
                      f"(controller pid {proc.pid}, log {log_path})")
                _print_status(directory, state)
                kv0 = next((p["address"] for p in state["pods"] if p["ordinal"] == 0), None)
                if kv0 is not None:
                    print(next_steps(Path(args.dir), kv0, detached=True))
                return 0
        time.sleep(0.2)
    # A controller that has not taken its lock yet (a slow start on a loaded machine) is one that
    # `cluster status` and `cluster down` cannot find: wait for it before saying it keeps trying.
    lock_deadline = time.monotonic() + CONTROLLER_START_WAIT
    while running_pid(directory) != proc.pid and time.monotonic() < lock_deadline:
        if proc.poll() is not None:
            raise ClusterError(f"the controller exited: {last_log_line(log_path)} (log: {log_path})")
        time.sleep(0.05)
    raise ClusterError(f"not all pods Ready after {args.timeout:g}s; the controller (pid {proc.pid}) "
                       f"keeps trying: see {hint('cluster status', args.dir)} and {directory / LOG_DIR}")


def _primary_writable(state: dict[str, Any]) -> bool:
    """Whether kv-0 says it takes writes (its start-up recovery is over)."""
    primary = next((p for p in state["pods"] if p["ordinal"] == 0), None)
    if primary is None:
        return True
    try:
        with urllib.request.urlopen(client_url(primary) + "/v1/status", timeout=2) as response:
            return json.loads(response.read()).get("writable") is not False
    except (OSError, ValueError):
        return False


# -- status ------------------------------------------------------------------------------

def _status(args: argparse.Namespace) -> int:
    directory = Path(args.dir)
    return _print_status(directory, read_state(directory))


async def _pod_status(session: aiohttp.ClientSession, pod: dict[str, Any]) -> dict[str, Any]:
    url = f"http://{pod['address']}:{pod['http_port']}/v1/status"
    try:
        async with session.get(url) as response:
            if response.status == 200:
                data = await response.json()
                return data if isinstance(data, dict) else {}
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError):
        pass
    return {}


async def _pod_statuses(pods: list[dict[str, Any]]) -> list[dict[str, Any]]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1.0)) as session:
        return await asyncio.gather(*(_pod_status(session, p) for p in pods))


def _print_status(directory: Path, state: dict[str, Any]) -> int:
    pods = sorted(state["pods"], key=lambda p: p["ordinal"])
    live = asyncio.run(_pod_statuses(pods)) if pods else []
    rows = [COLUMNS]
    # Who votes is kv-0's configuration; a pod's own view stands in while kv-0 does not answer.
    decided = next((s.get("membership", {}).get("members") for p, s in zip(pods, live) if p["ordinal"] == 0),
                   None) or {}
    for pod, status in zip(pods, live):
        lsn = status.get("lsn")
        kind = decided.get(pod["name"]) or status.get("membership", {}).get("members", {}).get(pod["name"])
        role = str(status.get("role") or "-") + (f"/{kind}" if kind and kind != "voter" else "")
        rows.append((
            pod["name"], "1/1" if pod.get("ready") else "0/1", pod["status"], str(pod["restarts"]),
            format_age(time.time() - pod["created_at"]), f"{pod['address']}:{pod['http_port']}",
            role, "-" if lsn is None else str(lsn), str(pod.get("revision") or "-"),
        ))
    _print_table([statefulset_row(state)[0], statefulset_row(state)[1]])
    print()
    if not pods:
        print(f"No pods in {directory} (replicas: {state.get('replicas')})")
        return 0
    _print_table(rows)
    acting = next((s for p, s in zip(pods, live) if p["ordinal"] != 0 and s.get("role") == "primary"), None)
    if acting is not None:  # kv-0 is away or catching up: say who leads instead, and why
        about = acting.get("primary") or {}
        since = about.get("since")
        when = time.strftime(" since %H:%M:%S", time.localtime(since)) if isinstance(since, (int, float)) else ""
        print(f"\n{acting.get('name')} is the acting primary{when} ({about.get('why', 'elected')}); "
              "it hands the role back to kv-0 once kv-0 is current")
    return 0


def _print_table(rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("   ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())


def statefulset_row(state: dict[str, Any]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The StatefulSet's header and row, like ``kubectl get sts -o wide`` with its revisions."""
    r = state.get("rollout") or {}
    ready = sum(1 for p in state["pods"] if p.get("ready") and p["ordinal"] < state["replicas"])
    strategy = str(r.get("strategy", "-"))
    if r.get("partition"):
        strategy += f" (partition {r['partition']})"
    return (("STATEFULSET", "READY", "POLICY", "UPDATE-STRATEGY", "CURRENT-REVISION", "UPDATE-REVISION", "ROLLOUT"),
            (str(state.get("statefulset", "kv")), f"{ready}/{state['replicas']}", str(state.get("policy", "-")),
             strategy, f"{r.get('current_revision', '-')} ({r.get('current_number', '-')})",
             f"{r.get('update_revision', '-')} ({r.get('update_number', '-')})", str(r.get("state", "-"))))


# -- scale, kill, down -------------------------------------------------------------------

def _require_running(directory: Path) -> int:
    pid = running_pid(directory)
    if pid is None:
        raise no_cluster(directory)
    return pid


def _scale(args: argparse.Namespace) -> int:
    directory = Path(args.dir)
    _require_running(directory)
    answer = asyncio.run(control.call(directory, "POST", "/v1/scale", {"replicas": args.replicas}))
    print(f"scaled from {answer['previous']} to {answer['replicas']} replicas")
    if not args.wait:
        return 0
    deadline = time.monotonic() + args.timeout
    line = ProgressLine()
    try:
        while time.monotonic() < deadline:
            state = read_state(directory)
            pods = state["pods"]
            if len(pods) == args.replicas and all(p.get("ready") for p in pods):
                line.close()
                return _print_status(directory, state)
            line.show(scale_progress(directory, args.replicas, pods))
            time.sleep(0.2)
    finally:
        line.close()
    raise ClusterError(f"{args.replicas} pods not all Ready after {args.timeout:g}s; "
                       f"see {hint('cluster status', directory)}")


def scale_progress(directory: Path, replicas: int, pods: list[dict[str, Any]]) -> str:
    """``3/5 Ready; kv-3: snapshot from kv-0: 1200 keys (1.2 MB) copied so far``."""
    ready = sum(1 for p in pods if p.get("ready"))
    text = f"{ready}/{replicas} Ready"
    waiting = sorted((p for p in pods if not p.get("ready")), key=lambda p: p["ordinal"])
    if waiting:
        name = waiting[0]["name"]
        copying = snapshot_progress(directory / LOG_DIR / f"{name}.log")
        text += f"; {name}: {copying or waiting[0].get('status', 'starting')}"
    return text


def snapshot_progress(log_path: Path, tail: int = 8192) -> str | None:
    """How far the snapshot copy a replica's log shows is (None: it is not copying one).

    The follower logs ``snapshot from kv-0: N keys (M MB) copied so far`` every few
    seconds while it copies; its log's last snapshot line says where it is.
    """
    try:
        with open(log_path, "rb") as log:
            log.seek(max(0, log.seek(0, os.SEEK_END) - tail))
            lines = log.read().decode(errors="replace").splitlines()
    except OSError:
        return None
    for text in reversed(lines):
        if "installed a snapshot" in text:
            return None
        if "copied so far" in text and "snapshot from " in text:
            return text[text.index("snapshot from "):].strip()
        if "installing a snapshot from " in text:
            return text[text.index("installing a snapshot from "):].strip()
    return None


def _kill(args: argparse.Namespace) -> int:
    directory = Path(args.dir)
    _require_running(directory)
    if args.hold:
        asyncio.run(control.call(directory, "POST", "/v1/hold", {"pod": args.pod}, 60))
        print(f"{args.pod} killed (SIGKILL) and held down, like a pod on a lost node: "
              f"{hint('cluster release ' + args.pod)} lets it start again")
        return 0
    answer = asyncio.run(control.call(directory, "POST", "/v1/kill", {"pod": args.pod}))
    print(f"{answer['killed']} killed (SIGKILL); the controller restarts it")
    return 0


def _release(args: argparse.Namespace) -> int:
    directory = Path(args.dir)
    _require_running(directory)
    asyncio.run(control.call(directory, "POST", "/v1/release", {"pod": args.pod}, 60))
    print(f"{args.pod} released; the controller starts it again")
    return 0


def _down(args: argparse.Namespace) -> int:
    directory = Path(args.dir)
    pid = _require_running(directory)
    try:
        asyncio.run(control.call(directory, "POST", "/v1/down"))
    except ClusterError:
        # The control socket is gone or stuck: SIGTERM does the same orderly stop.
        if pid > 0:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    print(f"stopping the cluster in {directory} (pods in reverse order)", flush=True)
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        if running_pid(directory) is None:
            print("cluster stopped")
            return 0
        time.sleep(0.2)
    raise ClusterError(f"the controller (pid {pid}) is still stopping after {args.timeout:g}s")
