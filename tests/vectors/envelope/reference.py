"""A second, deliberately plain sealer for suite 1, written from SECURITY.md's byte format.

It shares no code with ``gateway.envelope``: HKDF, HMAC and AES-GCM come straight from
``cryptography``, the layout from ``struct``. Tests use it two ways: to check that the gateway's
bytes are the documented bytes (known-answer vectors), and to play a compromised source that
holds a valid key and seals whatever bytes it likes (context and payload alike).
"""

from __future__ import annotations

import struct
import uuid
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hmac as crypto_hmac
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

MAGIC = b"SMGE"
INFO_ENC = b"spice-migration-gateway envelope v1 suite 1 encryption"
INFO_MAC = b"spice-migration-gateway envelope v1 suite 1 mac"
NONCE = b"\x00" * 12


@dataclass(frozen=True)
class RawContext:
    """Context fields as plain values, so a test can encode ones the gateway would refuse."""

    channel_type: int
    channel_id: int
    direction: int
    schema_version: int
    vm_id: uuid.UUID
    migration_id: uuid.UUID
    issued_at: int
    expires_at: int
    source_host: str
    target_host: str

    def encode(self) -> bytes:
        source = self.source_host.encode()
        target = self.target_host.encode()
        return (
            struct.pack(
                ">BBBH16s16sQQ",
                self.channel_type,
                self.channel_id,
                self.direction,
                self.schema_version,
                self.vm_id.bytes,
                self.migration_id.bytes,
                self.issued_at,
                self.expires_at,
            )
            + struct.pack(">B", len(source))
            + source
            + struct.pack(">B", len(target))
            + target
        )


def derive(secret: bytes, salt: bytes) -> tuple[bytes, bytes]:
    """(encryption key, MAC key): two independent HKDF-SHA256 calls, one per info label."""
    enc = HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=INFO_ENC).derive(secret)
    mac = HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=INFO_MAC).derive(secret)
    return enc, mac


def seal_raw(
    payload: bytes,
    context: bytes,
    *,
    key_id: bytes,
    secret: bytes,
    salt: bytes,
    format_version: int = 1,
    suite: int = 1,
) -> bytes:
    """header | context | AES-256-GCM(payload, aad=header|context) | HMAC(header|context|tag)."""
    header = struct.pack(
        ">4sBBHI16s32s", MAGIC, format_version, suite, len(context), len(payload), key_id, salt
    )
    enc_key, mac_key = derive(secret, salt)
    aad = header + context
    body = AESGCM(enc_key).encrypt(NONCE, payload, aad)
    signer = crypto_hmac.HMAC(mac_key, hashes.SHA256())
    signer.update(aad + body[-16:])
    return aad + body + signer.finalize()
