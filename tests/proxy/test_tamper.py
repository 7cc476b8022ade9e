"""A client that alters, replays or swaps sealed blobs: the target proxy refuses that channel.

For a refused channel the target spice-server receives nothing (the proxy closes its connection,
and the MIGRATE_DATA never arrives) and the client's connection is closed too; every other
channel of the session migrates as if nothing happened.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable

import pytest

from gateway.envelope import HEADER_SIZE
from gateway.spice.constants import ChannelType, Msgc

from .conftest import LogRecords, Proxies, Rig
from .peers import ClientSession, Tamper

DISPLAY = (ChannelType.DISPLAY, 0)
INPUTS = (ChannelType.INPUTS, 0)
USBREDIR = (ChannelType.USBREDIR, 0)
PORT = (ChannelType.PORT, 0)
WEBDAV = (ChannelType.WEBDAV, 0)

Channel = tuple[int, int]


def flip(offset: int) -> Tamper:
    def tamper(blob: bytes) -> bytes:
        data = bytearray(blob)
        data[offset] ^= 0x01
        return bytes(data)

    return tamper


async def prepare(session: ClientSession) -> None:
    await session.link_source()
    await session.exchange(1)
    await session.begin_migration()


async def migrate(
    rig: Rig,
    session: ClientSession,
    channels: Iterable[Channel],
    tamper: Callable[[Channel, bytes], bytes] | None = None,
) -> dict[Channel, bytes]:
    """Migrate ``channels`` concurrently, the client relaying through ``tamper``; returns the
    blob each channel's source sealed."""

    async def one(channel: Channel) -> bytes:
        payload = rig.payloads[ChannelType(channel[0])]
        change = (lambda blob: tamper(channel, blob)) if tamper else None
        return await session.migrate_channel(channel, payload, change)

    chosen = list(channels)
    return dict(zip(chosen, await asyncio.gather(*(one(ch) for ch in chosen)), strict=True))


async def assert_outcome(
    rig: Rig,
    session: ClientSession,
    refused: set[Channel],
    logs: LogRecords,
    error: str,
    *,
    route: str = "vm",
) -> None:
    """Refused channels: both legs closed, nothing reached spice-server. The others: migrated,
    and ordinary traffic flows on the target afterwards."""
    for channel, legs in session.legs.items():
        assert legs.server_target is not None
        assert legs.client_target is not None
        if channel in refused:
            assert await legs.server_target.frames_until_closed() == [], channel
            assert await legs.client_target.frames_until_closed() == [], channel
        else:
            frame = await legs.server_target.expect(Msgc.MIGRATE_DATA)
            assert frame.body == rig.payloads[ChannelType(channel[0])]
            await legs.server_target.send(104, b"after migration")
            assert (await legs.client_target.recv()).body == b"after migration"
    events = logs.audit("channel_refused", reason="open", route=route)
    assert sorted(e["channel"] for e in events) == sorted(
        f"{ChannelType(t).name.lower()}:{i}" for t, i in refused
    )
    assert {e["error"] for e in events} == {error}
    assert not logs.audit("migration_accepted")
    # The migration stays unfinished on the target: a clean stop would wait for it.
    assert rig.target_proxy.state.sessions.in_flight()


@pytest.mark.parametrize(
    ("tamper", "error"),
    [
        pytest.param(flip(0), "BadMagic", id="flip-magic"),
        pytest.param(flip(4), "UnsupportedVersion", id="flip-format-version"),
        pytest.param(flip(20), "UnknownKey", id="flip-key-id"),
        pytest.param(flip(40), "AuthenticationFailed", id="flip-salt"),
        pytest.param(flip(HEADER_SIZE + 30), "AuthenticationFailed", id="flip-context"),
        pytest.param(flip(-40), "AuthenticationFailed", id="flip-ciphertext"),
        pytest.param(flip(-1), "AuthenticationFailed", id="flip-mac"),
        pytest.param(lambda blob: blob[:-1], "Truncated", id="truncate-one"),
        pytest.param(lambda blob: blob[:HEADER_SIZE // 2], "Truncated", id="truncate-header"),
        pytest.param(lambda blob: blob + b"\0", "UnaccountedBytes", id="append"),
        pytest.param(lambda blob: b"", "Truncated", id="empty"),
    ],
)
async def test_altered_blob_is_refused(
    proxies: Proxies, logs: LogRecords, tamper: Tamper, error: str
) -> None:
    async with proxies.pair() as rig:
        session = rig.session(0xA1)
        await prepare(session)
        await migrate(
            rig,
            session,
            session.legs,
            lambda channel, blob: tamper(blob) if channel == DISPLAY else blob,
        )
        await assert_outcome(rig, session, {DISPLAY}, logs, error)
        assert rig.target_proxy.metrics.get(
            "smg_refused_total", reason="open", channel="display"
        ) == 1


@pytest.mark.parametrize(
    ("peer_link", "error"),
    [
        # The announced attempt is the second session's: the old blob is of another migration.
        pytest.param(True, "ContextMismatch", id="peer-link"),
        # Without a peer link only the replay guard can tell the old blob from a fresh one.
        pytest.param(False, "Replayed", id="first-blob"),
    ],
)
async def test_blob_from_an_earlier_session_is_refused(
    proxies: Proxies, logs: LogRecords, peer_link: bool, error: str
) -> None:
    settings = {} if peer_link else {"peer_link_down": "first-blob"}
    async with proxies.pair(peer_link=peer_link, target_settings=settings) as rig:
        first = rig.session(0xB1)
        await prepare(first)
        old = await migrate(rig, first, first.legs)
        for legs in first.legs.values():
            assert legs.server_target is not None
            await legs.server_target.expect(Msgc.MIGRATE_DATA)
        assert len(logs.audit("migration_accepted")) == 1
        logs.records.clear()

        second = rig.session(0xB2)
        await prepare(second)
        # The replayed blob is the session's first: no migration id is pinned yet.
        await migrate(rig, second, [DISPLAY], lambda channel, blob: old[DISPLAY])
        await migrate(rig, second, [ch for ch in second.legs if ch != DISPLAY])
        await assert_outcome(rig, second, {DISPLAY}, logs, error)


async def test_blob_of_an_abandoned_migration_is_refused(
    proxies: Proxies, logs: LogRecords
) -> None:
    """A blob sealed for a migration that never finished cannot join the next attempt."""
    async with proxies.pair() as rig:
        abandoned = rig.session(0xB3)
        await prepare(abandoned)
        stale = await abandoned.receive_blob(INPUTS, rig.payloads[ChannelType.INPUTS])
        await abandoned.close()

        retry = rig.session(0xB4)
        await prepare(retry)
        # The other channels pin the retry's migration id on the target first.
        await migrate(rig, retry, [ch for ch in retry.legs if ch != INPUTS])
        for channel in retry.legs:
            if channel != INPUTS:
                server = retry.leg(channel).server_target
                assert server is not None
                await server.expect(Msgc.MIGRATE_DATA)
        await retry.receive_blob(INPUTS, rig.payloads[ChannelType.INPUTS])
        await retry.relay(INPUTS, stale)
        legs = retry.leg(INPUTS)
        assert legs.server_target is not None
        assert await legs.server_target.frames_until_closed() == []
        refused = logs.audit("channel_refused", channel="inputs:0")
        assert [e["error"] for e in refused] == ["ContextMismatch"]
        assert "'migration_id'" in refused[0]["detail"]


async def swap(
    session_a: ClientSession, session_b: ClientSession, a: Channel, b: Channel, rig: Rig
) -> None:
    """Seal ``a`` in one session and ``b`` in the other, then relay each where the other goes."""
    blob_a = await session_a.receive_blob(a, rig.payloads[ChannelType(a[0])])
    blob_b = await session_b.receive_blob(b, rig.payloads[ChannelType(b[0])])
    await session_a.relay(a, blob_b)
    await session_b.relay(b, blob_a)


@pytest.mark.parametrize(
    ("first", "second"),
    [
        # usbredir, port and webdav share one native format: only the sealed context differs.
        pytest.param(USBREDIR, WEBDAV, id="usbredir-webdav"),
        pytest.param(USBREDIR, PORT, id="usbredir-port"),
        pytest.param(DISPLAY, INPUTS, id="display-inputs"),
    ],
)
async def test_blobs_swapped_between_channels_are_refused(
    proxies: Proxies, logs: LogRecords, first: Channel, second: Channel
) -> None:
    async with proxies.pair() as rig:
        session = rig.session(0xC1)
        await prepare(session)
        await migrate(rig, session, [ch for ch in session.legs if ch not in (first, second)])
        await swap(session, session, first, second, rig)
        await assert_outcome(rig, session, {first, second}, logs, "ContextMismatch")
        assert all("'channel_type'" in e["detail"] for e in logs.audit("channel_refused"))


async def test_blobs_swapped_between_vms_are_refused(proxies: Proxies, logs: LogRecords) -> None:
    async with proxies.pair(vms=("vm-a", "vm-b")) as rig:
        assert rig.vms["vm-a"].vm_id != rig.vms["vm-b"].vm_id
        session_a = rig.session(0xD1, vm="vm-a")
        session_b = rig.session(0xD2, vm="vm-b")
        for session in (session_a, session_b):
            await prepare(session)
            await migrate(rig, session, [ch for ch in session.legs if ch != DISPLAY])
        await swap(session_a, session_b, DISPLAY, DISPLAY, rig)
        for route, session in (("vm-a", session_a), ("vm-b", session_b)):
            await assert_outcome(rig, session, {DISPLAY}, logs, "ContextMismatch", route=route)
        refused = logs.audit("channel_refused")
        assert len(refused) == 2
        assert all("'vm_id'" in e["detail"] for e in refused)
