#!/usr/bin/env python3
"""Exported public identity bytes -> PublicIdentity (``parse_public``: the file a peer hands
over, before an operator compares its fingerprint).

Oracle: only GatewayError escapes, with a short message; an accepted identity's key id is its
fingerprint's first 16 bytes and its self-signature verified, so its keys are exactly what the
file says.
"""

import _harness

with _harness.instrumented("gateway.identity"):
    from gateway.errors import GatewayError
    from gateway.identity import KEY_ID_SIZE, parse_public

__all__ = ["TestOneInput"]


def TestOneInput(data: bytes) -> None:
    try:
        public = parse_public(data)
    except GatewayError as error:
        _harness.check_refusal(error, len(data))
        return
    if public.key_id != public.fingerprint[:KEY_ID_SIZE]:
        raise _harness.OracleFailure("key id is not the fingerprint's prefix")


if __name__ == "__main__":
    _harness.main(TestOneInput)
