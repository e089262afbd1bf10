"""The ``kvstore`` command: serve, the client commands, and the cluster/chaos tools."""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import sys
from typing import Sequence

import aiohttp

from kvstore import config as config_mod
from kvstore import operator
from kvstore.chaos import cli as chaos_cli
from kvstore.client import Client, Reply, WatchError, follow, why_unanswered
from kvstore.cmdline import DEFAULT_CLUSTER_DIR, Parser, flag, hint, int_range
from kvstore.local import cli as local_cli
from kvstore.local.state import read_client_url
from kvstore.txn import MAX_TTL


class CliError(Exception):
    """A user-facing error: printed as one line, exit status 2."""


def _add_client_target(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", default=None,
                        help="a replica's client URL (default: $KV_URL, else the local cluster in --dir)")
    parser.add_argument("--dir", default=DEFAULT_CLUSTER_DIR,
                        help=f"local cluster directory (default: ./{DEFAULT_CLUSTER_DIR})")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for an answer")


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (public so the README's usage can be checked)."""
    parser = Parser(prog="kvstore", description="A replicated key-value store for Kubernetes StatefulSets")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    serve = sub.add_parser("serve", help="run one replica (what the container runs)")
    config_mod.add_flags(serve)

    get = sub.add_parser("get", help="print a key's value")
    get.add_argument("key")
    get.add_argument("--consistency", choices=("local", "strong"), default=None)
    get.add_argument("--min-lsn", type=int, default=None)
    _add_client_target(get)

    put = sub.add_parser("put", help="set a key (value from the argument, or stdin with -)")
    put.add_argument("key")
    put.add_argument("value")
    put.add_argument("-w", "--write-concern", dest="w", choices=config_mod.WRITE_CONCERNS, default=None)
    put.add_argument("--if-match", type=int, default=None, help="compare-and-set on this version")
    put.add_argument("--create-only", action="store_true", help="fail if the key exists")
    put.add_argument("--ttl", type=flag(int_range(1, MAX_TTL)), default=None,
                     help="seconds until the primary deletes the key")
    _add_client_target(put)

    txn = sub.add_parser("txn", help="compare, then apply one branch of puts and deletes atomically; exit 0 "
                                     "when the success branch ran, 3 when the failure branch did")
    txn.add_argument("body", metavar="JSON",
                     help='the transaction: JSON text, @FILE, or - for stdin, like {"compare": [{"key": "a", '
                          '"absent": true}], "success": [{"op": "put", "key": "a", "value": "1"}], "failure": []}')
    txn.add_argument("-w", "--write-concern", dest="w", choices=config_mod.WRITE_CONCERNS, default=None)
    _add_client_target(txn)

    delete = sub.add_parser("delete", help="delete a key")
    delete.add_argument("key")
    delete.add_argument("-w", "--write-concern", dest="w", choices=config_mod.WRITE_CONCERNS, default=None)
    delete.add_argument("--if-match", type=int, default=None)
    _add_client_target(delete)

    ls = sub.add_parser("ls", help="list keys in order")
    ls.add_argument("--prefix", default="")
    ls.add_argument("--start-after", default=None)
    ls.add_argument("--limit", type=int, default=None)
    _add_client_target(ls)

    status = sub.add_parser("status", help="a replica's status as JSON")
    _add_client_target(status)

    watch = sub.add_parser("watch", help="print every change under a prefix as it is committed (Ctrl-C stops)")
    watch.add_argument("prefix", nargs="?", default="", help="keys that start with this (default: every key)")
    watch.add_argument("--from-lsn", type=flag(int_range(1, 2**63 - 1)), default=None,
                       help="first LSN to show (default: changes from now on)")
    watch.add_argument("--history", default=None,
                       help="with --from-lsn: the history id (X-Kv-History) that LSN belongs to")
    watch.add_argument("--no-values", action="store_true", help="leave the values out")
    watch.add_argument("--json", action="store_true", help="one JSON object per line (values in base64)")
    _add_client_target(watch)

    backup = sub.add_parser("backup", help="save a consistent snapshot of one replica to a file")
    backup.add_argument("file", metavar="FILE",
                        help="where to write it (replaced only once the new one is whole); a directory: a new "
                             "file there named <pod>-<UTC time>-lsn<N>.kvbackup")
    backup.add_argument("--keep", type=flag(int_range(1, 100_000)), default=None,
                        help="with a directory: keep only the newest N backups there")
    _add_client_target(backup)

    restore = sub.add_parser("restore", help="seed a new cluster's kv-0 volume from a backup file")
    restore.add_argument("file", metavar="FILE", help="a file the backup command wrote")
    restore.add_argument("--data-dir", required=True,
                         help="kv-0's data dir (its volume's mount), empty; the file is checked before it is touched")

    # Sub-command groups that live with their own packages.
    local_cli.register(sub)
    chaos_cli.register(sub)
    operator.register(sub)
    return parser


def resolve_url(args: argparse.Namespace) -> str:
    """Where client commands go: --url, $KV_URL, else the local cluster's state file."""
    url = args.url or os.environ.get("KV_URL")
    if url:
        if not url.startswith(("http://", "https://")):
            raise CliError(f"--url {url!r}: expected http://host:port")
        return url
    try:
        return read_client_url(args.dir)
    except (OSError, ValueError):
        pass
    raise CliError(f"no running cluster found in {args.dir!r}: start one with "
                   f"{hint('cluster up', args.dir)}, or pass --url http://host:8080")


def _print_error(command: str, reply: Reply) -> int:
    if isinstance(reply.data, dict) and "error" in reply.data:
        print(f"kvstore {command}: {reply.status} {reply.data['error']}: {reply.data.get('message', '')}",
              file=sys.stderr)
    else:
        print(f"kvstore {command}: HTTP {reply.status}", file=sys.stderr)
    return 1


async def _client_command(args: argparse.Namespace) -> int:
    url = resolve_url(args)
    try:
        return await _call(args, url)
    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
        where = "" if args.url or os.environ.get("KV_URL") else f"; is it up? {hint('cluster status', args.dir)}"
        raise CliError(f"cannot reach the replica at {url} ({why_unanswered(exc)}){where}") from None


async def _call(args: argparse.Namespace, url: str) -> int:
    """Send the command's request to ``url`` and print the answer; the exit status."""
    async with Client(url, timeout=args.timeout) as client:
        if args.command == "get":
            reply = await client.get(args.key, consistency=args.consistency, min_lsn=args.min_lsn)
            if reply.status != 200:
                return _print_error("get", reply)
            sys.stdout.buffer.write(reply.body)
            if sys.stdout.isatty():
                sys.stdout.write("\n")
            return 0
        if args.command == "put":
            value = sys.stdin.buffer.read() if args.value == "-" else args.value.encode()
            reply = await client.put(args.key, value, w=args.w, if_match=args.if_match,
                                     create_only=args.create_only, ttl=args.ttl)
        elif args.command == "txn":
            reply = await client.request("POST", "/v1/txn", params={"w": args.w} if args.w else None,
                                         data=_txn_body(args.body), headers={"Content-Type": "application/json"})
            if reply.status == 200:
                print(json.dumps(reply.data))
                return 0 if reply.data["succeeded"] else 3
        elif args.command == "delete":
            reply = await client.delete(args.key, w=args.w, if_match=args.if_match)
        elif args.command == "ls":
            reply = await client.list(args.prefix, args.start_after, args.limit)
            if reply.status == 200:
                for key in reply.data["keys"]:
                    print(key)
                return 0
        else:
            reply = await client.status()
        if reply.status != 200:
            return _print_error(args.command, reply)
        print(json.dumps(reply.data, indent=2 if args.command == "status" else None))
        return 0


def _txn_body(text: str) -> bytes:
    """``kvstore txn``'s argument as the request body: the JSON itself, @FILE or - (stdin)."""
    if text == "-":
        return sys.stdin.buffer.read()
    if text.startswith("@"):
        try:
            with open(text[1:], "rb") as handle:
                return handle.read()
        except OSError as exc:
            raise CliError(f"cannot read {text[1:]}: {exc.strerror}") from None
    return text.encode()


def _printable(value: bytes) -> str:
    """A value as text when it is printable UTF-8, else as ``base64:...``."""
    try:
        text = value.decode("utf-8")
        if text.isprintable():
            return text
    except UnicodeDecodeError:
        pass
    return "base64:" + base64.b64encode(value).decode("ascii")


async def _watch(args: argparse.Namespace) -> int:
    url = resolve_url(args)
    if args.history is not None and args.from_lsn is None:
        raise CliError("--history names the history of --from-lsn: give both")
    try:
        async for event in follow([url], args.prefix, from_lsn=args.from_lsn, history=args.history,
                                  values=not args.no_values, timeout=args.timeout):
            if args.json:
                if "value" in event:
                    event = {**event, "value": base64.b64encode(event["value"]).decode("ascii")}
                print(json.dumps(event), flush=True)
            else:
                value = f" {_printable(event['value'])}" if "value" in event else ""
                print(f"{event['version']} {event['type']} {event['key']}{value}", flush=True)
    except WatchError as exc:
        print(f"kvstore watch: {exc.status} {exc.code}: {exc.message}", file=sys.stderr)
        return 1
    return 0


async def _backup(args: argparse.Namespace) -> int:
    from kvstore import backup  # LevelDB is loaded only by the commands that need it

    async with Client(resolve_url(args), timeout=args.timeout) as client:
        try:
            info, path = await backup.download(client, args.file, args.keep)
        except backup.BackupError as exc:
            raise CliError(str(exc)) from None
    print(f"wrote {path}: {backup.describe(info)}")
    return 0


def _restore(args: argparse.Namespace) -> int:
    from kvstore import backup

    try:
        info = asyncio.run(backup.restore(args.file, args.data_dir))
    except backup.BackupError as exc:
        raise CliError(str(exc)) from None
    print(f"restored {backup.describe(info)} into {args.data_dir}; start kv-0 on it, its followers copy it")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``kvstore`` command; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        if args.command == "serve":
            # Imported here, not at the top: LevelDB, prometheus-client and uvloop add 50-80 ms
            # (python -X importtime) to every client command, and only serve needs them.
            from kvstore import server

            flags = {name: value for name, value in vars(args).items() if name != "command"}
            try:
                cfg = config_mod.load(flags=flags)
            except config_mod.ConfigError as exc:
                print(f"kvstore serve: {exc}", file=sys.stderr)
                return 2
            return server.run(cfg)
        if args.command in ("get", "put", "delete", "ls", "status", "txn"):
            return asyncio.run(_client_command(args))
        if args.command == "watch":
            return asyncio.run(_watch(args))
        if args.command == "backup":
            return asyncio.run(_backup(args))
        if args.command == "restore":
            return _restore(args)
        return args.handler(args)
    except CliError as exc:
        print(f"kvstore {args.command}: {exc}", file=sys.stderr)
        return 2
    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
        print(f"kvstore {args.command}: cannot reach the replica ({why_unanswered(exc)})", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
