#!/usr/bin/env python3
"""Native decoder of the display channel (``DCMD``: caches, GLZ dictionary, the surfaces at
the client), raw bytes.

Oracle: a GatewayError, or a model that re-encodes to the very same bytes; oversized input is
refused as TooLarge.
"""

import _harness

with _harness.instrumented("gateway.native", "schemas"):
    from gateway.native import display

LAYOUT = display.LAYOUT


def TestOneInput(data: bytes) -> None:
    _harness.check_codec(data, display.decode, display.encode, LAYOUT.max_size)


if __name__ == "__main__":
    _harness.main(TestOneInput)
