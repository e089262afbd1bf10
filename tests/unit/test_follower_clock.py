"""A follower's two clocks: the wait before it promises a new epoch, and how long ago it heard its upstream."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import AsyncIterator

import pytest

from kvstore import config as config_mod
from kvstore.discovery import PeerDirectory
from kvstore.events import EventLog
from kvstore.lineage import Promise
from kvstore.metrics import Metrics
from kvstore.replication import follower as follower_mod
from kvstore.replication.acks import AckTable
from kvstore.replication.fencing import LEASE_SECONDS, Fencing
from kvstore.replication.follower import Follower
from kvstore.replication.peer_client import PeerClient
from kvstore.storage import Store


@pytest.fixture
async def new_follower(tmp_path: Path) -> AsyncIterator[Follower]:
    """A Follower as a kv-1 process that just started builds it (nothing started, nothing sent)."""
    cfg = config_mod.load(env={"POD_NAME": "kv-1", "KV_DATA_DIR": str(tmp_path)})
    store = Store.open(str(tmp_path))
    client = PeerClient("token")
    try:
        yield Follower(cfg, store, PeerDirectory(cfg), client, AckTable(), Metrics(),
                       Fencing(lambda: ((0, 1, 2),)), events=EventLog("kv-1"))
    finally:
        await client.close()
        await store.close()


async def test_a_new_process_promises_nothing_until_the_hold_time_has_passed_since_its_start(
        new_follower: Follower) -> None:
    # Its previous process may have echoed a round a moment ago, and a kv-0 may hold a lease on it.
    candidate = Promise(7, "ab")
    assert LEASE_SECONDS - 0.5 < new_follower.promise_hold(candidate) <= LEASE_SECONDS
    await asyncio.sleep(LEASE_SECONDS)
    assert new_follower.promise_hold(candidate) == 0


async def test_an_echo_holds_every_other_epoch_for_the_lease_time(new_follower: Follower) -> None:
    new_follower._last_echo = ((6, "cd"), time.monotonic() - 5)  # long ago: the start's hold is over too
    assert new_follower.promise_hold(Promise(7, "ab")) == 0
    new_follower._last_echo = ((6, "cd"), time.monotonic())
    assert new_follower.promise_hold(Promise(7, "ab")) > LEASE_SECONDS - 0.5
    assert new_follower.promise_hold(Promise(6, "cd")) == 0  # the epoch it echoed holds no lease against itself


def test_heard_ago_is_said_only_once_a_live_stream_would_have_spoken(new_follower: Follower) -> None:
    assert new_follower.heard_ago() is None  # never heard: nothing to qualify
    new_follower.upstream_heard = time.monotonic()
    assert new_follower.heard_ago() is None
    new_follower.upstream_heard = time.monotonic() - follower_mod.HEARD_RECENTLY - 10
    ago = new_follower.heard_ago()
    assert ago is not None and ago >= follower_mod.HEARD_RECENTLY + 10
