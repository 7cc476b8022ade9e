"""Paying a proxy's first-use costs at start, not on the first migration's critical path.

The first seal and the first verify of a process build their validators, ciphers and codecs
lazily; the first hand-off to a worker thread starts that thread; the first replay-guard commit
prepares its statements and grows the write-ahead log. Each costs from a fraction of a
millisecond to several, and without a warm-up they all fall on the first migration after the
proxy started, between its first MIGRATE_DATA and its last. :func:`warm_up` runs them once
before the proxy serves, on throwaway material:

- every bundled sample payload is decoded, sealed under a fresh throwaway key, verified and
  encoded back (on the event loop, as the proxy does for real payloads);
- the loop's worker threads that one migration's channels use at once are started;
- the replay guard's commit thread (which records the blobs the proxy opens) is started with
  one record, and one record is committed from a worker thread; then both are pruned: random
  ids of a length no real blob id has, already expired.

Nothing here touches the proxy's keys or sessions, and a failing step only costs its speed-up:
it is logged and the proxy starts anyway.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import threading
import time
import uuid
from importlib import resources

from gateway import native
from gateway.envelope import Context, ExpectedContext, seal, verify
from gateway.errors import GatewayError
from gateway.keys import Keyring
from gateway.proxy.channel import record
from gateway.proxy.sessions import DATA_CHANNELS
from gateway.replay import ReplayGuard
from gateway.service.logs import log
from gateway.spice.constants import ChannelType

__all__ = ["WARM_UP_BLOB_ID_SIZE", "warm_codecs", "warm_threads", "warm_up"]

#: The length of the warm-up record's id in the replay database: no sealed blob has an id
#: (its salt) this long, so the record can never stand for a real blob.
WARM_UP_BLOB_ID_SIZE = 7

_SOURCE, _TARGET = "warm-up-source", "warm-up-target"


def _samples() -> dict[ChannelType, bytes]:
    """The bundled sample payload of each data channel that has one."""
    found: dict[ChannelType, bytes] = {}
    for channel in sorted(DATA_CHANNELS):
        item = resources.files("gateway") / "samples" / f"{channel.name.lower()}.bin"
        if item.is_file():
            found[channel] = item.read_bytes()
    return found


def warm_codecs() -> int:
    """Decode, seal, verify and re-encode each bundled sample once; how many ran."""
    keyring = Keyring.create()
    now = time.time()
    migration = uuid.uuid4()
    vm = uuid.uuid4()
    done = 0
    for channel, payload in _samples().items():
        state = native.decode(channel, payload)
        blob = seal(
            state,
            Context(
                channel_type=channel,
                channel_id=0,
                vm_id=vm,
                migration_id=migration,
                source_host=_SOURCE,
                target_host=_TARGET,
                schema_version=type(state).schema_version,
            ),
            keyring,
            now=now,
        )
        expected = ExpectedContext(
            channel_type=channel,
            channel_id=0,
            vm_id=vm,
            migration_id=migration,
            sources=frozenset({_SOURCE}),
            target_host=_TARGET,
            schema_version=1,
        )
        verify(blob, expected, keyring, now=now)
        native.encode(state, channel)
        done += 1
    return done


async def warm_threads(count: int) -> None:
    """Start up to ``count`` of the running loop's default worker threads (fewer when the
    pool is smaller): each hand-off waits until all were handed off, so none is reused."""
    loop = asyncio.get_running_loop()
    release = threading.Event()
    waits = [loop.run_in_executor(None, release.wait) for _ in range(count)]
    release.set()
    await asyncio.gather(*waits)


def _warm_commit(guard: ReplayGuard) -> None:
    guard.reserve_log()
    now = int(time.time())
    guard.consume(os.urandom(WARM_UP_BLOB_ID_SIZE), now - 1, now=now)
    # Already expired: pruned at once, so the database holds only real blobs.
    guard.prune(now)


async def warm_up(guard: ReplayGuard) -> None:
    """Every first-use cost of the migration path, paid now (see the module's docstring)."""
    try:
        warm_codecs()
        await warm_threads(len(DATA_CHANNELS))
        now = int(time.time())
        await record(guard, os.urandom(WARM_UP_BLOB_ID_SIZE), now - 1, now=now)
        await asyncio.to_thread(_warm_commit, guard)
    except (GatewayError, OSError, RuntimeError, ValueError, sqlite3.Error) as error:
        log(logging.WARNING, "warm-up failed; the first migration pays it", error=str(error))
