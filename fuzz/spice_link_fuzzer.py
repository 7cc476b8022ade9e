#!/usr/bin/env python3
"""SPICE link stage of :class:`gateway.spice.SpiceConnection`, both sides.

Input layout: byte 0 picks the fuzzed side and the scripted side's capabilities, bytes 1-2 are
two split points, the rest is fed to the fuzzed side in up to three reads.

- mode 0: the client's link header and link message, from the first byte;
- mode 1: after a valid client link, the server's link header, reply and link result;
- mode 2: after the server's valid reply, the client's auth-mechanism word and ticket,
  then a scripted OK link result once the client is done;
- mode 3: after a valid client ticket, the server's link result and first data messages.

Oracle: only ``GatewayError`` escapes, with a short message; the ``raw`` bytes of the fuzzed
side's events are always an exact prefix of its input, and all of it but a buffered partial
unit when nothing was refused.
"""

import _harness

with _harness.instrumented("gateway.spice"):
    from gateway.errors import GatewayError
    from gateway.spice import ChannelType, Direction, LinkError, SpiceConnection
    from gateway.spice.link import encode_link_result
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


def TestOneInput(data: bytes) -> None:
    if len(data) < 3:
        return
    flags, cuts, payload = data[0], data[1:3], data[3:]
    direction, scripted = MODES[flags % 4]
    channel = ChannelType.MAIN if flags & 4 else ChannelType.DISPLAY
    prefix = link_exchange(channel, auth_selection=bool(flags & 8), mini_header=bool(flags & 16))
    conn = SpiceConnection(max_message_size=1 << 16)
    for side, unit in prefix[:scripted]:
        (conn.receive_from_client if side is C2S else conn.receive_from_server)(unit)
    receive = conn.receive_from_client if direction is C2S else conn.receive_from_server

    accepted = bytearray()
    try:
        for chunk in split(payload, cuts):
            accepted += b"".join(event.raw for event in receive(chunk))
        if scripted == 2 and conn.buffered(C2S) == 0:
            conn.receive_from_server(encode_link_result(LinkError.OK))
    except GatewayError as error:
        _harness.check_refusal(error, len(payload))
        if not payload.startswith(accepted):
            raise _harness.OracleFailure("accepted bytes are not a prefix of the input") from None
        return
    if bytes(accepted) + payload[len(payload) - conn.buffered(direction) :] != payload:
        raise _harness.OracleFailure("raw slices do not add up to the consumed input")


if __name__ == "__main__":
    _harness.main(TestOneInput)
