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
refused once is broken and refuses any further input from either side.
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
    conn = SpiceConnection(max_message_size=MAX_MESSAGE_SIZE)
    for side, unit in link_exchange(
        channel, mini_header=bool(flags & 1), auth_selection=bool(flags & 2)
    ):
        if side is Direction.CLIENT_TO_SERVER:
            conn.receive_from_client(unit)
        else:
            conn.receive_from_server(unit)
    if direction is Direction.CLIENT_TO_SERVER:
        receive = conn.receive_from_client
    else:
        receive = conn.receive_from_server

    points = sorted(cut % (len(payload) + 1) for cut in cuts)
    accepted = bytearray()
    start = 0
    try:
        for point in [*points, len(payload)]:
            events = receive(payload[start:point])
            for event in events:
                check_run(event, conn.header_kind or HeaderKind.MINI, channel)
            accepted += b"".join(event.raw for event in events)
            start = point
    except GatewayError as error:
        _harness.check_refusal(error, len(payload))
        if not payload.startswith(accepted):
            raise _harness.OracleFailure("accepted bytes are not a prefix of the input") from None
        check_broken(conn)
        return
    if bytes(accepted) + payload[len(payload) - conn.buffered(direction) :] != payload:
        raise _harness.OracleFailure("raw slices do not add up to the consumed input")


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
