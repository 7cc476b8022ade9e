#!/usr/bin/env python3
"""Structure-aware variant of native_spicevmc_fuzzer: same target and oracle, inputs mutated field
by field from the layout (see _harness.LayoutMutator), so tail blocks are reached in seconds.
"""

import _harness
from native_spicevmc_fuzzer import LAYOUT, TestOneInput

CustomMutator = _harness.LayoutMutator(LAYOUT)

__all__ = ["CustomMutator", "TestOneInput"]

if __name__ == "__main__":
    _harness.main(TestOneInput, CustomMutator)
