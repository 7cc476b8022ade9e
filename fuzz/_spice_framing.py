"""The data-framing harnesses' shared body: ``spice_client_framing_fuzzer`` and
``spice_server_framing_fuzzer`` differ only in the direction they feed.

Input layout: byte 0 holds flags (bit 0 mini header, bit 1 auth selection, bit 2 main channel
rather than display), byte 1 the number of split points (mod 8), then that many u16 LE split
points, then the bytes the direction's sender writes after a scripted, valid link stage.

Oracle: only ``GatewayError`` escapes, with a short message; the ``raw`` bytes of the events
are always an exact prefix of the input, and all of it but a buffered partial message when
nothing was refused; each pass-through run is exactly ``count`` whole messages, none of them a
migration message of the channel and direction, each within the maximum message size; each
migration message is its header and body, decodes the same through ``decode_migration``, and
re-frames around its own body to its own bytes (``sub_list`` cleared); a connection that
refused once is broken and refuses any further input from either side. The same input, split
the same way, through ``receive_streaming`` from one receive buffer overwritten after every
read (a proxy's), with a large message read into its ``room`` as the proxy does, gives the
same migration messages, the same relayed bytes between them and the same refusal.
"""

import struct
from collections.abc import Callable

import _harness

with _harness.instrumented("gateway.spice"):
    from gateway.errors import GatewayError
    from gateway.spice import ChannelType, ConnectionState, Direction, HeaderKind, SpiceConnection
    from gateway.spice.events import Event, Message, Passthrough, reframe
    from gateway.spice.messages import decode_migration, migration_class
    from gateway.spice.scripted import link_exchange

#: Type and size of each data header.
HEADERS = {HeaderKind.MINI: struct.Struct("<HI"), HeaderKind.FULL: struct.Struct("<8xHI4x")}
MAX_MESSAGE_SIZE = 1 << 16


def test_one_input_for(direction: Direction) -> Callable[[bytes], None]:
    """The harness for the data framing that ``direction``'s sender writes."""

    def test_one_input(data: bytes) -> None:
        check_framing(data, direction)

    return test_one_input


def check_framing(data: bytes, direction: Direction) -> None:
    if len(data) < 2 or len(data) < 2 + 2 * (data[1] % 8):
        return
    flags, count = data[0], data[1] % 8
    cuts = struct.unpack_from(f"<{count}H", data, 2)
    payload = data[2 + 2 * count :]
    channel = ChannelType.MAIN if flags & 4 else ChannelType.DISPLAY
    conn = linked(channel, flags)
    if direction is Direction.CLIENT_TO_SERVER:
        receive = conn.receive_from_client
    else:
        receive = conn.receive_from_server

    points = sorted(cut % (len(payload) + 1) for cut in cuts)
    pieces = [payload[a:b] for a, b in zip([0, *points], [*points, len(payload)], strict=True)]
    accepted = bytearray()
    plain: list[object] = []
    try:
        for piece in pieces:
            events = receive(piece)
            for event in events:
                check_run(event, conn.header_kind or HeaderKind.MINI, channel)
            accepted += b"".join(event.raw for event in events)
            plain += events
    except GatewayError as error:
        _harness.check_refusal(error, len(payload))
        if not payload.startswith(accepted):
            raise _harness.OracleFailure("accepted bytes are not a prefix of the input") from None
        check_broken(conn)
        check_streaming(linked(channel, flags), direction, pieces, plain, str(error))
        return
    if bytes(accepted) + payload[len(payload) - conn.buffered(direction) :] != payload:
        raise _harness.OracleFailure("raw slices do not add up to the consumed input")
    check_streaming(linked(channel, flags), direction, pieces, plain, None)


def linked(channel: int, flags: int) -> SpiceConnection:
    """A connection past a scripted, valid link stage."""
    conn = SpiceConnection(max_message_size=MAX_MESSAGE_SIZE)
    for side, unit in link_exchange(
        channel, mini_header=bool(flags & 1), auth_selection=bool(flags & 2)
    ):
        if side is Direction.CLIENT_TO_SERVER:
            conn.receive_from_client(unit)
        else:
            conn.receive_from_server(unit)
    return conn


#: A message at least this large (header included) is read into a room of its own, as the
#: proxy does with what does not fit its receive buffer.
ROOM_AT = 1024


def check_streaming(
    conn: SpiceConnection,
    direction: Direction,
    pieces: list[bytes],
    plain: list[object],
    refusal: str | None,
) -> None:
    """The pieces through ``receive_streaming`` give what the plain API gave (see above)."""
    buffer = bytearray(max((len(piece) for piece in pieces), default=0))
    got: list[object] = []
    items: list[object] = []
    try:
        for piece in pieces:
            # Like the plain API, a refusal drops what its read gave before it.
            got, items = got + items, []
            at = 0
            while at < len(piece):
                room = conn.room(direction, ROOM_AT)
                if room is not None:
                    taken = min(len(room), len(piece) - at)
                    room[:taken] = piece[at : at + taken]
                    new = conn.filled(direction, taken)
                else:
                    taken = len(piece) - at
                    buffer[:taken] = piece[at:]
                    new = conn.receive_streaming(direction, memoryview(buffer)[:taken])
                items += [bytes(item) if isinstance(item, memoryview) else item for item in new]
                buffer[:] = b"\xee" * len(buffer)
                at += taken
    except GatewayError as error:
        if str(error) != refusal:
            raise _harness.OracleFailure(
                f"streaming refused otherwise: {error} (plain: {refusal})"
            ) from None
    else:
        if refusal is not None:
            raise _harness.OracleFailure(f"streaming took what the plain API refused: {refusal}")
        got += items
    if merged(got) != merged(plain):
        raise _harness.OracleFailure("streaming gave other events or relayed other bytes")


def merged(items: list[object]) -> list[object]:
    """Relayed runs joined where adjacent (how they fall may differ), other events as they are."""
    out: list[object] = []
    for item in items:
        run = item.raw if isinstance(item, Passthrough) else item
        if isinstance(run, bytes) and out and isinstance(out[-1], bytes):
            out[-1] += run
        else:
            out.append(run)
    return out


def check_broken(conn: SpiceConnection) -> None:
    """A connection that refused once refuses everything after, from either side."""
    if conn.state is not ConnectionState.BROKEN:
        raise _harness.OracleFailure(f"a refusing connection is {conn.state.value}")
    for receive in (conn.receive_from_client, conn.receive_from_server):
        try:
            receive(b"\x00")
        except GatewayError:
            continue
        raise _harness.OracleFailure("a broken connection took more input")


def check_message(event: Message, channel: int) -> None:
    """A migration message is its header and body, decoded as ``decode_migration`` would."""
    if event.header + event.body != event.raw or event.body_size != len(event.body):
        raise _harness.OracleFailure("a message's header and body do not make its bytes")
    if event.header_size != event.kind.size:
        raise _harness.OracleFailure("a message's header size is not its kind's")
    body = event.body
    again = decode_migration(channel, event.direction, event.msg_type, body)
    if again is None or again != event.migration:
        raise _harness.OracleFailure(f"type {event.msg_type} decodes otherwise alone")
    expected = event.raw if not event.sub_list else event.raw[:14] + bytes(4) + body
    if reframe(event, body) != expected:
        raise _harness.OracleFailure(f"type {event.msg_type} does not re-frame to its bytes")


def check_run(event: Event, kind: HeaderKind, channel: int) -> None:
    """A pass-through run holds what it promises (read with a header walk of its own)."""
    if isinstance(event, Message):
        check_message(event, channel)
        return
    if not isinstance(event, Passthrough):
        return
    header, raw = HEADERS[kind], event.raw
    pos = count = 0
    while pos < len(raw):
        if pos + header.size > len(raw):
            raise _harness.OracleFailure("a pass-through run ends inside a header")
        msg_type, size = header.unpack_from(raw, pos)
        if size > MAX_MESSAGE_SIZE:
            raise _harness.OracleFailure(f"an oversized message (type {msg_type}) passed through")
        if migration_class(channel, event.direction, msg_type) is not None:
            raise _harness.OracleFailure(f"migration message type {msg_type} passed through")
        pos += header.size + size
        count += 1
    if pos != len(raw) or count != event.count or count == 0:
        raise _harness.OracleFailure(
            f"a run of {event.count} holds {count} messages, {pos - len(raw)} bytes off"
        )
