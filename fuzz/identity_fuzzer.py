#!/usr/bin/env python3
"""Private host identity file bytes -> HostIdentity (``parse_identity``: everything
load_identity does after the permission checks and the size cap).

Oracle: only GatewayError escapes, and its message quotes no secret (no run of hex digits
longer than a key id taken from the input); a parsed identity dumps to a file that parses back
to the same generations and public keys, and dumping is stable.
"""

import _harness

with _harness.instrumented("gateway.identity"):
    from gateway.errors import GatewayError
    from gateway.identity import HostIdentity, dump_identity, parse_identity

__all__ = ["TestOneInput"]


def _summary(identity: HostIdentity) -> list[tuple[bytes, str, int, bytes]]:
    return [
        (k.key_id, k.state.value, k.created, b"" if k._public is None else k._public.encoded)
        for k in identity.keys
    ]


def TestOneInput(data: bytes) -> None:
    try:
        identity = parse_identity(data)
    except GatewayError as error:
        _harness.check_refusal(error, len(data))
        _harness.check_quotes_no_secret(error, data)
        return
    dumped = dump_identity(identity)
    again = parse_identity(dumped)
    if _summary(again) != _summary(identity) or dump_identity(again) != dumped:
        raise _harness.OracleFailure("identity does not survive dump and parse")


if __name__ == "__main__":
    _harness.main(TestOneInput)
