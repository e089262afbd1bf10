"""The chaos workload: concurrent clients issuing writes and reads on every pod, recording a history.

Each client (a "process" in the history) loops until the deadline, picking a
key from a small pool and an operation: PUT of a unique value, compare-and-set
on the version it last saw, create-only, DELETE, local, strong and
``min_lsn`` reads, and transactions on 2-3 keys of the same pool (compare
each key's version to the one last seen, or its absence; put unique values
on success, sometimes one on failure too, and now and then delete a key).
Keys are retired after ``ops_per_key`` operations, so each key's history
stays small enough for the linearizability search.

The pods come from ``urls()``, asked once per operation, so the nemesis can
aim clients (:meth:`kvstore.chaos.nemesis.Nemesis.aim`); an operation is
recorded under the name its URL was given (``kv-0-zombie`` for a second kv-0).

Beside the clients, ``watchers`` long-lived watches of the keys' prefix
(:mod:`kvstore.chaos.watchers`) record every line they read in ``watch_log``.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field
from typing import Callable

import aiohttp

from kvstore.aio import cancel_and_wait
from kvstore.chaos.history import (
    FAILED, OK, UNKNOWN, Op, WatchRecord, classify_exception, classify_read, classify_write,
)
from kvstore.chaos.watchers import Watchers
from kvstore.client import Client, Reply, never_resend

# Operation mix (weights).
MIX = {"put": 23, "cas": 13, "create": 5, "delete": 6, "read_strong": 18, "read_local": 12,
       "read_min_lsn": 13, "txn": 10}
TXN_KEYS = (2, 3)  # keys a transaction touches
PREFIX = "chaos/"  # every key the workload writes is under it


@dataclass
class WorkloadConfig:
    """Bounds and shape of the workload."""

    clients: int = 6
    keys: int = 6                 # keys in use at once
    ops_per_key: int = 120        # then the key is retired and a fresh one is used
    request_timeout: float = 6.0  # longer than the server's own write timeout + forwarding
    max_ops: int = 1_000_000      # a hard bound on the count, besides the deadline
    seed: int | None = None
    local_address: str | None = None  # bind client connections here (partitions let it through)
    watchers: int = 3             # watches of PREFIX, started on different pods


@dataclass
class _Session:
    """What one client remembers per key: the version it last saw, its own last acked write."""

    seen: dict[str, int] = field(default_factory=dict)
    own: dict[str, tuple[int, bool]] = field(default_factory=dict)


class Workload:
    """Runs the clients against ``urls`` (pod name -> client URL) and keeps the history."""

    def __init__(self, urls: Callable[[], dict[str, str]], config: WorkloadConfig,
                 clock: Callable[[], float]) -> None:
        self.urls = urls
        self.config = config
        self.clock = clock
        self.history: list[Op] = []
        self.rng = random.Random(config.seed)
        self._next_id = 0
        self._next_value = 0
        self._key_gen = 0
        self._pool: list[list] = []  # [key, operations so far]
        self.watchers = Watchers(urls, clock, config.watchers, PREFIX)

    @property
    def watch_log(self) -> list[WatchRecord]:
        """What the watchers read and did, in order."""
        return self.watchers.log

    # ------------------------------------------------------------------ keys
    def _new_key(self) -> list:
        self._key_gen += 1
        return [f"{PREFIX}{self._key_gen:05d}", 0]

    def _pick_key(self) -> str:
        while len(self._pool) < self.config.keys:
            self._pool.append(self._new_key())
        slot = self.rng.randrange(len(self._pool))
        entry = self._pool[slot]
        entry[1] += 1
        if entry[1] >= self.config.ops_per_key:
            self._pool[slot] = self._new_key()
        return entry[0]

    def _op(self, process: int, key: str, f: str, pod: str, **kw: object) -> Op:
        op = Op(id=self._next_id, process=process, key=key, f=f, pod=pod, call=self.clock(), **kw)
        self._next_id += 1
        self.history.append(op)
        return op

    def _value(self, process: int) -> str:
        # Unique across the run, so a value names the write that made it.
        self._next_value += 1
        return f"p{process}-{self._next_value}"

    # ------------------------------------------------------------------- run
    async def run(self, deadline: float) -> list[Op]:
        """Run every client until ``deadline`` (on ``clock``); returns the history."""
        connector = aiohttp.TCPConnector(
            limit=0, local_addr=(self.config.local_address, 0) if self.config.local_address else None)
        timeout = aiohttp.ClientTimeout(total=self.config.request_timeout, sock_connect=2.0)
        async with never_resend(aiohttp.ClientSession(connector=connector, timeout=timeout)) as session:
            watching = asyncio.create_task(self.watchers.run(session, deadline), name="chaos-watchers")
            try:
                await asyncio.gather(*(self._client(i, session, deadline) for i in range(self.config.clients)))
            finally:  # the watchers stop with the clients (at the deadline, or at max_ops)
                await cancel_and_wait(watching)
        return self.history

    async def _client(self, process: int, session: aiohttp.ClientSession, deadline: float) -> None:
        memory = _Session()
        kinds, weights = zip(*MIX.items())
        while self.clock() < deadline and self._next_id < self.config.max_ops:
            urls = self.urls()
            if not urls:
                await asyncio.sleep(0.2)
                continue
            pod = self.rng.choice(sorted(urls))
            client = Client(urls[pod], session=session)
            key = self._pick_key()
            kind = self.rng.choices(kinds, weights)[0]
            if kind == "cas" and key not in memory.seen:
                kind = "read_strong"  # learn a version first
            if kind == "read_min_lsn" and key not in memory.own:
                kind = "read_local"
            if kind == "txn":
                op = await self._txn(process, client, pod, key, memory)
            elif kind.startswith("read"):
                op = await self._read(process, client, pod, key, kind[5:], memory)
            else:
                op = await self._write(process, client, pod, key, kind, memory)
            if op.status in (None, 503):
                await asyncio.sleep(0.1)  # Retry-After, loosely: do not spin on a dead pod or primary

    async def _write(self, process: int, client: Client, pod: str, key: str, kind: str,
                     memory: _Session) -> Op:
        value = None if kind == "delete" else self._value(process)
        op = self._op(process, key, kind, pod, value=value,
                      expect_version=memory.seen.get(key) if kind == "cas" else None)
        try:
            if kind == "delete":
                reply = await client.delete(key)
            else:
                reply = await client.put(key, value.encode(), if_match=op.expect_version,
                                         create_only=kind == "create")
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            self._no_answer(op, exc)
            return op
        self._answer(op, reply)
        op.outcome = classify_write(reply.status, op.error)
        if op.outcome == OK:
            version = _json_version(reply)
            op.version = version
            if version is not None:
                memory.seen[key] = version
                memory.own[key] = (version, kind == "delete")
        elif reply.status == 412 and isinstance(reply.data, dict):
            op.current_version = reply.data.get("current_version")
            if op.current_version is not None:
                memory.seen[key] = op.current_version
        return op

    def _txn_request(self, process: int, first: str, memory: _Session) -> tuple[
            list[str], list[dict[str, object]], list[dict[str, object]], list[dict[str, object]]]:
        """Keys, comparisons and both branches of a transaction on ``first`` and 1-2 more keys of the pool."""
        keys = [first]
        want = self.rng.choice(TXN_KEYS)
        for _ in range(4 * want):  # distinct keys; the pool may hold fewer
            if len(keys) == want:
                break
            key = self._pick_key()
            if key not in keys:
                keys.append(key)
        compare: list[dict[str, object]] = []
        for key in keys:
            if compare and self.rng.random() < 0.65:
                # The first key always, the others now and then: versions move fast under six clients,
                # and a comparison on every key would make the success branch rare.
                continue
            seen = memory.seen.get(key)
            # The version last seen (often still current, so it holds), or absence (holds on a fresh key).
            if seen is not None and self.rng.random() < 0.85:
                compare.append({"key": key, "version": seen})
            else:
                compare.append({"key": key, "absent": True})
        success: list[dict[str, object]] = [{"op": "put", "key": key, "value": self._value(process)}
                                            for key in keys]
        if self.rng.random() < 0.1:
            success[-1] = {"op": "delete", "key": keys[-1]}
        failure: list[dict[str, object]] = []
        if self.rng.random() < 0.7:  # a failure branch that writes has an LSN its comparisons are judged at
            failure.append({"op": "put", "key": self.rng.choice(keys), "value": self._value(process)})
        return keys, compare, success, failure

    async def _txn(self, process: int, client: Client, pod: str, first: str, memory: _Session) -> Op:
        keys, compare, success, failure = self._txn_request(process, first, memory)
        op = self._op(process, first, "txn", pod, keys=keys, compare=compare, success=success, failure=failure)
        try:
            reply = await client.txn(compare, success, failure)
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            self._no_answer(op, exc)
            return op
        self._answer(op, reply)
        op.outcome = classify_write(reply.status, op.error)
        if op.outcome == OK and isinstance(reply.data, dict):
            data = reply.data
            op.succeeded = data.get("succeeded") if isinstance(data.get("succeeded"), bool) else None
            op.branch = data.get("branch") if isinstance(data.get("branch"), str) else None
            op.version = data.get("version") if isinstance(data.get("version"), int) else None
            changed = data.get("keys")
            op.changed = [c for c in changed if isinstance(c, dict)] if isinstance(changed, list) else None
            for c in op.changed or ():
                if isinstance(c.get("key"), str) and isinstance(c.get("version"), int):
                    memory.seen[c["key"]] = c["version"]
                    memory.own[c["key"]] = (c["version"], bool(c.get("deleted")))
                    if c.get("deleted"):
                        memory.seen.pop(c["key"], None)
        return op

    async def _read(self, process: int, client: Client, pod: str, key: str, consistency: str,
                    memory: _Session) -> Op:
        own = memory.own.get(key)
        min_lsn = own[0] if consistency == "min_lsn" and own else None
        op = self._op(process, key, "read", pod, consistency=consistency, min_lsn=min_lsn,
                      own_version=own[0] if own else None, own_deleted=own[1] if own else None)
        try:
            reply = await client.get(key, consistency="strong" if consistency == "strong" else None,
                                     min_lsn=min_lsn)
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            self._no_answer(op, exc)
            return op
        self._answer(op, reply)
        op.outcome = classify_read(reply.status)
        if reply.status == 200:
            op.found, op.observed, op.version = True, reply.body.decode(errors="replace"), reply.version
            if op.version is not None:
                memory.seen[key] = op.version
        elif reply.status == 404:
            op.found = False
            memory.seen.pop(key, None)
        return op

    def _answer(self, op: Op, reply: Reply) -> None:
        op.ret = self.clock()
        op.status = reply.status
        op.lsn = reply.lsn
        op.answered_by = reply.headers.get("X-Kv-Answered-By") or reply.headers.get("X-Kv-Pod")
        if isinstance(reply.data, dict) and "error" in reply.data:
            op.error = str(reply.data["error"])

    def _no_answer(self, op: Op, exc: BaseException) -> None:
        op.ret = self.clock()
        op.error = type(exc).__name__
        op.outcome = classify_exception(exc) if op.is_write else FAILED


def _json_version(reply: Reply) -> int | None:
    if isinstance(reply.data, dict) and isinstance(reply.data.get("version"), int):
        return reply.data["version"]
    return reply.version


__all__ = ["Workload", "WorkloadConfig", "OK", "FAILED", "UNKNOWN"]
