"""The identity suite's per-attempt key agreement, sans-I/O: two messages, then a keyring.

Before a migration attempt's first blob, the target and source gateways run::

    target -> source   hello   target host id and identity, issued-at, a fresh challenge and
                               a fresh ephemeral ML-KEM-768+X25519 public key; hybrid-signed
                               by the target's identity
    source -> target   offer   SHA-256 of the hello, source and target identities, the
                               attempt's announcement, an HPKE encryption of a fresh 32-byte
                               attempt secret to the ephemeral key; hybrid-signed by the
                               source's identity

Both sides then derive, from the attempt secret and the transcript hash, a per-attempt key id
and a 32-byte envelope secret, exposed as a one-key :class:`~gateway.keys.Keyring` that
:func:`gateway.envelope.seal` and :func:`~gateway.envelope.verify` use unchanged. The
asymmetric work (about 2 ms in all) happens once per attempt, before the switch-over; every
blob of the attempt is then sealed with the envelope's fast symmetric construction.

This module holds no socket, clock or randomness of its own: the caller carries the bytes
(over the gateway-to-gateway peer link) and passes ``now`` and ``random_bytes``. The
announcement is opaque here; the caller encodes it and checks its fields against the
attempt. SECURITY.md ("The identity suite") documents the messages byte by byte, what each
signature covers, the derivation and what the suite does not protect.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import os
import struct
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, NamedTuple

from cryptography.hazmat.primitives import hashes, hpke
from cryptography.hazmat.primitives.asymmetric.mlkem import MLKEM768PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

from gateway.envelope import Context, ExpectedContext, read_header
from gateway.errors import (
    AuthenticationFailed,
    BadMagic,
    ConfigError,
    ContextMismatch,
    DowngradeRefused,
    Expired,
    IdentityError,
    MalformedInput,
    NotYetValid,
    Replayed,
    TooLarge,
    UnknownKey,
    UnsupportedVersion,
)
from gateway.fields import FieldReader
from gateway.identity import (
    KEM_PUBLIC_SIZE,
    KEY_ID_SIZE,
    MAX_HOST_ID,
    MLKEM768_PUBLIC,
    MLKEM768_SEED,
    SIGNATURE_SIZE,
    X25519_SEED,
    HostIdentity,
    TrustStore,
    check_host_id,
)
from gateway.keys import Key, Keyring, KeyState
from gateway.replay import ReplayGuard
from schemas import ChannelType

__all__ = [
    "CHALLENGE_SIZE",
    "DEFAULT_MAX_HELLO_AGE",
    "ENCAPSULATION_SIZE",
    "MAGIC",
    "MAX_ANNOUNCEMENT",
    "MAX_DIRECT",
    "MAX_HELLO",
    "MAX_OFFER",
    "AttemptKey",
    "Direct",
    "Hello",
    "Offer",
    "PendingHello",
    "Suite",
    "SuitePolicy",
    "accept",
    "derive_attempt_key",
    "direct_accept",
    "direct_offer",
    "hello",
    "offer",
    "parse_direct",
    "parse_hello",
    "parse_offer",
    "policy_for",
    "transcript_hash",
]

MAGIC: Final = b"SMGK"
VERSION: Final = 1
TYPE_HELLO: Final = 1
TYPE_OFFER: Final = 2
TYPE_DIRECT: Final = 3
CHALLENGE_SIZE: Final = 32
SECRET_SIZE: Final = 32
HASH_SIZE: Final = 32
#: The peer link's announcement (VM, migration id, hosts, channels, issued-at) is far smaller.
MAX_ANNOUNCEMENT: Final = 4096
#: HPKE's encapsulated key (ML-KEM-768 ciphertext 1,088 + X25519 share 32), then the
#: encrypted secret and its AES-256-GCM tag.
ENC_SIZE: Final = 1120
ENCAPSULATION_SIZE: Final = ENC_SIZE + SECRET_SIZE + 16
DEFAULT_MAX_HELLO_AGE: Final = 60
"""Seconds a hello stays answerable: the target sends it right before the attempt."""
DEFAULT_CLOCK_SKEW: Final = 30

LABEL_HELLO: Final = b"spice-migration-gateway handshake hello v1\x00"
LABEL_OFFER: Final = b"spice-migration-gateway handshake offer v1\x00"
LABEL_HPKE: Final = b"spice-migration-gateway handshake attempt secret v1\x00"
LABEL_TRANSCRIPT: Final = b"spice-migration-gateway handshake transcript v1\x00"
LABEL_KEY_ID: Final = b"spice-migration-gateway attempt key id v1"
LABEL_SECRET: Final = b"spice-migration-gateway attempt envelope secret v1"
LABEL_DIRECT: Final = b"spice-migration-gateway handshake direct offer v1\x00"
LABEL_DIRECT_HPKE: Final = b"spice-migration-gateway handshake direct attempt secret v1\x00"

_SUITE: Final = hpke.Suite(hpke.KEM.MLKEM768_X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)
_PREFIX: Final = struct.Struct(">4sBB")
_U64: Final = struct.Struct(">Q")
_U16: Final = struct.Struct(">H")

MAX_HELLO: Final = (
    _PREFIX.size + 1 + MAX_HOST_ID + KEY_ID_SIZE + 8 + CHALLENGE_SIZE + KEM_PUBLIC_SIZE
) + SIGNATURE_SIZE
MAX_OFFER: Final = (
    _PREFIX.size
    + HASH_SIZE
    + 2 * (1 + MAX_HOST_ID + KEY_ID_SIZE)
    + 2
    + MAX_ANNOUNCEMENT
    + ENCAPSULATION_SIZE
    + SIGNATURE_SIZE
)

MAX_DIRECT: Final = MAX_OFFER - HASH_SIZE + 8 + CHALLENGE_SIZE

RandomBytes = Callable[[int], bytes]


# --- decoding ------------------------------------------------------------------------------


def _start(data: bytes, kind: int, limit: int, what: str) -> FieldReader:
    if len(data) > limit:
        raise TooLarge(f"{what}: {len(data)} bytes, over the {limit}-byte limit")
    reader = FieldReader(bytes(data), what)
    magic, version, message_type = _PREFIX.unpack(reader.take(_PREFIX.size, "header"))
    if magic != MAGIC:
        raise BadMagic(f"{what}: bad magic at offset 0")
    if version != VERSION:
        raise UnsupportedVersion(f"{what}: version {version} at offset 4")
    if message_type != kind:
        raise MalformedInput(f"{what}: message type {message_type} at offset 5")
    return reader


def _host(reader: FieldReader, name: str) -> str:
    """A host id after its one-byte length (1 to :data:`MAX_HOST_ID`), in the identity's
    alphabet."""
    raw = reader.sized(name, width=1, low=1, high=MAX_HOST_ID)
    try:
        return check_host_id(raw.decode("ascii"))
    except (UnicodeDecodeError, IdentityError):
        raise MalformedInput(
            f"{reader.what}: {name} is not a host id (A-Z a-z 0-9 . _ : -)"
        ) from None


def _parties(reader: FieldReader) -> tuple[str, bytes, str, bytes]:
    """An offer's (or a direct offer's) source and target: host id and identity key id each."""
    source = _host(reader, "source host id")
    source_key_id = reader.take(KEY_ID_SIZE, "source key id")
    target = _host(reader, "target host id")
    return source, source_key_id, target, reader.take(KEY_ID_SIZE, "target key id")


def _signature(reader: FieldReader) -> tuple[bytes, bytes]:
    """(the bytes the signature covers, the signature): a message's last field."""
    signed_end = reader.offset
    signature = reader.take(SIGNATURE_SIZE, "signature")
    reader.end()
    return reader.data[:signed_end], signature


def _announced(reader: FieldReader) -> tuple[bytes, bytes, bytes, bytes, bytes]:
    """An offer's (or a direct offer's) last fields: (announcement, encapsulation, the bytes
    before the encapsulation, the signed bytes, the signature)."""
    announcement = reader.sized("announcement", width=2, low=1, high=MAX_ANNOUNCEMENT)
    before = reader.offset
    encapsulation = reader.take(ENCAPSULATION_SIZE, "encapsulation")
    return (announcement, encapsulation, reader.data[:before], *_signature(reader))


def _encode_host(host: str) -> bytes:
    raw = host.encode("ascii")
    return bytes([len(raw)]) + raw


class Hello(NamedTuple):
    """A decoded hello. Unauthenticated until its signature verified."""

    target_host: str
    target_key_id: bytes
    issued_at: int
    challenge: bytes
    kem_public: bytes
    signed: bytes
    """The bytes the signature covers (everything before it)."""
    signature: bytes


def parse_hello(data: bytes) -> Hello:
    """Structure only: bounds, magic, version, type, lengths. No signature check."""
    reader = _start(data, TYPE_HELLO, MAX_HELLO, "hello")
    target = _host(reader, "target host id")
    key_id = reader.take(KEY_ID_SIZE, "target key id")
    issued_at = reader.uint(8, "issued-at")
    challenge = reader.take(CHALLENGE_SIZE, "challenge")
    kem = reader.take(KEM_PUBLIC_SIZE, "ephemeral KEM key")
    return Hello(target, key_id, issued_at, challenge, kem, *_signature(reader))


class Offer(NamedTuple):
    """A decoded offer. Unauthenticated until its signature verified."""

    hello_hash: bytes
    source_host: str
    source_key_id: bytes
    target_host: str
    target_key_id: bytes
    announcement: bytes
    encapsulation: bytes
    before_encapsulation: bytes
    """The bytes before the encapsulation: HPKE's info binds them."""
    signed: bytes
    signature: bytes


def parse_offer(data: bytes) -> Offer:
    """Structure only: bounds, magic, version, type, lengths. No signature check."""
    reader = _start(data, TYPE_OFFER, MAX_OFFER, "offer")
    hello_hash = reader.take(HASH_SIZE, "hello hash")
    return Offer(hello_hash, *_parties(reader), *_announced(reader))


# --- the attempt key -----------------------------------------------------------------------


def transcript_hash(hello_bytes: bytes, offer_signed: bytes) -> bytes:
    """SHA-256 over the label, the whole hello and the offer up to its signature, each
    length-prefixed (u32), so no two transcripts share an encoding."""
    digest = hashlib.sha256(LABEL_TRANSCRIPT)
    for part in (hello_bytes, offer_signed):
        digest.update(struct.pack(">I", len(part)))
        digest.update(part)
    return digest.digest()


def derive_attempt_key(secret: bytes, transcript: bytes) -> tuple[bytes, bytes]:
    """(key id, envelope secret): HKDF-SHA256 with the transcript hash as salt, one expand
    per label."""
    if len(secret) != SECRET_SIZE or len(transcript) != HASH_SIZE:
        raise ConfigError("attempt secret and transcript hash are 32 bytes each")
    prk = hmac.new(transcript, secret, "sha256").digest()
    key_id = HKDFExpand(hashes.SHA256(), KEY_ID_SIZE, LABEL_KEY_ID).derive(prk)
    envelope_secret = HKDFExpand(hashes.SHA256(), SECRET_SIZE, LABEL_SECRET).derive(prk)
    return key_id, envelope_secret


@dataclass(frozen=True, eq=False, repr=False)
class AttemptKey:
    """The key of exactly one migration attempt, agreed by both gateways.

    ``keyring`` holds a single active key under the derived key id: pass it to
    :func:`gateway.envelope.seal` (source) and :func:`gateway.envelope.verify` (target).
    """

    source_host: str
    target_host: str
    source_key_id: bytes
    target_key_id: bytes
    announcement: bytes
    transcript_hash: bytes
    keyring: Keyring = field(compare=False)

    @property
    def key_id(self) -> bytes:
        return self.keyring.active.key_id

    def context(
        self,
        channel_type: ChannelType,
        channel_id: int,
        vm_id: uuid.UUID,
        migration_id: uuid.UUID,
        schema_version: int,
    ) -> Context:
        """The source's context for a blob of this attempt: the hosts are the attempt's."""
        return Context(
            channel_type,
            channel_id,
            vm_id,
            migration_id,
            self.source_host,
            self.target_host,
            schema_version,
        )

    def expect(
        self,
        channel_type: ChannelType,
        channel_id: int,
        vm_id: uuid.UUID,
        migration_id: uuid.UUID,
        schema_version: int,
    ) -> ExpectedContext:
        """The target's expectation for a blob of this attempt: from the authenticated source
        only (never the set of all trusted peers), to this attempt's target, for one
        migration."""
        return ExpectedContext.of(
            self.context(channel_type, channel_id, vm_id, migration_id, schema_version)
        )

    def __repr__(self) -> str:
        return f"AttemptKey({self.source_host} -> {self.target_host}, key_id={self.key_id.hex()})"

    __str__ = __repr__


def _attempt(parsed: Offer | Direct, transcript: bytes, secret: bytes, now: int) -> AttemptKey:
    """The attempt's key from its secret and transcript hash, for the parties ``parsed``
    names."""
    key_id, envelope_secret = derive_attempt_key(secret, transcript)
    keyring = Keyring([Key(key_id, KeyState.ACTIVE, now, envelope_secret)])
    return AttemptKey(
        parsed.source_host,
        parsed.target_host,
        parsed.source_key_id,
        parsed.target_key_id,
        parsed.announcement,
        transcript,
        keyring,
    )


def _clock(now: float | None) -> int:
    seconds = int(time.time() if now is None else now)
    if not 0 <= seconds < 1 << 63:
        raise ConfigError("now is outside the representable range")
    return seconds


# --- the three steps -----------------------------------------------------------------------


class PendingHello:
    """The target's side of one attempt between hello and offer: single use.

    Holds the ephemeral KEM private key; it answers exactly one valid offer, then forgets it.
    """

    __slots__ = ("_kem", "hello_bytes", "hello_hash", "host_id", "issued_at", "key_id", "used")

    def __init__(
        self,
        hello_bytes: bytes,
        kem: hpke.MLKEM768X25519PrivateKey,
        host_id: str,
        key_id: bytes,
        issued_at: int | None = None,
    ) -> None:
        self.hello_bytes = hello_bytes
        self.issued_at = parse_hello(hello_bytes).issued_at if issued_at is None else issued_at
        self.hello_hash = hashlib.sha256(hello_bytes).digest()
        self._kem: hpke.MLKEM768X25519PrivateKey | None = kem
        self.host_id = host_id
        self.key_id = key_id
        self.used = False

    def __repr__(self) -> str:
        state = "used" if self.used else "open"
        return f"PendingHello({self.host_id}, {self.hello_hash[:8].hex()}..., {state})"


def hello(
    own: HostIdentity, *, now: float | None = None, random_bytes: RandomBytes | None = None
) -> tuple[bytes, PendingHello]:
    """The target's first message, and the state to pass to :func:`accept`."""
    rand = random_bytes or os.urandom
    issued_at = _clock(now)
    challenge = rand(CHALLENGE_SIZE)
    kem_seed = rand(MLKEM768_SEED + X25519_SEED)
    if len(challenge) != CHALLENGE_SIZE or len(kem_seed) != MLKEM768_SEED + X25519_SEED:
        raise ConfigError("the random source gave fewer bytes than asked")
    ml = MLKEM768PrivateKey.from_seed_bytes(kem_seed[:MLKEM768_SEED])
    x = X25519PrivateKey.from_private_bytes(kem_seed[MLKEM768_SEED:])
    kem_public = ml.public_key().public_bytes_raw() + x.public_key().public_bytes_raw()
    signer = own.active
    signed = b"".join(
        (
            _PREFIX.pack(MAGIC, VERSION, TYPE_HELLO),
            _encode_host(own.host_id),
            signer.key_id,
            _U64.pack(issued_at),
            challenge,
            kem_public,
        )
    )
    message = signed + signer.sign(LABEL_HELLO, signed)
    pending = PendingHello(
        message, hpke.MLKEM768X25519PrivateKey(ml, x), own.host_id, signer.key_id, issued_at
    )
    return message, pending


def offer(
    hello_bytes: bytes,
    announcement: bytes,
    own: HostIdentity,
    trust: TrustStore,
    expected_target: str,
    *,
    now: float | None = None,
    random_bytes: RandomBytes | None = None,
    max_hello_age: int = DEFAULT_MAX_HELLO_AGE,
    clock_skew: int = DEFAULT_CLOCK_SKEW,
) -> tuple[bytes, AttemptKey]:
    """The source's answer to a hello from ``expected_target``, and the attempt's key.

    Refuses a hello that is malformed, from another host, signed by an identity the trust
    store does not accept, whose signature does not verify, or too old.
    """
    if not 1 <= len(announcement) <= MAX_ANNOUNCEMENT:
        raise ConfigError(f"an announcement is 1 to {MAX_ANNOUNCEMENT} bytes")
    if expected_target == own.host_id:
        raise ConfigError("a host does not migrate to itself")
    clock = _clock(now)
    parsed = parse_hello(hello_bytes)
    if parsed.target_host != expected_target:
        raise ContextMismatch("target_host", "hello: from another host than the expected target")
    target = trust.lookup(parsed.target_host, parsed.target_key_id)
    target.verify(LABEL_HELLO, parsed.signed, parsed.signature)
    if parsed.issued_at > clock + clock_skew:
        raise NotYetValid(f"hello: issued {parsed.issued_at - clock} s in the future")
    if clock > parsed.issued_at + max_hello_age + clock_skew:
        raise Expired(f"hello: issued {clock - parsed.issued_at} s ago")
    secret = (random_bytes or os.urandom)(SECRET_SIZE)
    if len(secret) != SECRET_SIZE:
        raise ConfigError("the random source gave fewer bytes than asked")
    return _answer(bytes(hello_bytes), announcement, own, secret, now=clock)


def _answer(
    hello_bytes: bytes, announcement: bytes, own: HostIdentity, secret: bytes, *, now: int
) -> tuple[bytes, AttemptKey]:
    """Build and sign the offer answering ``hello_bytes`` with ``secret``: the second half of
    :func:`offer`, which has checked the hello. It trusts the hello it is given: the fuzz
    corpus builds offers with it for a hello whose signature it cannot make."""
    parsed = parse_hello(hello_bytes)
    kem = _kem_public(parsed.kem_public)
    signer = own.active
    before = b"".join(
        (
            _PREFIX.pack(MAGIC, VERSION, TYPE_OFFER),
            hashlib.sha256(hello_bytes).digest(),
            _encode_host(own.host_id),
            signer.key_id,
            _encode_host(parsed.target_host),
            parsed.target_key_id,
            _U16.pack(len(announcement)),
            announcement,
        )
    )
    try:
        encapsulation = _SUITE.encrypt(secret, kem, info=LABEL_HPKE + before)
    except ValueError:  # an X25519 share of low order: no shared secret
        raise MalformedInput("hello: the ephemeral KEM key is not usable") from None
    signed = before + encapsulation
    message = signed + signer.sign(LABEL_OFFER, signed)
    answered = parse_offer(message)
    return message, _attempt(answered, transcript_hash(hello_bytes, answered.signed), secret, now)


def _kem_public(raw: bytes) -> hpke.MLKEM768X25519PublicKey:
    from cryptography.hazmat.primitives.asymmetric.mlkem import MLKEM768PublicKey
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

    try:
        return hpke.MLKEM768X25519PublicKey(
            MLKEM768PublicKey.from_public_bytes(raw[:MLKEM768_PUBLIC]),
            X25519PublicKey.from_public_bytes(raw[MLKEM768_PUBLIC:]),
        )
    except ValueError:
        raise MalformedInput("hello: the ephemeral KEM key is not valid") from None


def accept(
    offer_bytes: bytes,
    pending: PendingHello,
    trust: TrustStore,
    *,
    now: float | None = None,
    max_hello_age: int = DEFAULT_MAX_HELLO_AGE,
    clock_skew: int = DEFAULT_CLOCK_SKEW,
) -> tuple[bytes, AttemptKey]:
    """The target's check of the offer that answers ``pending``: (announcement, key).

    Order: structure; the pending hello not yet answered nor too old (the same age the source
    allows, on this host's own clock); the offer answers this very hello,
    names this host and identity, and comes from another host; the source identity is
    accepted by the trust store; its signature verifies; then, and only then, the
    encapsulation is opened. The announcement is returned authenticated, for the caller to
    check against the attempt.
    """
    clock = _clock(now)
    parsed = parse_offer(offer_bytes)
    if pending.used or pending._kem is None:
        raise Replayed("offer: this hello was already answered")
    if clock > pending.issued_at + max_hello_age + clock_skew:
        pending._kem = None  # it can never be answered now
        raise Expired(f"offer: answers a hello issued {clock - pending.issued_at} s ago")
    if not hmac.compare_digest(parsed.hello_hash, pending.hello_hash):
        raise ContextMismatch("hello", "offer: answers another hello")
    if parsed.target_host != pending.host_id:
        raise ContextMismatch("target_host", "offer: addressed to another host")
    if parsed.target_key_id != pending.key_id:
        raise ContextMismatch("target_key_id", "offer: names another identity of this host")
    if parsed.source_host == pending.host_id:
        raise ContextMismatch("source_host", "offer: claims to come from this host")
    source = trust.lookup(parsed.source_host, parsed.source_key_id)
    source.verify(LABEL_OFFER, parsed.signed, parsed.signature)
    try:
        secret = _SUITE.decrypt(
            parsed.encapsulation, pending._kem, info=LABEL_HPKE + parsed.before_encapsulation
        )
    except Exception:  # cryptography raises InvalidTag or ValueError here
        raise AuthenticationFailed("offer: the encapsulated secret does not open") from None
    if len(secret) != SECRET_SIZE:
        raise MalformedInput(f"offer: the attempt secret is {len(secret)} bytes")
    pending.used = True
    pending._kem = None  # forward secrecy: the ephemeral key goes with the attempt
    transcript = transcript_hash(pending.hello_bytes, parsed.signed)
    return parsed.announcement, _attempt(parsed, transcript, secret, clock)


# --- without a peer link: one message to the target's long-term identity ----------------------


class Direct(NamedTuple):
    """A decoded direct offer. Unauthenticated until its signature verified."""

    source_host: str
    source_key_id: bytes
    target_host: str
    target_key_id: bytes
    issued_at: int
    nonce: bytes
    announcement: bytes
    encapsulation: bytes
    before_encapsulation: bytes
    signed: bytes
    signature: bytes


def parse_direct(data: bytes) -> Direct:
    """Structure only: bounds, magic, version, type, lengths. No signature check."""
    reader = _start(data, TYPE_DIRECT, MAX_DIRECT, "direct offer")
    parties = _parties(reader)
    issued_at = reader.uint(8, "issued-at")
    nonce = reader.take(CHALLENGE_SIZE, "nonce")
    return Direct(*parties, issued_at, nonce, *_announced(reader))


def direct_offer(
    announcement: bytes,
    own: HostIdentity,
    trust: TrustStore,
    target_host: str,
    *,
    now: float | None = None,
    random_bytes: RandomBytes | None = None,
) -> tuple[bytes, AttemptKey]:
    """The source's single message when no peer link exists: a fresh attempt secret encrypted
    to the target's long-term KEM key (its newest generation this host trusts), signed by the
    source. No forward secrecy: a later theft of the target's identity file reveals the attempt
    secrets sent to it."""
    if not 1 <= len(announcement) <= MAX_ANNOUNCEMENT:
        raise ConfigError(f"an announcement is 1 to {MAX_ANNOUNCEMENT} bytes")
    if target_host == own.host_id:
        raise ConfigError("a host does not migrate to itself")
    clock = _clock(now)
    target = trust.newest_for(target_host)
    rand = random_bytes or os.urandom
    nonce, secret = rand(CHALLENGE_SIZE), rand(SECRET_SIZE)
    if len(nonce) != CHALLENGE_SIZE or len(secret) != SECRET_SIZE:
        raise ConfigError("the random source gave fewer bytes than asked")
    signer = own.active
    before = b"".join(
        (
            _PREFIX.pack(MAGIC, VERSION, TYPE_DIRECT),
            _encode_host(own.host_id),
            signer.key_id,
            _encode_host(target_host),
            target.key_id,
            _U64.pack(clock),
            nonce,
            _U16.pack(len(announcement)),
            announcement,
        )
    )
    encapsulation = _SUITE.encrypt(secret, target.kem_public_key, info=LABEL_DIRECT_HPKE + before)
    signed = before + encapsulation
    message = signed + signer.sign(LABEL_DIRECT, signed)
    parsed = parse_direct(message)
    return message, _attempt(parsed, transcript_hash(b"", parsed.signed), secret, clock)


def direct_accept(
    message: bytes,
    own: HostIdentity,
    trust: TrustStore,
    replay_guard: ReplayGuard,
    *,
    now: float | None = None,
    max_age: int = DEFAULT_MAX_HELLO_AGE,
    clock_skew: int = DEFAULT_CLOCK_SKEW,
) -> tuple[bytes, AttemptKey]:
    """The target's check of a direct offer: (announcement, key).

    Order: structure; addressed to this host and to one of its live generations (pending
    ones too, so a rotation never strands a source that learned the new one first); the
    source's generation accepted for that host id; its signature; its age; the encapsulation
    opened; and last, the replay guard records the offer (durably), so each is used once.
    """
    clock = _clock(now)
    parsed = parse_direct(message)
    if parsed.target_host != own.host_id:
        raise ContextMismatch("target_host", "direct offer: addressed to another host")
    generation = own.get(parsed.target_key_id)
    if generation is None or not generation.state.accepted:
        raise UnknownKey(
            f"direct offer: names generation {parsed.target_key_id.hex()}, not a live one "
            "of this host"
        )
    if parsed.source_host == own.host_id:
        raise ContextMismatch("source_host", "direct offer: claims to come from this host")
    source = trust.lookup(parsed.source_host, parsed.source_key_id)
    source.verify(LABEL_DIRECT, parsed.signed, parsed.signature)
    if parsed.issued_at > clock + clock_skew:
        raise NotYetValid(f"direct offer: issued {parsed.issued_at - clock} s in the future")
    if clock > parsed.issued_at + max_age + clock_skew:
        raise Expired(f"direct offer: issued {clock - parsed.issued_at} s ago")
    try:
        secret = _SUITE.decrypt(
            parsed.encapsulation,
            generation.kem_private_key,
            info=LABEL_DIRECT_HPKE + parsed.before_encapsulation,
        )
    except Exception:  # cryptography raises InvalidTag or ValueError here
        raise AuthenticationFailed("direct offer: the encapsulated secret does not open") from None
    if len(secret) != SECRET_SIZE:
        raise MalformedInput(f"direct offer: the attempt secret is {len(secret)} bytes")
    attempt = _attempt(parsed, transcript_hash(b"", parsed.signed), secret, clock)
    replay_guard.consume(
        attempt.transcript_hash,
        parsed.issued_at + max_age + 2 * clock_skew,
        now=clock,
        issued_at=parsed.issued_at,
    )
    return parsed.announcement, attempt


# --- suite selection -----------------------------------------------------------------------


class Suite(enum.Enum):
    """Which keys seal a peer's blobs: the shared keyring, or the per-attempt key."""

    SHARED_KEY = "shared-key"
    IDENTITY = "identity"


@dataclass(frozen=True)
class SuitePolicy:
    """What a peer's configuration requires. ``IDENTITY`` refuses the shared keyring both
    ways: nothing is sealed for the peer without an attempt key, and a blob sealed under the
    shared keyring is refused as a downgrade, even when that keyring could open it."""

    suite: Suite = Suite.SHARED_KEY

    def sealing_keyring(self, attempt: AttemptKey | None, shared: Keyring | None) -> Keyring:
        if attempt is not None:
            return attempt.keyring
        if self.suite is Suite.IDENTITY:
            raise DowngradeRefused("this peer requires the identity suite: no attempt key")
        if shared is None:
            raise ConfigError("no shared keyring configured")
        return shared

    def opening_keyring(
        self, blob: bytes, attempt: AttemptKey | None, shared: Keyring | None
    ) -> Keyring:
        """The keyring to open ``blob`` with, chosen from its header's key id (a fixed-size,
        bounds-checked field: nothing else is read before the envelope authenticates it)."""
        key_id = read_header(blob).key_id
        if attempt is not None and hmac.compare_digest(key_id, attempt.key_id):
            return attempt.keyring
        if self.suite is Suite.IDENTITY:
            if shared is not None and shared.get(key_id) is not None:
                raise DowngradeRefused(
                    "blob sealed under the shared keyring; this peer requires the identity suite"
                )
            if attempt is None:
                raise DowngradeRefused("this peer requires the identity suite: no attempt key")
            raise UnknownKey(f"key id {key_id.hex()} is not this attempt's key")
        if shared is None:
            raise UnknownKey(f"key id {key_id.hex()}: no shared keyring configured")
        return shared


def policy_for(suite_name: str) -> SuitePolicy:
    try:
        return SuitePolicy(Suite(suite_name))
    except ValueError:
        raise ConfigError(f"suite must be one of {', '.join(s.value for s in Suite)}") from None
