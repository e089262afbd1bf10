"""Every error code a replica answers with, its HTTP status, port and meaning: the one list.

An error answer, on either port, is JSON ``{"error": <code>, "message": <what
to do>}``. The design page's table of error codes is this list rendered by
:func:`markdown_table` (``python -m kvstore.errors`` prints it), and the
OpenAPI document's ``Error.error`` enum holds the codes of the client port;
``tests/unit/test_error_codes.py`` fails when the code answers a code that
is not here, or when the page or the document differ from this list.
"""

from __future__ import annotations

from dataclasses import dataclass

CLIENT, PEER, BOTH = "client", "peer", "both"


@dataclass(frozen=True)
class ErrorCode:
    """One error code: the status it comes with, the port(s) that answer it, and when."""

    code: str
    status: str  # "400"; "4xx" when aiohttp chooses it
    port: str  # CLIENT (8080), PEER (8081) or BOTH (the key routes are served on both)
    meaning: str


ERRORS: tuple[ErrorCode, ...] = (
    ErrorCode("bad_parameter", "400", BOTH, "a query parameter with a bad value, or given twice"),
    ErrorCode("unknown_parameter", "400", BOTH,
              "a query parameter this call does not take (the message lists those it does)"),
    ErrorCode("bad_key", "400", BOTH, "an empty key (`/v1/kv/`)"),
    ErrorCode("bad_encoding", "400", BOTH,
              "invalid percent-encoding, or not UTF-8 once decoded, in the key or the query"),
    ErrorCode("bad_header", "400", BOTH,
              "`If-Match` not `*` or ETags like `\"42\"`; `If-None-Match` on a write other than `*`"),
    ErrorCode("unexpected_body", "400", BOTH, "a GET or DELETE with a request body"),
    ErrorCode("bad_body", "400", BOTH,
              "a body shorter than its `Content-Length`, malformed chunking, or a connection closed mid-body"),
    ErrorCode("bad_request", "400", BOTH,
              "a request aiohttp's HTTP parser refuses (a malformed request line or header), or a malformed "
              "`POST /v1/peer/recover` body"),
    ErrorCode("bad_txn", "400", BOTH,
              "a `POST /v1/txn` body that is not the transaction JSON (the message names the field)"),
    ErrorCode("unauthorized", "401", PEER, "no or a wrong `Authorization: Bearer <cluster token>`"),
    ErrorCode("not_found", "404", BOTH,
              "no such key (a GET, or a DELETE of an absent key), endpoint or dashboard file"),
    ErrorCode("method_not_allowed", "405", BOTH, "a method the path does not take (with `Allow`)"),
    ErrorCode("not_a_follower", "409", PEER,
              "a promise or a takeover asked of a pod that leads or asks for an epoch itself"),
    ErrorCode("promise_refused", "409", PEER,
              "the candidate epoch is not newer than the follower's, the pod its DNS lists under the candidate's "
              "name is not recovering with it, its log is behind, or the primary is alive and did not hand over "
              "(with `promised` and `kind`)"),
    ErrorCode("other_epoch", "409", PEER, "a takeover asked by a primary whose epoch this follower does not follow"),
    ErrorCode("behind", "409", PEER, "a takeover asked of a follower that does not hold the primary's last write"),
    ErrorCode("not_a_voter", "409", PEER, "a takeover asked of a learner"),
    ErrorCode("switchover_refused", "409", PEER,
              "a switchover asked for: no such voter, the target is behind or silent, no quorum, or the "
              "handover did not complete in time (the primary leads on)"),
    ErrorCode("not_applicable", "409", PEER,
              "an operator's decision (`POST /v1/peer/recover`) the replica has nothing to decide for"),
    ErrorCode("log_mismatch", "409", PEER,
              "a log stream asked from an entry that is not the upstream's (`X-Kv-Error`)"),
    ErrorCode("follower_ahead", "409", PEER,
              "a log stream asked from beyond the upstream's LSN (`X-Kv-Error`)"),
    ErrorCode("duplicate_follower", "409", PEER,
              "a log stream asked by a second process with the name of a follower that streams now "
              "(`X-Kv-Error`; it may retry once that stream ended)"),
    ErrorCode("peer_protocol", "409", PEER,
              "a peer call from a pod that speaks no peer protocol version this pod speaks "
              "(with this pod's versions in `X-Kv-Peer-Protocol`)"),
    ErrorCode("log_truncated", "410", PEER,
              "a log stream asked from a position the upstream no longer retains: take a snapshot "
              "(`X-Kv-Error`)"),
    ErrorCode("history_changed", "409", CLIENT,
              "a watch's `from_lsn` or `history` is of another history than this pod's (after a fork): re-read, "
              "then watch from the LSN the message gives (also a watch stream's last line)"),
    ErrorCode("log_compacted", "410", CLIENT,
              "a watch's `from_lsn` is older than this pod's retained log: re-read, then watch from the LSN the "
              "message gives (also a watch stream's last line)"),
    ErrorCode("precondition_failed", "412", BOTH,
              "`If-Match` or `If-None-Match: *` does not hold (with `current_version`)"),
    ErrorCode("min_lsn_ahead", "412", BOTH,
              "`min_lsn` beyond the primary's last write: no client can have seen it"),
    ErrorCode("key_too_large", "413", BOTH, "a key over `KV_MAX_KEY_BYTES`"),
    ErrorCode("value_too_large", "413", BOTH, "a value over `KV_MAX_VALUE_BYTES`"),
    ErrorCode("too_many_operations", "413", BOTH,
              "a transaction with more than 128 comparisons, or more than 128 operations in a branch"),
    ErrorCode("txn_too_large", "413", BOTH,
              "a transaction body over 3 × (`KV_MAX_KEY_BYTES` + `KV_MAX_VALUE_BYTES`) + 64 KiB, or a branch whose "
              "keys and values exceed `KV_MAX_KEY_BYTES` + `KV_MAX_VALUE_BYTES`"),
    ErrorCode("too_large", "413", PEER, "a peer call's body over aiohttp's limit"),
    ErrorCode("request_line_too_long", "414", BOTH,
              "a request line over 16 KiB, or six times `KV_MAX_KEY_BYTES` plus 1 KiB when that is more"),
    ErrorCode("expectation_failed", "417", BOTH, "an `Expect` other than `100-continue`"),
    ErrorCode("header_too_large", "431", BOTH, "a header line over 8190 bytes"),
    ErrorCode("http_error", "4xx", PEER, "a refusal aiohttp raised itself with a status other than 400 or 413"),
    ErrorCode("internal", "500", BOTH, "a bug: the replica's log has the traceback"),
    ErrorCode("no_primary", "503", BOTH,
              "kv-0 is not in DNS or does not answer on its peer port, or a forwarded call reached a secondary "
              "(nothing was applied: retry; `Retry-After`)"),
    ErrorCode("recovering", "503", BOTH,
              "kv-0 is proving it holds every acknowledged write before it serves (`Retry-After`; on the peer "
              "port also `X-Kv-Error`)"),
    ErrorCode("not_primary", "503", BOTH,
              "kv-0 has not heard from a majority lately or could not confirm it still leads: it may have been "
              "replaced (`Retry-After`; never applied)"),
    ErrorCode("storage_unavailable", "503", BOTH,
              "kv-0's disk refused a write; it takes none until restarted (may have been applied: read before "
              "retrying)"),
    ErrorCode("upgrade_in_progress", "503", BOTH,
              "a transaction or a PUT with `ttl` while a pod of an older build that cannot replicate it is about "
              "(a rolling update under way; nothing was applied: retry; `Retry-After`)"),
    ErrorCode("too_many_watchers", "503", CLIENT, "the pod serves `KV_MAX_WATCHERS` watches already"),
    ErrorCode("shutting_down", "503", CLIENT, "the pod is stopping: watch another pod (also a watch's last line)"),
    ErrorCode("backup_in_progress", "503", CLIENT, "the pod is sending a backup already; retry when it is done"),
    ErrorCode("not_ready", "503", CLIENT,
              "`/readyz` while the replica is not Ready (the reason in the message)"),
    ErrorCode("write_concern_timeout", "504", BOTH,
              "the write is durable on kv-0 but too few replicas confirmed it in `KV_WRITE_TIMEOUT` (with "
              "`version`, `confirmed`, `required`)"),
    ErrorCode("primary_timeout", "504", BOTH,
              "a forwarded call whose answer from kv-0 was lost: outcome unknown, read before retrying"),
    ErrorCode("min_lsn_timeout", "504", BOTH, "`min_lsn` not applied here within `KV_READ_WAIT`"),
    ErrorCode("not_confirmed", "504", BOTH,
              "no majority confirmed in time the state a strong read or a 412/404 is based on, or a secondary's "
              "entry is not yet known to be committed"),
    ErrorCode("timeout", "504", BOTH, "aiohttp's server timed the request out"),
)

CODES = frozenset(error.code for error in ERRORS)


def client_codes() -> list[str]:
    """The codes the client port answers with (the OpenAPI document's enum), sorted."""
    return sorted(error.code for error in ERRORS if error.port in (CLIENT, BOTH))


def markdown_table() -> str:
    """The design page's table of error codes."""
    lines = ["| status | `error` | port | when |", "| --- | --- | --- | --- |"]
    for error in ERRORS:
        lines.append(f"| {error.status} | `{error.code}` | {error.port} | {error.meaning} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(markdown_table(), end="")
