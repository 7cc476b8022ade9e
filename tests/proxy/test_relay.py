"""The relay (gateway/proxy/relay.py): order across a rewrite, backpressure both ways, large
messages, idle memory, TLS on both sides, closes from either side, and the receive buffer every
connection shares."""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import tracemalloc
from collections.abc import Callable
from typing import Any

import pytest

from gateway.proxy import relay
from gateway.proxy.relay import RECEIVE_SIZE, Leg, ReceiveBuffer
from gateway.proxy.server import ProxyServer
from gateway.spice.connection import SpiceConnection
from gateway.spice.constants import ChannelType, Direction, HeaderKind, MigrateFlags, Msg, Msgc
from gateway.spice.messages import Migrate, MigrateFlushMark, encode_data_message

from .conftest import Proxies, record_connections
from .peers import Endpoint, bounded

MAIN = (ChannelType.MAIN, 0)
DISPLAY = (ChannelType.DISPLAY, 0)


def messages(count: int, size: int, msg_type: int = 104) -> list[bytes]:
    """``count`` mini-header messages of ``size`` random bytes each: a byte that the relay
    took from a reused buffer would show."""
    return [encode_data_message_mini(msg_type, os.urandom(size)) for _ in range(count)]


def encode_data_message_mini(msg_type: int, body: bytes) -> bytes:
    return encode_data_message(HeaderKind.MINI, msg_type, body)


async def received_exactly(end: Endpoint, expected: list[bytes], what: str) -> None:
    """``end`` reads every one of ``expected``, in order, byte for byte."""
    for index, raw in enumerate(expected):
        frame = await end.recv()
        assert frame.raw == raw, f"{what}: message {index} of {len(expected)} differs"


async def until(condition: Callable[[], bool], what: str) -> None:
    async def poll() -> None:
        while not condition():
            await asyncio.sleep(0.01)

    await bounded(poll(), what)


# --- order -----------------------------------------------------------------------------------


async def test_order_is_kept_across_a_rewrite_in_the_middle_of_a_read(proxies: Proxies) -> None:
    async with proxies.pair() as rig:
        session = rig.session(0xA1, channels=[MAIN, DISPLAY])
        await session.link_source()
        await session.begin_migration()
        legs = session.leg(DISPLAY)
        client, server = legs.client_source, legs.server_source
        await server.send_message(
            Migrate(MigrateFlags.NEED_FLUSH | MigrateFlags.NEED_DATA_TRANSFER)
        )
        await client.expect(Migrate.MSG_TYPE)
        await client.send_message(MigrateFlushMark())
        await server.expect(MigrateFlushMark.MSG_TYPE)

        # Source: ordinary messages, MIGRATE_DATA, more ordinary ones (one large), one write.
        payload = rig.payloads[ChannelType.DISPLAY]
        before, after = messages(3, 100), [*messages(2, 50), *messages(1, 300_000), *messages(2, 9)]
        server.writer.write(
            b"".join(before)
            + encode_data_message_mini(Msg.MIGRATE_DATA, payload)
            + b"".join(after)
        )
        await received_exactly(client, before, "before the blob")
        blob = (await client.expect(Msg.MIGRATE_DATA)).body
        assert blob != payload  # sealed
        await received_exactly(client, after, "after the blob")

        # Target: the client relays the blob between ordinary messages, again in one write.
        target_client, target_server = legs.client_target, legs.server_target
        assert target_client is not None
        assert target_server is not None
        before, after = messages(2, 64, 101), [*messages(1, 300_000, 101), *messages(3, 7, 101)]
        target_client.writer.write(
            b"".join(before) + encode_data_message_mini(Msgc.MIGRATE_DATA, blob) + b"".join(after)
        )
        await received_exactly(target_server, before, "before the blob")
        assert (await target_server.expect(Msgc.MIGRATE_DATA)).body == payload
        await received_exactly(target_server, after, "after the blob")
        # Reading resumed after the rewrite.
        await target_client.send(101, b"still relaying")
        assert (await target_server.recv()).body == b"still relaying"


# --- backpressure ------------------------------------------------------------------------------


@pytest.mark.parametrize("sender", ["server", "client"])
async def test_a_slow_reader_holds_back_its_sender_and_loses_nothing(
    proxies: Proxies, monkeypatch: pytest.MonkeyPatch, sender: str
) -> None:
    connections = record_connections(monkeypatch)
    buffered = 65536
    async with proxies.pair(source_limits={"max_buffered_bytes": buffered}) as rig:
        session = rig.session(0xA2, channels=[MAIN, DISPLAY])
        await session.link_source()
        legs = session.leg(DISPLAY)
        source, sink = (
            (legs.server_source, legs.client_source)
            if sender == "server"
            else (legs.client_source, legs.server_source)
        )
        flood = messages(160, 256 * 1024 - 6, 104 if sender == "server" else 101)  # 40 MiB
        pushed = 0

        async def push() -> None:
            nonlocal pushed
            for message in flood:
                source.writer.write(message)
                await source.writer.drain()
                pushed += 1

        pushing = asyncio.create_task(push())
        transport = source.writer.transport
        await until(
            lambda: transport.get_write_buffer_size() > 0 or pushing.done(),
            "the sender's writes to stall",
        )
        assert not pushing.done(), "everything went through; nothing held the sender back"
        # Other channels through the same proxy still flow.
        await session.main.server_source.send(104, b"ping")
        assert (await session.main.client_source.recv()).body == b"ping"
        (display,) = [c for c in connections if c.handler and c.handler.channel == "display:0"]
        receiving = display.client if sender == "server" else display.server
        direction = Direction.SERVER_TO_CLIENT if sender == "server" else Direction.CLIENT_TO_SERVER
        held = receiving.transport.get_write_buffer_size() + display.spice.buffered(direction)
        assert held <= buffered + 2 * (RECEIVE_SIZE + len(flood[0]))

        # The reader catches up: every byte arrives, in order.
        await received_exactly(sink, flood, "the flood")
        await bounded(pushing, "the sender to finish")
        assert pushed == len(flood)


# --- large messages ------------------------------------------------------------------------------


async def test_a_large_message_across_many_reads_is_read_into_its_own_room(
    proxies: Proxies, monkeypatch: pytest.MonkeyPatch
) -> None:
    rooms: list[int] = []
    original = SpiceConnection.room

    def room(self: SpiceConnection, direction: Direction, minimum: int) -> memoryview | None:
        view = original(self, direction, minimum)
        if view is not None:
            rooms.append(len(view))
        return view

    monkeypatch.setattr(SpiceConnection, "room", room)
    async with proxies.pair() as rig:
        session = rig.session(0xA3, channels=[MAIN, DISPLAY])
        await session.link_source()
        legs = session.leg(DISPLAY)
        large = messages(1, 5 * 1024 * 1024)[0]
        small = messages(3, 40)
        # The large one arrives in pieces, with small ones on either side; both ways at once.
        for end, msg_type in ((legs.server_source, 104), (legs.client_source, 101)):
            large = encode_data_message_mini(msg_type, large[6:])
            stream = small[0] + large + small[1] + small[2]
            for start in range(0, len(stream), 100_000):
                end.writer.write(stream[start : start + 100_000])
                await end.writer.drain()
                await asyncio.sleep(0)
            other = legs.client_source if end is legs.server_source else legs.server_source
            await received_exactly(other, [small[0], large, small[1], small[2]], "the stream")
        assert rooms, "no large message was read into a room of its own"


# --- memory ------------------------------------------------------------------------------------


async def test_headers_of_huge_messages_hold_only_what_was_sent(
    proxies: Proxies, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A peer that announces the largest messages and sends a few bytes of each makes the
    proxy hold those bytes, not the announced sizes (which would spend the memory budget of
    every connection for a few bytes, and close others' channels)."""
    connections = record_connections(monkeypatch)
    async with proxies.pair() as rig:
        proxy = rig.source_proxy
        sessions = [rig.session(0xA500 + index, channels=[MAIN, DISPLAY]) for index in range(3)]
        sent = 0
        for session in sessions:
            await session.link_source()
            end = session.leg(DISPLAY).server_source
            # In pieces: the proxy reads the later ones with a partial message held, when it
            # would hand out a buffer of the announced size.
            for piece in (struct.pack("<HI", 104, 60 << 20), bytes(50_000), bytes(50_000)):
                end.writer.write(piece)
                await end.writer.drain()
                sent += len(piece)
                await until(lambda held=sent: proxy.buffered_total >= held, "the piece to arrive")
        assert proxy.buffered_total == sent
        assert not any(connection.spice._rooms for connection in connections)



async def test_an_idle_session_holds_no_read_buffer(proxies: Proxies) -> None:
    async with proxies.pair() as rig:
        proxy = rig.source_proxy
        warm = rig.session(0xA400, channels=[MAIN, DISPLAY])
        await warm.link_source()
        await warm.exchange(1)
        tracemalloc.start(6)
        try:
            before = tracemalloc.take_snapshot()
            for index in range(1, 5):
                session = rig.session(0xA400 + index, channels=[MAIN, DISPLAY])
                await session.link_source()
                await session.exchange(1)
            after = tracemalloc.take_snapshot()
        finally:
            tracemalloc.stop()
        assert len(proxy._connections) == 10
        # What the proxy's code allocated and still holds for 8 more connections, now idle
        # (the peers of this test allocate their own, left out).
        mine = [tracemalloc.Filter(True, "*/gateway/proxy/*", all_frames=True)]
        grown = after.filter_traces(mine).compare_to(before.filter_traces(mine), "filename")
        per_connection = sum(stat.size_diff for stat in grown) / 8
        assert per_connection < 12 * 1024


# --- TLS ----------------------------------------------------------------------------------------


async def test_tls_on_both_sides_relays_every_byte_both_ways(proxies: Proxies) -> None:
    async with proxies.pair(tls=True, upstream_tls=True) as rig:
        session = rig.session(0xA5, channels=[MAIN, DISPLAY])
        await session.link_source()
        legs = session.leg(DISPLAY)
        down = [*messages(20, 1000), *messages(1, 2 * 1024 * 1024), *messages(20, 17)]
        up = [*messages(10, 3000, 101), *messages(1, 1024 * 1024, 101), *messages(5, 5, 101)]

        async def send(end: Endpoint, units: list[bytes]) -> None:
            for unit in units:
                end.writer.write(unit)
                await end.writer.drain()

        await asyncio.gather(
            send(legs.server_source, down),
            send(legs.client_source, up),
            received_exactly(legs.client_source, down, "server to client"),
            received_exactly(legs.server_source, up, "client to server"),
        )
        await session.begin_migration()
        blob = await session.receive_blob(DISPLAY, rig.payloads[ChannelType.DISPLAY])
        await session.relay(DISPLAY, blob)
        assert legs.server_target is not None
        body = (await legs.server_target.expect(Msgc.MIGRATE_DATA)).body
        assert body == rig.payloads[ChannelType.DISPLAY]


# --- closing -------------------------------------------------------------------------------------


async def close_and_count(
    rig_proxy: ProxyServer, closing: Endpoint, other: Endpoint, how: str, sent: list[bytes]
) -> None:
    if how == "half-close":
        closing.writer.write_eof()
    else:
        closing.writer.transport.abort()
    if how == "half-close":
        # What was sent before the end of stream arrives, then the other side is closed too.
        assert [f.raw for f in await other.frames_until_closed()] == sent
    else:
        await other.frames_until_closed()
    await until(lambda: rig_proxy.health()["connections"] == 1, "the connection to be counted out")


@pytest.mark.parametrize("how", ["half-close", "abort"])
@pytest.mark.parametrize("side", ["client", "server"])
async def test_either_side_ending_closes_both(proxies: Proxies, side: str, how: str) -> None:
    async with proxies.pair() as rig:
        session = rig.session(0xA6, channels=[MAIN, DISPLAY])
        await session.link_source()
        legs = session.leg(DISPLAY)
        assert rig.source_proxy.health()["connections"] == 2
        closing, other = (
            (legs.client_source, legs.server_source)
            if side == "client"
            else (legs.server_source, legs.client_source)
        )
        sent = messages(5, 70_000, 101 if side == "client" else 104)
        for unit in sent:
            closing.writer.write(unit)
        if how == "half-close":
            await closing.writer.drain()
        await close_and_count(rig.source_proxy, closing, other, how, sent)
        # The other channel of the session is untouched.
        await session.main.server_source.send(104, b"alive")
        assert (await session.main.client_source.recv()).body == b"alive"


async def test_an_upstream_connected_after_the_connection_ended_is_closed(
    proxies: Proxies, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with proxies.pair(source_limits={"link_timeout": 0.5}) as rig:
        loop = asyncio.get_running_loop()
        real = loop.create_connection
        upstream = rig.vm.source_server.address
        release = asyncio.Event()
        made: list[asyncio.BaseTransport] = []

        async def connect(*args: Any, **kwargs: Any) -> Any:
            await release.wait()
            transport, protocol = await real(*args, **kwargs)
            made.append(transport)
            return transport, protocol

        async def late(*args: Any, **kwargs: Any) -> Any:
            if args[1:3] != upstream:
                return await real(*args, **kwargs)
            # Connects when released, even if the proxy gave up waiting by then.
            return await asyncio.shield(connect(*args, **kwargs))

        monkeypatch.setattr(loop, "create_connection", late)
        _, writer = await bounded(asyncio.open_connection(*rig.vm.source), "a connection")
        proxy = rig.source_proxy
        await until(lambda: proxy.health()["connections"] == 1, "the client to be counted in")
        # The upstream does not answer within the link timeout: the connection ends.
        await until(lambda: proxy.health()["connections"] == 0, "the client to be counted out")
        release.set()
        await until(lambda: bool(made) and made[0].is_closing(), "the late upstream to close")
        writer.close()


# --- the shared receive buffer ---------------------------------------------------------------


class KeepingTransport(asyncio.Transport):
    """A transport that sends ``sends`` bytes of each write and keeps the rest as the very
    object it was given, as the socket transport of Python 3.12 and later does."""

    def __init__(self, sends: int, tls: bool = False) -> None:
        super().__init__()
        self.sends = sends
        self.sent = bytearray()
        self.queue: list[bytes | bytearray | memoryview] = []
        self.given: list[bytes | bytearray | memoryview] = []
        self.tls = tls

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return object() if name == "ssl_object" and self.tls else default

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.given.append(data)
        if not self.queue:
            self.sent += data[: self.sends]
            data = memoryview(data)[self.sends :]
        if len(data):
            self.queue.append(data)

    def get_write_buffer_size(self) -> int:
        return sum(len(d) for d in self.queue)

    def drained(self) -> bytes:
        return bytes(self.sent) + b"".join(bytes(d) for d in self.queue)


class Owner:
    def leg_made(self, leg: Leg) -> None:
        pass


def leg_writing_to(transport: KeepingTransport, buffer: ReceiveBuffer) -> Leg:
    leg = Leg(Owner(), Direction.SERVER_TO_CLIENT, buffer)  # type: ignore[arg-type]
    leg.connection_made(transport)
    return leg


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_a_buffer_a_transport_still_holds_is_never_read_into_again(
    tls: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(relay, "TRANSPORT_KEEPS_VIEWS", True)
    buffer = ReceiveBuffer()
    transport = KeepingTransport(sends=1000, tls=tls)
    leg = leg_writing_to(transport, buffer)
    expected = b""
    for round_ in range(4):
        # A read into the receive buffer, relayed; then the next read overwrites the buffer.
        chunk = os.urandom(5000)
        buffer.view[: len(chunk)] = chunk
        leg.send(buffer.view[: len(chunk)])
        expected += chunk
        buffer.view[:] = bytes([round_]) * RECEIVE_SIZE
    assert transport.drained() == expected
    # A view goes only to a plain transport with nothing queued: the first write.
    views = [isinstance(data, memoryview) for data in transport.given]
    assert views == [not tls, False, False, False]


def test_a_view_that_went_out_whole_keeps_the_buffer(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(relay, "TRANSPORT_KEEPS_VIEWS", True)
    buffer = ReceiveBuffer()
    first = buffer.view
    leg = leg_writing_to(KeepingTransport(sends=RECEIVE_SIZE), buffer)
    leg.send(buffer.view[:100])
    assert buffer.view is first


async def test_the_socket_transport_keeps_views_as_the_relay_assumes() -> None:
    """What TRANSPORT_KEEPS_VIEWS says of this Python's asyncio, found out: a write the socket
    cannot take at once, then the written buffer changed before the reader drains it."""
    loop = asyncio.get_running_loop()
    ours, theirs = socket.socketpair()
    with ours, theirs:
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        theirs.setblocking(False)
        transport, _ = await loop.connect_accepted_socket(asyncio.Protocol, ours)
        try:
            written = bytearray(os.urandom(4 << 20))
            sent = bytes(written)
            transport.write(memoryview(written))
            assert transport.get_write_buffer_size() > 0, "the socket took all of it"
            written[:] = bytes(len(written))
            got = bytearray()
            while len(got) < len(sent):
                try:
                    got += theirs.recv(1 << 20)
                except BlockingIOError:
                    await asyncio.sleep(0.001)
            assert (bytes(got) != sent) is relay.TRANSPORT_KEEPS_VIEWS
        finally:
            transport.abort()


async def test_a_slow_reader_gets_every_byte_while_the_buffer_is_reused(
    proxies: Proxies,
) -> None:
    async with proxies.pair() as rig:
        session = rig.session(0xA7, channels=[MAIN, DISPLAY])
        await session.link_source()
        legs = session.leg(DISPLAY)
        # Many reads of distinct bytes while the client reads slowly, so that writes to it
        # go out in part; meanwhile main traffic reuses the receive buffer.
        flood = messages(400, 20_000)
        for unit in flood:
            legs.server_source.writer.write(unit)
        reading = asyncio.create_task(slow_reader(legs.client_source, flood))
        for index in range(50):
            body = os.urandom(3000)
            await session.main.server_source.send(104, body)
            assert (await session.main.client_source.recv()).body == body, f"ping {index}"
        await bounded(reading, "the slow reader")


async def slow_reader(end: Endpoint, expected: list[bytes]) -> None:
    for index, raw in enumerate(expected):
        assert (await end.recv()).raw == raw, f"message {index} differs"
        if index % 10 == 0:
            await asyncio.sleep(0.002)

