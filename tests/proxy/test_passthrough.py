"""Migration modes the gateway does not rewrite cross both proxies untouched: switch-host and
semi-seamless carry no migration data, so every byte of them is relayed as it came."""

from __future__ import annotations

from gateway.spice.constants import ChannelType, MigrateFlags
from gateway.spice.messages import (
    ClientMigrateEnd,
    DstInfo,
    MainInit,
    Migrate,
    MigrateBegin,
    MigrateCancel,
    MigrateConnected,
    MigrateEnd,
    MigrateFlushMark,
    MigrateSwitchHost,
)

from .conftest import LogRecords, Proxies
from .peers import ClientSession, assert_link_relayed, assert_relayed, link_client

MAIN = (ChannelType.MAIN, 0)
DISPLAY = (ChannelType.DISPLAY, 0)


async def test_switch_host_passes_through(proxies: Proxies, logs: LogRecords) -> None:
    async with proxies.pair() as rig:
        session = rig.session(0xF1, channels=[MAIN, DISPLAY])
        await session.link_source()
        await session.exchange(1)
        main = session.main
        host, port = rig.vm.target
        switch = MigrateSwitchHost(
            DstInfo(port=port, sport=port + 1, host=host, cert_subject="C=XX, CN=target")
        )
        await main.server_source.send_message(switch)
        frame = await main.client_source.expect(MigrateSwitchHost.MSG_TYPE)
        assert MigrateSwitchHost.decode_body(frame.body) == switch
        await session.exchange(2)
        for legs in session.legs.values():
            assert_link_relayed(legs.client_source, legs.server_source)
            assert_relayed(legs.server_source, legs.client_source)
            assert_relayed(legs.client_source, legs.server_source)
        assert logs.audit("switch_host", route="vm")
        assert not logs.audit("blob_sealed")


async def test_semi_seamless_migration_passes_through(proxies: Proxies, logs: LogRecords) -> None:
    async with proxies.pair() as rig:
        session = rig.session(0xF2, channels=[MAIN, DISPLAY])
        await session.link_source()
        await session.exchange(1)
        main = session.main
        host, port = rig.vm.target
        # A cancelled attempt first, then one that completes.
        for message in (MigrateBegin(DstInfo(port=port, sport=0, host=host)), MigrateCancel()):
            await main.server_source.send_message(message)
            await main.client_source.expect(message.MSG_TYPE)
        await main.server_source.send_message(MigrateBegin(DstInfo(port=port, sport=0, host=host)))
        await main.client_source.expect(MigrateBegin.MSG_TYPE)
        target_main = await link_client(rig.vm.target, ChannelType.MAIN, connection_id=0xF2)
        server_main = await rig.vm.target_server.channel(ChannelType.MAIN, connection_id=0xF2)
        await main.client_source.send_message(MigrateConnected())
        await main.server_source.expect(MigrateConnected.MSG_TYPE)
        await main.server_source.send_message(MigrateEnd())
        await main.client_source.expect(MigrateEnd.MSG_TYPE)
        # The client switches: MIGRATE_END to the destination, which starts the session afresh.
        await target_main.send_message(ClientMigrateEnd())
        await server_main.expect(ClientMigrateEnd.MSG_TYPE)
        await server_main.send_message(MainInit(session_id=0xF2))
        await target_main.expect(MainInit.MSG_TYPE)
        target_display = await link_client(rig.vm.target, ChannelType.DISPLAY, connection_id=0xF2)
        server_display = await rig.vm.target_server.channel(ChannelType.DISPLAY, connection_id=0xF2)
        await server_display.send(104, b"fresh display")
        assert (await target_display.recv()).body == b"fresh display"

        pairs = [(legs.client_source, legs.server_source) for legs in session.legs.values()]
        pairs += [(target_main, server_main), (target_display, server_display)]
        for client, server in pairs:
            assert_link_relayed(client, server)
            assert_relayed(server, client)
            assert_relayed(client, server)
        assert not logs.audit("blob_sealed")
        assert not logs.audit("channel_refused")
        for client in (target_main, target_display):
            await client.close()


async def test_cancelled_seamless_migration_seals_nothing_more(
    proxies: Proxies, logs: LogRecords
) -> None:
    """After MIGRATE_CANCEL the source has no migration to seal for."""
    async with proxies.pair() as rig:
        session = rig.session(0xF3, channels=[MAIN, DISPLAY])
        await session.link_source()
        await session.begin_migration()
        main = session.main
        await main.server_source.send_message(MigrateCancel())
        await main.client_source.expect(MigrateCancel.MSG_TYPE)
        (cancelled,) = logs.audit("migration_cancelled", route="vm")
        assert cancelled["migration"]
        legs = session.leg(DISPLAY)
        await legs.server_source.send_message(Migrate(MigrateFlags(3)))
        await legs.client_source.expect(Migrate.MSG_TYPE)
        await legs.client_source.send_message(MigrateFlushMark())
        await legs.server_source.expect(MigrateFlushMark.MSG_TYPE)
        await legs.server_source.send(2, rig.payloads[ChannelType.DISPLAY])
        assert await legs.client_source.frames_until_closed() == []
        (refused,) = logs.audit("channel_refused", reason="seal")
        assert "outside a seamless migration" in refused["detail"]
        assert not logs.audit("blob_sealed")
        assert rig.source_proxy.state.sessions.in_flight() == []
        await ping(session)


async def ping(session: ClientSession) -> None:
    await session.main.server_source.send(104, b"still here")
    assert (await session.main.client_source.recv()).body == b"still here"
