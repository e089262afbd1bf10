"""The peer wire protocol: stream messages, acks, snapshot frames, refusals, close codes.

The log stream (its request parameters, messages and acks), the snapshot
frames and the refusal codes are built and parsed here, and every size a
receiver accepts is computed here from the same limits the sender obeys, so
no message a sender builds can exceed what its receiver takes. The rest of
what peers say is built where it is served: the position JSON by
``Replication.position`` (coordinator.py; parsed by ``PeerPosition`` in
peer_client.py), the refusal headers by ``LogServer`` (log_server.py), the
promise call by ``Replication.promise`` and ``PeerClient.promise``, the
takeover and switchover calls by handover.py and ``PeerClient.takeover``, the
``kvstore recover`` body by operator.py and server.py, the lineage and
promise JSON by lineage.py, and a log entry's bytes by ``LogEntry``
(storage/layout.py). The full description is in docs/design.md ("The peer
protocol").

- ``GET /v1/peer/status``: a replica's position as JSON: ``lsn``,
  ``log_start``, ``lineage`` (its epochs), ``state``.
- ``GET /v1/peer/stream?after=N&epoch=E&epoch_id=I&follower=kv-2&incarnation=X``
  (WebSocket). ``after`` is the follower's LSN, ``E``/``I`` the epoch of its
  entry ``after`` (0 and empty for none); the upstream accepts only when its
  own entry ``after`` has that epoch (log matching). Refused before the
  upgrade with 400 (bad parameters), 409/410/503 and an ``X-Kv-Error`` header
  (one of :data:`REFUSALS`). Upstream to follower, binary: ``u64 upstream
  LSN, u64 committed LSN, u64 round`` then entries, each ``u32 length +
  LogEntry`` (none: a keepalive, a round or a new committed LSN).
  Follower to upstream, text: ``<durable lsn>/<round>``, then in cascade
  mode a space and ``<name>:<lsn>/<round>,...`` of its own followers. The
  upstream closes with :data:`CLOSE_LINEAGE_CHANGED` or
  :data:`CLOSE_LOG_TRUNCATED`; either side drops a stream silent for
  :data:`SILENCE_SECONDS`.
- ``GET /v1/peer/snapshot``: frames ``u8 kind + u32 length + payload``: one
  header (JSON: lsn, lineage, membership), record chunks (each record ``u32 key length,
  key, u32 raw length, raw``), one end frame (JSON: count).
"""

from __future__ import annotations

import json
import struct
from typing import Any

import aiohttp

from kvstore.lineage import Lineage
from kvstore.storage import ENTRY_FRAMING, LogEntry, entry_size_limit

_LEN = struct.Struct(">I")
_HEAD = struct.Struct(">QQQ")  # a stream message's upstream LSN, committed LSN and confirmation round
_U64 = struct.Struct(">Q")
_FRAME = struct.Struct(">BI")
FRAME_HEADER, FRAME_RECORDS, FRAME_END = 1, 2, 3

FETCH_MAX_ENTRIES = 2000
FETCH_MAX_BYTES = 4 * 1024 * 1024  # entries of one stream message, framing included
KEEPALIVE_SECONDS = 1.0  # an idle stream still carries the upstream's LSN this often
SILENCE_SECONDS = 5.0  # a stream quiet this long is dead (SIGSTOP, partition)
CLOSE_LINEAGE_CHANGED, CLOSE_LOG_TRUNCATED = 4409, 4410
SNAPSHOT_CHUNK_RECORDS = 2000
SNAPSHOT_CHUNK_BYTES = 1024 * 1024
SNAPSHOT_JSON_MAX = 1024 * 1024  # header and end frames (a lineage of 1000 epochs fits)
# A call one pod passes on to the primary's peer port names the pods it came through (a client
# write or read forwarded; a switchover asked of a follower), so none is passed on forever.
FORWARDED_BY = "X-Kv-Forwarded-By"
STATUS_MAX = 4 * 1024 * 1024  # a peer's /v1/peer/status body (lineage, peers, discovery)
ACK_PARAM_LIMIT = 64
ACK_TEXT_MAX = 65 * (253 + 44)  # this follower's LSN/round, then up to 64 relayed name:LSN/round

# Refusals of a stream request (X-Kv-Error) and what the follower does about them.
LOG_MISMATCH = "log_mismatch"  # our entry `after` is not the upstream's: compare lineages again
FOLLOWER_AHEAD = "follower_ahead"  # the upstream has less on our line: do not follow it
LOG_TRUNCATED = "log_truncated"  # our position left the upstream's retained log: snapshot
RECOVERING = "recovering"  # the upstream is not serving its log yet: retry later
DUPLICATE = "duplicate_follower"  # another process with our pod name streams: retry (it may be dead)
REFUSALS = (LOG_MISMATCH, FOLLOWER_AHEAD, LOG_TRUNCATED, RECOVERING, DUPLICATE)


class Refused(Exception):
    """The upstream refused a stream request; ``code`` is one of :data:`REFUSALS`.

    The follower only retries: its next attempt reads the upstream's position
    again, and that comparison decides what to do.
    """

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


# ------------------------------------------------------------------ sizes
def max_stream_message(max_key_bytes: int, max_value_bytes: int) -> int:
    """The largest stream message a sender with these limits builds."""
    one_entry = ENTRY_FRAMING + entry_size_limit(max_key_bytes, max_value_bytes)
    return _HEAD.size + max(FETCH_MAX_BYTES, one_entry)


def max_snapshot_frame(max_key_bytes: int, max_value_bytes: int) -> int:
    """The largest snapshot frame payload a sender with these limits builds."""
    one_record = 2 * ENTRY_FRAMING + max_key_bytes + _U64.size + max_value_bytes
    return max(SNAPSHOT_CHUNK_BYTES + one_record, SNAPSHOT_JSON_MAX)


# ------------------------------------------------------------------ stream
def encode_message(upstream_lsn: int, raws: list[bytes], round_: int = 0, committed: int = 0) -> bytes:
    """One stream message: the upstream's durable LSN, the LSN a majority holds as far as it knows,
    its newest confirmation round, then length-prefixed entries.

    A follower echoes the round in its next ack: that is how a primary learns
    that a follower still follows it (see fencing.py). Entries past
    ``committed`` may be ones kv-0 has not written yet (pipelining): a
    follower answers no read from them until they are committed.
    """
    parts = [_HEAD.pack(upstream_lsn, committed, round_)]
    for raw in raws:
        parts.append(_LEN.pack(len(raw)))
        parts.append(raw)
    return b"".join(parts)


def decode_message(data: bytes) -> tuple[int, int, int, list[LogEntry]]:
    """Inverse of :func:`encode_message`: (upstream LSN, committed LSN, round, entries); ValueError if torn."""
    if len(data) < _HEAD.size:
        raise ValueError("stream message too short")
    entries = []
    view = memoryview(data)
    offset = _HEAD.size
    while offset < len(view):
        if offset + _LEN.size > len(view):
            raise ValueError("torn log frame")
        (length,) = _LEN.unpack_from(view, offset)
        offset += _LEN.size
        if offset + length > len(view):
            raise ValueError("torn log frame")
        entries.append(LogEntry.decode(view[offset:offset + length]))
        offset += length
    upstream_lsn, committed, round_ = _HEAD.unpack_from(data)
    return upstream_lsn, committed, round_, entries


def last_lsn(raws: list[bytes]) -> int:
    """The LSN of the last encoded entry (it leads every encoding)."""
    return _U64.unpack_from(raws[-1])[0]


def stream_params(after: int, lineage: Lineage, follower: str, incarnation: str = "") -> dict[str, str]:
    """The query of a stream request from position ``after`` (with the epoch of that entry)."""
    epoch = lineage.at(after) if after else None
    return {"after": str(after), "epoch": str(epoch.number if epoch else 0),
            "epoch_id": epoch.id if epoch else "", "follower": follower, "incarnation": incarnation}


def parse_stream_params(query: Any) -> tuple[int, int, str, str, str]:
    """(after, epoch, epoch id, follower, incarnation) of a stream request; ValueError if malformed."""
    after = int(query.get("after", ""))
    epoch = int(query.get("epoch", ""))
    epoch_id = query.get("epoch_id", "")
    follower = query.get("follower", "")
    incarnation = query.get("incarnation", "")
    if after < 0 or epoch < 0 or len(epoch_id) > 32 or not follower or len(follower) > 253 \
            or len(incarnation) > 32 or not all(c in "0123456789abcdef" for c in incarnation):
        raise ValueError("bad stream parameters")
    return after, epoch, epoch_id, follower, incarnation


def parse_ack(text: str) -> tuple[int, int, dict[str, tuple[int, int]]]:
    """``17/4 kv-2:15/4,kv-3:12/3`` -> (17, 4, {"kv-2": (15, 4), "kv-3": (12, 3)}).

    This follower's durable LSN and the newest round it saw, then the same of
    the followers it serves (cascade). ValueError if malformed.
    """
    if len(text) > ACK_TEXT_MAX:
        raise ValueError("ack too long")
    head, _, relayed = text.partition(" ")
    lsn, round_ = _lsn_round(head)
    return lsn, round_, parse_acks(relayed)


def _lsn_round(text: str) -> tuple[int, int]:
    lsn_text, _, round_text = text.partition("/")
    if not lsn_text.isdigit() or not round_text.isdigit() or len(text) > 41:
        raise ValueError(f"bad ack {text!r:.41}")
    return int(lsn_text), int(round_text)


def encode_ack(lsn: int, round_: int, relayed: str) -> str:
    """Inverse of :func:`parse_ack` (``relayed`` as :meth:`AckTable.downstream_of` gives it)."""
    return f"{lsn}/{round_} {relayed}" if relayed else f"{lsn}/{round_}"


def parse_acks(text: str) -> dict[str, tuple[int, int]]:
    """``kv-2:17/4,kv-3:12/3`` -> {"kv-2": (17, 4), "kv-3": (12, 3)}; ValueError if malformed."""
    acks: dict[str, tuple[int, int]] = {}
    if not text:
        return acks
    items = text.split(",")
    if len(items) > ACK_PARAM_LIMIT:
        raise ValueError("too many acks")
    for item in items:
        name, sep, position = item.partition(":")
        if not sep or not name or len(name) > 253:
            raise ValueError(f"bad ack {item!r:.60}")
        acks[name] = _lsn_round(position)
    return acks


def refusal_of(exc: aiohttp.WSServerHandshakeError) -> Refused | None:
    """The refusal an upstream answered a stream request with, if it was one."""
    headers = exc.headers or {}
    code = headers.get("X-Kv-Error")
    if exc.status in (409, 410, 503) and code in REFUSALS:
        return Refused(code)
    return None


# ---------------------------------------------------------------- snapshot
def frame(kind: int, payload: bytes) -> bytes:
    """One snapshot frame."""
    return _FRAME.pack(kind, len(payload)) + payload


def json_frame(kind: int, body: dict[str, Any]) -> bytes:
    """A header or end frame."""
    return frame(kind, json.dumps(body, separators=(",", ":")).encode())


def encode_records(records: list[tuple[bytes, bytes]]) -> bytes:
    """A records frame's payload."""
    parts = []
    for key, raw in records:
        parts.append(_LEN.pack(len(key)))
        parts.append(key)
        parts.append(_LEN.pack(len(raw)))
        parts.append(raw)
    return b"".join(parts)


def decode_records(payload: bytes) -> list[tuple[bytes, bytes]]:
    """Inverse of :func:`encode_records`; ValueError when torn."""
    out = []
    view = memoryview(payload)
    offset = 0
    while offset < len(view):
        if offset + _LEN.size > len(view):
            raise ValueError("torn snapshot record")
        (key_len,) = _LEN.unpack_from(view, offset)
        offset += _LEN.size
        key = bytes(view[offset:offset + key_len])
        offset += key_len
        if len(key) != key_len or offset + _LEN.size > len(view):
            raise ValueError("torn snapshot record")
        (raw_len,) = _LEN.unpack_from(view, offset)
        offset += _LEN.size
        raw = bytes(view[offset:offset + raw_len])
        offset += raw_len
        if len(raw) != raw_len or raw_len < _U64.size:
            raise ValueError("torn snapshot record")
        out.append((key, raw))
    return out


async def read_frame(stream: aiohttp.StreamReader, max_payload: int) -> tuple[int, bytes]:
    """The next snapshot frame; ValueError when its length exceeds ``max_payload``."""
    head = await stream.readexactly(_FRAME.size)
    kind, length = _FRAME.unpack(head)
    if length > max_payload:
        raise ValueError(f"snapshot frame of {length} bytes exceeds the {max_payload} this replica accepts "
                         "(are KV_MAX_KEY_BYTES / KV_MAX_VALUE_BYTES the same on every pod?)")
    return kind, await stream.readexactly(length)


def parse_json_frame(payload: bytes) -> dict[str, Any]:
    """A header or end frame's JSON object; ValueError when malformed."""
    body = json.loads(payload)
    if not isinstance(body, dict):
        raise ValueError("snapshot header is not a JSON object")
    return body
