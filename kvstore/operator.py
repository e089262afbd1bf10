"""``kvstore recover``: the operator's one explicit action when a replica cannot decide alone.

- ``kvstore recover fresh``: a recovering kv-0 stops waiting for followers
  that will never answer and goes on from its own data (an empty kv-0 starts
  a new history). Its epoch is unverified: followers holding what it lacks
  keep it and report divergence.
- ``kvstore recover from kv-2``: a recovering kv-0 copies kv-2 and goes on
  from there (also unverified).
- ``kvstore recover resync --pod kv-1``: a diverged follower drops its data
  and copies its upstream.
- ``kvstore switchover [--to kv-N]``: the primary hands its role to kv-N (by
  default the most up-to-date follower), like ``patronictl switchover``.

It calls ``POST /v1/peer/recover`` (or ``/v1/peer/switchover``) on the pod's
peer port with the cluster token; the replica logs the decision. Inside a pod (``kubectl exec kv-0 --
kvstore recover fresh``) it finds the port and token in the pod's own
environment; on this machine it finds them in the local cluster's directory.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable

import aiohttp

from kvstore import config as config_mod
from kvstore.cmdline import DEFAULT_CLUSTER_DIR, hint
from kvstore.identity import parse_ordinal
from kvstore.local.state import ClusterError, read_state
from kvstore.replication.versions import Versions

ACTIONS = ("fresh", "from", "resync")


class RecoverError(Exception):
    """A one-line problem with the command (exit 2)."""


def register(sub: Any) -> None:
    """Add ``kvstore recover`` to the command line."""
    parser = sub.add_parser("recover", help="decide for a recovering kv-0, or resync a diverged follower")
    parser.add_argument("action", choices=ACTIONS,
                        help="fresh: kv-0 goes on from its own data; from POD: kv-0 copies POD; "
                             "resync: a diverged follower copies its upstream")
    parser.add_argument("peer", nargs="?", default=None, help="with from: the pod to copy (kv-N)")
    parser.add_argument("--pod", default=None, help="the pod to tell (default: kv-0; for resync, required)")
    parser.add_argument("--peer-url", default=None,
                        help="that pod's peer URL (default: the local cluster in --dir, else this pod's "
                             "own peer port on 127.0.0.1 with $KV_CLUSTER_TOKEN[_FILE])")
    parser.add_argument("--dir", default=DEFAULT_CLUSTER_DIR, help="local cluster directory")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for an answer")
    parser.set_defaults(handler=run)
    parser = sub.add_parser("switchover", help="hand the primary's role to another pod (writes pause, none fail)")
    parser.add_argument("--to", default=None, metavar="POD",
                        help="the pod to lead (kv-N; default: the most up-to-date follower)")
    parser.add_argument("--pod", default=None, help="the pod to ask (default: kv-0; it passes the request on "
                                                   "to the primary)")
    parser.add_argument("--peer-url", default=None,
                        help="that pod's peer URL (default: the local cluster in --dir, else this pod's "
                             "own peer port on 127.0.0.1 with $KV_CLUSTER_TOKEN[_FILE])")
    parser.add_argument("--dir", default=DEFAULT_CLUSTER_DIR, help="local cluster directory")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for an answer")
    parser.set_defaults(handler=run_switchover, action="switchover")


def _target(args: argparse.Namespace) -> tuple[str, str]:
    """(peer URL, token) of the pod to tell."""
    pod = args.pod or ("kv-0" if args.action != "resync" else None)
    if pod is None:
        raise RecoverError("resync needs --pod kv-N (the diverged follower)")
    if args.peer_url is None and Path(args.dir).is_dir():
        try:
            state = read_state(args.dir)
        except ClusterError as exc:
            raise RecoverError(str(exc)) from None
        pods = {p["name"]: p for p in state["pods"]}
        if pod not in pods:
            raise RecoverError(f"no pod {pod} in the cluster in {args.dir}")
        token = (Path(args.dir) / "token").read_text().strip()
        return f"http://{pods[pod]['address']}:{pods[pod]['peer_port']}", token
    try:
        cfg = config_mod.load(env={k: v for k, v in os.environ.items()} | {"POD_NAME": pod})
        token = cfg.token()
    except config_mod.ConfigError as exc:
        raise RecoverError(str(exc)) from None
    if not token:
        raise RecoverError("no cluster token: set KV_CLUSTER_TOKEN or KV_CLUSTER_TOKEN_FILE")
    return args.peer_url or f"http://127.0.0.1:{cfg.peer_port}", token


async def _call(url: str, token: str, body: dict[str, Any], timeout: float,
                path: str = "/v1/peer/recover") -> tuple[int, Any]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session:
        # The peer protocol's headers, like a peer's: a call without them counts as a peer of an older
        # build, and while one is about the primary refuses transactions and no follower stands for election.
        async with session.post(url + path, json=body, headers={
                **Versions("kvstore-operator").headers, "Authorization": f"Bearer {token}"}) as response:
            try:
                return response.status, await response.json(content_type=None)
            except (ValueError, aiohttp.ContentTypeError):
                return response.status, None


def run(args: argparse.Namespace) -> int:
    """Send the decision; print the replica's answer."""
    def check() -> None:
        if args.action == "from" and not args.peer:
            raise RecoverError(f"from needs the pod to copy: {hint('recover from kv-2')}")
        if args.action != "from" and args.peer:
            raise RecoverError(f"{args.action} takes no pod name (use --pod to choose whom to tell)")
    return _send(args, "recover", check, {"action": args.action, "peer": args.peer}, "/v1/peer/recover")


def run_switchover(args: argparse.Namespace) -> int:
    """Ask for a switchover; print who leads now, or why not (exit 1)."""
    def check() -> None:
        if args.to is not None:
            try:
                parse_ordinal(args.to)
            except ValueError:
                raise RecoverError(f"--to wants a pod name like kv-1, not {args.to!r}") from None
    return _send(args, "switchover", check, {"to": args.to}, "/v1/peer/switchover")


def _send(args: argparse.Namespace, command: str, check: Callable[[], None], body: dict[str, Any],
          path: str) -> int:
    """Check the arguments, send ``body`` to the pod's ``path``; print its result (0), refusal (1) or why not (2)."""
    try:
        check()
        url, token = _target(args)
        status, data = asyncio.run(_call(url, token, body, args.timeout, path))
    except RecoverError as exc:
        print(f"kvstore {command}: {exc}", file=sys.stderr)
        return 2
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
        print(f"kvstore {command}: cannot reach the pod: {exc or type(exc).__name__}", file=sys.stderr)
        return 2
    if status != 200:
        message = data.get("message") if isinstance(data, dict) else None
        print(f"kvstore {command}: {status} {message or json.dumps(data)}", file=sys.stderr)
        return 1
    print(data.get("result", "") if isinstance(data, dict) else "")
    return 0
