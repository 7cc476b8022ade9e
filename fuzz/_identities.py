"""Fixed host identities for the identity and handshake harnesses and their seed corpora.

Keys derive from constant seeds, so a committed hello or offer stays valid for every run:
host-a is the source, host-b the target, and each trusts the other.
"""

from __future__ import annotations

from gateway import handshake
from gateway.identity import SEEDS_SIZE, HostIdentity, HostKey, IdentityState, TrustStore

NOW = 1_800_000_000
ANNOUNCEMENT = b"vm=9b1c1f1e-5a38-4d3f-a3f0-6a2b8d1c7e42 migration=1 host-a->host-b"


def _seeds(fill: int) -> bytes:
    return bytes((fill * 37 + i) % 251 + 1 for i in range(SEEDS_SIZE))


def identity(host_id: str, fill: int) -> HostIdentity:
    return HostIdentity(
        host_id, [HostKey.from_seeds(host_id, IdentityState.ACTIVE, NOW, _seeds(fill))]
    )


SOURCE = identity("host-a", 1)
TARGET = identity("host-b", 2)
SOURCE_TRUST = TrustStore().with_peer(TARGET.public)[0]
TARGET_TRUST = TrustStore().with_peer(SOURCE.public)[0]

#: The target's hello for the offer harness: fixed challenge and ephemeral key. Its signature
#: is never checked on the target side, so zeros stand in for it and the bytes never change.
_CHALLENGE_AND_KEM = bytes(range(32)) + bytes((i * 5 + 3) % 256 for i in range(96))


def _fixed_hello() -> tuple[bytes, bytes]:
    offset = [0]

    def random_bytes(size: int) -> bytes:
        data = _CHALLENGE_AND_KEM[offset[0] : offset[0] + size]
        offset[0] += size
        return data

    hello, _ = handshake.hello(TARGET, now=NOW, random_bytes=random_bytes)
    signed = handshake.parse_hello(hello).signed
    return signed + bytes(len(hello) - len(signed)), _CHALLENGE_AND_KEM[32:]


FIXED_HELLO, _KEM_SEED = _fixed_hello()


def fixed_pending() -> handshake.PendingHello:
    """A fresh target state for FIXED_HELLO (each one answers a single offer)."""
    from cryptography.hazmat.primitives import hpke
    from cryptography.hazmat.primitives.asymmetric.mlkem import MLKEM768PrivateKey
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    kem = hpke.MLKEM768X25519PrivateKey(
        MLKEM768PrivateKey.from_seed_bytes(_KEM_SEED[:64]),
        X25519PrivateKey.from_private_bytes(_KEM_SEED[64:]),
    )
    return handshake.PendingHello(FIXED_HELLO, kem, TARGET.host_id, TARGET.active.key_id)
