"""The target proxy's open path without sockets: verify on the loop, record in a thread.

The blobs of one session's channels are verified as they come and their replay records share
commits, so the session's first blob cannot pin its migration id before it is recorded. These
tests pin down what that must still guarantee: one migration per session, a refused authentic
blob recorded all the same (used once, accepted or refused), and a replayed blob pinning
nothing. They run with ``peer_link_down = "first-blob"`` (no attempt announced, the session's
first blob pins), the mode in which the pin is the only binding to a migration;
``test_attempts.py`` covers the announced attempts.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest

from gateway import native
from gateway.envelope import Context, Policy, read_header, seal
from gateway.errors import ContextMismatch, Replayed
from gateway.keys import Keyring
from gateway.proxy.channel import INLINE_SEAL_LIMIT, ChannelHandler, ProxyState
from gateway.proxy.config import Peer, ProxyConfig, Route
from gateway.proxy.sessions import SessionTable
from gateway.replay import ReplayGuard
from gateway.service.metrics import Metrics
from gateway.spice.constants import ChannelType, Direction, HeaderKind, Msgc
from gateway.spice.events import Message
from gateway.spice.messages import ClientMigrateData, MigrateData, encode_data_message
from schemas import StateModel

from .conftest import SOURCE_HOST, TARGET_HOST
from .peers import native_payloads

VM = uuid.UUID("6f1c1b9e-0d5e-4d8a-9a53-2f43c0a5f0a1")
CHANNELS = (
    ChannelType.MAIN,
    ChannelType.DISPLAY,
    ChannelType.INPUTS,
    ChannelType.SMARTCARD,
    ChannelType.USBREDIR,
    ChannelType.WEBDAV,
)
PAYLOADS = native_payloads()


@dataclass
class Target:
    """A target proxy's shared state, and what the source would seal for it."""

    state: ProxyState
    keyring: Keyring
    states: dict[ChannelType, StateModel]

    def handler(self, channel: ChannelType, session_id: int) -> ChannelHandler:
        """A handler whose client linked ``channel`` into session ``session_id``."""
        handler = ChannelHandler(self.state, self.state.config.routes[0], "client")
        handler.channel_type, handler.channel_id = int(channel), 0
        handler._attach(session_id)
        assert handler.session is not None
        handler.session.link((int(channel), 0))
        return handler

    def blob(self, channel: ChannelType, migration: uuid.UUID) -> bytes:
        context = Context(channel, 0, VM, migration, SOURCE_HOST, TARGET_HOST, 1)
        return seal(self.states[channel], context, self.keyring)

    @property
    def guard(self) -> ReplayGuard:
        return self.state.replay_guard


@contextlib.contextmanager
def target_state(
    folder: Path,
    *,
    peer_link_down: Literal["refuse", "first-blob"],
    clock: Callable[[], float] = time.time,
) -> Iterator[Target]:
    """A target proxy's shared state for one route serving VM, its files under ``folder``."""
    config = ProxyConfig(
        host_id=TARGET_HOST,
        keyring=str(folder / "keyring.json"),
        replay_db=str(folder / "replay.sqlite"),
        peers=(Peer(host_id=SOURCE_HOST, addresses=("127.0.0.1:5900",)),),
        routes=(Route(name="vm", listen="127.0.0.1:5901", upstream="127.0.0.1:5902", vm_id=VM),),
        peer_link_down=peer_link_down,
    )
    keyring = Keyring.create()
    with ReplayGuard(config.replay_db) as guard:
        state = ProxyState(
            config=config,
            keyring=lambda: keyring,
            replay_guard=guard,
            sessions=SessionTable(),
            metrics=Metrics(),
            policy=Policy(),
            clock=clock,
        )
        states = {channel: native.decode(channel, PAYLOADS[channel]) for channel in CHANNELS}
        yield Target(state, keyring, states)


@pytest.fixture
def target(tmp_path: Path) -> Iterator[Target]:
    with target_state(tmp_path, peer_link_down="first-blob") as found:
        yield found


def migrate_data(blob: bytes) -> Message:
    raw = encode_data_message(HeaderKind.MINI, Msgc.MIGRATE_DATA, blob)
    return Message(
        Direction.CLIENT_TO_SERVER,
        raw,
        HeaderKind.MINI,
        Msgc.MIGRATE_DATA,
        None,
        None,
        ClientMigrateData(payload=blob),
    )


async def test_a_sessions_blobs_open_side_by_side(target: Target) -> None:
    migration = uuid.uuid4()
    handlers = [target.handler(channel, 0x51) for channel in CHANNELS]
    results = await asyncio.gather(
        *(
            handler.rewrite(migrate_data(target.blob(channel, migration)))
            for handler, channel in zip(handlers, CHANNELS, strict=True)
        )
    )
    for result, channel in zip(results, CHANNELS, strict=True):
        assert result == encode_data_message(HeaderKind.MINI, Msgc.MIGRATE_DATA, PAYLOADS[channel])
    session = handlers[0].session
    assert session is not None
    assert session.migration_id == migration
    assert session.completed
    assert len(target.guard) == len(CHANNELS)
    assert target.state.metrics.get("smg_migrations_completed_total") == 1


async def test_blobs_verified_before_the_pin_are_held_to_it(target: Target) -> None:
    """Two first blobs of different migrations, both verified while nothing is pinned: the
    one recorded first pins, the other is refused, and recorded: it cannot be offered again."""
    display = target.handler(ChannelType.DISPLAY, 0x52)
    inputs = target.handler(ChannelType.INPUTS, 0x52)
    mine, other = uuid.uuid4(), uuid.uuid4()
    first = display._verify(target.blob(ChannelType.DISPLAY, mine))
    second = inputs._verify(target.blob(ChannelType.INPUTS, other))
    assert first[0].migration_id is None

    await asyncio.to_thread(display._accept, *first)
    assert first[0].migration_id == mine
    with pytest.raises(ContextMismatch) as caught:
        await asyncio.to_thread(inputs._accept, *second)
    assert caught.value.field == "migration_id"
    assert inputs.refused
    assert second[1].blob_id in target.guard
    assert len(target.guard) == 2
    assert first[0].migration_id == mine


async def test_once_pinned_another_migration_fails_verification(target: Target) -> None:
    display = target.handler(ChannelType.DISPLAY, 0x53)
    inputs = target.handler(ChannelType.INPUTS, 0x53)
    await display.rewrite(migrate_data(target.blob(ChannelType.DISPLAY, uuid.uuid4())))
    stray = target.blob(ChannelType.INPUTS, uuid.uuid4())
    with pytest.raises(ContextMismatch):
        await inputs.rewrite(migrate_data(stray))
    # Refused, yet authentic: recorded, so it cannot be offered again on another session.
    assert read_header(stray).salt in target.guard
    assert len(target.guard) == 2
    assert target.state.metrics.get("smg_refused_total", reason="open", channel="inputs") == 1


async def test_a_replayed_first_blob_pins_nothing(target: Target) -> None:
    old = target.blob(ChannelType.DISPLAY, uuid.uuid4())
    await target.handler(ChannelType.DISPLAY, 0x54).rewrite(migrate_data(old))

    display = target.handler(ChannelType.DISPLAY, 0x55)
    with pytest.raises(Replayed):
        await display.rewrite(migrate_data(old))
    assert display.session is not None
    assert display.session.migration_id is None
    fresh = uuid.uuid4()
    await target.handler(ChannelType.INPUTS, 0x55).rewrite(
        migrate_data(target.blob(ChannelType.INPUTS, fresh))
    )
    assert display.session.migration_id == fresh


async def test_a_blob_issued_before_a_system_restart_is_refused(target: Target) -> None:
    # The guard's database was last written in another boot: it cannot vouch for blobs issued
    # before it was reopened (their records may be lost), so the proxy hands it each blob's
    # issued-at (tests/test_replay_boot.py has the rule itself).
    target.guard.forgotten_before = int(time.time())
    blob = target.blob(ChannelType.DISPLAY, uuid.uuid4())
    with pytest.raises(Replayed, match="restart of the system"):
        await target.handler(ChannelType.DISPLAY, 0x60).rewrite(migrate_data(blob))
    assert read_header(blob).blob_id not in target.guard
    target.guard.forgotten_before = int(time.time()) - 3600
    await target.handler(ChannelType.DISPLAY, 0x61).rewrite(migrate_data(blob))
    assert read_header(blob).blob_id in target.guard


def test_only_a_sources_real_payload_is_rewritten_without_waiting(target: Target) -> None:
    """A source seals a real payload at once (no task, no pause in reading); a large one goes
    to a worker thread, and a target's blob waits for its replay commit."""
    handler = target.handler(ChannelType.DISPLAY, 0x70)

    def message(migration: MigrateData | ClientMigrateData) -> Message:
        return Message(
            migration.DIRECTION, b"", HeaderKind.MINI, migration.MSG_TYPE, None, None, migration
        )

    assert not handler.awaits(message(MigrateData(payload=PAYLOADS[ChannelType.DISPLAY])))
    assert handler.awaits(message(MigrateData(payload=bytes(INLINE_SEAL_LIMIT))))
    assert handler.awaits(message(ClientMigrateData(payload=b"blob")))
