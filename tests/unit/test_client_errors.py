"""A call that fails is described in words a user can act on, not in aiohttp's internals."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys

import aiohttp

from kvstore.client import why_unanswered


async def _failure(url: str, timeout: float = 5.0) -> BaseException:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session:
        try:
            async with session.get(url) as response:
                await response.read()
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            return exc
    raise AssertionError(f"{url} answered")


def _closed_port() -> int:
    with socket.socket() as probe:  # bound, never listening: connecting is refused
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def test_refused_and_silent_and_hung_up_in_words() -> None:
    port = _closed_port()
    refused = await _failure(f"http://127.0.0.1:{port}/")
    assert "Cannot connect" in str(refused)  # what aiohttp says, and the README once showed
    assert why_unanswered(refused) == "connection refused"

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readline()
        writer.close()

    async def say_nothing(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(5)
        writer.close()

    for handler, words, timeout in ((hang_up, "it closed the connection without answering", 5.0),
                                    (say_nothing, "no answer in time", 0.3)):
        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        try:
            port = server.sockets[0].getsockname()[1]
            assert why_unanswered(await _failure(f"http://127.0.0.1:{port}/", timeout)) == words
        finally:
            server.close()
            await server.wait_closed()


def test_an_os_error_is_its_own_words() -> None:
    assert why_unanswered(OSError(113, "No route to host")) == "no route to host"
    assert why_unanswered(ValueError("odd")) == "ValueError"


def test_the_client_command_says_it_in_one_line() -> None:
    url = f"http://127.0.0.1:{_closed_port()}"
    result = subprocess.run([sys.executable, "-m", "kvstore", "put", "k", "v", "--url", url], capture_output=True,
                            text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert result.returncode == 2
    assert result.stderr == f"kvstore put: cannot reach the replica at {url} (connection refused)\n"
