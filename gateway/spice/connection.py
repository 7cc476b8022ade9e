"""The sans-I/O state machine of one proxied SPICE connection (one channel).

Feed it what each side sent; it returns events carrying the exact bytes of every unit and
never touches a socket, a clock or randomness. A proxy loop around it reads from one side,
calls ``receive_from_client`` / ``receive_from_server``, and writes each event's ``raw`` (or a
replacement built with :func:`~gateway.spice.events.reframe`) to the other side.

Both directions live in one object because each depends on the other: whether the client
sends an auth-mechanism word, and which data header both sides use, follow from the
capabilities of *both* link messages.

Causality is enforced. A real client sends its auth word and ticket only after reading the
server's link reply (it needs the reply's key and caps), and its first data message only after
the link result; a real server answers only after the client's link message, and reports
success only after the ticket. Bytes that arrive before what they depend on passed through the
gateway can only come from a peer that is not following the protocol, and are refused instead
of guessed at.

Events: one per link-stage unit. In the data phase, a migration message of the channel and
direction (see :mod:`gateway.spice.messages`) is a decoded
:class:`~gateway.spice.events.Message`; every run of other complete messages between two of
those (or the ends of what has arrived) is one :class:`~gateway.spice.events.Passthrough`. The
set of migration types is fixed once the channel is known, so an ordinary message costs one
header read and a few comparisons: display traffic is mostly small messages, and a per-message
object would cost more than relaying the bytes.

Buffering: a data message is passed on only when the whole message has arrived, so at most
one partial unit per direction stays buffered, bounded by ``max_message_size`` plus its header.
Input is parsed where it lies while nothing is pending (a ``bytes`` read of whole messages is
relayed without a copy); otherwise it is appended to a ``bytearray`` consumed from an offset
and compacted lazily, so a message arriving in many small reads costs linear time. For a loop
that reads into one reused buffer, ``receive_streaming`` returns the runs of ordinary messages
as views of that buffer and copies only what it must keep, and ``room`` / ``filled`` let a
large ordinary message be read straight into a buffer of its own.

Any refusal raises :class:`~gateway.errors.ProtocolError`; the connection is then dead, and
every later call raises again (events parsed earlier in the failing call are dropped with it:
the proxy closes both sides).
"""

from __future__ import annotations

import enum
import functools
import struct
from collections.abc import Callable

from gateway.errors import ConfigError, ProtocolError
from gateway.spice.constants import (
    AUTH_MECHANISM_SIZE,
    DEFAULT_MAX_MESSAGE_SIZE,
    LINK_HEADER_SIZE,
    LINK_MAGIC,
    LINK_RESULT_SIZE,
    TICKET_SIZE,
    AuthMechanism,
    ChannelType,
    CommonCap,
    Direction,
    HeaderKind,
    LinkError,
    MainMsg,
    MainMsgc,
    Msg,
    Msgc,
)
from gateway.spice.events import (
    AuthMechanismReceived,
    Event,
    LinkHeaderReceived,
    LinkMessReceived,
    LinkReplyReceived,
    LinkResultReceived,
    Message,
    Passthrough,
    TicketReceived,
)
from gateway.spice.link import LinkHeader, LinkMess, LinkReply, decode_u32, has_cap
from gateway.spice.messages import migration_class

__all__ = ["ConnectionState", "SpiceConnection"]

#: A large message gets a room of its own once 1/ROOM_SHARE of it has arrived (see room()).
ROOM_SHARE = 4

_C2S = Direction.CLIENT_TO_SERVER
_S2C = Direction.SERVER_TO_CLIENT
_MINI = struct.Struct("<HI")
_FULL = struct.Struct("<QHII")
#: Type and size of each header; the walk over ordinary messages needs nothing else.
_TYPE_AND_SIZE = {HeaderKind.MINI: _MINI, HeaderKind.FULL: struct.Struct("<8xHI4x")}
#: Offset of the size field in each header, for error messages.
_SIZE_AT = {HeaderKind.MINI: 2, HeaderKind.FULL: 10}
#: Every message type the protocol constants name; the migration types are among them.
_MIGRATION_CANDIDATES = frozenset(int(t) for types in (Msg, Msgc, MainMsg, MainMsgc) for t in types)


@functools.cache
def _migration_types(channel_type: int, direction: Direction) -> frozenset[int]:
    """The message types that are migration messages on this channel in this direction.

    Cached: a channel type is a u8, so there are at most 512 of these small sets.
    """
    return frozenset(
        t for t in _MIGRATION_CANDIDATES if migration_class(channel_type, direction, t) is not None
    )


class ConnectionState(enum.Enum):
    LINKING = "linking"
    #: The link result was OK; data messages flow both ways.
    ESTABLISHED = "established"
    #: The server refused the link (reply error or link result); nothing more may follow.
    LINK_FAILED = "link failed"
    #: A ProtocolError was raised; the connection must be closed.
    BROKEN = "broken"


class _Stage(enum.Enum):
    """Where one direction's parser stands."""

    WAIT = "waiting for the other side"
    LINK_HEADER = "link header"
    LINK_MESS = "link message"
    LINK_REPLY = "link reply"
    AUTH_MECHANISM = "auth mechanism"
    TICKET = "ticket"
    LINK_RESULT = "link result"
    DATA = "data message"
    CLOSED = "closed"


class _Buffer:
    """Bytes of one direction not yet consumed, read from an offset.

    While nothing else is pending, ``data`` is the ``bytes`` chunk just fed, not a copy (and a
    unit that spans all of it goes out as that same object). Once a partial unit has to wait
    for more input, it is a ``bytearray`` whose consumed bytes are dropped only when they are
    at least half of it, so each byte is moved at most a constant number of times however the
    input is split.
    """

    __slots__ = ("consumed", "data", "pos")

    def __init__(self) -> None:
        self.data: bytes | bytearray = b""
        self.pos = 0
        #: Total bytes consumed so far: the stream offset of the next unit.
        self.consumed = 0

    def feed(self, chunk: bytes | bytearray | memoryview) -> None:
        data, pos = self.data, self.pos
        if pos == len(data):
            # A bytearray or memoryview may change under us once we return: keep a copy.
            self.data = chunk if type(chunk) is bytes else bytes(chunk)
            self.pos = 0
            return
        if isinstance(data, bytes):
            # A partial unit waits for more input: from now on it grows in a buffer of ours.
            with memoryview(data) as view:
                data = bytearray(view[pos:])
            self.data, self.pos = data, 0
        elif pos * 2 >= len(data):
            del data[:pos]
            self.pos = 0
        data += chunk

    def __len__(self) -> int:
        return len(self.data) - self.pos

    def take(self, n: int) -> bytes:
        data, pos = self.data, self.pos
        if isinstance(data, bytes):
            unit = data[pos : pos + n]
        else:
            with memoryview(data) as view:
                unit = view[pos : pos + n].tobytes()
        if pos + n == len(data):
            # Let go of the chunk now rather than at the next read.
            self.data, self.pos = b"", 0
        else:
            self.pos = pos + n
        self.consumed += n
        return unit


#: What receive_streaming reads of one direction (see SpiceConnection._streams): the buffer,
#: the migration types and the highest, the header size, the size of a piece to walk.
_Stream = tuple[_Buffer, frozenset[int], int, int, int]


class SpiceConnection:
    """One SPICE channel connection as seen by an inline proxy between client and server.

    ``max_message_size`` bounds the body of one data message (and so the memory held for one
    direction); larger messages are refused when their header arrives.
    """

    # A proxy holds one of these per channel connection, thousands per process: no instance
    # dict, and the parser's steps are looked up in one table shared by every instance.
    __slots__ = (
        "_buffers",
        "_channel_type",
        "_error",
        "_kind",
        "_link_size",
        "_migration_types",
        "_rooms",
        "_stage",
        "_streams",
        "_type_and_size",
        "link_mess",
        "link_reply",
        "link_result",
        "max_message_size",
    )

    def __init__(self, *, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE) -> None:
        if not 0 <= max_message_size <= 0xFFFF_FFFF:
            raise ConfigError(f"max_message_size {max_message_size} is outside [0, 2**32 - 1]")
        self.max_message_size = max_message_size
        self._buffers = {_C2S: _Buffer(), _S2C: _Buffer()}
        self._stage = {_C2S: _Stage.LINK_HEADER, _S2C: _Stage.WAIT}
        self._link_size = {_C2S: 0, _S2C: 0}
        self._error: str | None = None
        self.link_mess: LinkMess | None = None
        self.link_reply: LinkReply | None = None
        self.link_result: int | None = None
        # Known once the link message and reply are in; only the data stage reads them.
        self._channel_type = 0
        self._kind = HeaderKind.MINI
        self._type_and_size = _MINI.unpack_from
        self._migration_types: dict[Direction, frozenset[int]] = {}
        #: Per direction, a large message being read straight into its own buffer, and how
        #: much of it is in (see room()); made on first use, most connections never need it.
        self._rooms: dict[Direction, tuple[bytearray, int]] | None = None
        #: From the data phase on, per direction (client's first), what receive_streaming
        #: needs (see _Stream). Indexed by
        #: ``direction is _S2C``, which is cheaper than hashing an enum member each read.
        self._streams: tuple[_Stream, _Stream] | None = None

    # --- public -----------------------------------------------------------------------------

    def receive_from_client(self, data: bytes | bytearray | memoryview) -> list[Event]:
        """Events for every client unit completed by ``data`` (all of direction C->S)."""
        return self._receive(_C2S, data)

    def receive_from_server(self, data: bytes | bytearray | memoryview) -> list[Event]:
        """Events for every server unit completed by ``data`` (all of direction S->C)."""
        return self._receive(_S2C, data)

    def receive_streaming(
        self, direction: Direction, data: memoryview
    ) -> list[Event | memoryview]:
        """Events for what ``data`` completes in ``direction``, without copying what it relays.

        For a loop that reads into one buffer and reuses it: a run of ordinary messages that
        lies whole in ``data`` comes back as a ``memoryview`` slice of ``data`` (valid until the
        caller reuses its buffer, so write or copy it first), in place of the ``Passthrough``
        that :meth:`receive_from_client` / :meth:`receive_from_server` would return for the
        same split. Everything else is the events those return: only the bytes of a partial
        unit, of a migration message and of the link stage are copied (a partial message is
        completed with exactly the bytes it lacks, then parsing goes on in place).
        """
        streams = self._streams
        if streams is None or self._error is not None:
            return list(self._receive(direction, data))
        rooms = self._rooms
        if rooms and direction in rooms:
            # Bytes for a room that came another way: into the room with them.
            array, filled = rooms[direction]
            taken = min(len(array) - filled, len(data))
            array[filled : filled + taken] = data[:taken]
            done = self.filled(direction, taken)
            return done + self.receive_streaming(direction, data[taken:]) if done else done
        # The walk below needs every message that fits its input to be of an allowed size: in
        # an input no longer than the largest message, a size past the end means a partial or
        # an oversized message, and neither needs a check per message.
        stream = streams[direction is _S2C]
        step = stream[4]
        if len(data) <= step:
            return self._stream(direction, stream, data)
        out: list[Event | memoryview] = []
        for at in range(0, len(data), step):
            out += self._stream(direction, stream, data[at : at + step])
        return out

    def _stream(
        self, direction: Direction, stream: _Stream, data: memoryview
    ) -> list[Event | memoryview]:
        """:meth:`receive_streaming` of at most one maximum-sized message's worth of bytes."""
        buf, migration_types, top, header, _ = stream
        out: list[Event | memoryview] = []
        pos, stop = 0, len(data)
        type_and_size = self._type_and_size
        while buf.pos != len(buf.data) and pos < stop:
            held = len(buf.data) - buf.pos
            if held >= header:
                msg_type, size = type_and_size(buf.data, buf.pos)
                missing = header + size - held
                if missing <= stop - pos and msg_type not in migration_types:
                    # An ordinary message completed by this read: joined in one copy.
                    with memoryview(buf.data) as kept:
                        unit = b"".join((kept[buf.pos :], data[pos : pos + missing]))
                    buf.data, buf.pos = b"", 0
                    buf.consumed += len(unit)
                    out.append(memoryview(unit))
                    pos += missing
                    break
            taken = min(self._missing(direction, buf), stop - pos)
            out += self._receive(direction, data[pos : pos + taken])
            pos += taken
        last = stop - header
        while pos < stop:
            start = pos
            while pos <= last:
                msg_type, size = type_and_size(data, pos)
                # Migration types are few and low: most types take one comparison, no lookup.
                if msg_type <= top and msg_type in migration_types:
                    break
                end = pos + header + size
                if end > stop:
                    break
                pos = end
            if pos > start:
                out.append(data[start:pos])
                buf.consumed += pos - start
                continue
            # A migration message, an oversized header or a partial unit: the copying path
            # decodes, refuses or keeps it. Only a whole migration message has anything after.
            end = stop
            if pos <= last:
                msg_type, size = type_and_size(data, pos)
                if msg_type in migration_types and size <= self.max_message_size:
                    end = min(stop, pos + header + size)
            out += self._receive(direction, data[pos:end])
            pos = end
        return out

    def _stream_of(self, direction: Direction) -> _Stream:
        types, header = self._migration_types[direction], self._kind.size
        step = header + self.max_message_size
        return (self._buffers[direction], types, max(types, default=-1), header, step)

    def _missing(self, direction: Direction, buf: _Buffer) -> int:
        """Bytes the data message held at the start of ``buf`` still lacks (its header's
        first, while the header is incomplete)."""
        header = self._kind.size
        if len(buf) < header:
            return header - len(buf)
        size: int = self._type_and_size(buf.data, buf.pos)[1]
        return header + size - len(buf)

    @property
    def state(self) -> ConnectionState:
        if self._error is not None:
            return ConnectionState.BROKEN
        if self.link_reply is not None and self.link_reply.error != LinkError.OK:
            return ConnectionState.LINK_FAILED
        if self.link_result is None:
            return ConnectionState.LINKING
        if self.link_result == LinkError.OK:
            return ConnectionState.ESTABLISHED
        return ConnectionState.LINK_FAILED

    @property
    def header_kind(self) -> HeaderKind | None:
        """The data header both sides use, once the link reply has settled it."""
        if self.link_reply is None or self.link_reply.error != LinkError.OK:
            return None
        return self._kind

    @property
    def channel_type(self) -> int | None:
        return None if self.link_mess is None else self.link_mess.channel_type

    @property
    def channel_id(self) -> int | None:
        return None if self.link_mess is None else self.link_mess.channel_id

    def buffered(self, direction: Direction) -> int:
        """Bytes received in ``direction`` that do not yet form a complete unit (all of a
        :meth:`room`, which is allocated whole)."""
        streams = self._streams
        buf = self._buffers[direction] if streams is None else streams[direction is _S2C][0]
        held = len(buf.data) - buf.pos  # len(buf), without a call: once per read
        if self._rooms and direction in self._rooms:
            held += len(self._rooms[direction][0])
        return held

    def room(self, direction: Direction, minimum: int) -> memoryview | None:
        """Where to read the rest of a large ordinary message straight into, or None.

        Once a quarter of a data message of at least ``minimum`` bytes (header included) that
        is not a migration message is in, the message gets a buffer of its own size holding
        what arrived so far, and this returns a writable view of what it still lacks: read into
        it from the start and report each read with :meth:`filled`. Saves copying a large
        message piece by piece into the receive buffer and then again out of it. Not sooner: a
        room is allocated (and counted) whole, and a header alone would claim
        ``max_message_size`` for a few bytes sent; this way what a peer makes the proxy hold
        stays within ROOM_SHARE times what it sent.
        """
        rooms = self._rooms
        if rooms and direction in rooms:
            array, filled = rooms[direction]
            return memoryview(array)[filled:]
        if self._error is not None or self._stage[direction] is not _Stage.DATA:
            return None
        buf, header = self._buffers[direction], self._kind.size
        if len(buf) < header:
            return None
        msg_type, size = self._type_and_size(buf.data, buf.pos)
        total = header + size
        held = len(buf)
        if (
            total < minimum
            or held * ROOM_SHARE < total
            or msg_type in self._migration_types[direction]
        ):
            return None
        array = bytearray(total)
        array[:held] = buf.data[buf.pos :]
        # The held bytes now live in the room; the stream offset moves when it is full.
        buf.data, buf.pos = b"", 0
        if rooms is None:
            rooms = self._rooms = {}
        rooms[direction] = (array, held)
        return memoryview(array)[held:]

    def filled(self, direction: Direction, nbytes: int) -> list[Event | memoryview]:
        """``nbytes`` more were read into ``direction``'s :meth:`room`; the whole message (as a
        run of one, a view of the room, which is the caller's from then on) once it is full."""
        assert self._rooms is not None
        array, filled = self._rooms[direction]
        filled += nbytes
        if filled < len(array):
            self._rooms[direction] = (array, filled)
            return []
        del self._rooms[direction]
        self._buffers[direction].consumed += len(array)
        return [memoryview(array)]

    # --- driver -----------------------------------------------------------------------------

    def _receive(self, direction: Direction, data: bytes | bytearray | memoryview) -> list[Event]:
        if self._error is not None:
            raise ProtocolError(f"connection already failed, input refused: {self._error}")
        buf = self._buffers[direction]
        buf.feed(data)
        events: list[Event] = []
        while True:
            stage, start = self._stage[direction], buf.consumed
            try:
                event = _STEPS[stage](self, direction, buf)
            except ProtocolError as exc:
                self._error = f"{self._where(direction, stage, start)}: {exc}"
                raise ProtocolError(self._error) from None
            if event is None:
                return events
            events.append(event)

    def _where(self, direction: Direction, stage: _Stage, offset: int) -> str:
        """Channel, direction, stage and stream offset of the unit being parsed."""
        channel = "unlinked channel"
        if self.link_mess is not None:
            try:
                name = ChannelType(self.link_mess.channel_type).name.lower()
            except ValueError:
                name = f"type {self.link_mess.channel_type}"
            channel = f"{name}:{self.link_mess.channel_id} channel"
        return f"{channel}, {direction.value} {stage.value} at stream offset {offset}"

    # --- link stage -------------------------------------------------------------------------

    def _step_wait(self, direction: Direction, buf: _Buffer) -> Event | None:
        if len(buf):
            waited = "link message" if direction is _S2C else "link reply or result"
            raise ProtocolError(
                f"{direction.sender} sent {len(buf)} bytes before the other side's "
                f"{waited} went through"
            )
        return None

    def _step_closed(self, direction: Direction, buf: _Buffer) -> Event | None:
        if len(buf):
            raise ProtocolError(f"{len(buf)} bytes after the link ended with an error")
        return None

    def _step_link_header(self, direction: Direction, buf: _Buffer) -> Event | None:
        if len(buf) < LINK_HEADER_SIZE:
            # Refuse a wrong magic (HTTP, TLS, noise) as soon as it shows.
            start = bytes(buf.data[buf.pos : buf.pos + len(LINK_MAGIC)])
            if not LINK_MAGIC.startswith(start):
                raise ProtocolError(
                    f"{direction.sender} link header: field magic at offset 0 starts "
                    f"{start!r}, not {LINK_MAGIC!r}"
                )
            return None
        raw = buf.take(LINK_HEADER_SIZE)
        header = LinkHeader.decode(raw, direction)
        self._link_size[direction] = header.size
        self._stage[direction] = _Stage.LINK_MESS if direction is _C2S else _Stage.LINK_REPLY
        return LinkHeaderReceived(direction, raw, header)

    def _step_link_mess(self, direction: Direction, buf: _Buffer) -> Event | None:
        if len(buf) < self._link_size[direction]:
            return None
        raw = buf.take(self._link_size[direction])
        mess = LinkMess.decode(raw)
        self.link_mess = mess
        self._channel_type = mess.channel_type
        self._migration_types = {d: _migration_types(mess.channel_type, d) for d in Direction}
        self._stage[_C2S] = _Stage.WAIT
        self._stage[_S2C] = _Stage.LINK_HEADER
        return LinkMessReceived(direction, raw, mess)

    def _step_link_reply(self, direction: Direction, buf: _Buffer) -> Event | None:
        if len(buf) < self._link_size[direction]:
            return None
        raw = buf.take(self._link_size[direction])
        reply = LinkReply.decode(raw)
        self.link_reply = reply
        if reply.error != LinkError.OK:
            self._stage[_C2S] = self._stage[_S2C] = _Stage.CLOSED
            return LinkReplyReceived(direction, raw, reply)
        assert self.link_mess is not None  # the server stage only starts after it
        client, server = self.link_mess.common_caps, reply.common_caps

        def both(cap: CommonCap) -> bool:
            return has_cap(client, cap) and has_cap(server, cap)

        # spice-gtk sends the auth word iff the server has AUTH_SELECTION, spice-server reads
        # it iff the client has it; the same holds for MINI_HEADER (each endpoint tests only
        # the peer's cap). Both real endpoints always advertise both caps, so requiring both
        # matches spice-server's reading of any client and spice-gtk's of any server, and an
        # older peer that lacks a cap does not know the feature at all.
        selection = both(CommonCap.PROTOCOL_AUTH_SELECTION)
        self._stage[_C2S] = _Stage.AUTH_MECHANISM if selection else _Stage.TICKET
        self._stage[_S2C] = _Stage.LINK_RESULT
        self._kind = HeaderKind.MINI if both(CommonCap.MINI_HEADER) else HeaderKind.FULL
        self._type_and_size = _TYPE_AND_SIZE[self._kind].unpack_from
        return LinkReplyReceived(direction, raw, reply)

    def _step_auth_mechanism(self, direction: Direction, buf: _Buffer) -> Event | None:
        if len(buf) < AUTH_MECHANISM_SIZE:
            return None
        raw = buf.take(AUTH_MECHANISM_SIZE)
        mechanism = decode_u32(raw, "auth mechanism")
        if mechanism == AuthMechanism.SASL:
            raise ProtocolError(
                "client selected SASL authentication (mechanism 2 at offset 0); SASL is not "
                "supported by the gateway: its exchange and security layer cannot be framed"
            )
        if mechanism != AuthMechanism.SPICE:
            raise ProtocolError(f"field auth_mechanism at offset 0 is {mechanism}, not 1 (SPICE)")
        self._stage[direction] = _Stage.TICKET
        return AuthMechanismReceived(direction, raw, mechanism)

    def _step_ticket(self, direction: Direction, buf: _Buffer) -> Event | None:
        if len(buf) < TICKET_SIZE:
            return None
        raw = buf.take(TICKET_SIZE)
        self._stage[direction] = _Stage.WAIT
        return TicketReceived(direction, raw)

    def _step_link_result(self, direction: Direction, buf: _Buffer) -> Event | None:
        if len(buf) < LINK_RESULT_SIZE:
            return None
        raw = buf.take(LINK_RESULT_SIZE)
        result = decode_u32(raw, "link result")
        if result != LinkError.OK:
            # spice-server may refuse before the ticket (bad auth word, SASL required).
            self.link_result = result
            self._stage[_C2S] = self._stage[_S2C] = _Stage.CLOSED
            return LinkResultReceived(direction, raw, result)
        if self._stage[_C2S] is not _Stage.WAIT:
            raise ProtocolError(
                "link result OK at offset 0 before the client's ticket went through"
            )
        self.link_result = result
        self._stage[_C2S] = self._stage[_S2C] = _Stage.DATA
        self._streams = (self._stream_of(_C2S), self._stream_of(_S2C))
        return LinkResultReceived(direction, raw, result)

    # --- data phase -------------------------------------------------------------------------

    def _step_data(self, direction: Direction, buf: _Buffer) -> Event | None:
        """A run of ordinary messages, else the migration message or refusal at its start.

        This is the proxy's hot path: per ordinary message it reads one header and compares.
        The run stops before anything else, so a refusal or a decoded message is always the
        first unit of its own step, and the stream offset in its error is its own.
        """
        data, start, stop = buf.data, buf.pos, len(buf.data)
        header, type_and_size = self._kind.size, self._type_and_size
        limit, migration_types = self.max_message_size, self._migration_types[direction]
        last = stop - header  # the last offset at which a whole header fits
        pos, count = start, 0
        while pos <= last:
            msg_type, size = type_and_size(data, pos)
            if size > limit or msg_type in migration_types:
                break
            end = pos + header + size
            if end > stop:
                break
            pos = end
            count += 1
        if count:
            return Passthrough(direction, buf.take(pos - start), count)
        return self._migration_message(direction, buf)

    def _migration_message(self, direction: Direction, buf: _Buffer) -> Message | None:
        """The message at the start of ``buf``: refused, awaited, or a migration message."""
        kind = self._kind
        if len(buf) < kind.size:
            return None
        serial: int | None
        sub_list: int | None
        if kind is HeaderKind.MINI:
            msg_type, size = _MINI.unpack_from(buf.data, buf.pos)
            serial = sub_list = None
        else:
            serial, msg_type, size, sub_list = _FULL.unpack_from(buf.data, buf.pos)
        if size > self.max_message_size:
            raise ProtocolError(
                f"{kind.value} header: field size at offset {_SIZE_AT[kind]} is {size}, "
                f"more than the maximum message size {self.max_message_size} (type {msg_type})"
            )
        if len(buf) < kind.size + size:
            return None
        cls = migration_class(self._channel_type, direction, msg_type)
        # The walk stops at a complete message of fitting size only for a migration type.
        assert cls is not None
        raw = buf.take(kind.size + size)
        try:
            migration = cls.decode_body(raw[kind.size :])
        except ProtocolError as exc:
            raise ProtocolError(f"message type {msg_type}: {exc}") from None
        return Message(direction, raw, kind, msg_type, serial, sub_list, migration)


#: What each stage of a direction's parser does with that direction's buffer.
_STEPS: dict[_Stage, Callable[[SpiceConnection, Direction, _Buffer], Event | None]] = {
    _Stage.WAIT: SpiceConnection._step_wait,
    _Stage.LINK_HEADER: SpiceConnection._step_link_header,
    _Stage.LINK_MESS: SpiceConnection._step_link_mess,
    _Stage.LINK_REPLY: SpiceConnection._step_link_reply,
    _Stage.AUTH_MECHANISM: SpiceConnection._step_auth_mechanism,
    _Stage.TICKET: SpiceConnection._step_ticket,
    _Stage.LINK_RESULT: SpiceConnection._step_link_result,
    _Stage.DATA: SpiceConnection._step_data,
    _Stage.CLOSED: SpiceConnection._step_closed,
}
