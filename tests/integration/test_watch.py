"""The watch and the backup endpoint on one real replica: events in log order under a prefix, from an
LSN or from now, keepalives, a compacted or foreign position refused with what to do, a slow watcher
cut off with a reason, a bounded number of watchers, a stopping pod's last line, every bad input.
The CLI's watch, backup and restore commands, with their bad inputs, run against it too."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import aiohttp
import pytest

from local_cluster import http, wait_for
from replica_process import ReplicaProcess, running
from kvstore.client import MAX_WATCH_LINE, Client, WatchError, follow

FAST = {"KV_WATCH_KEEPALIVE": "0.3"}


@pytest.fixture(scope="module")
def replica(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReplicaProcess]:
    with running(tmp_path_factory.mktemp("watch"), env=FAST) as proc:
        yield proc


async def lines(url: str, query: str, count: int, timeout: float = 10,
                keepalives: bool = True) -> list[dict[str, Any]]:
    """The first ``count`` lines of a watch (keepalives left out when not wanted)."""
    out: list[dict[str, Any]] = []
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{url}/v1/watch{query}") as response:
            assert response.status == 200, await response.text()
            assert response.headers["Content-Type"] == "application/x-ndjson"
            async with asyncio.timeout(timeout):
                while len(out) < count:
                    line = await response.content.readline(max_line_length=MAX_WATCH_LINE)
                    assert line, f"the stream ended after {out}"
                    if keepalives or json.loads(line)["type"] != "keepalive":
                        out.append(json.loads(line))
    return out


async def rest_of(response: aiohttp.ClientResponse) -> list[dict[str, Any]]:
    """Every line left in a watch, until it ends."""
    out = []
    async with asyncio.timeout(30):
        while line := await response.content.readline(max_line_length=MAX_WATCH_LINE):
            out.append(json.loads(line))
    return out


def kvstore(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "KV_URL"}
    return subprocess.run([sys.executable, "-m", "kvstore", *args], capture_output=True, text=True, env=env,
                          timeout=timeout, stdin=subprocess.DEVNULL)


async def test_a_watch_shows_each_change_under_its_prefix_in_log_order_then_live_ones(
        replica: ReplicaProcess) -> None:
    async with Client(replica.url) as c:
        start = (await c.status()).data["lsn"]
        first = (await c.put("w1/a", b"one")).version
        await c.put("w1-not/a", b"other prefix")
        await c.put("w1/b", b"\x00\xff binary")
        await c.delete("w1/a")
        read = await c.get("w1/b")
        history = read.headers["X-Kv-History"]
        assert len(history) == 32 and read.lsn == first + 3

        seen = await lines(replica.url, f"?prefix=w1/&from_lsn={first}&history={history}", 4, keepalives=False)
        assert seen[0] == {"type": "start", "pod": "kv-0", "history": history, "lsn": first - 1}
        assert seen[1:] == [
            {"type": "put", "key": "w1/a", "version": first, "value": base64.b64encode(b"one").decode()},
            {"type": "put", "key": "w1/b", "version": first + 2,
             "value": base64.b64encode(b"\x00\xff binary").decode()},
            {"type": "delete", "key": "w1/a", "version": first + 3}]
        assert first > start

        async def later() -> None:
            await asyncio.sleep(0.5)
            await c.put("w1/c", b"live")
        writer = asyncio.create_task(later())
        live = await lines(replica.url, "?prefix=w1/&values=false", 2, keepalives=False)  # from now: only the live one
        await writer
        assert live[0]["lsn"] == first + 3
        assert live[1] == {"type": "put", "key": "w1/c", "version": first + 4}


async def test_an_idle_watch_gets_keepalives_with_its_position(replica: ReplicaProcess) -> None:
    async with Client(replica.url) as c:
        await c.put("idle-elsewhere", b"x")
        lsn = (await c.status()).data["lsn"]
    got = await lines(replica.url, "?prefix=nothing-here/", 3, timeout=5)
    assert [line["type"] for line in got] == ["start", "keepalive", "keepalive"]
    assert all(line["lsn"] == lsn for line in got)


async def test_the_client_follows_from_a_position_and_yields_only_changes(replica: ReplicaProcess) -> None:
    async with Client(replica.url) as c:
        versions = [(await c.put(f"w2/{i}", b"%d" % i)).version for i in range(5)]
    got = []
    async for event in follow([replica.url], "w2/", from_lsn=versions[1]):
        got.append((event["key"], event["version"], event["value"]))
        if len(got) == 4:
            break
    assert got == [(f"w2/{i}", versions[i], b"%d" % i) for i in range(1, 5)]


async def test_the_client_resumes_inside_a_transaction_without_skipping_its_other_keys(
        replica: ReplicaProcess) -> None:
    """A transaction is one LSN with a line per key: a connection cut between two of them (here by a proxy
    that closes it right after the first) must not make the resumed watch skip the rest."""
    async with Client(replica.url) as c:
        done = await c.txn(success=[{"op": "put", "key": "w8/a", "value": "1"},
                                    {"op": "put", "key": "w8/b", "value": "2"}])
        version = done.data["version"]
        after = (await c.put("w8/z", b"3")).version
    host, port = replica.url.removeprefix("http://").rsplit(":", 1)
    cut = asyncio.Event()

    async def relay(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        upstream_r, upstream_w = await asyncio.open_connection(host, int(port))

        async def upward() -> None:
            while data := await client_r.read(65536):
                upstream_w.write(data)
        task = asyncio.create_task(upward())
        pending = b""
        try:
            while data := await upstream_r.read(65536):
                pending += data
                at = pending.find(b"w8/a")
                if at >= 0 and not cut.is_set():
                    client_w.write(pending[:pending.index(b"\n", at) + 1])  # the first line of the two
                    await client_w.drain()
                    cut.set()
                    break
                client_w.write(pending)
                pending = b""
        finally:
            task.cancel()
            upstream_w.close()
            client_w.transport.abort()

    proxy = await asyncio.start_server(relay, "127.0.0.1", 0)
    proxy_url = f"http://127.0.0.1:{proxy.sockets[0].getsockname()[1]}"
    got = []
    try:
        async with asyncio.timeout(30):
            async for event in follow([proxy_url, replica.url], "w8/", from_lsn=version, timeout=5):
                got.append((event["key"], event["version"]))
                if event["key"] == "w8/z":
                    break
    finally:
        proxy.close()
    assert cut.is_set(), "the proxy never cut the stream: the case was not reached"
    assert got == [("w8/a", version), ("w8/b", version), ("w8/z", after)], got


async def test_a_prefix_longer_than_any_key_matches_none(replica: ReplicaProcess) -> None:
    """Not a key, so no key limit: an empty listing, a watch that starts (as etcd answers such a range)."""
    import urllib.parse
    long = urllib.parse.quote("\u1e70" * 700)  # 2100 bytes of UTF-8, over the key limit
    http("PUT", f"{replica.url}/v1/kv/w9", body=b"x")
    code, _, body = http("GET", f"{replica.url}/v1/kv?prefix={long}")
    assert code == 200 and json.loads(body)["keys"] == [], body
    code, _, body = http("GET", f"{replica.url}/v1/kv?prefix=w9&start_after={'w' * 1100}")
    assert code == 200 and json.loads(body)["keys"] == [], body  # "w9" sorts before it
    got = await lines(replica.url, f"?prefix={long}", 1)
    assert got[0]["type"] == "start", got


@pytest.mark.parametrize("query, code", [
    ("?from_lsn=0", "bad_parameter"),
    ("?from_lsn=-1", "bad_parameter"),
    ("?from_lsn=abc", "bad_parameter"),
    ("?from_lsn=99999999999999999999", "bad_parameter"),
    ("?history=xyz", "bad_parameter"),
    ("?history=" + "a" * 33, "bad_parameter"),
    ("?values=maybe", "bad_parameter"),
    ("?prefix=%zz", "bad_encoding"),
    ("?prefix=%ff", "bad_encoding"),
    ("?prefix=a&prefix=b", "bad_parameter"),
    ("?since=3", "unknown_parameter"),
])
def test_bad_watch_parameters_are_400_with_the_project_error(replica: ReplicaProcess, query: str,
                                                             code: str) -> None:
    status, _, body = http("GET", f"{replica.url}/v1/watch{query}")
    assert status == 400, body
    assert json.loads(body)["error"] == code


@pytest.mark.parametrize("path", ["/v1/watch", "/v1/backup"])
def test_new_endpoints_refuse_a_body_and_other_methods(replica: ReplicaProcess, path: str) -> None:
    status, _, body = http("GET", replica.url + path, body=b"x")
    assert status == 400 and json.loads(body)["error"] == "unexpected_body"
    status, headers, body = http("POST", replica.url + path, body=b"")
    assert status == 405 and headers["Allow"] == "GET,HEAD" and json.loads(body)["error"] == "method_not_allowed"


@pytest.mark.parametrize("path", ["/v1/watch?prefix=a", "/v1/backup"])
def test_head_answers_at_once_without_a_body(replica: ReplicaProcess, path: str) -> None:
    status, headers, body = http("HEAD", replica.url + path, timeout=5)
    assert (status, body) == (200, b"") and headers["X-Kv-Pod"] == "kv-0"


def test_bad_backup_parameters_are_400(replica: ReplicaProcess) -> None:
    status, _, body = http("GET", f"{replica.url}/v1/backup?lsn=3")
    assert status == 400 and json.loads(body)["error"] == "unknown_parameter"


def test_a_position_of_another_history_is_refused_with_what_to_do(replica: ReplicaProcess) -> None:
    http("PUT", f"{replica.url}/v1/kv/w3", body=b"x")
    status, _, body = http("GET", f"{replica.url}/v1/watch?from_lsn=2&history={'0' * 32}")
    answer = json.loads(body)
    assert status == 409 and answer["error"] == "history_changed", answer
    assert "re-read the keys" in answer["message"] and "X-Kv-Lsn of that read plus one" in answer["message"]
    assert answer["history"] != "0" * 32 and answer["lsn"] >= 1


async def test_a_watch_from_a_compacted_lsn_is_told_to_reread_and_from_where(tmp_path: Path) -> None:
    with running(tmp_path, env={**FAST, "KV_LOG_RETENTION": "5"}) as proc:
        async with Client(proc.url) as c:
            for i in range(30):
                await c.put(f"c/{i}", b"v")
            wait_for("the log to be compacted", lambda: json.loads(
                http("GET", proc.url + "/v1/status")[2])["log_start"] > 1, timeout=15)
            log_start = (await c.status()).data["log_start"]
            with pytest.raises(WatchError) as refused:
                async for _ in c.watch("c/", from_lsn=1):
                    pass
            error = refused.value
            assert (error.status, error.code, error.resumable) == (410, "log_compacted", False)
            assert f"keeps entries from lsn {log_start} on" in error.message and error.lsn == 30
            status, _, body = http("GET", f"{proc.url}/v1/watch?from_lsn=1")
            assert json.loads(body)["log_start"] == log_start
            # The retained log itself can still be watched, and the CLI says the same as the API.
            got = await lines(proc.url, f"?prefix=c/&from_lsn={log_start}", 2, keepalives=False)
            assert got[1]["version"] == log_start
            result = kvstore("watch", "c/", "--from-lsn", "1", "--url", proc.url)
            assert result.returncode == 1 and "410 log_compacted" in result.stderr, result


async def test_a_watcher_that_does_not_read_is_cut_off_with_a_reason(tmp_path: Path) -> None:
    env = {**FAST, "KV_WATCH_SEND_TIMEOUT": "1", "KV_MAX_VALUE_BYTES": str(1024 * 1024)}
    with running(tmp_path, env=env) as proc:
        value = os.urandom(512 * 1024)
        async with aiohttp.ClientSession() as session, Client(proc.url) as c:
            async with session.get(f"{proc.url}/v1/watch?prefix=big/") as response:
                await response.content.readline()  # the start line, then it stops reading
                for i in range(60):  # ~40 MB of base64: more than every socket buffer between us
                    await c.put(f"big/{i}", value)
                await asyncio.sleep(3)
                got = await rest_of(response)
        assert got[-1]["type"] == "error" and got[-1]["error"] == "slow_watcher", got[-1]
        assert got[-1]["resumable"] is True and "KV_WATCH_SEND_TIMEOUT" in got[-1]["message"]
        events = [line for line in got[:-1] if line["type"] == "put"]  # and the keepalive naming the history
        assert 0 < len(events) < 60 and [e["version"] for e in events] == list(range(1, len(events) + 1))
        assert got[-1]["lsn"] >= events[-1]["version"]
        # Nothing is lost: watching again from its position gives the rest.
        rest = await lines(proc.url, f"?prefix=big/&values=false&from_lsn={got[-1]['lsn'] + 1}",
                           1 + 60 - got[-1]["lsn"], keepalives=False)
        assert [e["version"] for e in rest[1:]] == list(range(got[-1]["lsn"] + 1, 61))
        assert "watch from 127.0.0.1 ended at lsn" in proc.log_tail(100)
        assert "Traceback" not in proc.log_tail(1000)


async def test_watches_are_bounded_per_pod(tmp_path: Path) -> None:
    with running(tmp_path, env={**FAST, "KV_MAX_WATCHERS": "1"}) as proc:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{proc.url}/v1/watch") as first:
                await first.content.readline()
                status, headers, body = http("GET", f"{proc.url}/v1/watch")
                assert status == 503 and json.loads(body)["error"] == "too_many_watchers"
                assert headers["Retry-After"]
        # The first one's end frees its place.
        wait_for("the watch to be released", lambda: http("GET", f"{proc.url}/v1/watch?from_lsn=9&history=" +
                                                           "0" * 32)[0] == 409, timeout=5)


async def test_a_stopping_pod_ends_its_watches_with_a_resumable_line(tmp_path: Path) -> None:
    with running(tmp_path, env=FAST) as proc:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{proc.url}/v1/watch") as response:
                await response.content.readline()
                started = time.monotonic()
                proc.proc.send_signal(15)
                got = await rest_of(response)
        assert got[-1]["error"] == "shutting_down" and got[-1]["resumable"] is True, got
        assert proc.proc.wait(10) == 0 and time.monotonic() - started < 4  # not held for the grace period
        assert "Traceback" not in proc.log_tail(1000)


async def test_the_cli_prints_changes_as_text_or_json(replica: ReplicaProcess) -> None:
    async with Client(replica.url) as c:
        first = (await c.put("w4/text", b"hello")).version
        await c.put("w4/bin", b"\x00\x01")
        await c.delete("w4/text")

    def watch(*extra: str) -> list[str]:
        proc = subprocess.Popen([sys.executable, "-m", "kvstore", "watch", "w4/", "--from-lsn", str(first),
                                 "--url", replica.url, *extra], stdout=subprocess.PIPE, text=True)
        try:
            assert proc.stdout is not None
            return [proc.stdout.readline().rstrip("\n") for _ in range(3)]
        finally:
            proc.terminate()
            proc.wait(10)

    assert watch() == [f"{first} put w4/text hello", f"{first + 1} put w4/bin base64:AAE=",
                       f"{first + 2} delete w4/text"]
    assert [json.loads(line) for line in watch("--json", "--no-values")] == [
        {"type": "put", "key": "w4/text", "version": first}, {"type": "put", "key": "w4/bin", "version": first + 1},
        {"type": "delete", "key": "w4/text", "version": first + 2}]


@pytest.mark.parametrize("args, message", [
    (["watch", "--from-lsn", "0"], "expected an integer from 1"),
    (["watch", "--history", "ab"], "--history names the history of --from-lsn: give both"),
    (["watch", "--from-lsn", "1", "--history", "nothex"], "400 bad_parameter: history must be"),
    (["backup", "/nonexistent-dir/b.kvbackup"], "cannot write /nonexistent-dir/b.kvbackup"),
    (["restore", "/nonexistent.kvbackup", "--data-dir", "{tmp}/d"], "cannot read /nonexistent.kvbackup"),
    (["restore", "{tmp}/not-a-backup", "--data-dir", "{tmp}/d"], "is not a kvstore backup"),
    (["restore", "{tmp}/not-a-backup"], "the following arguments are required: --data-dir"),
    (["backup", "{tmp}/file.kvbackup", "--keep", "2"], "needs a directory, and {tmp}/file.kvbackup is not one"),
    (["backup", "{tmp}", "--keep", "0"], "expected an integer from 1"),
])
def test_bad_cli_inputs_are_one_line_errors(replica: ReplicaProcess, tmp_path: Path, args: list[str],
                                            message: str) -> None:
    (tmp_path / "not-a-backup").write_text("hello")
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    if args[0] != "restore":
        args += ["--url", replica.url]
    result = kvstore(*args)
    assert result.returncode in (1, 2) and message.replace("{tmp}", str(tmp_path)) in result.stderr, result
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "d").exists()


def test_backup_then_restore_with_the_cli(replica: ReplicaProcess, tmp_path: Path) -> None:
    http("PUT", f"{replica.url}/v1/kv/w5", body=b"backed up")
    target = tmp_path / "b.kvbackup"
    result = kvstore("backup", str(target), "--url", replica.url)
    assert result.returncode == 0, result
    assert f"wrote {target}: " in result.stdout and " of kv-0 at lsn " in result.stdout
    assert [p.name for p in tmp_path.iterdir()] == ["b.kvbackup"]  # no partial file left
    result = kvstore("restore", str(target), "--data-dir", str(tmp_path / "data"))
    assert result.returncode == 0 and "restored " in result.stdout, result
    result = kvstore("restore", str(target), "--data-dir", str(tmp_path / "data"))
    assert result.returncode == 2 and "is not empty" in result.stderr, result
    # Cut short, it is refused, and the volume it was meant for stays as it was.
    target.write_bytes(target.read_bytes()[:-10])
    result = kvstore("restore", str(target), "--data-dir", str(tmp_path / "other"))
    assert result.returncode == 2 and "is truncated" in result.stderr and not (tmp_path / "other").exists()


def test_backups_into_a_directory_are_named_by_what_they_hold_and_pruned(replica: ReplicaProcess,
                                                                         tmp_path: Path) -> None:
    names = []
    for i in range(3):
        http("PUT", f"{replica.url}/v1/kv/w6", body=b"%d" % i)
        result = kvstore("backup", str(tmp_path), "--keep", "2", "--url", replica.url)
        assert result.returncode == 0, result
        names.append(Path(result.stdout.split(":", 1)[0].removeprefix("wrote ")).name)
        time.sleep(1.1)  # the names hold the second they were taken
    assert all(re.fullmatch(r"kv-0-\d{8}T\d{6}Z-lsn\d+\.kvbackup", name) for name in names), names
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names[1:])
    # A directory named with a trailing slash is made on the first run (the README's `backup backups/`).
    result = kvstore("backup", f"{tmp_path}/new/backups/", "--keep", "2", "--url", replica.url)
    assert result.returncode == 0, result
    made = [p.name for p in (tmp_path / "new" / "backups").iterdir()]
    assert len(made) == 1 and made[0].endswith(names[-1].rsplit("-", 1)[1]), (made, names)  # same LSN
