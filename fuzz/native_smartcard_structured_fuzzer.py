#!/usr/bin/env python3
"""Structure-aware variant of native_smartcard_fuzzer: same target and oracle, inputs mutated field
by field from the layout (see _harness.LayoutMutator), so tail blocks are reached in seconds; the
pending bytes are laid out as the inner stream the schema requires (see _streams).
"""

import _harness
import _streams
from native_smartcard_fuzzer import LAYOUT, TestOneInput

CustomMutator = _harness.LayoutMutator(LAYOUT, stream=_streams.STREAMS["smartcard"])

__all__ = ["CustomMutator", "TestOneInput"]

if __name__ == "__main__":
    _harness.main(TestOneInput, CustomMutator)
