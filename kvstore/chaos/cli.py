"""``kvstore chaos``: a workload, faults and the checker against a cluster; exits non-zero on any violation.

With the ``process`` or ``docker`` runtime and no ``--dir``, it starts its own
local cluster in a temporary directory on a free loopback range and stops it
afterwards. Results go to ``--out``: ``history.jsonl`` (one operation a line),
``watch.jsonl`` (every line the watchers read, and their re-syncs),
``faults.jsonl``, ``final.json``, ``report.json``, and ``logs/`` with the pod
logs (a cluster it created: all of them; a ``--dir`` cluster, left running:
as far as written when the run ends).

Exit status: 0 pass, 1 a violation, 2 bad flags or a cluster that cannot be
set up, 3 nothing violated but some key's linearizability was not decided.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import ipaddress
import json
import os
import random
import signal
import socket
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable
from urllib.parse import quote

import aiohttp

from kvstore.aio import cancel_and_wait
from kvstore.chaos import checker, txncheck, watchcheck
from kvstore.chaos.history import OK, Op, WatchRecord, read_history, read_watch_log, write_jsonl
from kvstore.chaos.linearizability import DEFAULT_MAX_STEPS
from kvstore.chaos.nemesis import (
    FAULTS, SIGNAL_FAULTS, Backend, KubernetesBackend, LocalBackend, Nemesis, NemesisConfig,
    NemesisUnavailable, PodInfo, local_pods,
)
from kvstore.chaos.outage import longest_outages, outage_text
from kvstore.chaos.workload import Workload, WorkloadConfig
from kvstore.cmdline import flag, float_range, int_range
from kvstore.local.handle import LocalCluster
from kvstore.local.state import ClusterError, copy_logs, read_state
from kvstore.progress import ProgressLine

RUNTIMES = ("process", "docker", "kubernetes")
# Pod settings of a cluster chaos creates: short server timeouts so most answers are definite,
# a short log so followers that were down need snapshots, and a keepalive every second
# so an idle watch still tells how far it scanned.
CLUSTER_ENV = {"KV_WRITE_TIMEOUT": "2", "KV_READ_WAIT": "2", "KV_LOG_RETENTION": "300",
               "KV_WATCH_KEEPALIVE": "1"}
EXIT_VIOLATION, EXIT_SETUP, EXIT_UNDECIDED = 1, 2, 3


class ChaosError(Exception):
    """Setup failed; the message is one line."""


# ------------------------------------------------------------------------ flags
_duration = flag(float_range(1, 86400, "seconds"))


def _nemesis(text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    if text.strip() == "none":
        return ()
    bad = [n for n in names if n not in FAULTS]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of {', '.join(FAULTS)} (or none), "
                                         f"got {text!r}")
    return tuple(dict.fromkeys(names))


def _positive_int(high: int) -> Callable[[str], int]:
    return flag(int_range(1, high))


_fraction = flag(float_range(0, 1))
_interval = flag(float_range(0.05, 600, "seconds"))


def register(subparsers: Any) -> None:
    """Add ``chaos`` to the ``kvstore`` parser."""
    p = subparsers.add_parser(
        "chaos", help="workload + faults (kill, pause, partition, volumes, DNS, full restarts, a zombie kv-0, "
                      "failovers and switchovers) + checker; non-zero exit on any violation",
        description="Run concurrent clients against a cluster while killing, pausing and partitioning pods, "
                    "removing or rolling back their volumes, breaking DNS, restarting every pod and running "
                    "a second kv-0 (zombie-primary: an old kv-0 process that outlived its pod, on a copy of "
                    "its volume, that some clients reach and that DNS lists for kv-0 for a while), "
                    "holding the current primary down (node-loss) or freezing it past the failover time "
                    "(freeze-primary) and asking for switchovers, "
                    "then check that nothing acknowledged was lost, replicas converged, strong reads "
                    "and compare-and-set were linearizable, and watches showed every acknowledged write once, "
                    "in order, and nothing else.")
    p.set_defaults(handler=handle)
    p.add_argument("--duration", type=_duration, default=60.0, help="seconds of workload and faults (default 60)")
    p.add_argument("--nemesis", type=_nemesis, default=None,
                   help=f"faults: comma-separated {','.join(FAULTS)}, or none (default: all the runtime "
                        f"supports: all with process, {','.join(SIGNAL_FAULTS)} with --runtime docker, kill "
                        "with kubernetes)")
    p.add_argument("--runtime", choices=RUNTIMES, default="process",
                   help="process|docker: a local cluster; kubernetes: kubectl, kill only (default process)")
    p.add_argument("--dir", default=None,
                   help="use the running local cluster in this dir (default: start one in a temp dir)")
    p.add_argument("--out", default="kvstore-chaos-out", help="where the history and report go "
                   "(default ./kvstore-chaos-out)")
    p.add_argument("--replicas", type=_positive_int(9), default=3, help="pods of a cluster it starts (default 3)")
    p.add_argument("--clients", type=_positive_int(64), default=6, help="concurrent clients (default 6)")
    p.add_argument("--watchers", type=flag(int_range(0, 64)), default=3,
                   help="watches of the keys' prefix, started on different pods (default 3)")
    p.add_argument("--keys", type=_positive_int(1000), default=6, help="keys in use at once (default 6)")
    p.add_argument("--ops-per-key", type=_positive_int(10000), default=120,
                   help="operations on a key before a fresh one is used (default 120)")
    p.add_argument("--interval", type=_interval, default=1.0, help="mean seconds between faults (default 1)")
    p.add_argument("--primary-bias", type=_fraction, default=0.45,
                   help="chance a kill, pause or partition targets a primary: kv-0 or the current one, "
                        "as often one as the other (default 0.45)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: random, printed)")
    p.add_argument("--max-steps", type=_positive_int(100_000_000), default=DEFAULT_MAX_STEPS,
                   help=f"linearizability search steps per key before it says undecided (default {DEFAULT_MAX_STEPS})")
    p.add_argument("--heal-timeout", type=_interval, default=120.0,
                   help="seconds for the healed cluster to be Ready and converge (default 120)")
    p.add_argument("--recheck", metavar="DIR", default=None,
                   help="no cluster: run the checker again on the history, faults and final state in DIR "
                        "(a previous --out)")
    k8s = p.add_argument_group("--runtime kubernetes")
    k8s.add_argument("--namespace", default=None, help="namespace (default: the current context's)")
    k8s.add_argument("--context", default=None, help="kubectl context (default: the current one)")
    k8s.add_argument("--kubectl", default="kubectl", help="the kubectl binary (default kubectl)")
    k8s.add_argument("--selector", default="app.kubernetes.io/name=kvstore",
                     help="label selector of the StatefulSet's pods")


# ------------------------------------------------------------------- the cluster
def _bindable(address: str) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((address, 0))
        except OSError:
            return False
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(0.2)
        return probe.connect_ex((address, 8080)) != 0  # nothing listens there already


def free_loopback_range(rng: random.Random, replicas: int) -> int:
    """A third octet X such that 127.0.X.2 and 127.0.X.10… are unused."""
    for _ in range(50):
        x = rng.randrange(100, 250)
        if all(_bindable(f"127.0.{x}.{host}") for host in (2, *range(10, 10 + replicas))):
            return x
    raise ChaosError("no free loopback range 127.0.X.0/24 found for a chaos cluster")


def own_cluster(runtime: str, replicas: int) -> LocalCluster:
    """A local cluster this command starts in a temporary directory, on a free loopback range."""
    # Not the run's seeded rng: two runs with one seed side by side must not pick one range.
    octet = free_loopback_range(random.Random(), replicas) if runtime == "process" else None
    return LocalCluster(replicas=replicas, runtime=runtime, env=CLUSTER_ENV, ready_timeout=150,
                        base_address=None if octet is None else f"127.0.{octet}.10",
                        dns_address=None if octet is None else f"127.0.{octet}.2")


def client_address_for(pods: list[PodInfo]) -> str:
    """The chaos client's own loopback address: .250 of the pods' /24 (partitions let it through)."""
    network = ipaddress.ip_network(f"{pods[0].address}/24", strict=False)
    return str(network.network_address + 250)


# --------------------------------------------------------------------- final state
async def _answer(response: aiohttp.ClientResponse, pod: PodInfo) -> Any:
    """The JSON of a 200 answer; ValueError naming the pod's refusal otherwise (still healing: retried)."""
    body = await response.json(content_type=None)
    if response.status != 200:
        error = body.get("error") if isinstance(body, dict) else None
        raise ValueError(f"{pod.name} answered {response.status} {error or ''} to {response.url.path}".rstrip())
    return body


async def _view(session: aiohttp.ClientSession, pod: PodInfo) -> checker.ReplicaView:
    """One replica's LSN and contents, read locally; retried until the LSN is the same before and after."""
    for _ in range(5):
        async with session.get(f"{pod.url}/v1/status") as r:
            before = (await _answer(r, pod))["lsn"]
        contents: dict[str, tuple[str, int]] = {}
        start_after = None
        for _ in range(100_000):
            params = {"limit": "1000", **({"start_after": start_after} if start_after else {})}
            async with session.get(f"{pod.url}/v1/kv", params=params) as r:
                page = await _answer(r, pod)
            for key in page["keys"]:
                async with session.get(f"{pod.url}/v1/kv/{quote(key, safe='/')}") as r:
                    if r.status == 200:
                        tag = r.headers.get("ETag", "").strip('"')
                        contents[key] = ((await r.read()).decode(errors="replace"), int(tag) if tag.isdigit() else -1)
            if not page["more"]:
                break
            start_after = page["next_start_after"]
        async with session.get(f"{pod.url}/v1/status") as r:
            after = (await _answer(r, pod))["lsn"]
        if before == after:
            return checker.ReplicaView(after, contents)
    return checker.ReplicaView(after, contents)


async def heal_and_read(backend: Backend, replicas: int, timeout: float,
                        say: Callable[[str], None]) -> tuple[dict[str, checker.ReplicaView], bool]:
    """Wait (bounded) for every pod to be Ready and every replica to agree; returns the views."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pods = backend.pods()
        if len(pods) >= replicas and all(p.ready for p in pods):
            break
        await asyncio.sleep(0.5)
    else:
        say(f"not every pod is Ready after {timeout:g}s")
    views: dict[str, checker.ReplicaView] = {}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        while True:
            try:
                views = {p.name: await _view(session, p) for p in backend.pods()}
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError, KeyError) as exc:
                say(f"reading the final state: {type(exc).__name__} {exc}")
                views = {}
            agreed = len(views) >= replicas and len({(v.lsn, tuple(sorted(v.contents.items())))
                                                     for v in views.values()}) == 1
            if agreed or time.monotonic() >= deadline:
                return views, agreed
            await asyncio.sleep(1.0)


def check(history: list[Op], watch_log: list[WatchRecord], views: dict[str, checker.ReplicaView],
          max_steps: int) -> checker.Report:
    """The checker over the operations and the final state, the transactions across their keys, then the
    watch checks over the watchers' records."""
    report = checker.check(history, views, max_steps=max_steps)
    report.violations += txncheck.check_txns(history, views, report=report)
    report.violations += watchcheck.check_watches(history, watch_log, report)
    return report


def watch_text(report: checker.Report) -> str:
    """The summary's watch line."""
    if not report.watchers:
        return "watch: no watchers"
    return (f"watch: {report.watchers} watchers, {report.watch_events} events checked, "
            f"{report.watch_covered} acknowledged writes in watched ranges, {report.watch_resyncs} re-syncs, "
            f"{report.watch_reconnects} cuts or refusals resumed"
            + (f", {report.watch_partial} writes in a transaction cut mid-way" if report.watch_partial else ""))


def txn_text(report: checker.Report) -> str:
    """The summary's transactions line: how many were checked, by outcome, and how many judged."""
    t = report.txns
    return (f"transactions: {t['ok'] + t['failed'] + t['unknown']} checked: ok {t['ok']} (succeeded "
            f"{t['succeeded']}, failure branch {t['not_succeeded']}), failed {t['failed']}, unknown "
            f"{t['unknown']} ({t['unknown_seen']} seen applied); comparisons judged on {t['compares_judged']}")


# ------------------------------------------------------------------------- summary
def progress_text(elapsed: float, duration: float, history: list[Any], faults: list[dict[str, Any]],
                  kinds: tuple[str, ...]) -> str:
    """The status line during a run: time, finished operations by outcome, then the faults of ``kinds`` so far.

    Time and outcomes come first, so a terminal narrower than the line cuts
    only the faults (their total, then each kind injected so far).
    """
    elapsed = min(elapsed, duration)  # operations in flight at the end still finish
    counts = checker.fault_counts(faults)
    outcomes: Counter[str] = Counter()
    for row in checker.outcome_table(op for op in history if op.ret is not None).values():
        outcomes.update(row)  # the summary table's outcomes
    text = f"chaos {elapsed:.0f}s/{duration:g}s | " + " ".join(
        f"{name} {outcomes[name]}" for name in ("ok", "rejected", "failed", "unknown"))
    if kinds:
        injected = [f"{kind} {counts[kind]}" for kind in kinds if counts[kind]]
        text += f" | faults {sum(counts[kind] for kind in kinds)}" + (": " + " ".join(injected) if injected else "")
    return text


def summary(args: argparse.Namespace, seed: int, history: list[Any], faults: list[dict[str, Any]],
            report: checker.Report, views: dict[str, checker.ReplicaView], converged: bool,
            elapsed: float) -> str:
    """The summary table and the verdict, as printed."""
    lines = [f"kvstore chaos: {args.duration:g}s, nemesis {','.join(args.nemesis) or 'none'}, runtime "
             f"{args.runtime}, {len(views) or args.replicas} replicas, {args.clients} clients, seed {seed}"]
    table = checker.outcome_table(history)
    columns = ("ok", "rejected", "failed", "unknown")
    lines.append(f"{'operation':<16}" + "".join(f"{c:>10}" for c in columns) + f"{'total':>10}")
    totals = {c: 0 for c in columns}
    for kind in sorted(table):
        row = table[kind]
        lines.append(f"{kind:<16}" + "".join(f"{row.get(c, 0):>10}" for c in columns) + f"{sum(row.values()):>10}")
        for c in columns:
            totals[c] += row.get(c, 0)
    lines.append(f"{'all':<16}" + "".join(f"{totals[c]:>10}" for c in columns) + f"{sum(totals.values()):>10}")
    counts = checker.fault_counts(faults)
    shown = [f for f in FAULTS if f in args.nemesis or counts[f]]
    lines.append("faults: " + (", ".join(
        f"{f} {counts[f]}" + (f" (on kv-0: {counts[f + '_primary']})" if f in (
            "kill", "volume-loss", "volume-rollback", "node-loss", "freeze-primary") else "") for f in shown) or "none"))
    gap, still_open = checker.longest_write_gap_after_primary_kill(history, faults, elapsed)
    lines.append("longest window without a successful write after a kv-0 kill: "
                 + (f"{'>' if still_open else ''}{gap:.1f}s" if counts["kill_primary"] else "- (no kv-0 kill)"))
    lines.append(outage_text(longest_outages(history, faults), shown))
    concern = sum(1 for op in history if op.status == 504 and op.error == "write_concern_timeout")
    lines.append(f"writes durable on kv-0 but answered 504 write_concern_timeout: {concern}")
    if "zombie-primary" in args.nemesis or counts["zombie-primary"]:
        lines.append("operations sent to a zombie kv-0: " + zombie_text(history))
    lsns = sorted({v.lsn for v in views.values()})
    digest = hashlib.sha256(json.dumps(sorted(next(iter(views.values())).contents.items())).encode()
                            ).hexdigest()[:12] if views else "-"
    lines.append(f"convergence: {'yes' if converged else 'NO'}: {len(views)} replicas, lsn "
                 f"{','.join(map(str, lsns)) or '-'}, digest {digest}")
    lines.append(f"linearizability: {report.keys_checked} keys, {len(report.undecided)} undecided, "
                 f"{report.search_steps} search steps")
    lines.append(txn_text(report))
    lines.append(watch_text(report))
    counts_v = report.counts()
    lines.append("violations: " + ", ".join(f"{k} {counts_v.get(k, 0)}" for k in checker.KINDS))
    for violation in report.violations[:20]:
        lines.append(f"  {violation.kind}: {violation.key or ''} {violation.message} ops={violation.ops}")
    if len(report.violations) > 20:
        lines.append(f"  … {len(report.violations) - 20} more in report.json")
    lines.append(f"verdict: {report.verdict}")
    return "\n".join(lines)


def zombie_counts(history: list[Any]) -> Counter[str]:
    """Operations sent to a zombie: in all, by outcome, and by the refusals fencing answers with."""
    counts: Counter[str] = Counter()
    for op in history:
        if checker.is_zombie(op.pod):
            counts["sent"] += 1
            counts[op.outcome] += 1
            if op.status in (503, 504) and op.error:
                counts[f"{op.status} {op.error}"] += 1
    return counts


def zombie_text(history: list[Any]) -> str:
    """The summary's zombie line: how many operations went to it and what became of them."""
    counts = zombie_counts(history)
    refusals = sorted(k for k in counts if k[:3] in ("503", "504"))
    return (f"{counts['sent']} (ok {counts['ok']}, failed {counts['failed']}, unknown {counts['unknown']}"
            + "".join(f"; {k} {counts[k]}" for k in refusals) + ")")


# --------------------------------------------------------------------------- run
def handle(args: argparse.Namespace) -> int:
    """Run ``kvstore chaos``; returns the exit status."""
    def on_term(signum: int, frame: Any) -> None:  # SIGTERM cleans up like Ctrl-C
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        if args.recheck:
            return _recheck(args)
        return _run(args)
    except (ChaosError, NemesisUnavailable) as exc:
        print(f"kvstore chaos: {exc}", file=sys.stderr)
        return EXIT_SETUP
    finally:
        signal.signal(signal.SIGTERM, previous)


def _recheck(args: argparse.Namespace) -> int:
    """The checker over a saved run: same verdict, same table (no cluster involved)."""
    directory = Path(args.recheck)
    try:
        history = read_history(directory / "history.jsonl")
        watch_log = read_watch_log(directory / "watch.jsonl")
        faults = [json.loads(line) for line in (directory / "faults.jsonl").read_text().splitlines() if line]
        final = json.loads((directory / "final.json").read_text())
    except (OSError, ValueError) as exc:
        raise ChaosError(f"--recheck {args.recheck}: {exc}") from None
    views = {pod: checker.ReplicaView(v["lsn"], {k: (c[0], c[1]) for k, c in v["contents"].items()})
             for pod, v in final.items()}
    report = check(history, watch_log, views, args.max_steps)
    args.nemesis = args.nemesis or tuple(sorted({f["fault"] for f in faults if f["fault"] in FAULTS}))
    end = max((op.ret or op.call for op in history), default=0.0)
    converged = len({(v.lsn, tuple(sorted(v.contents.items()))) for v in views.values()}) == 1
    print(summary(args, -1, history, faults, report, views, converged, end), flush=True)
    if report.verdict == "FAIL":
        return EXIT_VIOLATION
    return EXIT_UNDECIDED if report.verdict == "UNKNOWN" else 0


def default_nemesis(runtime: str) -> tuple[str, ...]:
    """The faults of a run without ``--nemesis``: every one the runtime supports."""
    return {"kubernetes": ("kill",), "docker": SIGNAL_FAULTS}.get(runtime, FAULTS)


def _say(text: str) -> None:
    print(f"chaos: {text}", file=sys.stderr, flush=True)


def _run(args: argparse.Namespace) -> int:
    if args.nemesis is None:
        args.nemesis = default_nemesis(args.runtime)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**31)
    rng = random.Random(seed)
    run_id = f"{os.getpid()}-{seed % 100000}"
    if args.runtime == "kubernetes" and args.dir:
        raise ChaosError("--dir is for a local cluster; --runtime kubernetes uses kubectl's current context")
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ChaosError(f"--out {args.out}: {exc.strerror or exc}") from None

    own: LocalCluster | None = None
    given: Path | None = None  # a running cluster's dir (--dir): left running, its logs copied
    backend: Backend | None = None
    client_address: str | None = None  # the process runtime binds the workload here (partitions spare it)
    nemesis: Nemesis | None = None
    workload: Workload | None = None
    started = time.monotonic()
    try:
        if args.runtime == "kubernetes":
            backend = KubernetesBackend(args.kubectl, args.namespace, args.context, args.selector)
        else:
            if args.dir:
                directory = given = Path(args.dir)
            else:
                own = own_cluster(args.runtime, args.replicas)
                _say(f"starting a {args.replicas}-pod cluster ({args.runtime}) in {own.directory}")
                try:
                    own.up()
                except ClusterError as exc:
                    raise ChaosError(f"cannot start a cluster: {exc}") from None
                directory = own.directory
            try:
                state = read_state(directory)
            except ClusterError as exc:
                raise ChaosError(str(exc)) from None
            if state.get("runtime", "process") != args.runtime:
                raise ChaosError(f"the cluster in {directory} runs with --runtime {state.get('runtime')}, "
                                 f"not {args.runtime}")
            pods = local_pods(directory)
            if not pods:
                raise ChaosError(f"the cluster in {directory} has no pods")
            client_address = client_address_for(pods) if args.runtime == "process" else None
            backend = LocalBackend(directory, args.runtime, run_id, client_address)
        pods = backend.pods()
        if not pods:
            raise ChaosError("no pods found")
        replicas = len(pods)
        nemesis = Nemesis(backend, NemesisConfig(faults=args.nemesis, interval=args.interval,
                                                 primary_bias=args.primary_bias, seed=rng.randrange(2**31)),
                          clock=lambda: time.monotonic() - started)
        workload_config = WorkloadConfig(clients=args.clients, keys=args.keys, ops_per_key=args.ops_per_key,
                                         seed=rng.randrange(2**31), local_address=client_address,
                                         watchers=args.watchers)
        pod_urls = {p.name: p.url for p in pods}
        started = time.monotonic()
        aim = nemesis.aim  # kv-0 only while it comes back from a full stop
        workload = Workload(lambda: aim(pod_urls), workload_config, clock=lambda: time.monotonic() - started)
        _say(f"running {args.duration:g}s: {args.clients} clients, nemesis "
             f"{','.join(args.nemesis) or 'none'}, seed {seed}, run kvstore-chaos-{run_id}")

        async def run() -> tuple[dict[str, checker.ReplicaView], bool]:
            deadline = args.duration
            line = ProgressLine()
            ticker = asyncio.create_task(line.follow(lambda: progress_text(
                time.monotonic() - started, args.duration, workload.history, nemesis.log, args.nemesis)))
            try:
                await asyncio.gather(workload.run(deadline), nemesis.run(deadline))
            finally:
                await cancel_and_wait(ticker)
                line.close()
                nemesis.heal_all()
            _say("faults stopped; waiting for the cluster to heal and converge")
            return await heal_and_read(backend, replicas, args.heal_timeout, _say)

        views, converged = asyncio.run(run())
        elapsed = time.monotonic() - started
        history = workload.history
        report = check(history, workload.watch_log, views, args.max_steps)
        if not converged and not any(v.kind == "divergence" for v in report.violations):
            report.violations.append(checker.Violation(
                "divergence", None, f"replicas did not converge within {args.heal_timeout:g}s "
                f"(views of {sorted(views)})"))
        write_jsonl(out / "history.jsonl", history)
        write_jsonl(out / "watch.jsonl", workload.watch_log)
        write_jsonl(out / "faults.jsonl", nemesis.log)
        (out / "final.json").write_text(json.dumps(
            {pod: {"lsn": v.lsn, "contents": v.contents} for pod, v in sorted(views.items())}) + "\n")
        text = summary(args, seed, history, nemesis.log, report, views, converged, elapsed)
        (out / "report.json").write_text(json.dumps({
            "verdict": report.verdict, "seed": seed, "run": f"kvstore-chaos-{run_id}", "summary": text,
            "violations": [v.to_dict() for v in report.violations], "undecided": report.undecided,
            "outcomes": {k: dict(v) for k, v in checker.outcome_table(history).items()},
            "faults": dict(checker.fault_counts(nemesis.log)),
            "zombie": dict(zombie_counts(history)),
            "outage": {kind: o._asdict() for kind, o in longest_outages(history, nemesis.log).items()},
            "watch": {"watchers": report.watchers, "events": report.watch_events,
                      "covered_writes": report.watch_covered, "resyncs": report.watch_resyncs,
                      "resumed": report.watch_reconnects, "partial": report.watch_partial},
            "transactions": dict(report.txns),
            "final": {pod: {"lsn": v.lsn, "keys": len(v.contents)} for pod, v in views.items()},
        }, indent=2) + "\n")
        print(text, flush=True)
        logs = f" and the pod logs in {out / 'logs'}" if args.runtime != "kubernetes" else ""
        _say(f"history, faults and report in {out}{logs}")
        if report.verdict == "FAIL":
            return EXIT_VIOLATION
        return EXIT_UNDECIDED if report.verdict == "UNKNOWN" else 0
    except KeyboardInterrupt:
        _say("interrupted: healing and stopping")
        if backend is not None:
            backend.cleanup()
        if nemesis is not None:  # what was injected, and healed, up to the interruption
            nemesis.log.append({"time": round(time.monotonic() - started, 6), "fault": "interrupted", "pod": ""})
            write_jsonl(out / "faults.jsonl", nemesis.log)
        if workload is not None:
            write_jsonl(out / "history.jsonl", workload.history)
            write_jsonl(out / "watch.jsonl", workload.watch_log)
        return 130
    finally:
        if backend is not None:
            backend.cleanup()
        if own is not None:
            own.down(timeout=60, keep_logs=out / "logs")
        elif given is not None:
            copy_logs(given, out / "logs")


__all__ = ["register", "handle", "OK"]
