#!/usr/bin/env python3
"""SPICE link stage of :class:`gateway.spice.SpiceConnection`, both sides.

Input layout: byte 0 picks the fuzzed side and the scripted side's capabilities, bytes 1-2 are
two split points, the rest is fed to the fuzzed side in up to three reads.

- mode 0: the client's link header and link message, from the first byte;
- mode 1: after a valid client link, the server's link header, reply and link result;
- mode 2: after the server's valid reply, the client's auth-mechanism word and ticket,
  then a scripted OK link result once the client is done;
- mode 3: after a valid client ticket, the server's link result and first data messages.

With bit 5 set, the rest goes straight to one of the link decoders instead (the mode picks
which: the client's link message, the server's reply, a u32 word, a link header of the
direction bit 2 picks), as a caller of the decoders other than the connection would pass it.

Oracle: only ``GatewayError`` escapes, with a short message; the ``raw`` bytes of the fuzzed
side's events are always an exact prefix of its input, and all of it but a buffered partial
unit when nothing was refused; a connection that refused is broken and refuses any further
input from either side; one that is not reports the state its events said. A decoded unit
encodes again to a unit that decodes to the same value.
"""

import _harness
from _spice_framing import check_broken

with _harness.instrumented("gateway.spice"):
    from gateway.errors import GatewayError
    from gateway.spice import (
        ChannelType,
        ConnectionState,
        Direction,
        LinkError,
        LinkHeader,
        LinkMess,
        LinkReply,
        SpiceConnection,
    )
    from gateway.spice.events import Event, LinkReplyReceived, LinkResultReceived
    from gateway.spice.link import decode_u32, encode_link_result
    from gateway.spice.scripted import link_exchange

C2S = Direction.CLIENT_TO_SERVER
#: The fuzzed side and how many scripted link units precede it, per mode.
MODES = ((C2S, 0), (Direction.SERVER_TO_CLIENT, 1), (C2S, 2), (Direction.SERVER_TO_CLIENT, 3))


def split(payload: bytes, cuts: bytes) -> list[bytes]:
    points = sorted(cut % (len(payload) + 1) for cut in cuts)
    chunks, start = [], 0
    for point in [*points, len(payload)]:
        chunks.append(payload[start:point])
        start = point
    return chunks


def check_decoder(mode: int, payload: bytes, direction: Direction) -> None:
    """One link decoder alone: refuse with a short GatewayError, or round-trip."""
    try:
        if mode == 0:
            mess = LinkMess.decode(payload)
            again: object = LinkMess.decode(mess.encode())
            value: object = mess
        elif mode == 1:
            reply = LinkReply.decode(payload)
            again, value = LinkReply.decode(reply.encode()), reply
        elif mode == 2:
            value = decode_u32(payload, "word")
            again = decode_u32(encode_link_result(value), "word")
        else:
            header = LinkHeader.decode(payload, direction)
            again, value = LinkHeader.decode(header.encode(), direction), header
    except GatewayError as error:
        _harness.check_refusal(error, len(payload))
        return
    if again != value:
        raise _harness.OracleFailure(f"{type(value).__name__} does not survive encoding")


def check_state(conn: SpiceConnection, events: list[Event]) -> None:
    """What the connection reports agrees with the link units it emitted."""
    state = conn.state
    results = [e for e in events if isinstance(e, LinkResultReceived)]
    replies = [e for e in events if isinstance(e, LinkReplyReceived)]
    if any(not r.ok for r in replies) and conn.header_kind is not None:
        raise _harness.OracleFailure("a refused link reply settled a data header")
    if any(not r.ok for r in results + replies):
        if state is not ConnectionState.LINK_FAILED:
            raise _harness.OracleFailure(f"a refused link left the connection {state.value}")
    elif results and (state is not ConnectionState.ESTABLISHED or conn.header_kind is None):
        raise _harness.OracleFailure(f"an accepted link left the connection {state.value}")
    elif not results and state is not ConnectionState.LINKING:
        raise _harness.OracleFailure(f"no link result, yet the connection is {state.value}")
    mess = conn.link_mess
    if (conn.channel_type, conn.channel_id) != (
        (None, None) if mess is None else (mess.channel_type, mess.channel_id)
    ):
        raise _harness.OracleFailure("the connection reports another channel than it linked")


def TestOneInput(data: bytes) -> None:
    if len(data) < 3:
        return
    flags, cuts, payload = data[0], data[1:3], data[3:]
    if flags & 32:
        check_decoder(flags % 4, payload, C2S if flags & 4 else Direction.SERVER_TO_CLIENT)
        return
    direction, scripted = MODES[flags % 4]
    channel = ChannelType.MAIN if flags & 4 else ChannelType.DISPLAY
    prefix = link_exchange(channel, auth_selection=bool(flags & 8), mini_header=bool(flags & 16))
    conn = SpiceConnection(max_message_size=1 << 16)
    for side, unit in prefix[:scripted]:
        (conn.receive_from_client if side is C2S else conn.receive_from_server)(unit)
    receive = conn.receive_from_client if direction is C2S else conn.receive_from_server

    accepted = bytearray()
    events: list[Event] = []
    try:
        for chunk in split(payload, cuts):
            got = receive(chunk)
            events += got
            accepted += b"".join(event.raw for event in got)
        if scripted == 2 and conn.buffered(C2S) == 0:
            events += conn.receive_from_server(encode_link_result(LinkError.OK))
    except GatewayError as error:
        _harness.check_refusal(error, len(payload))
        if not payload.startswith(accepted):
            raise _harness.OracleFailure("accepted bytes are not a prefix of the input") from None
        check_broken(conn)
        return
    check_state(conn, events)
    if bytes(accepted) + payload[len(payload) - conn.buffered(direction) :] != payload:
        raise _harness.OracleFailure("raw slices do not add up to the consumed input")


if __name__ == "__main__":
    _harness.main(TestOneInput)
