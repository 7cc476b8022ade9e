"""Scripted SPICE peers for the proxy tests: a server that links channels as spice-server does and
a client that links them as spice-gtk does, both built on the project's own encoders.

Both peers record every data message they send and receive (exact wire bytes), so a test can
compare what one end sent with what the other end got. :class:`ClientSession` plays one client
session through a seamless migration step by step, the order a real migration runs in. Every
wait is bounded by :data:`TIMEOUT`.

The framing here is read with plain ``readexactly`` calls, not with the gateway's own parser:
a bug in that parser must not be able to hide itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import struct
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import gateway
from gateway import native
from gateway.errors import GatewayError
from gateway.spice.constants import (
    LINK_HEADER_SIZE,
    LINK_RESULT_SIZE,
    TICKET_SIZE,
    AuthMechanism,
    ChannelType,
    CommonCap,
    Direction,
    HeaderKind,
    LinkError,
    MainCap,
    MigrateFlags,
    Msg,
    Msgc,
)
from gateway.spice.link import (
    LinkHeader,
    LinkMess,
    LinkReply,
    decode_u32,
    encode_auth_mechanism,
    encode_link_result,
    has_cap,
)
from gateway.spice.messages import (
    DstInfo,
    MainInit,
    Migrate,
    MigrateBeginSeamless,
    MigrateConnectedSeamless,
    MigrateDstDoSeamless,
    MigrateDstSeamlessAck,
    MigrateFlushMark,
    MigrationMessage,
    encode_data_message,
)
from gateway.spice.scripted import PLACEHOLDER_TICKET, client_link, server_link_reply
from schemas import (
    AgentReadState,
    AgentWriteState,
    CharDeviceState,
    DisplayState,
    GlzDictionary,
    InputsState,
    MainState,
    SmartcardState,
    SpicevmcState,
    StateModel,
    SurfacesLossless,
    UsbredirState,
)

__all__ = [
    "ALL_CHANNELS",
    "MAIN_CAPS",
    "NATIVE_MAGICS",
    "TIMEOUT",
    "ClientSession",
    "Endpoint",
    "Frame",
    "LinkRefused",
    "ScriptedServer",
    "bounded",
    "link_client",
    "native_payloads",
    "ordinary_bodies",
]

#: Upper bound of every single wait in the scripted peers.
TIMEOUT = 10.0

#: The first four bytes of every native payload kind; none may reach a client.
NATIVE_MAGICS = (b"MNMD", b"DCMD", b"ICMD", b"SCMD", b"SVMD")

#: Every channel kind that migrates with data, in the order a client links them (main first).
ALL_CHANNELS: tuple[tuple[ChannelType, int], ...] = (
    (ChannelType.MAIN, 0),
    (ChannelType.DISPLAY, 0),
    (ChannelType.INPUTS, 0),
    (ChannelType.SMARTCARD, 0),
    (ChannelType.USBREDIR, 0),
    (ChannelType.PORT, 0),
    (ChannelType.WEBDAV, 0),
)

#: Main-channel caps of spice-gtk and of a 0.15.2 spice-server.
MAIN_CAPS = (
    MainCap.SEMI_SEAMLESS_MIGRATE,
    MainCap.NAME_AND_UUID,
    MainCap.AGENT_CONNECTED_TOKENS,
    MainCap.SEAMLESS_MIGRATE,
)

_MINI = struct.Struct("<HI")
_FULL = struct.Struct("<QHII")

T = TypeVar("T")


async def bounded(awaitable: Awaitable[T], what: str, timeout: float = TIMEOUT) -> T:
    """``awaitable`` within ``timeout`` seconds, or an AssertionError naming what was awaited."""
    try:
        return await asyncio.wait_for(awaitable, timeout)
    except TimeoutError:
        raise AssertionError(f"timed out after {timeout} s waiting for {what}") from None


class LinkRefused(Exception):
    """The link stage did not end with OK (the proxy or the server closed or refused it)."""


@dataclass(frozen=True)
class Frame:
    """One data message as it crossed the wire."""

    msg_type: int
    body: bytes = field(repr=False)
    raw: bytes = field(repr=False)
    serial: int | None = None

    @property
    def is_migrate_data(self) -> bool:
        # Type 2 server->client and type 5 client->server; the tests never use either number
        # for anything else.
        return self.msg_type in (Msg.MIGRATE_DATA, Msgc.MIGRATE_DATA)


class Endpoint:
    """The data stage of one linked channel connection, at either end."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        kind: HeaderKind,
        mess: LinkMess,
        *,
        link_sent: bytes,
        link_received: bytes,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.kind = kind
        self.mess = mess
        self.link_sent = link_sent
        self.link_received = link_received
        self.sent: list[Frame] = []
        self.received: list[Frame] = []
        self._serial = 0

    @property
    def key(self) -> tuple[int, int]:
        return (self.mess.channel_type, self.mess.channel_id)

    def __repr__(self) -> str:
        return f"Endpoint(channel={self.key}, connection_id={self.mess.connection_id})"

    async def send(self, msg_type: int, body: bytes = b"") -> Frame:
        """Send one data message; the full header numbers messages from 1, as both ends do."""
        self._serial += 1
        serial = self._serial if self.kind is HeaderKind.FULL else None
        raw = encode_data_message(self.kind, msg_type, body, serial=serial or 0)
        self.writer.write(raw)
        await bounded(self.writer.drain(), f"{self!r} to accept {len(raw)} bytes")
        frame = Frame(msg_type, body, raw, serial)
        self.sent.append(frame)
        return frame

    async def send_message(self, message: MigrationMessage) -> Frame:
        return await self.send(message.MSG_TYPE, message.encode_body())

    async def recv(self, timeout: float = TIMEOUT) -> Frame:
        """The next data message; ``asyncio.IncompleteReadError`` at end of stream."""
        header = await bounded(
            self.reader.readexactly(self.kind.size), f"a message header on {self!r}", timeout
        )
        serial: int | None
        if self.kind is HeaderKind.MINI:
            msg_type, size = _MINI.unpack(header)
            serial = None
        else:
            serial, msg_type, size, _ = _FULL.unpack(header)
        body = await bounded(
            self.reader.readexactly(size), f"a {size}-byte body on {self!r}", timeout
        )
        frame = Frame(msg_type, body, header + body, serial)
        self.received.append(frame)
        return frame

    async def expect(self, msg_type: int) -> Frame:
        frame = await self.recv()
        assert frame.msg_type == msg_type, f"{self!r}: got type {frame.msg_type}, not {msg_type}"
        return frame

    async def frames_until_closed(self, timeout: float = TIMEOUT) -> list[Frame]:
        """Every message until the other end closes the connection (within ``timeout``)."""
        frames: list[Frame] = []
        while True:
            try:
                frames.append(await self.recv(timeout))
            except asyncio.IncompleteReadError as end:
                if end.partial:
                    raise AssertionError(f"{self!r}: closed inside a message") from None
                return frames
            except ConnectionError:
                return frames

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError, TimeoutError):
            await asyncio.wait_for(self.writer.wait_closed(), TIMEOUT)


def _kind(mine: Sequence[int], theirs: Sequence[int]) -> HeaderKind:
    """Mini header iff both ends advertise it (a peer without the cap does not know it)."""
    both = has_cap(mine, CommonCap.MINI_HEADER) and has_cap(theirs, CommonCap.MINI_HEADER)
    return HeaderKind.MINI if both else HeaderKind.FULL


def _selection(mine: Sequence[int], theirs: Sequence[int]) -> bool:
    return has_cap(mine, CommonCap.PROTOCOL_AUTH_SELECTION) and has_cap(
        theirs, CommonCap.PROTOCOL_AUTH_SELECTION
    )


# --- the server ------------------------------------------------------------------------------

ChannelKey = tuple[int, int, int]
"""(connection_id, channel_type, channel_id) as a client linked it."""


class ScriptedServer:
    """A spice-server stand-in: completes every channel's link stage, then hands the linked
    connection to the test, which scripts what the server says."""

    def __init__(
        self,
        name: str,
        *,
        mini_header: bool = True,
        auth_selection: bool = True,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.name = name
        self.tls = tls
        self.mini_header = mini_header
        self.auth_selection = auth_selection
        #: Connections accepted, and those that ended before their link completed.
        self.accepted = 0
        self.unlinked = 0
        #: Bytes of every connection that ended before its link completed.
        self.unlinked_bytes: list[bytes] = []
        self._linked: dict[ChannelKey, asyncio.Queue[Endpoint]] = {}
        self._server: asyncio.AbstractServer | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._ended = asyncio.Event()

    @property
    def address(self) -> tuple[str, int]:
        assert isinstance(self._server, asyncio.Server)
        host, port = self._server.sockets[0].getsockname()[:2]
        return str(host), int(port)

    async def start(self) -> ScriptedServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.tls)
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.close()
        if self._server is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), TIMEOUT)

    def _queue(self, key: ChannelKey) -> asyncio.Queue[Endpoint]:
        return self._linked.setdefault(key, asyncio.Queue())

    async def channel(
        self, channel_type: int, channel_id: int = 0, *, connection_id: int = 0
    ) -> Endpoint:
        """The server end of the next link of this channel with this connection id."""
        key = (connection_id, channel_type, channel_id)
        return await bounded(self._queue(key).get(), f"{self.name} to link channel {key}")

    async def wait_unlinked(self, count: int) -> None:
        """Until ``count`` connections have ended before completing their link."""

        async def check() -> None:
            while self.unlinked < count:
                self._ended.clear()
                await self._ended.wait()

        await bounded(check(), f"{self.name}: {count} connections to end unlinked")

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self._writers.add(writer)
        received = bytearray()
        try:
            endpoint = await self._link(reader, writer, received)
        except (
            asyncio.IncompleteReadError,
            ConnectionError,
            GatewayError,
            LinkRefused,
            TimeoutError,
        ) as error:
            if isinstance(error, asyncio.IncompleteReadError):
                received += error.partial
            self.unlinked += 1
            self.unlinked_bytes.append(bytes(received))
            self._ended.set()
            writer.close()
            return
        self._queue((endpoint.mess.connection_id, *endpoint.key)).put_nowait(endpoint)

    async def _read(self, reader: asyncio.StreamReader, size: int, received: bytearray) -> bytes:
        data = await asyncio.wait_for(reader.readexactly(size), TIMEOUT)
        received += data
        return data

    async def _link(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, received: bytearray
    ) -> Endpoint:
        header = LinkHeader.decode(
            await self._read(reader, LINK_HEADER_SIZE, received), Direction.CLIENT_TO_SERVER
        )
        mess = LinkMess.decode(await self._read(reader, header.size, received))
        reply = server_link_reply(
            auth_selection=self.auth_selection,
            mini_header=self.mini_header,
            channel_caps=MAIN_CAPS if mess.channel_type == ChannelType.MAIN else (),
        )
        writer.write(reply)
        sent = bytearray(reply)
        ours = LinkReply.decode(reply[LINK_HEADER_SIZE:]).common_caps
        if _selection(ours, mess.common_caps):
            mechanism = decode_u32(await self._read(reader, 4, received), "auth mechanism")
            if mechanism != AuthMechanism.SPICE:
                writer.write(encode_link_result(LinkError.PERMISSION_DENIED))
                raise LinkRefused(f"{self.name}: auth mechanism {mechanism}")
        await self._read(reader, TICKET_SIZE, received)
        result = encode_link_result(LinkError.OK)
        writer.write(result)
        sent += result
        await asyncio.wait_for(writer.drain(), TIMEOUT)
        return Endpoint(
            reader,
            writer,
            _kind(ours, mess.common_caps),
            mess,
            link_sent=bytes(sent),
            link_received=bytes(received),
        )


# --- the client ------------------------------------------------------------------------------


async def link_client(
    address: tuple[str, int],
    channel_type: int,
    channel_id: int = 0,
    *,
    connection_id: int = 0,
    mini_header: bool = True,
    auth_selection: bool = True,
    tls: ssl.SSLContext | None = None,
    mechanism: int = AuthMechanism.SPICE,
) -> Endpoint:
    """Connect and link one channel as spice-gtk does; LinkRefused unless the result is OK."""
    host, port = address
    reader, writer = await bounded(
        asyncio.open_connection(host, port, ssl=tls, server_hostname=host if tls else None),
        f"a connection to {host}:{port}",
    )
    sent = client_link(
        channel_type,
        channel_id,
        connection_id=connection_id,
        auth_selection=auth_selection,
        mini_header=mini_header,
        channel_caps=MAIN_CAPS if channel_type == ChannelType.MAIN else (),
    )
    mess = LinkMess.decode(sent[LINK_HEADER_SIZE:])
    received = bytearray()
    try:
        writer.write(sent)
        raw_header = await bounded(reader.readexactly(LINK_HEADER_SIZE), "the link reply header")
        header = LinkHeader.decode(raw_header, Direction.SERVER_TO_CLIENT)
        raw_reply = await bounded(reader.readexactly(header.size), "the link reply")
        received += raw_header + raw_reply
        reply = LinkReply.decode(raw_reply)
        if reply.error != LinkError.OK:
            raise LinkRefused(f"link reply error {reply.error}")
        auth = PLACEHOLDER_TICKET
        if _selection(mess.common_caps, reply.common_caps):
            auth = encode_auth_mechanism(mechanism) + auth
        writer.write(auth)
        sent += auth
        raw_result = await bounded(reader.readexactly(LINK_RESULT_SIZE), "the link result")
        received += raw_result
        result = decode_u32(raw_result, "link result")
        if result != LinkError.OK:
            raise LinkRefused(f"link result {result}")
    except (asyncio.IncompleteReadError, ConnectionError) as error:
        writer.close()
        raise LinkRefused(f"connection closed during the link stage: {error!r}") from None
    except LinkRefused:
        writer.close()
        raise
    return Endpoint(
        reader,
        writer,
        _kind(mess.common_caps, reply.common_caps),
        mess,
        link_sent=bytes(sent),
        link_received=bytes(received),
    )


# --- payloads and ordinary traffic -------------------------------------------------------------


def _model_payloads() -> dict[ChannelType, StateModel]:
    """States with the values a real source sent (sizes 65, 88, 10, 42, 33)."""
    agent = CharDeviceState(
        connected=True,
        num_client_tokens=10,
        num_send_tokens=0xFFFF_FFFF - 37,
        write_size=0,
        write_num_client_tokens=0,
        write_data=b"",
    )
    vmc = CharDeviceState(
        connected=True,
        num_client_tokens=0xFFFF_FFFF,
        num_send_tokens=0xFFFF_FFFF,
        write_size=0,
        write_num_client_tokens=0,
        write_data=b"",
    )
    idle = CharDeviceState(
        connected=False,
        num_client_tokens=0,
        num_send_tokens=0,
        write_size=0,
        write_num_client_tokens=0,
        write_data=b"",
    )
    main = MainState(
        agent=agent,
        client_agent_started=True,
        agent_to_client=AgentReadState(
            chunk_header_size=0,
            chunk_port=1,
            chunk_size=33_554_460,
            msg_header_done=False,
            msg_header_partial_len=0,
            msg_header_partial=b"",
            msg_remaining=0,
            msg_filter_result=0,
        ),
        client_to_agent=AgentWriteState(msg_remaining=0, msg_filter_result=0),
    )
    display = DisplayState(
        message_serial=1207,
        low_bandwidth=False,
        pixmap_cache_id=1,
        pixmap_cache_size=20 * 1024 * 1024,
        pixmap_cache_freezer=False,
        pixmap_cache_clients=(0, 0, 0, 0),
        glz_dict_id=1,
        glz_dict=GlzDictionary(window_size=1 << 20, max_encoders=4, last_image_id=41),
        surfaces=SurfacesLossless(ids=(0,)),
    )
    return {
        ChannelType.MAIN: main,
        ChannelType.DISPLAY: display,
        ChannelType.INPUTS: InputsState(motion_count=3),
        ChannelType.SMARTCARD: SmartcardState(
            device=idle, reader_added=False, read_size=0, read_data=b""
        ),
        ChannelType.USBREDIR: UsbredirState(device=vmc),
        ChannelType.PORT: SpicevmcState(device=vmc),
        ChannelType.WEBDAV: SpicevmcState(device=vmc),
    }


def native_payloads() -> dict[ChannelType, bytes]:
    """A real native payload per channel: the bundled samples where present, else encoded
    from states that carry what a real source sent."""
    samples = Path(gateway.__file__).parent / "samples"
    models = _model_payloads()
    payloads: dict[ChannelType, bytes] = {}
    for channel, state in models.items():
        sample = samples / f"{channel.name.lower()}.bin"
        payloads[channel] = (
            sample.read_bytes() if sample.is_file() else native.encode(state, channel)
        )
    return payloads


def ordinary_bodies(tag: int) -> list[tuple[int, int, bytes]]:
    """Non-migration messages (server type, client type, body): empty, small, every byte value,
    larger than one read. The types are ordinary on every channel, main included (PING/PONG,
    then main's CHANNELS_LIST, AGENT_DATA, NAME and CLIENT_INFO, AGENT_DATA, QUALITY_INDICATOR)."""
    return [
        (Msg.PING, Msgc.PONG, b""),
        (104, 101, bytes([tag]) * 7),
        (109, 107, bytes(range(256)) * 3),
        (113, 112, bytes((i * 31 + tag) & 0xFF for i in range(70_000))),
    ]


# --- one client session through a migration ---------------------------------------------------


@dataclass
class ChannelLegs:
    """The four ends of one channel in one session."""

    client_source: Endpoint
    server_source: Endpoint
    client_target: Endpoint | None = None
    server_target: Endpoint | None = None


Tamper = Callable[[bytes], bytes]


class ClientSession:
    """One SPICE client session, scripted through a seamless migration.

    ``source`` and ``target`` are the addresses the client connects to (the proxies', or the
    servers' own for a direct run); the servers are the scripted spice-servers behind them.
    """

    def __init__(
        self,
        *,
        session_id: int,
        source: tuple[str, int],
        target: tuple[str, int],
        source_server: ScriptedServer,
        target_server: ScriptedServer,
        channels: Iterable[tuple[ChannelType, int]] = ALL_CHANNELS,
        mini_header: bool = True,
        tls: ssl.SSLContext | None = None,
        target_advertised: tuple[str, int] | None = None,
    ) -> None:
        self.session_id = session_id
        self.source = source
        self.target = target
        self.source_server = source_server
        self.target_server = target_server
        self.channels = tuple(channels)
        self.mini_header = mini_header
        self.tls = tls
        #: Where MIGRATE_BEGIN_SEAMLESS sends the client (the target proxy by default).
        self.target_advertised = target_advertised or target
        self.legs: dict[tuple[int, int], ChannelLegs] = {}

    def leg(self, channel: tuple[int, int]) -> ChannelLegs:
        return self.legs[channel]

    @property
    def main(self) -> ChannelLegs:
        return self.legs[(ChannelType.MAIN, 0)]

    async def _link(
        self, address: tuple[str, int], channel: tuple[int, int], conn: int
    ) -> Endpoint:
        return await link_client(
            address,
            channel[0],
            channel[1],
            connection_id=conn,
            mini_header=self.mini_header,
            tls=self.tls,
        )

    async def link_source(self) -> None:
        """Main first (connection id 0); MAIN_INIT names the session; then every other channel."""
        main = (ChannelType.MAIN, 0)
        client = await self._link(self.source, main, 0)
        server = await self.source_server.channel(ChannelType.MAIN, 0)
        self.legs[main] = ChannelLegs(client, server)
        await server.send_message(MainInit(session_id=self.session_id, supported_mouse_modes=3))
        await client.expect(MainInit.MSG_TYPE)
        for channel in self.channels:
            if channel == main:
                continue
            client = await self._link(self.source, channel, self.session_id)
            server = await self.source_server.channel(*channel, connection_id=self.session_id)
            self.legs[channel] = ChannelLegs(client, server)

    async def exchange(self, tag: int, *, target: bool = False) -> None:
        """Ordinary traffic both ways on every channel, source or target side."""
        for legs in self.legs.values():
            client = legs.client_target if target else legs.client_source
            server = legs.server_target if target else legs.server_source
            assert client is not None
            assert server is not None
            for server_type, client_type, body in ordinary_bodies(tag):
                await server.send(server_type, body)
                assert (await client.recv()).body == body
                await client.send(client_type, body[::-1])
                assert (await server.recv()).body == body[::-1]

    async def begin_migration(self) -> None:
        """The pre-migration handshake: the client learns the target and links everything there."""
        host, port = self.target_advertised
        main = self.main
        await main.server_source.send_message(
            MigrateBeginSeamless(DstInfo(port=port, sport=0, host=host), src_mig_version=1)
        )
        await main.client_source.expect(MigrateBeginSeamless.MSG_TYPE)
        for channel in self.channels:
            legs = self.legs[channel]
            legs.client_target = await self._link(self.target, channel, self.session_id)
            legs.server_target = await self.target_server.channel(
                *channel, connection_id=self.session_id
            )
            if channel == (ChannelType.MAIN, 0):
                await legs.client_target.send_message(MigrateDstDoSeamless(src_version=1))
                await legs.server_target.expect(MigrateDstDoSeamless.MSG_TYPE)
                await legs.server_target.send_message(MigrateDstSeamlessAck())
                await legs.client_target.expect(MigrateDstSeamlessAck.MSG_TYPE)
        await main.client_source.send_message(MigrateConnectedSeamless())
        await main.server_source.expect(MigrateConnectedSeamless.MSG_TYPE)

    async def receive_blob(self, channel: tuple[int, int], payload: bytes) -> bytes:
        """The source side of one channel's migration: MIGRATE, FLUSH_MARK, then MIGRATE_DATA
        with ``payload``. Returns the body the client received."""
        legs = self.legs[channel]
        await legs.server_source.send_message(
            Migrate(MigrateFlags.NEED_FLUSH | MigrateFlags.NEED_DATA_TRANSFER)
        )
        await legs.client_source.expect(Migrate.MSG_TYPE)
        await legs.client_source.send_message(MigrateFlushMark())
        await legs.server_source.expect(MigrateFlushMark.MSG_TYPE)
        await legs.server_source.send(Msg.MIGRATE_DATA, payload)
        return (await legs.client_source.expect(Msg.MIGRATE_DATA)).body

    async def relay(self, channel: tuple[int, int], body: bytes) -> None:
        """The client hands a MIGRATE_DATA body to the target, as spice-gtk does."""
        target = self.legs[channel].client_target
        assert target is not None, "link the target first (begin_migration)"
        await target.send(Msgc.MIGRATE_DATA, body)

    async def migrate_channel(
        self, channel: tuple[int, int], payload: bytes, tamper: Tamper | None = None
    ) -> bytes:
        """One channel's whole migration; the client relays through ``tamper`` if given.
        Returns the body the client received from the source."""
        blob = await self.receive_blob(channel, payload)
        await self.relay(channel, tamper(blob) if tamper else blob)
        return blob

    async def close(self) -> None:
        for legs in self.legs.values():
            for end in (legs.client_source, legs.client_target):
                if end is not None:
                    await end.close()


# --- what the two ends saw ------------------------------------------------------------------------


def assert_relayed(sender: Endpoint, receiver: Endpoint, *, what: str = "") -> None:
    """Everything ``sender`` sent reached ``receiver`` in order, byte for byte, except the
    bodies of MIGRATE_DATA (rewritten by the gateway), whose type and serial are kept."""
    label = what or f"{sender!r} -> {receiver!r}"
    assert len(receiver.received) == len(sender.sent), (
        f"{label}: {len(sender.sent)} messages sent, {len(receiver.received)} received"
    )
    for index, (out, got) in enumerate(zip(sender.sent, receiver.received, strict=True)):
        if out.is_migrate_data:
            assert (got.msg_type, got.serial) == (out.msg_type, out.serial), f"{label} #{index}"
        else:
            assert got.raw == out.raw, f"{label}: message #{index} (type {out.msg_type}) differs"


def assert_link_relayed(client: Endpoint, server: Endpoint) -> None:
    """The link stage crossed the proxy unchanged in both directions."""
    assert server.link_received == client.link_sent
    assert client.link_received == server.link_sent
    assert client.kind is server.kind
