"""Write ``vectors.json`` beside this file: the identity suite's known-answer vectors.

Run from the repository root: ``python -m tests.vectors.identity.make_vectors``. Every input
is fixed (seeds, clock, challenge, ephemeral and attempt secrets). Two outputs are not
deterministic and are therefore *recorded*, not recomputed: the ML-DSA-65 half of each
signature (ML-DSA signs with fresh randomness) and HPKE's encapsulation (RFC 9180's single-shot
API draws its own ephemeral key). Both stay checkable: the signatures verify, and the recorded
encapsulation opens under the fixed ephemeral key to the fixed attempt secret. The vectors are
frozen: regenerate them only with a new handshake version, never to make a test pass.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from gateway import handshake
from gateway.identity import SEEDS_SIZE, HostIdentity, HostKey, IdentityState

HERE = Path(__file__).parent
NOW = 1_800_000_000
ANNOUNCEMENT = b"vm=9b1c1f1e-5a38-4d3f-a3f0-6a2b8d1c7e42 migration=1 host-a->host-b"
CHALLENGE = bytes(range(0x40, 0x60))
EPHEMERAL_SEED = bytes(range(0x80, 0xE0))  # ML-KEM-768 d || z (64), then X25519 (32)
ATTEMPT_SECRET = bytes(range(0xA0, 0xC0))


def seeds(first: int) -> bytes:
    """Ed25519 (32) || ML-DSA-65 xi (32) || ML-KEM-768 d || z (64) || X25519 (32)."""
    return bytes((first + i) % 256 for i in range(SEEDS_SIZE))


def identity(host_id: str, first: int) -> HostIdentity:
    key = HostKey.from_seeds(host_id, IdentityState.ACTIVE, NOW, seeds(first))
    return HostIdentity(host_id, [key])


def fixed(*parts: bytes) -> Any:
    data = b"".join(parts)
    offset = [0]

    def random_bytes(size: int) -> bytes:
        out = data[offset[0] : offset[0] + size]
        offset[0] += size
        return out

    return random_bytes


def build() -> dict[str, Any]:
    source, target = identity("host-a", 0x01), identity("host-b", 0x11)
    hello, _ = handshake.hello(target, now=NOW, random_bytes=fixed(CHALLENGE, EPHEMERAL_SEED))
    parsed_hello = handshake.parse_hello(hello)
    offer, key = handshake._answer(hello, ANNOUNCEMENT, source, ATTEMPT_SECRET, now=NOW)
    parsed_offer = handshake.parse_offer(offer)
    transcript = handshake.transcript_hash(hello, parsed_offer.signed)
    key_id, secret = handshake.derive_attempt_key(ATTEMPT_SECRET, transcript)
    assert key.key_id == key_id

    def public(own: HostIdentity, first: int) -> dict[str, str]:
        pub = own.public
        return {
            "host_id": own.host_id,
            "created": str(NOW),
            "seeds": seeds(first).hex(),
            "ed25519": pub.ed25519.hex(),
            "mldsa65_sha256": hashlib.sha256(pub.mldsa65).hexdigest(),
            "kem_sha256": hashlib.sha256(pub.kem).hexdigest(),
            "encoded_sha256": hashlib.sha256(pub.encoded).hexdigest(),
            "fingerprint": pub.fingerprint.hex(),
            "key_id": pub.key_id.hex(),
        }

    return {
        "now": NOW,
        "source": public(source, 0x01),
        "target": public(target, 0x11),
        "hello": {
            "challenge": CHALLENGE.hex(),
            "ephemeral_seed": EPHEMERAL_SEED.hex(),
            "signed": parsed_hello.signed.hex(),
            "signed_sha256": hashlib.sha256(parsed_hello.signed).hexdigest(),
            "ed25519_signature": parsed_hello.signature[:64].hex(),
            "recorded": hello.hex(),
        },
        "offer": {
            "announcement": ANNOUNCEMENT.hex(),
            "attempt_secret": ATTEMPT_SECRET.hex(),
            "before_encapsulation": parsed_offer.before_encapsulation.hex(),
            "recorded": offer.hex(),
            "ed25519_signature": parsed_offer.signature[:64].hex(),
        },
        "transcript_hash": transcript.hex(),
        "attempt_key_id": key_id.hex(),
        "attempt_envelope_secret": secret.hex(),
        "derivation_only": {
            "secret": bytes(range(32)).hex(),
            "transcript_hash": bytes(range(32, 64)).hex(),
            "key_id": handshake.derive_attempt_key(bytes(range(32)), bytes(range(32, 64)))[
                0
            ].hex(),
            "envelope_secret": handshake.derive_attempt_key(
                bytes(range(32)), bytes(range(32, 64))
            )[1].hex(),
        },
        "transcript_only": {
            "hello": b"hello".hex(),
            "offer_signed": b"offer".hex(),
            "transcript_hash": handshake.transcript_hash(b"hello", b"offer").hex(),
        },
    }


def main() -> None:
    (HERE / "vectors.json").write_text(json.dumps(build(), indent=2) + "\n")


if __name__ == "__main__":
    main()
