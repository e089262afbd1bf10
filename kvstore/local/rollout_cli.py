"""``kvstore cluster set env`` and ``kvstore cluster rollout …``: the template and its rollout, as kubectl does them.

    kvstore cluster set env KV_WRITE_CONCERN=all KV_READ_WAIT-   kubectl set env statefulset/kv ...
    kvstore cluster rollout restart                              kubectl rollout restart statefulset kv
    kvstore cluster rollout status                               kubectl rollout status statefulset kv
    kvstore cluster rollout history [--revision N]               kubectl rollout history statefulset kv
    kvstore cluster rollout undo [--to-revision N]               kubectl rollout undo statefulset kv
    kvstore cluster rollout partition N                          kubectl patch ... rollingUpdate.partition

Bad input (a malformed NAME=VALUE, an unknown revision, a partition out of
range) is one line on stderr and exit status 2; a rollout that halted or did
not finish in time is exit status 1.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any, Callable

from kvstore.cmdline import hint, flag, float_range, int_range
from kvstore.local import control, rollout
from kvstore.local.state import ClusterError, read_state, running_pid
from kvstore.local.statefulset import MAX_REPLICAS
from kvstore.progress import ProgressLine

_seconds = flag(float_range(0.1, 86400, "seconds"))
_number = flag(int_range(0, MAX_REPLICAS))
_revision = flag(int_range(1, 2**31 - 1))


def _env_item(text: str) -> str:
    try:
        rollout.parse_env_changes([text])
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def register(sub: Any, with_dir: Callable[[argparse.ArgumentParser], argparse.ArgumentParser]) -> None:
    """Add ``set env`` and ``rollout …`` to ``kvstore cluster``."""
    set_ = sub.add_parser("set", help="change the pod template (set env), like kubectl set")
    what = set_.add_subparsers(dest="set_command", required=True, metavar="WHAT")
    env = with_dir(what.add_parser("env", help="set (NAME=VALUE) or remove (NAME-) pod environment; pods roll"))
    env.add_argument("items", nargs="+", type=_env_item, metavar="NAME=VALUE|NAME-")

    roll = sub.add_parser("rollout", help="restart, status, history, undo, partition: like kubectl rollout")
    actions = roll.add_subparsers(dest="rollout_command", required=True, metavar="ACTION")
    with_dir(actions.add_parser("restart", help="replace every pod, highest ordinal first"))
    status = with_dir(actions.add_parser("status", help="wait for the rollout, showing its progress"))
    status.add_argument("--timeout", type=_seconds, default=300.0, help="seconds to wait (default 300)")
    history = with_dir(actions.add_parser("history", help="the template's revisions"))
    history.add_argument("--revision", type=_revision, help="show this revision's template")
    undo = with_dir(actions.add_parser("undo", help="go back to the previous template (or --to-revision N)"))
    undo.add_argument("--to-revision", type=_revision, help="the revision to go back to (see rollout history)")
    partition = with_dir(actions.add_parser("partition", help="update only ordinals >= N (a staged update)"))
    partition.add_argument("partition", type=_number, metavar="N")


def handle(args: argparse.Namespace) -> int:
    """Run ``set env`` or one ``rollout`` action; bad input that only the controller can judge exits 2."""
    directory = Path(args.dir)
    if running_pid(directory) is None:
        raise ClusterError(f"no cluster is running in {directory}: start one with {hint('cluster up', directory)}")
    try:
        if args.cluster_command == "set":
            return _set_env(directory, args.items)
        handlers: dict[str, Callable[[Path, argparse.Namespace], int]] = {
            "restart": _restart, "status": _status, "history": _history, "undo": _undo, "partition": _partition,
        }
        return handlers[args.rollout_command](directory, args)
    except control.BadRequest as exc:
        print(f"kvstore cluster {args.cluster_command}: {exc}", file=sys.stderr)
        return 2


def _call(directory: Path, path: str, body: dict[str, Any]) -> dict[str, Any]:
    return asyncio.run(control.call(directory, "POST", path, body))


def _rolling(directory: Path) -> str:
    return f"see {hint('cluster rollout status', directory)}"


def _set_env(directory: Path, items: list[str]) -> int:
    try:
        changes, remove = rollout.parse_env_changes(items)
    except ValueError as exc:
        print(f"kvstore cluster set env: {exc}", file=sys.stderr)
        return 2
    for name, value in changes.items():
        problem = rollout.value_problem(name, value)
        if problem is not None:
            print(f"warning: {problem}: pods given it will not start, so the rollout halts at the first one "
                  f"(go back with {hint('cluster rollout undo')})", file=sys.stderr)
    answer = _call(directory, "/v1/template", {"set": changes, "remove": remove})
    revision = answer["revision"]
    if not answer["changed"]:
        print(f"statefulset {_set_name(answer)} unchanged: the template already is revision {revision['number']}")
        return 0
    print(f"statefulset {_set_name(answer)} env updated: revision {revision['number']} ({revision['name']}); "
          f"pods are replaced {_order(answer)}; {_rolling(directory)}")
    return 0


def _set_name(answer: dict[str, Any]) -> str:
    return str(answer["revision"]["name"]).rsplit("-", 1)[0]


def _order(answer: dict[str, Any]) -> str:
    state = answer["rollout"]
    if state["strategy"] == rollout.ON_DELETE:
        return f"when deleted (OnDelete: {hint('cluster kill POD')})"
    if state["partition"]:
        return f"from the highest ordinal down to {state['partition']} (partition)"
    return "from the highest ordinal down"


def _restart(directory: Path, args: argparse.Namespace) -> int:
    answer = _call(directory, "/v1/rollout", {"action": "restart"})
    revision = answer["revision"]
    print(f"statefulset {_set_name(answer)} restarted: revision {revision['number']} ({revision['name']}); "
          f"pods are replaced {_order(answer)}; {_rolling(directory)}")
    return 0


def _undo(directory: Path, args: argparse.Namespace) -> int:
    answer = _call(directory, "/v1/rollout", {"action": "undo", "revision": args.to_revision})
    revision = answer["revision"]
    if not answer["changed"]:
        print(f"skipped rollback (the template already is revision {revision['number']}, {revision['name']})")
        return 0
    print(f"statefulset {_set_name(answer)} rolled back: {revision['cause']} is revision {revision['number']} "
          f"({revision['name']}); {_rolling(directory)}")
    return 0


def _partition(directory: Path, args: argparse.Namespace) -> int:
    state = _call(directory, "/v1/rollout", {"action": "partition", "partition": args.partition})["rollout"]
    which = "every pod is" if args.partition == 0 else f"only ordinals {args.partition} and up are"
    print(f"partition {args.partition}: {which} updated to revision {state['update_number']} "
          f"({state['update_revision']}); {_rolling(directory)}")
    return 0


def _history(directory: Path, args: argparse.Namespace) -> int:
    state = read_state(directory)
    revisions = state.get("revisions") or []
    current = (state.get("rollout") or {}).get("current_revision")
    update = (state.get("rollout") or {}).get("update_revision")
    if args.revision is not None:
        found = next((r for r in revisions if r["number"] == args.revision), None)
        if found is None:
            numbers = ", ".join(str(r["number"]) for r in revisions)
            print(f"kvstore cluster rollout: unable to find revision {args.revision} (revisions: {numbers})",
                  file=sys.stderr)
            return 2
        print(f"revision {found['number']} ({found['name']}): {found['cause']}")
        print(f"  image: {found['image']}")
        for key, value in sorted(found["annotations"].items()):
            print(f"  annotation {key}: {value}")
        for key, value in sorted(found["env"].items()):
            print(f"  env {key}={value}")
        if not found["env"]:
            print("  env: none set")
        return 0
    rows = [("REVISION", "NAME", "PODS", "CHANGE-CAUSE")]
    pods = state.get("pods") or []
    for r in revisions:
        marks = [m for m, n in (("current", current), ("update", update)) if n == r["name"]]
        count = sum(1 for p in pods if p.get("revision") == r["name"])
        rows.append((str(r["number"]), r["name"] + (f" ({', '.join(marks)})" if marks else ""), str(count), r["cause"]))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for row in rows:
        print("   ".join([*(cell.ljust(w) for cell, w in zip(row, widths)), row[3]]))
    return 0


def _status(directory: Path, args: argparse.Namespace) -> int:
    started = time.monotonic()
    line = ProgressLine(sys.stdout)
    last = None
    try:
        while True:
            state = read_state(directory).get("rollout") or {}
            message = str(state.get("message", "waiting for the controller"))
            if state.get("state") in ("complete", "partitioned"):
                line.close()
                print(message)
                return 0
            if state.get("state") == "halted":
                line.close()
                print(f"kvstore cluster rollout status: {message}", file=sys.stderr)
                return 1
            if message != last:
                line.echo(message)  # each change on a line of its own, as kubectl prints them
                last = message
            elapsed = time.monotonic() - started
            if elapsed >= args.timeout:
                line.close()
                print(f"kvstore cluster rollout status: not done after {args.timeout:g}s: {message}", file=sys.stderr)
                return 1
            line.show(f"{elapsed:.0f}s: {state.get('updated', 0)}/{state.get('replicas', 0)} pods updated, "
                      f"{state.get('ready', 0)} Ready")
            time.sleep(0.2)
    finally:
        line.close()
