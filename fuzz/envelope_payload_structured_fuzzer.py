#!/usr/bin/env python3
"""Structure-aware variant of envelope_payload_fuzzer: the fuzz input drives a builder
(_harness.build_document) that writes documents of the schema's own shape, with values at the
bounds the schema declares, then msgpack-encodes them. Same target and oracle.
"""

import _harness
import atheris
import msgpack
from envelope_payload_fuzzer import SCHEMAS, check

__all__ = ["TestOneInput"]


def TestOneInput(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    selector = fdp.ConsumeIntInRange(0, len(SCHEMAS) - 1)
    document = _harness.build_document(fdp, SCHEMAS[selector][2])
    check(selector, msgpack.packb(document, use_bin_type=True))


if __name__ == "__main__":
    _harness.main(TestOneInput)
