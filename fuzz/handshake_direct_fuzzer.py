#!/usr/bin/env python3
"""Direct offer bytes -> the target's ``handshake.direct_accept`` (host-b, fixed clock, a
replay guard in a temporary directory).

Oracle: only GatewayError escapes, with a short message; over-limit input is TooLarge; an
accepted offer is host-a's, addressed to host-b, its announcement returned unchanged; the
same offer is never accepted twice (Replayed).
"""

import atexit
import shutil
import tempfile
from pathlib import Path

import _harness

with _harness.instrumented("gateway.handshake"):
    import _identities

    from gateway import handshake
    from gateway.errors import GatewayError, Replayed
    from gateway.replay import ReplayGuard

__all__ = ["TestOneInput"]

_DIR = tempfile.mkdtemp(prefix="smg-direct-")
atexit.register(shutil.rmtree, _DIR, True)
_GUARD = ReplayGuard(Path(_DIR) / "replay.sqlite")


def _accept(data: bytes) -> tuple[bytes, handshake.AttemptKey]:
    return handshake.direct_accept(
        data, _identities.TARGET, _identities.TARGET_TRUST, _GUARD, now=_identities.NOW
    )


def TestOneInput(data: bytes) -> None:
    try:
        announcement, key = _accept(data)
    except GatewayError as error:
        _harness.check_refusal(error, len(data), handshake.MAX_DIRECT)
        return
    parsed = handshake.parse_direct(data)
    if announcement != parsed.announcement or key.source_host != _identities.SOURCE.host_id:
        raise _harness.OracleFailure("accepted a direct offer that is not host-a's as parsed")
    if key.target_host != _identities.TARGET.host_id:
        raise _harness.OracleFailure("accepted a direct offer for another host")
    try:
        _accept(data)
    except Replayed:
        return
    raise _harness.OracleFailure("the same direct offer was accepted twice")


if __name__ == "__main__":
    _harness.main(TestOneInput)
