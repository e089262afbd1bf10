"""The transaction checks: what must hold across the keys of one transaction.

Per key, a transaction is already judged as the writes it made
(:func:`kvstore.chaos.history.per_key`: lost writes, linearizability,
version order, stale reads). What a per-key check cannot see rests on the
store's promise that a transaction is ONE log entry, so every key it
changes carries its LSN ``L``, and on the LSNs being one total order:

- ``txn_torn`` (atomicity): an acknowledged transaction's answer lists each
  key of the branch that ran at ``L``, and nothing else; a transaction of
  unknown outcome whose values were seen (by a strong read, a read on a
  follower or in the final state) was seen at one version only, from one
  branch only, and its other keys are no older than ``L`` in the final state
  (a later delete may have removed them); a read of one of its keys answered
  at ``X-Kv-Lsn`` >= ``L`` that started after another of its keys showed its
  value in a strong read is no older than ``L`` either (for an acknowledged
  one, reads after its answer are the per-key ``stale_read`` check's).
- ``txn_compare`` (comparisons agree with the order): the comparisons are
  evaluated against the state just before ``L``. With the versions that
  are certain (acknowledged writes and what a majority was seen holding), a
  transaction that took its success branch must not have a comparison that
  was certainly false there (``version == V`` while a write newer than ``V``
  and older than ``L`` exists; ``absent`` while the key's last such write is
  a put and no delete may lie between), and one that took its failure
  branch must have had a comparison that was not certainly true (a write of
  unknown outcome, whose version nobody saw, that could lie before ``L``
  leaves a comparison undecided). A failure branch that wrote nothing has no
  ``L``: its comparisons are not judged.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any, Iterable

from kvstore.chaos import checker
from kvstore.chaos import linearizability as lin
from kvstore.chaos.history import FAILED, OK, UNKNOWN, Op, branch_writes, per_key


class _Order:
    """What is certain about one key's writes, for judging comparisons at an LSN."""

    def __init__(self, versions: lin.VersionMap, ops: list[Op]) -> None:
        self.versions = versions
        # (version, is a delete) of every write known to be on the log: acknowledged or seen held by a majority.
        self.known = sorted([(v, False) for v in versions.value_of] + [(v, True) for v in versions.deletes])
        # Writes that may have applied at a version nobody knows: (invoked at, is a delete, operation id).
        self.unsure = [(op.call, op.f == "delete", op.id) for op in ops
                       if op.is_write and op.outcome != FAILED
                       and not (op.outcome == OK and op.version is not None)
                       and not (op.value is not None and op.value in versions.version_of)]

    def last_below(self, lsn: int) -> tuple[int, bool] | None:
        """The newest known write older than ``lsn``: (version, is a delete)."""
        below = [k for k in self.known if k[0] < lsn]
        return below[-1] if below else None

    def unsure_before(self, horizon: float, txn: int, deletes: bool | None = None) -> bool:
        """Whether a write of unknown version, invoked before ``horizon``, may lie before the transaction."""
        return any(call < horizon and op_id != txn and (deletes is None or deleted == deletes)
                   for call, deleted, op_id in self.unsure)


def _wanted_version(c: dict[str, Any], order: _Order) -> int | None:
    """The version a comparison asks for (a value compare through the version its value is known with)."""
    if isinstance(c.get("version"), int):
        return c["version"]
    if "value" in c:
        return order.versions.version_of.get(str(c["value"]))
    return None


def certainly_false(c: dict[str, Any], order: _Order, lsn: int, horizon: float, txn: int) -> str | None:
    """Why comparison ``c`` cannot have held just before ``lsn`` (None: it may have)."""
    if c.get("absent") is True:
        last = order.last_below(lsn)
        if last is None or last[1]:
            return None
        # Present after the put at last[0]: only a delete after it (known ones are in `known`) could undo it.
        if order.unsure_before(horizon, txn, deletes=True):
            return None
        return f"{c['key']} was present: its last write before {lsn} is a put at version {last[0]}"
    wanted = _wanted_version(c, order)
    if wanted is None:
        return None
    if wanted >= lsn:
        return f"{c['key']} cannot have version {wanted} before {lsn}"
    if wanted in order.versions.deletes:
        return f"version {wanted} of {c['key']} is a delete's: the key was absent"
    between = [v for v, _ in order.known if wanted < v < lsn]
    if between:
        return f"{c['key']} was written at version {between[0]}, after {wanted} and before {lsn}"
    return None


def certainly_true(c: dict[str, Any], order: _Order, lsn: int, horizon: float, txn: int) -> bool:
    """Whether comparison ``c`` held for sure just before ``lsn``: no write of unknown version may intervene."""
    if order.unsure_before(horizon, txn, deletes=None if c.get("absent") is not True else False):
        return False
    last = order.last_below(lsn)
    if c.get("absent") is True:
        return last is None or last[1]
    wanted = _wanted_version(c, order)
    return (wanted is not None and last is not None and last == (wanted, False)
            and wanted in order.versions.value_of)


def _answer_problem(op: Op) -> str | None:
    """What is wrong with an acknowledged transaction's answer (None: it is whole)."""
    if op.succeeded is None:
        return "answered 200 without a true or false 'succeeded'"
    ran = "success" if op.succeeded else "failure"
    if op.branch != ran:
        return f"answered succeeded {op.succeeded} but branch {op.branch!r}"
    changes = {str(c.get("key")): c for name, c in branch_writes(op) if name == ran}
    listed = {str(c.get("key")): c for c in op.changed or ()}
    if changes and any(c.get("op") == "put" for c in changes.values()) and not isinstance(op.version, int):
        return f"its {ran} branch put keys, but the answer has no version"
    for key, c in listed.items():
        if key not in changes:
            return f"the answer lists {key}, which its {ran} branch does not change"
        if c.get("version") != op.version:
            return f"the answer lists {key} at version {c.get('version')}, not the transaction's {op.version}"
        if bool(c.get("deleted")) != (changes[key].get("op") == "delete"):
            return f"the answer says {key} deleted={c.get('deleted')}, but the branch {changes[key].get('op')}s it"
    missing = [key for key, c in changes.items() if c.get("op") == "put" and key not in listed]
    if missing:
        return f"the answer does not list {', '.join(missing)}, which its {ran} branch puts"
    return None


def check_txns(history: list[Op], views: dict[str, checker.ReplicaView], final_pod: str | None = None,
               report: checker.Report | None = None) -> list[checker.Violation]:
    """Every transaction's atomicity and comparisons (the violations); counts them into ``report``."""
    txns = [op for op in history if op.f == "txn"]
    if not txns:
        return []
    final_pod = final_pod or checker.primary_pod(history, views)
    final = views[final_pod].contents if final_pod in views else None
    flat = per_key(history)
    versions, _ = checker.build_versions(flat, views)
    by_key: dict[str, list[Op]] = defaultdict(list)
    for op in flat:
        by_key[op.key].append(op)
    orders = {key: _Order(versions.get(key) or lin.VersionMap(), ops) for key, ops in by_key.items()}
    # When a strong read first finished showing each (key, value): from then on a majority held it.
    shown: dict[tuple[str, str], float] = {}
    for op in history:
        if (op.f == "read" and op.consistency == "strong" and op.outcome == OK and op.found
                and op.observed is not None and op.ret is not None):
            at = (op.key, op.observed)
            shown[at] = min(shown.get(at, math.inf), op.ret)
    out: list[checker.Violation] = []
    for op in txns:
        if report is not None:
            report.txns[op.outcome] += 1
            if op.outcome == OK:
                report.txns["succeeded" if op.succeeded else "not_succeeded"] += 1
        out += _check_one(op, versions, orders, by_key, shown, final, report)
    return out


def _check_one(op: Op, versions: dict[str, lin.VersionMap], orders: dict[str, _Order],
               by_key: dict[str, list[Op]], shown: dict[tuple[str, str], float],
               final: dict[str, tuple[str, int]] | None, report: checker.Report | None) -> list[checker.Violation]:
    out: list[checker.Violation] = []
    name = f"txn {op.id} on {op.pod}"

    def torn(message: str, key: str | None = None, ids: Iterable[int] = ()) -> None:
        out.append(checker.Violation("txn_torn", key or op.key, f"{name}: {message}", [op.id, *ids]))

    # Which branch ran, and at which LSN: from the answer, or from where its values were seen.
    seen: dict[str, dict[str, int]] = {"success": {}, "failure": {}}
    for branch, change in branch_writes(op):
        if change.get("op") == "put":
            key, value = str(change.get("key")), str(change.get("value"))
            version = versions.get(key, lin.VersionMap()).version_of.get(value)
            if version is not None:
                seen[branch][key] = version
    if op.outcome == OK:
        problem = _answer_problem(op)
        if problem:
            torn(problem)
            return out
        ran, lsn = ("success" if op.succeeded else "failure"), op.version
    elif op.outcome == UNKNOWN and (seen["success"] or seen["failure"]):
        if seen["success"] and seen["failure"]:
            torn(f"values of both branches were seen: success {seen['success']}, failure {seen['failure']}")
            return out
        ran = "success" if seen["success"] else "failure"
        at = sorted(set(seen[ran].values()))
        if len(at) > 1:
            torn(f"its {ran} branch's keys were seen at different versions: {seen[ran]} (one entry, one LSN)")
            return out
        lsn = at[0]
        if report is not None:
            report.txns["unknown_seen"] += 1
    else:
        return out  # failed (per_key's writes that did not apply), or unknown and never seen
    if lsn is None:
        return out  # a branch that wrote nothing: no LSN to judge it at
    horizon = op.ret if op.outcome == OK and op.ret is not None else math.inf

    # Comparisons against the order just before the LSN.
    compares = [c for c in op.compare or () if isinstance(c, dict) and isinstance(c.get("key"), str)]
    if compares:
        if report is not None:
            report.txns["compares_judged"] += 1
        judged = [(c, orders.get(c["key"]) or _Order(lin.VersionMap(), [])) for c in compares]
        if ran == "success":
            for c, order in judged:
                why = certainly_false(c, order, lsn, horizon, op.id)
                if why:
                    out.append(checker.Violation("txn_compare", c["key"], f"{name} took its success branch at "
                                                 f"{lsn}, but its comparison {c} was false: {why}", [op.id]))
        elif all(certainly_true(c, order, lsn, horizon, op.id) for c, order in judged):
            out.append(checker.Violation("txn_compare", op.key, f"{name} took its failure branch at {lsn}, but "
                                         f"every comparison held there: {compares}", [op.id]))

    # Atomicity across the keys of the branch that ran.
    puts = [(str(c.get("key")), str(c.get("value"))) for b, c in branch_writes(op) if b == ran and c.get("op") == "put"]
    for branch, change in branch_writes(op):
        if branch != ran:
            continue
        key, delete = str(change.get("key")), change.get("op") == "delete"
        # From when another of its keys was seen held by a majority (or the transaction was answered).
        since = min([shown.get(p, math.inf) for p in puts if p[0] != key] + [horizon])
        if op.outcome == UNKNOWN and final is not None:
            state = final.get(key)
            if state is not None and (state[1] < lsn or (state[1] == lsn and (delete or state[0] != change.get("value")))):
                torn(f"wrote {key} at {lsn} (its other keys show it), but {key} ends as {state[0]!r} at version "
                     f"{state[1]}", key)
            elif state is None and not delete and not any(
                    d.f == "delete" and d.outcome != FAILED and (d.version is None or d.version > lsn)
                    for d in by_key.get(key, [])):
                torn(f"wrote {key} at {lsn} (its other keys show it), but {key} is absent at the end and no "
                     "delete explains it", key)
        for r in by_key.get(key, []):
            if r.f != "read" or r.found is None or r.lsn is None or r.ret is None or r.lsn < lsn:
                continue
            if not since < r.call or (op.outcome == OK and horizon < r.call):
                continue  # before any key showed it, or after its answer (then stale_read judges it)
            where = f"read {r.id} ({r.consistency}, {r.pod}) of {key} answered at X-Kv-Lsn {r.lsn}"
            if r.found and r.version is not None and r.version < lsn:
                torn(f"{where} saw version {r.version}, older than the transaction's {lsn}, after another of "
                     "its keys showed it", key, [r.id])
            elif not r.found and not delete and not checker.delete_explains(by_key[key], r.ret, lsn):
                torn(f"{where} found it absent after another of the transaction's keys showed it at {lsn}, and "
                     "no delete explains it", key, [r.id])
    return out
