"""A whole seamless migration of every channel kind through a source proxy and a target proxy.

The client leg must carry only sealed bytes; the target spice-server must get the very bytes
the source spice-server sent; everything else must cross both proxies unchanged.
"""

from __future__ import annotations

import asyncio
import struct

import pytest

from gateway import native
from gateway.envelope import MAGIC, read_header
from gateway.proxy import channel as channel_module
from gateway.spice.constants import ChannelType, HeaderKind, Msgc
from schemas import (
    CharDeviceState,
    DisplayState,
    GlzDictionary,
    LossyRect,
    LossySurface,
    SurfacesLossless,
    SurfacesLossy,
    UsbredirState,
)
from schemas.streams import usbredir_packet

from .conftest import SOURCE_HOST, TARGET_HOST, LogRecords, Proxies, Rig
from .peers import (
    ALL_CHANNELS,
    NATIVE_MAGICS,
    ClientSession,
    assert_link_relayed,
    assert_relayed,
)


async def migrate_session(rig: Rig, session: ClientSession) -> dict[tuple[int, int], bytes]:
    """Link, talk, begin, talk, migrate every channel concurrently, talk on the target.

    Returns the sealed blob the client received for each channel.
    """
    await session.link_source()
    await session.exchange(1)
    await session.begin_migration()
    await session.exchange(2)
    channels = list(session.legs)
    blobs = await asyncio.gather(
        *(session.migrate_channel(ch, rig.payloads[ChannelType(ch[0])]) for ch in channels)
    )
    for channel in channels:
        server = session.leg(channel).server_target
        assert server is not None
        frame = await server.expect(Msgc.MIGRATE_DATA)
        assert frame.body == rig.payloads[ChannelType(channel[0])], f"{channel}: native bytes"
    await session.exchange(3, target=True)
    return dict(zip(channels, blobs, strict=True))


def assert_only_sealed(blobs: dict[tuple[int, int], bytes], rig: Rig) -> None:
    for channel, blob in blobs.items():
        assert blob.startswith(MAGIC), channel
        assert not any(magic in blob for magic in NATIVE_MAGICS), f"{channel}: native magic"
        assert rig.payloads[ChannelType(channel[0])] not in blob
        assert read_header(blob).key_id == read_header(next(iter(blobs.values()))).key_id


def assert_everything_else_relayed(session: ClientSession) -> None:
    for legs in session.legs.values():
        assert legs.client_target is not None
        assert legs.server_target is not None
        for client, server in (
            (legs.client_source, legs.server_source),
            (legs.client_target, legs.server_target),
        ):
            assert_link_relayed(client, server)
            assert_relayed(server, client)
            assert_relayed(client, server)


@pytest.mark.parametrize(
    ("client_mini", "server_mini", "tls", "upstream_tls"),
    [
        pytest.param(True, True, False, False, id="mini-headers"),
        pytest.param(False, True, False, False, id="client-without-mini-header"),
        pytest.param(True, False, False, False, id="server-without-mini-header"),
        pytest.param(True, True, True, False, id="tls-client-leg"),
        pytest.param(False, True, True, True, id="tls-both-legs-full-header"),
    ],
)
async def test_every_channel_migrates_through_both_proxies(
    proxies: Proxies,
    logs: LogRecords,
    client_mini: bool,
    server_mini: bool,
    tls: bool,
    upstream_tls: bool,
) -> None:
    async with proxies.pair(tls=tls, upstream_tls=upstream_tls, server_mini=server_mini) as rig:
        session = rig.session(0x5E55_1001, mini_header=client_mini)
        blobs = await migrate_session(rig, session)

        assert set(blobs) == set(ALL_CHANNELS)
        assert_only_sealed(blobs, rig)
        assert_everything_else_relayed(session)
        expected = HeaderKind.MINI if client_mini and server_mini else HeaderKind.FULL
        assert {legs.client_source.kind for legs in session.legs.values()} == {expected}

        vm = str(rig.vm.vm_id)
        accepted = logs.audit("migration_accepted", vm=vm)
        assert len(accepted) == 1
        assert accepted[0]["channels"] == len(ALL_CHANNELS)
        assert len(accepted[0]["channel_list"]) == len(ALL_CHANNELS)
        sealed = logs.audit("blob_sealed", vm=vm, target=TARGET_HOST)
        opened = logs.audit("blob_accepted", vm=vm, source=SOURCE_HOST)
        assert len(sealed) == len(opened) == len(ALL_CHANNELS)
        # One migration id from MIGRATE_BEGIN_SEAMLESS, pinned on the target by the first blob.
        assert {e["migration"] for e in sealed + opened + accepted} == {accepted[0]["migration"]}
        assert not logs.audit("channel_refused")
        (sealed_all,) = logs.audit("migration_sealed", vm=vm)
        assert sealed_all["channels"] == len(ALL_CHANNELS)
        assert rig.target_proxy.metrics.get("smg_migrations_completed_total") == 1
        # Both hosts' parts are done although every connection is still open.
        assert rig.source_proxy.state.sessions.in_flight() == []
        assert rig.target_proxy.state.sessions.in_flight() == []
        for channel in ("main", "display", "inputs", "smartcard", "usbredir", "port", "webdav"):
            assert rig.source_proxy.metrics.get("smg_sealed_total", channel=channel) == 1
            assert rig.target_proxy.metrics.get("smg_opened_total", channel=channel) == 1


async def test_sessions_migrate_one_after_another(proxies: Proxies, logs: LogRecords) -> None:
    """Each migration gets its own id; the replay guard keeps every blob of both."""
    async with proxies.pair() as rig:
        for session_id in (71, 72):
            await migrate_session(rig, rig.session(session_id))
        accepted = logs.audit("migration_accepted")
        assert len(accepted) == 2
        assert accepted[0]["migration"] != accepted[1]["migration"]
        assert len(rig.target_proxy.replay_guard) == 2 * len(ALL_CHANNELS)


async def test_stop_lets_a_migration_in_flight_finish(proxies: Proxies, logs: LogRecords) -> None:
    """SIGTERM's path: no new connections, but the open channels may finish the migration."""
    async with proxies.pair(target_limits={"shutdown_grace": 30.0}) as rig:
        session = rig.session(0x5E55_2001)
        await session.link_source()
        await session.begin_migration()
        display = (ChannelType.DISPLAY, 0)
        rest = [channel for channel in session.legs if channel != display]
        for channel in rest:
            await session.migrate_channel(channel, rig.payloads[ChannelType(channel[0])])
        blob = await session.receive_blob(display, rig.payloads[ChannelType.DISPLAY])
        assert len(rig.target_proxy.state.sessions.in_flight()) == 1

        stopping = asyncio.create_task(rig.target_proxy.stop())
        await asyncio.sleep(0)
        assert rig.target_proxy.health()["status"] == "stopping"
        # Still waiting for the one channel left.
        assert not stopping.done()
        await session.relay(display, blob)
        await asyncio.wait_for(stopping, 10)
        server = session.leg(display).server_target
        assert server is not None
        assert (await server.expect(Msgc.MIGRATE_DATA)).body == rig.payloads[ChannelType.DISPLAY]
        assert len(logs.audit("migration_accepted")) == 1


async def test_large_pending_device_data_migrates(proxies: Proxies, logs: LogRecords) -> None:
    """A usbredir channel with 300 KB still to write to the guest: sealed off the event loop,
    and larger than one read on every leg."""
    data = bytes(range(256)) * 240  # 60 KiB of bulk IN data per packet, five packets
    pending = b"".join(
        usbredir_packet(101, struct.pack("<BBHIH", 0x81, 0, len(data), 0, 0), data, i)
        for i in range(5)
    )
    state = UsbredirState(
        device=CharDeviceState(
            connected=True,
            num_client_tokens=0xFFFF_FFFF,
            num_send_tokens=0xFFFF_FFFF,
            write_size=len(pending),
            write_num_client_tokens=5,
            write_data=pending,
        )
    )
    async with proxies.pair() as rig:
        rig.payloads[ChannelType.USBREDIR] = native.encode(state, ChannelType.USBREDIR)
        assert len(rig.payloads[ChannelType.USBREDIR]) > channel_module.INLINE_SEAL_LIMIT
        session = rig.session(0x5E55_3001)
        blobs = await migrate_session(rig, session)
        assert_only_sealed(blobs, rig)
        assert pending not in blobs[(ChannelType.USBREDIR, 0)]
        assert logs.audit("migration_accepted")[0]["channels"] == len(ALL_CHANNELS)


@pytest.mark.parametrize(
    ("setting", "low_bandwidth", "read_as"),
    [("auto", False, "lossless"), ("auto", True, "lossy"), ("never", True, "lossless")],
)
async def test_target_writes_the_surface_list_its_server_reads(
    proxies: Proxies, setting: str, low_bandwidth: bool, read_as: str
) -> None:
    """A source with jpeg-wan-compression=always writes a lossy list whatever low_bandwidth
    says; the target proxy hands its spice-server the list in the format it will read."""
    source_state = DisplayState(
        message_serial=5,
        low_bandwidth=low_bandwidth,
        pixmap_cache_id=1,
        pixmap_cache_size=1 << 20,
        pixmap_cache_freezer=False,
        pixmap_cache_clients=(0, 0, 0, 0),
        glz_dict_id=1,
        glz_dict=GlzDictionary(window_size=1 << 20, max_encoders=4, last_image_id=3),
        surfaces=SurfacesLossy(
            surfaces=(
                LossySurface(id=0, lossy_rect=LossyRect(left=0, top=0, right=720, bottom=400)),
                LossySurface(id=1, lossy_rect=LossyRect(left=0, top=0, right=0, bottom=0)),
            )
        ),
    )
    async with proxies.pair(target_route={"jpeg_wan_compression": setting}) as rig:
        rig.payloads[ChannelType.DISPLAY] = native.encode(source_state, ChannelType.DISPLAY)
        session = rig.session(0x5E55_4001)
        await session.link_source()
        await session.begin_migration()
        display = (ChannelType.DISPLAY, 0)
        await session.migrate_channel(display, rig.payloads[ChannelType.DISPLAY])
        server = session.leg(display).server_target
        assert server is not None
        body = (await server.expect(Msgc.MIGRATE_DATA)).body
        delivered = native.decode(ChannelType.DISPLAY, body)
        assert isinstance(delivered, DisplayState)
        assert delivered.surfaces.kind == read_as
        if read_as == "lossless":
            assert delivered.surfaces == SurfacesLossless(ids=(0, 1))
            assert len(body) == 84 + 2 * 4
        else:
            assert body == rig.payloads[ChannelType.DISPLAY]
        assert delivered.model_dump(exclude={"surfaces"}) == source_state.model_dump(
            exclude={"surfaces"}
        )
