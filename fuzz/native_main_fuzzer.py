#!/usr/bin/env python3
"""Native decoder of the main channel (``MNMD``: the agent's char device, its read and write
state), raw bytes.

Oracle: a GatewayError, or a model that re-encodes to the very same bytes; oversized input is
refused as TooLarge.
"""

import _harness

with _harness.instrumented("gateway.native", "schemas"):
    from gateway.native import main

LAYOUT = main.LAYOUT


def TestOneInput(data: bytes) -> None:
    _harness.check_codec(data, main.decode, main.encode, LAYOUT.max_size)


if __name__ == "__main__":
    _harness.main(TestOneInput)
