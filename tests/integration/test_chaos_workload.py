"""The chaos workload against a real replica: what it records is what the checker needs.

No faults: two clients on one key for a moment make plenty of 412s (creates of
a key that exists, compare-and-sets that lost a race), and every 412 must
carry the ``current_version`` the server answered; the checker then passes
the history with the replica's final contents. On three keys, transactions
span several of them, some comparisons hold and some do not, and the checker
and the watchers see each whole.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from types import SimpleNamespace

import aiohttp

from replica_process import running
from kvstore.chaos import checker
from kvstore.chaos.cli import _view, check
from kvstore.chaos.workload import Workload, WorkloadConfig


def test_workload_records_412_current_versions_and_the_checker_passes_it(tmp_path: Path) -> None:
    with running(tmp_path, host="127.0.67.10") as replica:
        started = time.monotonic()
        workload = Workload(lambda: {"kv-0": replica.url},
                            WorkloadConfig(clients=3, keys=1, ops_per_key=400, seed=7, max_ops=400),
                            clock=lambda: time.monotonic() - started)

        async def run() -> tuple[checker.ReplicaView, str]:
            await workload.run(deadline=8.0)
            async with aiohttp.ClientSession() as session:
                try:  # a refusal (a pod still healing) is named, not a KeyError on its JSON
                    await _view(session, SimpleNamespace(url=replica.url + "/nowhere", name="kv-0"))
                    refusal = ""
                except ValueError as exc:
                    refusal = str(exc)
                return await _view(session, SimpleNamespace(url=replica.url, name="kv-0")), refusal

        final, refusal = asyncio.run(run())
    assert refusal == "kv-0 answered 404 not_found to /nowhere/v1/status", refusal
    history = workload.history
    creates = [op for op in history if op.f == "create" and op.status == 412]
    cases = [op for op in history if op.f == "cas" and op.status == 412]
    assert len(creates) >= 3 and len(cases) >= 3, f"{len(creates)} creates and {len(cases)} cas answered 412"
    # A create fails only on a key that exists, so its 412 names a version; a cas may also fail
    # on an absent key (current_version null), but not always.
    assert all(op.current_version is not None for op in creates), [op for op in creates if op.current_version is None]
    assert any(op.current_version is not None for op in cases)
    # Each version a 412 names is one the key really had: a version some write answered.
    versions = {op.version for op in history if op.is_write and op.outcome == "ok"}
    named = {op.current_version for op in creates + cases if op.current_version is not None}
    assert named <= versions, named - versions
    report = check(history, workload.watch_log, {"kv-0": final}, max_steps=1_000_000)
    assert report.verdict == "PASS", report.violations[:5]
    assert report.keys_checked >= 1
    # The watchers saw the writes as they were committed, each acknowledged one once.
    assert report.watchers == 3 and report.watch_events >= report.watch_covered > 0, report
    assert report.watch_resyncs == 0


def test_workload_transactions_span_keys_and_the_checker_passes_them(tmp_path: Path) -> None:
    with running(tmp_path, host="127.0.67.11") as replica:
        started = time.monotonic()
        workload = Workload(lambda: {"kv-0": replica.url},
                            WorkloadConfig(clients=3, keys=3, ops_per_key=400, seed=11, max_ops=600),
                            clock=lambda: time.monotonic() - started)

        async def run() -> checker.ReplicaView:
            await workload.run(deadline=10.0)
            async with aiohttp.ClientSession() as session:
                return await _view(session, SimpleNamespace(url=replica.url, name="kv-0"))

        final = asyncio.run(run())
    txns = [op for op in workload.history if op.f == "txn"]
    ok = [op for op in txns if op.outcome == "ok"]
    report = check(workload.history, workload.watch_log, {"kv-0": final}, max_steps=1_000_000)
    assert report.verdict == "PASS", report.violations[:5]
    # Several keys each, comparisons that held and ones that did not, every answer recorded whole.
    assert len(ok) >= 20 and all(len(op.keys or ()) >= 2 for op in txns), len(ok)
    assert any(op.succeeded for op in ok) and any(op.succeeded is False for op in ok)
    assert all(op.version is not None and op.changed for op in ok if op.succeeded)
    assert all({c["version"] for c in op.changed or ()} <= {op.version} for op in ok)
    assert report.txns["ok"] == len(ok) and report.txns["compares_judged"] > 0, report.txns
    # The watchers saw each key of each acknowledged transaction after their start at its version, up to
    # where they read before the workload's deadline stopped them (a write acknowledged at the deadline,
    # or a transaction whose lines the deadline cut, may lie past it).
    since = min(r.lsn for r in workload.watch_log if r.type == "start" and r.lsn is not None)
    reached = max((r.version or 0) if r.is_event else (r.lsn or 0) for r in workload.watch_log)
    shown = {(r.key, r.version) for r in workload.watch_log if r.is_event}
    keys = [(c["key"], op.version) for op in ok if since < (op.version or 0) < reached for c in op.changed or ()]
    assert keys and all(k in shown for k in keys), [k for k in keys if k not in shown]
