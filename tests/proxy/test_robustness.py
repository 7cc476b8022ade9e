"""Misbehaving clients and load: each bad connection is closed on its own, the rest carry on.

Most tests keep one well-behaved session open beside the misbehaving connection and check
that it still carries traffic afterwards.
"""

from __future__ import annotations

import asyncio
import struct
from typing import Any

import pytest

from gateway.proxy import server as server_module
from gateway.proxy.server import READ_SIZE
from gateway.spice.constants import AuthMechanism, ChannelType, Direction, MainMsgc, Msg, Msgc
from gateway.spice.link import LinkMess
from gateway.spice.messages import encode_data_message
from gateway.spice.scripted import client_link

from .conftest import LogRecords, Proxies, record_connections
from .peers import (
    MAIN_CAPS,
    ClientSession,
    LinkRefused,
    bounded,
    link_client,
)

MAIN = (ChannelType.MAIN, 0)
DISPLAY = (ChannelType.DISPLAY, 0)
INPUTS = (ChannelType.INPUTS, 0)


async def ping_pong(session: ClientSession, rounds: int = 3) -> None:
    """Ordinary traffic on the session's main channel, both ways."""
    legs = session.main
    for index in range(rounds):
        body = f"ping {index}".encode()
        await legs.server_source.send(104, body)
        assert (await legs.client_source.recv()).body == body
        await legs.client_source.send(101, body)
        assert (await legs.server_source.recv()).body == body


async def raw_connection(
    address: tuple[str, int],
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await bounded(asyncio.open_connection(*address), f"a connection to {address}")


async def assert_closed(reader: asyncio.StreamReader) -> bytes:
    """Everything the proxy still sends before it closes the connection."""
    try:
        return await bounded(reader.read(), "the proxy to close the connection")
    except ConnectionError:
        return b""


def link_header(major: int = 2, size: int = 18, magic: bytes = b"REDQ") -> bytes:
    return magic + struct.pack("<III", major, 2, size)


GARBAGE = [
    pytest.param(b"GET / HTTP/1.1\r\nHost: spice\r\n\r\n", id="http"),
    pytest.param(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(32), id="tls-hello"),
    pytest.param(link_header(major=3), id="major-version"),
    pytest.param(link_header(size=10), id="link-size-too-small"),
    pytest.param(link_header(size=5000), id="link-size-too-large"),
    pytest.param(
        link_header(size=26) + struct.pack("<IBBIII", 0, 2, 0, 2000, 0, 18) + bytes(8),
        id="caps-count",
    ),
    pytest.param(
        link_header(size=22) + struct.pack("<IBBIII", 0, 2, 0, 1, 0, 200) + bytes(4),
        id="caps-offset",
    ),
]


@pytest.mark.parametrize("garbage", GARBAGE)
async def test_malformed_link_is_closed_without_disturbing_others(
    proxies: Proxies, logs: LogRecords, garbage: bytes
) -> None:
    async with proxies.pair() as rig:
        session = rig.session(0xE1, channels=[MAIN])
        await session.link_source()
        reader, writer = await raw_connection(rig.vm.source)
        writer.write(garbage)
        assert await assert_closed(reader) == b""
        writer.close()
        await rig.vm.source_server.wait_unlinked(1)
        # The proxy forwards a link unit only once it has checked it: no link message got out.
        assert len(rig.vm.source_server.unlinked_bytes[0]) <= 16
        assert logs.messages("closing channel")[0]["error"] == "ProtocolError"
        metrics = rig.source_proxy.metrics
        assert sum(
            metrics.get("smg_refused_total", reason="protocol", channel=channel)
            for channel in ("unlinked", "display")
        ) == 1
        await ping_pong(session)


@pytest.mark.parametrize("direction", ["client", "server"])
async def test_oversized_message_closes_only_its_channel(
    proxies: Proxies, logs: LogRecords, direction: str
) -> None:
    limits = {"max_message_size": 4096}
    async with proxies.pair(source_limits=limits) as rig:
        session = rig.session(0xE2, channels=[MAIN, DISPLAY])
        await session.link_source()
        legs = session.leg(DISPLAY)
        # The proxy allows the limit plus room for a sealed envelope's framing.
        limit = 4096 + server_module.ENVELOPE_SLACK
        sender, receiver = (
            (legs.client_source, legs.server_source)
            if direction == "client"
            else (legs.server_source, legs.client_source)
        )
        await sender.send(104, bytes(limit))  # at the limit: fine
        assert len((await receiver.recv()).body) == limit
        # Only a header: the proxy must refuse before waiting for (and buffering) the body.
        sender.writer.write(struct.pack("<HI", 104, limit + 1))
        assert await receiver.frames_until_closed() == []
        assert await sender.frames_until_closed() == []
        detail = logs.messages("closing channel")[0]["detail"]
        assert "more than the maximum message size" in detail
        await ping_pong(session)


async def test_malformed_migration_message_closes_its_channel(
    proxies: Proxies, logs: LogRecords
) -> None:
    async with proxies.pair() as rig:
        session = rig.session(0xE3, channels=[MAIN, DISPLAY])
        await session.link_source()
        legs = session.leg(DISPLAY)
        await legs.client_source.send(Msgc.MIGRATE_FLUSH_MARK, b"junk")  # must be empty
        assert await legs.server_source.frames_until_closed() == []
        assert await legs.client_source.frames_until_closed() == []
        assert "body must be empty" in logs.messages("closing channel")[0]["detail"]
        await ping_pong(session)


async def test_unrequested_flush_mark_never_reaches_the_server(
    proxies: Proxies, logs: LogRecords
) -> None:
    """spice-server aborts on a FLUSH_MARK it did not ask for: the proxy closes the channel."""
    async with proxies.pair() as rig:
        session = rig.session(0xE5, channels=[MAIN, DISPLAY])
        await session.link_source()
        legs = session.leg(DISPLAY)
        await legs.client_source.send(Msgc.MIGRATE_FLUSH_MARK, b"")
        assert await legs.server_source.frames_until_closed() == []
        assert await legs.client_source.frames_until_closed() == []
        (refusal,) = logs.audit("channel_refused")
        assert refusal["reason"] == "protocol"
        assert "FLUSH_MARK" in refusal["detail"]
        await ping_pong(session)


async def test_requested_flush_mark_passes_once(proxies: Proxies, logs: LogRecords) -> None:
    async with proxies.pair() as rig:
        session = rig.session(0xE6, channels=[MAIN, DISPLAY])
        await session.link_source()
        legs = session.leg(DISPLAY)
        await legs.server_source.send(Msg.MIGRATE, struct.pack("<I", 1))  # NEED_FLUSH only
        assert (await legs.client_source.recv()).msg_type == Msg.MIGRATE
        await legs.client_source.send(Msgc.MIGRATE_FLUSH_MARK, b"")
        assert (await legs.server_source.recv()).msg_type == Msgc.MIGRATE_FLUSH_MARK
        await legs.client_source.send(Msgc.MIGRATE_FLUSH_MARK, b"")  # a second one: refused
        assert await legs.server_source.frames_until_closed() == []
        assert logs.audit("channel_refused")[0]["reason"] == "protocol"


async def test_dst_do_seamless_on_a_new_session_is_refused(
    proxies: Proxies, logs: LogRecords
) -> None:
    """DST_DO_SEAMLESS on a main channel linked with connection id 0 aborts spice-server."""
    async with proxies.pair() as rig:
        session = rig.session(0xE7, channels=[MAIN])
        await session.link_source()
        legs = session.main
        await legs.client_source.send(MainMsgc.MIGRATE_DST_DO_SEAMLESS, struct.pack("<I", 1))
        assert await legs.server_source.frames_until_closed() == []
        (refusal,) = logs.audit("channel_refused")
        assert "not a migration target" in refusal["detail"]


async def test_slow_client_gets_everything_and_holds_back_only_its_server(
    proxies: Proxies, monkeypatch: pytest.MonkeyPatch
) -> None:
    connections = record_connections(monkeypatch)
    buffered = 65536
    async with proxies.pair(source_limits={"max_buffered_bytes": buffered}) as rig:
        session = rig.session(0xE4, channels=[MAIN, DISPLAY])
        await session.link_source()
        legs = session.leg(DISPLAY)
        body = bytes(range(256)) * 1024  # 256 KiB, display-sized
        count = 192  # 48 MiB: far more than the socket buffers on the way can hold
        message = encode_data_message(legs.server_source.kind, 104, body)
        pushed = 0

        async def flood() -> None:
            nonlocal pushed
            for _ in range(count):
                legs.server_source.writer.write(message)
                await legs.server_source.writer.drain()
                pushed += 1

        flooding = asyncio.create_task(flood())
        transport = legs.server_source.writer.transport

        async def stalled() -> None:
            while transport.get_write_buffer_size() == 0:
                assert not flooding.done(), "the server pushed everything; nothing held it back"
                await asyncio.sleep(0.01)

        await bounded(stalled(), "the server's writes to stall")
        # Meanwhile the other channels through the same proxy flow freely.
        await ping_pong(session, rounds=10)
        assert pushed < count
        (display,) = [c for c in connections if c.handler.channel == "display:0"]
        held = display.client_writer.transport.get_write_buffer_size() + display.spice.buffered(
            Direction.SERVER_TO_CLIENT
        )
        assert held <= buffered + 2 * (READ_SIZE + len(message))

        # Now the client reads, slowly at first: every byte arrives, in order.
        reader = legs.client_source.reader
        for index in range(count):
            got = await bounded(reader.readexactly(len(message)), f"message {index}")
            assert got == message, f"message {index} differs"
            if index < 16:
                await asyncio.sleep(0.005)
        await bounded(flooding, "the server to finish")
        await ping_pong(session)


async def test_hundred_concurrent_connections(proxies: Proxies) -> None:
    async with proxies.pair() as rig:
        server = rig.vm.source_server

        async def one(index: int) -> None:
            connection_id = 0x1000 + index
            client = await link_client(
                rig.vm.source, ChannelType.DISPLAY, connection_id=connection_id
            )
            peer = await server.channel(ChannelType.DISPLAY, connection_id=connection_id)
            for round_ in range(3):
                body = f"{index}:{round_}".encode() * (index + 1)
                await peer.send(104, body)
                assert (await client.recv()).body == body
                await client.send(101, body[::-1])
                assert (await peer.recv()).body == body[::-1]
            ready.append(client)

        ready: list[Any] = []
        await asyncio.gather(*(one(i) for i in range(100)))
        assert rig.source_proxy.health()["connections"] == 100
        for client in ready:
            await client.close()


async def test_connection_limit_rejects_extras(proxies: Proxies, logs: LogRecords) -> None:
    async with proxies.pair(source_limits={"max_connections": 3}) as rig:
        session = rig.session(0xE5, channels=[MAIN, DISPLAY, INPUTS])
        await session.link_source()
        reader, writer = await raw_connection(rig.vm.source)
        writer.write(client_link(ChannelType.DISPLAY, 1, connection_id=0xE5))
        assert await assert_closed(reader) == b""
        writer.close()
        assert rig.source_proxy.metrics.get("smg_connections_rejected_total", route="vm") == 1
        assert logs.messages("connection rejected")
        assert rig.vm.source_server.accepted == 3  # the extra never reached spice-server
        await ping_pong(session)

        # A slot that frees up can be used again.
        await session.leg(INPUTS).client_source.close()

        async def freed() -> None:
            while rig.source_proxy.health()["connections"] > 2:
                await asyncio.sleep(0.01)

        await bounded(freed(), "the closed connection to be released")
        again = await link_client(rig.vm.source, ChannelType.INPUTS, 1, connection_id=0xE5)
        await rig.vm.source_server.channel(ChannelType.INPUTS, 1, connection_id=0xE5)
        await again.close()


@pytest.mark.parametrize("stall", ["inside-link-header", "before-ticket"])
async def test_link_that_never_completes_is_closed(
    proxies: Proxies, logs: LogRecords, stall: str
) -> None:
    async with proxies.pair(source_limits={"link_timeout": 0.5}) as rig:
        # Linked before the stalled one, so its own link watchdog has long fired by the end.
        session = rig.session(0xE6, channels=[MAIN])
        await session.link_source()
        reader, writer = await raw_connection(rig.vm.source)
        link = client_link(ChannelType.DISPLAY, connection_id=0xE6)
        writer.write(link[:10] if stall == "inside-link-header" else link)
        received = await assert_closed(reader)
        if stall == "before-ticket":
            assert len(received) > 16  # the server's link reply got through, then nothing more
        writer.close()
        await rig.vm.source_server.wait_unlinked(1)
        assert logs.messages("link stage timed out")
        await ping_pong(session)


async def test_sasl_selection_is_refused_with_a_clear_log_line(
    proxies: Proxies, logs: LogRecords
) -> None:
    async with proxies.pair() as rig:
        with pytest.raises(LinkRefused):
            await link_client(rig.vm.source, ChannelType.MAIN, mechanism=AuthMechanism.SASL)
        await rig.vm.source_server.wait_unlinked(1)
        # spice-server got the link message, never the SASL choice.
        sent = client_link(ChannelType.MAIN, channel_caps=MAIN_CAPS)
        assert rig.vm.source_server.unlinked_bytes == [sent]
        assert LinkMess.decode(sent[16:]).channel_type == ChannelType.MAIN
        (line,) = logs.messages("closing channel")
        assert line["error"] == "ProtocolError"
        assert "SASL" in line["detail"]
        metrics = rig.source_proxy.metrics
        assert metrics.get("smg_refused_total", reason="protocol", channel="main") == 1


async def test_unreachable_upstream_closes_the_client(proxies: Proxies, logs: LogRecords) -> None:
    async with proxies.pair() as rig:
        await rig.vm.source_server.close()
        reader, writer = await raw_connection(rig.vm.source)
        writer.write(client_link(ChannelType.MAIN))
        assert await assert_closed(reader) == b""
        writer.close()
        (line,) = logs.messages("upstream unreachable")
        assert line["route"] == "vm"
