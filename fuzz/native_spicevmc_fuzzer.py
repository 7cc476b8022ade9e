#!/usr/bin/env python3
"""Native decoder of the spicevmc family (``SVMD``: usbredir, port, webdav char device), raw bytes.

Oracle: a GatewayError, or a model that re-encodes to the very same bytes; oversized input is
refused as TooLarge. The three channels share one layout; usbredir stands for all of them.
"""

import _harness

with _harness.instrumented("gateway.native", "schemas"):
    from gateway.native import spicevmc
    from schemas import ChannelType
    from schemas.spicevmc import SpicevmcState

CHANNEL = ChannelType.USBREDIR
LAYOUT = spicevmc.LAYOUTS[CHANNEL]


def decode(data: bytes) -> SpicevmcState:
    return spicevmc.decode(data, CHANNEL)


def encode(state: SpicevmcState) -> bytes:
    return spicevmc.encode(state, CHANNEL)


def TestOneInput(data: bytes) -> None:
    _harness.check_codec(data, decode, encode, LAYOUT.max_size)


if __name__ == "__main__":
    _harness.main(TestOneInput)
