#!/usr/bin/env python3
"""Keyring file bytes -> Keyring (``parse_keyring``: everything load_keyring does after the
permission checks and the size cap).

Oracle: only GatewayError escapes, and its message quotes no secret (no run of hex digits
longer than a key id taken from the input); a parsed keyring dumps to a file that parses back
to the same keys, and dumping is stable.
"""

import _harness

with _harness.instrumented("gateway.keys"):
    from gateway.errors import GatewayError
    from gateway.keys import Keyring, dump_keyring, parse_keyring

__all__ = ["TestOneInput"]


def _summary(keyring: Keyring) -> list[tuple[bytes, str, int, bytes]]:
    return [(k.key_id, k.state.value, k.created, k.secret) for k in keyring.keys]


def TestOneInput(data: bytes) -> None:
    try:
        keyring = parse_keyring(data)
    except GatewayError as error:
        _harness.check_refusal(error, len(data))
        _harness.check_quotes_no_secret(error, data)
        return
    dumped = dump_keyring(keyring)
    again = parse_keyring(dumped)
    if _summary(again) != _summary(keyring) or dump_keyring(again) != dumped:
        raise _harness.OracleFailure("keyring does not survive dump and parse")


if __name__ == "__main__":
    _harness.main(TestOneInput)
