#!/usr/bin/env python3
"""Client->server data framing of :class:`gateway.spice.SpiceConnection`, after a valid link.

Input layout and oracle: see ``_spice_framing``.
"""

import _harness
from _spice_framing import Direction, test_one_input_for

__all__ = ["TestOneInput"]

TestOneInput = test_one_input_for(Direction.CLIENT_TO_SERVER)

if __name__ == "__main__":
    _harness.main(TestOneInput)
