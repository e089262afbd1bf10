"""Backups: ``GET /v1/backup`` on the client port, the backup file, and restoring one into a new volume.

A backup file is a consistent snapshot of one pod at one committed LSN, in
the peer protocol's snapshot frames (``u8 kind | u32 length | payload``):

    "kvstore backup 1\\n"
    header  (kind 1): JSON {"format": 1, "lsn", "history", "lineage", "pod", "taken_at", "kvstore"}
    records (kind 2): repeated u32 key length | key | u32 record length | u64 version | value
                      (a key with a ttl: the version's top bit set, then its u64 expiry in ms, then the value)
    end     (kind 3): JSON {"count": <records>}
    checksum (kind 4): the 32-byte SHA-256 of every byte before this frame

A file is checked whole (checksum first, then every frame) before anything
is written, so a truncated or corrupted one is refused with nothing changed.
Restoring seeds an empty data dir (kv-0's volume of a new cluster) with the
records at the backup's LSN and a lineage whose last epoch begins a new
history there: kv-0 starts from it, its followers copy it as usual, and the
lineage's fork (``/v1/status``) names the backed-up history and LSN the data
came from.
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import json
import logging
import os
import shutil
import struct
from dataclasses import dataclass
from typing import IO, Any, AsyncIterator, Iterator

from aiohttp import web

from kvstore import __version__
from kvstore.api import unavailable
from kvstore.client import Client
from kvstore.lineage import Lineage, LineageError, new_id
from kvstore.refusals import NoPrimary
from kvstore.replica import Replica
from kvstore.replication import protocol
from kvstore.replication.log_server import snapshot_frames
from kvstore.routing import ApiError, Router, parse_query
from kvstore.storage import Snapshot, Store, StorageError, record_version

log = logging.getLogger("kvstore.backup")

MAGIC = b"kvstore backup 1\n"
SUFFIX = ".kvbackup"
FORMAT = 1
FRAME_CHECKSUM = 4
_FRAME = struct.Struct(">BI")
CHECKSUM_FRAME_SIZE = _FRAME.size + hashlib.sha256().digest_size
# Bounds a reader accepts: the largest frame the largest allowed key and value make.
MAX_FRAME = protocol.max_snapshot_frame(64 * 1024, 64 * 1024 * 1024)
KEEP_ON_RESTORE = {"lost+found"}  # what a fresh filesystem (a new PVC) already holds


class BackupError(Exception):
    """A backup file cannot be used, or a restore cannot go ahead; the message says why and what to do."""


@dataclass(frozen=True)
class BackupInfo:
    """What a checked backup file holds."""

    lsn: int
    history: str
    lineage: Lineage
    pod: str
    taken_at: str
    count: int
    size: int
    sha256: str


# ------------------------------------------------------------------ serving
class Backups:
    """``GET /v1/backup``: one pod's data at one committed LSN, as a backup file."""

    def __init__(self, node: Replica) -> None:
        self.node = node
        self.running = False

    def add_client_routes(self, router: Router) -> None:
        """Mount the route on the client port."""
        router.add("GET", "/v1/backup", self.backup)

    async def backup(self, request: web.BaseRequest) -> web.StreamResponse:
        """Stream a consistent snapshot, once a majority holds its LSN, with a checksum at the end."""
        parse_query(request, ())
        if request.body_exists and request.content_length != 0:
            raise ApiError(400, "unexpected_body", "GET takes no request body")
        try:
            self.node.check_local_read()
        except NoPrimary as exc:
            raise unavailable(exc) from None
        if request.method == "HEAD":  # the checks, without reading the whole database
            return web.Response(headers={"Content-Type": "application/octet-stream",
                                         "X-Kv-Pod": self.node.config.pod_name})
        if self.running:  # one at a time: each holds a LevelDB snapshot and reads the whole database
            raise ApiError(503, "backup_in_progress", "this pod is already sending a backup; retry when it is done",
                           headers={"Retry-After": "10"})
        self.running = True
        store = self.node.store
        try:
            snap = await store.run_blocking(store.open_snapshot)
            try:
                await self._wait_committed(snap.lsn)
                response = await self._send(request, snap)
            finally:
                await store.run_blocking(snap.close)
        finally:
            self.running = False
        # Only now the end: a client that takes the next backup at once finds this one over.
        await response.write_eof()
        return response

    async def _wait_committed(self, lsn: int) -> None:
        """A backup never holds an entry a majority may not hold (what reads promise too)."""
        wait = self.node.config.read_wait
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while self.node.committed_limit() < lsn:
            if loop.time() >= deadline:
                raise ApiError(504, "not_confirmed",
                               f"lsn {lsn} on this replica is not known to be held by a majority after "
                               f"{wait:g}s (KV_READ_WAIT; kv-0 may be away); retry, or back up another pod")
            await asyncio.sleep(0.05)

    async def _send(self, request: web.BaseRequest, snap: Snapshot) -> web.StreamResponse:
        """Every byte of the backup but the end of the HTTP answer."""
        pod = self.node.config.pod_name
        response = web.StreamResponse(headers={
            "Content-Type": "application/octet-stream", "X-Kv-Pod": pod, "X-Kv-Lsn": str(snap.lsn),
            "X-Kv-History": snap.lineage.history,
            "Content-Disposition": f'attachment; filename="{pod}-lsn{snap.lsn}.kvbackup"'})
        await response.prepare(request)
        async for data in backup_stream(self.node.store, snap, pod):
            await response.write(data)
        log.info("sent a backup at lsn %d to %s", snap.lsn, request.remote)
        return response


async def backup_stream(store: Store, snap: Snapshot, pod: str) -> AsyncIterator[bytes]:
    """A backup file's bytes, from an open snapshot of ``store``: the magic, the frames, the checksum."""
    header = {"format": FORMAT, "lsn": snap.lsn, "history": snap.lineage.history,
              "lineage": snap.lineage.to_json(), "pod": pod, "kvstore": __version__,
              "taken_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    digest = hashlib.sha256(MAGIC)
    yield MAGIC
    async for data, _ in snapshot_frames(store, snap, header):
        digest.update(data)
        yield data
    yield protocol.frame(FRAME_CHECKSUM, digest.digest())


# ------------------------------------------------------------------ reading a file
def check(path: str) -> BackupInfo:
    """Read a whole backup file and check it; BackupError (nothing else) when it is unusable."""
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            digest = _check_checksum(path, handle, size)
            handle.seek(0)
            header, count = _check_frames(path, handle, size)
    except OSError as exc:
        raise BackupError(f"cannot read {path}: {exc.strerror or exc}") from None
    return BackupInfo(header["lsn"], header["history"], header["lineage_parsed"], header["pod"],
                      header["taken_at"], count, size, digest)


def _check_checksum(path: str, handle: IO[bytes], size: int) -> str:
    if size < len(MAGIC) or handle.read(len(MAGIC)) != MAGIC:
        raise BackupError(f"{path} is not a kvstore backup (it does not begin with {MAGIC[:-1].decode()!r})")
    if size < len(MAGIC) + CHECKSUM_FRAME_SIZE:
        raise BackupError(f"{path} is truncated ({size} bytes, no checksum at its end): take the backup again")
    handle.seek(size - CHECKSUM_FRAME_SIZE)
    kind, length = _FRAME.unpack(handle.read(_FRAME.size))
    stated = handle.read()
    if kind != FRAME_CHECKSUM or length != len(stated):
        raise BackupError(f"{path} is truncated ({size} bytes, no checksum at its end: the backup did not "
                          "finish, or the file was cut): take the backup again")
    handle.seek(0)
    digest = hashlib.sha256()
    remaining = size - CHECKSUM_FRAME_SIZE
    while remaining:
        block = handle.read(min(remaining, 1024 * 1024))
        if not block:
            raise BackupError(f"{path} shrank while it was read")
        digest.update(block)
        remaining -= len(block)
    if digest.digest() != stated:
        raise BackupError(f"{path} is corrupt: its SHA-256 does not match the checksum it ends with; "
                          "use another backup")
    return digest.hexdigest()


def _frames(path: str, handle: IO[bytes], end: int) -> Iterator[tuple[int, bytes]]:
    """The frames between the magic and ``end`` (the checksum frame); BackupError if one is torn."""
    handle.seek(len(MAGIC))
    offset = len(MAGIC)
    while offset < end:
        if offset + _FRAME.size > end:
            raise BackupError(f"{path} is malformed: a frame header is cut at byte {offset}")
        kind, length = _FRAME.unpack(handle.read(_FRAME.size))
        if length > MAX_FRAME or offset + _FRAME.size + length > end:
            raise BackupError(f"{path} is malformed: a frame at byte {offset} claims {length} bytes")
        yield kind, handle.read(length)
        offset += _FRAME.size + length


def _check_frames(path: str, handle: IO[bytes], size: int) -> tuple[dict[str, Any], int]:
    """The header (with ``lineage_parsed``) and the record count, once every frame is checked."""
    header: dict[str, Any] | None = None
    count = 0
    ended = False
    for kind, payload in _frames(path, handle, size - CHECKSUM_FRAME_SIZE):
        if ended:
            raise BackupError(f"{path} is malformed: frames follow its end frame")
        if header is None:
            if kind != protocol.FRAME_HEADER:
                raise BackupError(f"{path} is malformed: it does not begin with a header frame")
            header = _parse_header(path, payload)
        elif kind == protocol.FRAME_RECORDS:
            try:
                records = protocol.decode_records(payload)
            except ValueError as exc:
                raise BackupError(f"{path} is malformed: {exc}") from None
            for _, raw in records:
                if record_version(raw) > header["lsn"]:
                    raise BackupError(f"{path} is malformed: a record is newer than the backup's lsn")
            count += len(records)
        elif kind == protocol.FRAME_END:
            end = _json(path, payload)
            if end.get("count") != count:
                raise BackupError(f"{path} is malformed: its end frame counts {end.get('count')!r} records, "
                                  f"it holds {count}")
            ended = True
        else:
            raise BackupError(f"{path} is malformed: a frame of unknown kind {kind}")
    if header is None or not ended:
        raise BackupError(f"{path} is malformed: no {'header' if header is None else 'end'} frame")
    return header, count


def _json(path: str, payload: bytes) -> dict[str, Any]:
    try:
        return protocol.parse_json_frame(payload)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BackupError(f"{path} is malformed: a JSON frame does not parse ({exc})") from None


def _parse_header(path: str, payload: bytes) -> dict[str, Any]:
    header = _json(path, payload)
    if header.get("format") != FORMAT:
        raise BackupError(f"{path} has backup format {header.get('format')!r}; this kvstore reads format {FORMAT}")
    lsn = header.get("lsn")
    if not isinstance(lsn, int) or isinstance(lsn, bool) or not 0 <= lsn < 2**63:
        raise BackupError(f"{path} is malformed: its header's lsn is {lsn!r}")
    try:
        lineage = Lineage.from_json(header.get("lineage"))
    except LineageError as exc:
        raise BackupError(f"{path} is malformed: its lineage: {exc}") from None
    if header.get("history") != lineage.history or (lsn > 0 and lineage.at(lsn) is None):
        raise BackupError(f"{path} is malformed: its history and lineage disagree")
    for name in ("pod", "taken_at"):
        if not isinstance(header.get(name), str):
            raise BackupError(f"{path} is malformed: its header has no {name}")
    return {**header, "lineage_parsed": lineage}


def records(path: str) -> Iterator[list[tuple[bytes, bytes]]]:
    """The record chunks of a file :func:`check` accepted."""
    with open(path, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        for kind, payload in _frames(path, handle, size - CHECKSUM_FRAME_SIZE):
            if kind == protocol.FRAME_RECORDS:
                yield protocol.decode_records(payload)


# ------------------------------------------------------------------ saving
async def download(client: Client, path: str, keep: int | None = None) -> tuple[BackupInfo, str]:
    """``GET /v1/backup`` into ``path``: written beside it, checked whole, fsynced, then renamed over it.

    When ``path`` is a directory (or ends with ``/``: made if missing) the
    file is named there after what it holds (:func:`file_name`), and with
    ``keep`` only the newest ``keep`` such files stay. Returns what the file
    holds and its path.
    """
    if path.endswith(os.sep) and not os.path.exists(path):
        # "backups/" names a directory: make it, as a backup job's first run needs.
        try:
            os.makedirs(path)
        except OSError as exc:
            raise BackupError(f"cannot create the directory {path}: {exc.strerror or exc}") from None
    into_dir = os.path.isdir(path)
    if keep is not None and not into_dir:
        raise BackupError(f"keeping the newest {keep} backups needs a directory, and {path} is not one")
    directory = os.path.abspath(path) if into_dir else os.path.dirname(os.path.abspath(path))
    partial = os.path.join(directory, f".{os.path.basename(path)}.partial-{os.getpid()}")
    try:
        async with client.open_stream("/v1/backup", read_timeout=max(client.timeout, 60.0)) as response:
            if response.status != 200:
                body = await response.read()
                try:
                    error = json.loads(body)
                    why = f"{error['error']}: {error['message']}"
                except (ValueError, KeyError, TypeError):
                    why = f"HTTP {response.status}"
                raise BackupError(f"the replica refused the backup: {response.status} {why}")
            with open(partial, "wb") as handle:
                async for block in response.content.iter_chunked(1024 * 1024):
                    handle.write(block)
                handle.flush()
                os.fsync(handle.fileno())
        info = await asyncio.to_thread(check, partial)
        if into_dir:
            path = os.path.join(directory, file_name(info))
        os.replace(partial, path)
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        if keep is not None:
            prune(directory, keep)
    except OSError as exc:
        raise BackupError(f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        if os.path.exists(partial):
            os.remove(partial)
    return info, path


def file_name(info: BackupInfo) -> str:
    """``kv-1-20261202T031700Z-lsn1234.kvbackup``: the pod, when, the LSN (names sort by time per pod)."""
    taken = datetime.datetime.fromisoformat(info.taken_at).astimezone(datetime.timezone.utc)
    return f"{info.pod}-{taken:%Y%m%dT%H%M%SZ}-lsn{info.lsn}{SUFFIX}"


def prune(directory: str, keep: int) -> None:
    """Remove all but the newest ``keep`` backups (by modification time) that ``download`` named here."""
    names = [n for n in os.listdir(directory) if n.endswith(SUFFIX) and not n.startswith(".")]
    names.sort(key=lambda n: os.stat(os.path.join(directory, n)).st_mtime, reverse=True)
    for name in names[keep:]:
        os.remove(os.path.join(directory, name))


# ------------------------------------------------------------------ restoring
def restored_lineage(info: BackupInfo) -> Lineage:
    """The backup's lineage with one more epoch that begins a new history right after its LSN.

    The restored cluster's writes after that LSN are not the backed-up
    cluster's, so they must not share its history id; kv-0's first epoch
    continues this new history, and the lineage's fork records the parent.
    """
    return info.lineage.begin(info.lineage.max_number() + 1, info.lsn + 1, new_id(), verified=False)


def _refuse_non_empty(data_dir: str) -> None:
    try:
        present = sorted(set(os.listdir(data_dir)) - KEEP_ON_RESTORE)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise BackupError(f"cannot read {data_dir}: {exc.strerror or exc}") from None
    if present:
        raise BackupError(f"{data_dir} is not empty (it holds {', '.join(present[:5])}"
                          f"{', ...' if len(present) > 5 else ''}): restore only into a new, empty volume")


async def restore(path: str, data_dir: str) -> BackupInfo:
    """Check the backup, then seed the empty ``data_dir`` with it; BackupError before anything is written."""
    info = await asyncio.to_thread(check, path)
    _refuse_non_empty(data_dir)
    existed = os.path.isdir(data_dir)
    try:
        store = Store.open(data_dir)
    except StorageError as exc:
        raise BackupError(str(exc)) from None
    try:
        await store.start()
        await store.install_snapshot(restored_lineage(info), info.lsn, _chunks(path))
    except BaseException:
        await store.close()
        _remove_created(data_dir, existed)
        raise
    await store.close()
    return info


async def _chunks(path: str) -> AsyncIterator[list[tuple[bytes, bytes]]]:
    reader = records(path)
    while True:
        chunk = await asyncio.to_thread(next, reader, None)
        if chunk is None:
            return
        yield chunk


def _remove_created(data_dir: str, existed: bool) -> None:
    """Undo a restore that failed part way: the directory was empty (or absent) before it."""
    if not existed:
        shutil.rmtree(data_dir, ignore_errors=True)
        return
    for name in set(os.listdir(data_dir)) - KEEP_ON_RESTORE:
        target = os.path.join(data_dir, name)
        if os.path.isdir(target):
            shutil.rmtree(target, ignore_errors=True)
        else:
            os.remove(target)


def describe(info: BackupInfo) -> str:
    """One line about a backup: pod, LSN, history, keys, size."""
    return (f"{info.count} keys of {info.pod} at lsn {info.lsn} (history {info.history or 'none'}, "
            f"taken {info.taken_at}, {info.size} bytes, sha256 {info.sha256[:16]}...)")

