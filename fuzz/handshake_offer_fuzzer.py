#!/usr/bin/env python3
"""Offer bytes -> the target's ``handshake.accept`` (host-b, answering its fixed hello).

Oracle: only GatewayError escapes, with a short message; over-limit input is TooLarge; an
accepted offer comes from host-a's identity, returns its announcement unchanged, and the same
hello never accepts a second time (Replayed).
"""

import _harness

with _harness.instrumented("gateway.handshake"):
    import _identities

    from gateway import handshake
    from gateway.errors import GatewayError, Replayed

__all__ = ["TestOneInput"]


def TestOneInput(data: bytes) -> None:
    pending = _identities.fixed_pending()
    try:
        announcement, key = handshake.accept(
            data, pending, _identities.TARGET_TRUST, now=_identities.NOW
        )
    except GatewayError as error:
        _harness.check_refusal(error, len(data), handshake.MAX_OFFER)
        return
    offer = handshake.parse_offer(data)
    if announcement != offer.announcement or key.source_host != _identities.SOURCE.host_id:
        raise _harness.OracleFailure("accepted an offer that is not host-a's as parsed")
    if key.source_key_id != _identities.SOURCE.active.key_id:
        raise _harness.OracleFailure("accepted a signature of another identity")
    try:
        handshake.accept(data, pending, _identities.TARGET_TRUST, now=_identities.NOW)
    except Replayed:
        return
    raise _harness.OracleFailure("the same hello accepted a second offer")


if __name__ == "__main__":
    _harness.main(TestOneInput)
