#!/usr/bin/env python3
"""Server->client data framing of :class:`gateway.spice.SpiceConnection`, after a valid link.

Input layout: byte 0 holds flags (bit 0 mini header, bit 1 auth selection, bit 2 main channel
rather than display), byte 1 the number of split points (mod 8), then that many u16 LE split
points, then the bytes the server sends after a scripted, valid link stage.

Oracle: only ``GatewayError`` escapes, with a short message; the ``raw`` bytes of the events
are always an exact prefix of the input, and all of it but a buffered partial message when
nothing was refused.
"""

import struct

import _harness

with _harness.instrumented():
    from gateway.errors import GatewayError
    from gateway.spice import ChannelType, Direction, SpiceConnection
    from gateway.spice.scripted import link_exchange

DIRECTION = Direction.SERVER_TO_CLIENT


def TestOneInput(data: bytes) -> None:
    if len(data) < 2 or len(data) < 2 + 2 * (data[1] % 8):
        return
    flags, count = data[0], data[1] % 8
    cuts = struct.unpack_from(f"<{count}H", data, 2)
    payload = data[2 + 2 * count :]
    channel = ChannelType.MAIN if flags & 4 else ChannelType.DISPLAY
    conn = SpiceConnection(max_message_size=1 << 16)
    for side, unit in link_exchange(
        channel, mini_header=bool(flags & 1), auth_selection=bool(flags & 2)
    ):
        if side is Direction.CLIENT_TO_SERVER:
            conn.receive_from_client(unit)
        else:
            conn.receive_from_server(unit)
    if DIRECTION is Direction.CLIENT_TO_SERVER:
        receive = conn.receive_from_client
    else:
        receive = conn.receive_from_server

    points = sorted(cut % (len(payload) + 1) for cut in cuts)
    accepted = bytearray()
    start = 0
    try:
        for point in [*points, len(payload)]:
            accepted += b"".join(event.raw for event in receive(payload[start:point]))
            start = point
    except GatewayError as error:
        _harness.check_refusal(error, len(payload))
        if not payload.startswith(accepted):
            raise _harness.OracleFailure("accepted bytes are not a prefix of the input") from None
        return
    if bytes(accepted) + payload[len(payload) - conn.buffered(DIRECTION) :] != payload:
        raise _harness.OracleFailure("raw slices do not add up to the consumed input")


if __name__ == "__main__":
    _harness.main(TestOneInput)
