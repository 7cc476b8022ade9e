#!/usr/bin/env python3
"""Hello bytes -> the source's ``handshake.offer`` (host-a answering host-b, fixed clock).

Oracle: only GatewayError escapes, with a short message; over-limit input is TooLarge; a
hello that is answered is host-b's, signed by host-b's identity (the fuzzer cannot sign, so
only the committed genuine hellos get there), and the offer made names its hash.
"""

import hashlib

import _harness

with _harness.instrumented("gateway.handshake"):
    import _identities

    from gateway import handshake
    from gateway.errors import GatewayError

__all__ = ["TestOneInput"]


def _secret(size: int) -> bytes:
    return b"\x5a" * size


def TestOneInput(data: bytes) -> None:
    try:
        offer, key = handshake.offer(
            data,
            _identities.ANNOUNCEMENT,
            _identities.SOURCE,
            _identities.SOURCE_TRUST,
            _identities.TARGET.host_id,
            now=_identities.NOW,
            random_bytes=_secret,
        )
    except GatewayError as error:
        _harness.check_refusal(error, len(data), handshake.MAX_HELLO)
        return
    hello = handshake.parse_hello(data)
    _identities.TARGET.public.verify(handshake.LABEL_HELLO, hello.signed, hello.signature)
    if handshake.parse_offer(offer).hello_hash != hashlib.sha256(data).digest():
        raise _harness.OracleFailure("the offer names another hello")
    if key.target_host != _identities.TARGET.host_id:
        raise _harness.OracleFailure("the attempt key is for another target")


if __name__ == "__main__":
    _harness.main(TestOneInput)
