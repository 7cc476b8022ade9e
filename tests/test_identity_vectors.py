"""The identity suite's known-answer vectors (tests/vectors/identity/vectors.json), checked
against this implementation, against RFC 5869 HKDF directly, and against SECURITY.md."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, hpke
from cryptography.hazmat.primitives.asymmetric.mlkem import MLKEM768PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from gateway import handshake as hs
from gateway.identity import HostIdentity, HostKey, IdentityState, TrustStore
from tests.vectors.identity.make_vectors import fixed

ROOT = Path(__file__).parent.parent
VECTORS: dict[str, Any] = json.loads(
    (ROOT / "tests" / "vectors" / "identity" / "vectors.json").read_text()
)
NOW = VECTORS["now"]


def identity(side: str) -> HostIdentity:
    entry = VECTORS[side]
    key = HostKey.from_seeds(
        entry["host_id"], IdentityState.ACTIVE, int(entry["created"]), bytes.fromhex(entry["seeds"])
    )
    return HostIdentity(entry["host_id"], [key])


@pytest.mark.parametrize("side", ["source", "target"])
def test_public_identity_from_seeds(side: str) -> None:
    public = identity(side).public
    entry = VECTORS[side]
    assert public.ed25519.hex() == entry["ed25519"]
    assert hashlib.sha256(public.mldsa65).hexdigest() == entry["mldsa65_sha256"]
    assert hashlib.sha256(public.kem).hexdigest() == entry["kem_sha256"]
    assert hashlib.sha256(public.encoded).hexdigest() == entry["encoded_sha256"]
    assert public.fingerprint.hex() == entry["fingerprint"]
    assert public.key_id.hex() == entry["key_id"]


def test_hello_signed_part_and_ed25519_signature() -> None:
    vector = VECTORS["hello"]
    target = identity("target")
    seed = bytes.fromhex(vector["challenge"]) + bytes.fromhex(vector["ephemeral_seed"])
    hello, _ = hs.hello(target, now=NOW, random_bytes=fixed(seed))
    parsed = hs.parse_hello(hello)
    assert parsed.signed.hex() == vector["signed"]
    assert hashlib.sha256(parsed.signed).hexdigest() == vector["signed_sha256"]
    assert parsed.signature[:64].hex() == vector["ed25519_signature"]
    recorded = hs.parse_hello(bytes.fromhex(vector["recorded"]))
    assert recorded.signed == parsed.signed
    target.public.verify(hs.LABEL_HELLO, recorded.signed, recorded.signature)


def test_recorded_offer_gives_the_attempt_key() -> None:
    source, target = identity("source"), identity("target")
    hello = bytes.fromhex(VECTORS["hello"]["recorded"])
    offer = bytes.fromhex(VECTORS["offer"]["recorded"])
    parsed = hs.parse_offer(offer)
    assert parsed.before_encapsulation.hex() == VECTORS["offer"]["before_encapsulation"]
    assert parsed.announcement.hex() == VECTORS["offer"]["announcement"]
    # The Ed25519 half is deterministic over the recorded encapsulation.
    again = source.active._ed.sign(hs.LABEL_OFFER + parsed.signed)  # type: ignore[union-attr]
    assert again.hex() == VECTORS["offer"]["ed25519_signature"] == parsed.signature[:64].hex()
    seed = bytes.fromhex(VECTORS["hello"]["ephemeral_seed"])
    kem = hpke.MLKEM768X25519PrivateKey(
        MLKEM768PrivateKey.from_seed_bytes(seed[:64]),
        X25519PrivateKey.from_private_bytes(seed[64:]),
    )
    pending = hs.PendingHello(hello, kem, target.host_id, target.active.key_id)
    trust, _ = TrustStore().with_peer(source.public)
    announcement, key = hs.accept(offer, pending, trust, now=NOW)
    assert announcement.hex() == VECTORS["offer"]["announcement"]
    assert key.transcript_hash.hex() == VECTORS["transcript_hash"]
    assert key.key_id.hex() == VECTORS["attempt_key_id"]
    assert key.keyring.active.secret.hex() == VECTORS["attempt_envelope_secret"]
    # The encapsulation opens to the fixed attempt secret.
    secret = hs._SUITE.decrypt(
        parsed.encapsulation, kem, info=hs.LABEL_HPKE + parsed.before_encapsulation
    )
    assert secret.hex() == VECTORS["offer"]["attempt_secret"]


def test_derivation_is_rfc5869_hkdf() -> None:
    vector = VECTORS["derivation_only"]
    secret, transcript = bytes.fromhex(vector["secret"]), bytes.fromhex(vector["transcript_hash"])
    key_id, envelope_secret = hs.derive_attempt_key(secret, transcript)
    assert key_id.hex() == vector["key_id"]
    assert envelope_secret.hex() == vector["envelope_secret"]
    for size, label, got in (
        (16, hs.LABEL_KEY_ID, key_id),
        (32, hs.LABEL_SECRET, envelope_secret),
    ):
        assert HKDF(hashes.SHA256(), size, salt=transcript, info=label).derive(secret) == got


def test_transcript_encoding() -> None:
    vector = VECTORS["transcript_only"]
    hello, offer = bytes.fromhex(vector["hello"]), bytes.fromhex(vector["offer_signed"])
    expected = hashlib.sha256(
        hs.LABEL_TRANSCRIPT
        + len(hello).to_bytes(4, "big")
        + hello
        + len(offer).to_bytes(4, "big")
        + offer
    ).hexdigest()
    assert hs.transcript_hash(hello, offer).hex() == expected == vector["transcript_hash"]


def test_security_md_quotes_the_vectors() -> None:
    text = (ROOT / "SECURITY.md").read_text()
    quoted = [
        VECTORS["source"]["fingerprint"],
        VECTORS["target"]["fingerprint"],
        VECTORS["source"]["ed25519"],
        VECTORS["hello"]["signed_sha256"],
        VECTORS["hello"]["ed25519_signature"][:64],
        VECTORS["hello"]["ed25519_signature"][64:],
        VECTORS["transcript_hash"],
        VECTORS["attempt_key_id"],
        VECTORS["attempt_envelope_secret"],
        VECTORS["derivation_only"]["key_id"],
        VECTORS["derivation_only"]["envelope_secret"],
        VECTORS["transcript_only"]["transcript_hash"],
    ]
    for value in quoted:
        assert value in text, value
