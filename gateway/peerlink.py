"""The gateway-to-gateway peer link, sans-I/O: the source announces each migration attempt to
the target gateway directly, so that the target accepts blobs of that attempt only.

The exchange is target-challenge-first, one attempt per connection:

1. target -> source ``CHALLENGE``: the target's host id and a fresh 32-byte nonce;
2. source -> target ``ANNOUNCE``: key id, source and target host ids, VM id, migration id,
   issued-at, the channels the source will seal, and a MAC over the whole transcript (the
   challenge frame, then this frame up to the MAC);
3. target -> source ``VERDICT``: accepted or refused, with a short reason (informational: the
   source only logs it).

Every message is one frame: a 12-byte header (magic ``SMGP``, version, kind, suite, flags, body
length) and a body of at most :data:`MAX_BODY` bytes. The suite names how the announcement is
authenticated:

- suite 1 (shared keyring): a MAC under a key derived (HKDF-SHA256, its own label) from a key
  of the shared keyring, named by id in the announcement. ``suite_data`` is empty. Nothing of
  the announcement but its key id (fixed offset) is read before its MAC verifies.
- suite 2 (identity): the challenge's ``suite_data`` is the target's signed handshake
  ``hello`` (:mod:`gateway.handshake`), the announcement's is the source's signed ``offer``
  answering it. The offer signs the announcement's canonical encoding (this frame with a zero
  key id and no suite data); the announcement's key id is the per-attempt key id both ends
  derive, and its MAC is keyed from the attempt key (key confirmation). The frame is parsed
  for its structure (every length bounded) to reach the offer; no field of it is used before
  the offer's signatures verify and the announcement matches what they sign.

A target with an identity sends a suite-2 challenge to every source; a source that does not
use identities with it answers in suite 1 over the same challenge. A source configured for
identities refuses a challenge without a hello, and a target refuses a suite-1 announcement
from a source configured for identities: neither side can be talked down to the shared key.

The nonce (and in suite 2 the hello's own challenge and ephemeral key) makes every transcript
fresh, so a recorded announcement fails on any other connection. No I/O here: the asyncio side
(``gateway/proxy/peer.py``) moves the bytes.
"""

from __future__ import annotations

import enum
import hmac
import os
import struct
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from gateway.errors import (
    AuthenticationFailed,
    BadMagic,
    ConfigError,
    ContextMismatch,
    DowngradeRefused,
    Expired,
    MalformedInput,
    NotYetValid,
    ProtocolError,
    TooLarge,
    Truncated,
    UnsupportedVersion,
)
from gateway.fields import FieldReader
from gateway.handshake import AttemptKey, PendingHello, accept, hello, offer
from gateway.identity import HostIdentity, TrustStore
from gateway.keys import KEY_ID_SIZE, Keyring

#: This host's identity and the trust store of its peers' (the identity suite).
Identity = tuple[HostIdentity, TrustStore]

__all__ = [
    "HEADER_SIZE",
    "MAGIC",
    "MAX_BODY",
    "Announcement",
    "AnnouncementVerified",
    "Challenge",
    "ChallengeAnswered",
    "FrameReader",
    "Kind",
    "SourceLink",
    "Suite",
    "TargetLink",
    "Verdict",
    "VerdictReceived",
    "decode_announcement",
    "decode_challenge",
    "decode_verdict",
    "encode_challenge",
    "encode_verdict",
    "link_key",
]

MAGIC = b"SMGP"
VERSION = 1
_HEADER = struct.Struct(">4sBBBBI")
HEADER_SIZE = _HEADER.size
#: Room for a later suite's key-agreement material; suite 1 uses none.
MAX_SUITE_DATA = 8192
#: Largest body of any message: an announcement with every field at its limit fits.
MAX_BODY = 16384
NONCE_SIZE = 32
MAC_SIZE = 32
MAX_HOST_ID = 128
MAX_CHANNELS = 64
MAX_REASON = 200
_LABEL = b"spice-migration-gateway peer-link v1 shared-keyring"
_LABEL_IDENTITY = b"spice-migration-gateway peer-link v1 identity key confirmation"


class Kind(enum.IntEnum):
    CHALLENGE = 1
    ANNOUNCE = 2
    VERDICT = 3


class Suite(enum.IntEnum):
    #: MAC over the transcript under an HKDF-derived key of the shared keyring.
    SHARED_KEYRING = 1
    #: A signed hybrid-KEM handshake (hello in the challenge, offer in the announcement); the
    #: MAC is keyed from the per-attempt key it agrees.
    IDENTITY = 2


def link_key(secret: bytes) -> bytes:
    """The peer-link MAC key of one keyring secret (never the secret itself)."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_LABEL).derive(secret)


def confirmation_key(attempt: AttemptKey) -> bytes:
    """The identity suite's announcement MAC key: derived from the attempt's envelope secret
    under its own label (never the secret itself)."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_LABEL_IDENTITY).derive(
        attempt.keyring.active.secret
    )


def _mac(
    key: bytes, challenge_frame: bytes, announce_prefix: bytes, label: bytes = _LABEL
) -> bytes:
    transcript = b"".join(
        (label, struct.pack(">I", len(challenge_frame)), challenge_frame, announce_prefix)
    )
    return hmac.new(key, transcript, "sha256").digest()


def signed_announcement(announcement: Announcement) -> bytes:
    """What the identity suite's offer signs: the announcement's frame with a zero key id and
    no suite data (both are only known once the offer exists), without a MAC."""
    return _announce_prefix(replace(announcement, key_id=bytes(KEY_ID_SIZE), suite_data=b""))


# --- the messages ----------------------------------------------------------------------------


def _check_host(value: str, name: str) -> bytes:
    raw = value.encode("utf-8", "surrogatepass")
    if not value.isprintable() or not 1 <= len(raw) <= MAX_HOST_ID:
        raise ConfigError(f"{name} must be 1 to {MAX_HOST_ID} bytes of printable UTF-8")
    return raw


@dataclass(frozen=True)
class Challenge:
    """The target's opening message: who it is, and the nonce this transcript is bound to."""

    target_host: str
    nonce: bytes = field(repr=False)
    suite: Suite = Suite.SHARED_KEYRING
    suite_data: bytes = field(default=b"", repr=False)


@dataclass(frozen=True)
class Announcement:
    """One migration attempt, as the source announces it."""

    key_id: bytes
    source_host: str
    target_host: str
    vm_id: uuid.UUID
    migration_id: uuid.UUID
    issued_at: int
    channels: tuple[tuple[int, int], ...]
    suite: Suite = Suite.SHARED_KEYRING
    suite_data: bytes = field(default=b"", repr=False)


@dataclass(frozen=True)
class Verdict:
    accepted: bool
    reason: str = ""


def _frame(kind: Kind, suite: Suite, body: bytes) -> bytes:
    if len(body) > MAX_BODY:
        raise TooLarge(f"peer link: {kind.name.lower()} body of {len(body)} bytes")
    return _HEADER.pack(MAGIC, VERSION, kind, suite, 0, len(body)) + body


def _str8(raw: bytes) -> bytes:
    return bytes((len(raw),)) + raw


def _data16(data: bytes, what: str) -> bytes:
    if len(data) > MAX_SUITE_DATA:
        raise TooLarge(f"peer link: {what} suite data of {len(data)} bytes")
    return struct.pack(">H", len(data)) + data


def encode_challenge(challenge: Challenge) -> bytes:
    if len(challenge.nonce) != NONCE_SIZE:
        raise ConfigError(f"the challenge nonce must be {NONCE_SIZE} bytes")
    body = b"".join(
        (
            _str8(_check_host(challenge.target_host, "target_host")),
            challenge.nonce,
            _data16(challenge.suite_data, "challenge"),
        )
    )
    return _frame(Kind.CHALLENGE, challenge.suite, body)


def _announce_prefix(announcement: Announcement) -> bytes:
    """The announcement's frame without its MAC (the header counts the MAC in)."""
    if len(announcement.key_id) != KEY_ID_SIZE:
        raise ConfigError(f"key id must be {KEY_ID_SIZE} bytes")
    if not 0 <= announcement.issued_at < 1 << 63:
        raise ConfigError("issued_at out of range")
    if len(announcement.channels) > MAX_CHANNELS:
        raise TooLarge(f"peer link: {len(announcement.channels)} channels")
    channels = b""
    for channel_type, channel_id in announcement.channels:
        if not (0 <= channel_type < 256 and 0 <= channel_id < 256):
            raise ConfigError("channel type and id must be bytes")
        channels += bytes((channel_type, channel_id))
    body = b"".join(
        (
            announcement.key_id,
            _str8(_check_host(announcement.source_host, "source_host")),
            _str8(_check_host(announcement.target_host, "target_host")),
            announcement.vm_id.bytes,
            announcement.migration_id.bytes,
            struct.pack(">Q", announcement.issued_at),
            bytes((len(announcement.channels),)),
            channels,
            _data16(announcement.suite_data, "announcement"),
        )
    )
    return _frame(Kind.ANNOUNCE, announcement.suite, body + bytes(MAC_SIZE))[:-MAC_SIZE]


def encode_verdict(verdict: Verdict) -> bytes:
    reason = verdict.reason.encode("ascii", "replace")[:MAX_REASON]
    body = bytes((0 if verdict.accepted else 1,)) + _str8(reason)
    return _frame(Kind.VERDICT, Suite.SHARED_KEYRING, body)


def _cursor(body: bytes, what: str) -> FieldReader:
    return FieldReader(body, f"peer link: {what}")


def _host(reader: FieldReader, name: str) -> str:
    """A host id after its one-byte length (1 to :data:`MAX_HOST_ID`): printable UTF-8."""
    raw = reader.sized(name, width=1, low=1, high=MAX_HOST_ID)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedInput(f"{reader.what} {name} is not UTF-8") from None
    if not text.isprintable():
        raise MalformedInput(f"{reader.what} {name} is not printable")
    return text


def _suite_data(reader: FieldReader) -> bytes:
    """The suite's data after its two-byte length (at most :data:`MAX_SUITE_DATA`)."""
    return reader.sized("suite data", width=2, low=0, high=MAX_SUITE_DATA, error=TooLarge)


def _split(frame: bytes, kind: Kind) -> tuple[Suite, bytes]:
    """Header checks of one whole frame -> (suite, body)."""
    if len(frame) < HEADER_SIZE:
        raise Truncated(f"peer link: {len(frame)} bytes, a header is {HEADER_SIZE}")
    magic, version, got_kind, suite, flags, length = _HEADER.unpack_from(frame)
    if magic != MAGIC:
        raise BadMagic("peer link: bad magic")
    if version != VERSION:
        raise UnsupportedVersion(f"peer link: version {version}, only {VERSION} is spoken")
    if got_kind != kind:
        raise ProtocolError(f"peer link: message kind {got_kind} where {kind.name} belongs")
    if suite not in Suite._value2member_map_:
        raise UnsupportedVersion(f"peer link: suite {suite} is not supported")
    if flags:
        raise MalformedInput(f"peer link: flags {flags:#04x} set")
    if length > MAX_BODY:
        raise TooLarge(f"peer link: body of {length} bytes, over the {MAX_BODY}-byte limit")
    if len(frame) != HEADER_SIZE + length:
        raise Truncated(
            f"peer link: frame of {len(frame)} bytes, header says {HEADER_SIZE + length}"
        )
    return Suite(suite), frame[HEADER_SIZE:]


def decode_challenge(frame: bytes) -> Challenge:
    suite, body = _split(frame, Kind.CHALLENGE)
    cursor = _cursor(body, "challenge")
    target = _host(cursor, "target_host")
    nonce = cursor.take(NONCE_SIZE, "nonce")
    data = _suite_data(cursor)
    cursor.end()
    return Challenge(target, nonce, suite, data)


def announcement_key_id(frame: bytes) -> bytes:
    """The key id of an announcement frame: the one field read before its MAC verifies."""
    _, body = _split(frame, Kind.ANNOUNCE)
    if len(body) < KEY_ID_SIZE + MAC_SIZE:
        raise Truncated(f"peer link: announcement body of {len(body)} bytes")
    return body[:KEY_ID_SIZE]


def decode_announcement(frame: bytes) -> Announcement:
    """Parse an announcement frame; call only after its MAC verified (see TargetLink)."""
    suite, body = _split(frame, Kind.ANNOUNCE)
    cursor = _cursor(body[:-MAC_SIZE] if len(body) >= MAC_SIZE else body, "announcement")
    key_id = cursor.take(KEY_ID_SIZE, "key id")
    source = _host(cursor, "source_host")
    target = _host(cursor, "target_host")
    vm_id = uuid.UUID(bytes=cursor.take(16, "vm_id"))
    migration_id = uuid.UUID(bytes=cursor.take(16, "migration_id"))
    issued_at = cursor.uint(8, "issued_at")
    if issued_at >= 1 << 63:
        raise MalformedInput("peer link: announcement issued_at out of range")
    raw = cursor.sized("channels", width=1, low=0, high=MAX_CHANNELS, unit=2)
    channels = tuple((raw[i], raw[i + 1]) for i in range(0, len(raw), 2))
    if len(set(channels)) != len(channels):
        raise MalformedInput("peer link: a channel is announced twice")
    data = _suite_data(cursor)
    cursor.end()
    if len(body) < MAC_SIZE:
        raise Truncated("peer link: announcement without its MAC")
    return Announcement(
        key_id, source, target, vm_id, migration_id, issued_at, channels, suite, data
    )


def decode_verdict(frame: bytes) -> Verdict:
    suite, body = _split(frame, Kind.VERDICT)
    if suite is not Suite.SHARED_KEYRING:
        # A verdict is the same in every suite and always written as suite 1: one encoding.
        raise MalformedInput(f"peer link: a verdict names suite {suite.value}, not 1")
    cursor = _cursor(body, "verdict")
    status = cursor.uint(1, "status")
    if status > 1:
        raise MalformedInput(f"peer link: verdict status {status}")
    raw = cursor.sized("reason", width=1, low=0, high=MAX_REASON)
    reason = raw.decode("ascii", "replace")
    cursor.end()
    return Verdict(status == 0, "".join(c if c.isprintable() else "?" for c in reason))


class FrameReader:
    """Bytes in, whole frames out; the magic and the length are checked as soon as they arrive,
    so at most one header plus :data:`MAX_BODY` bytes is ever buffered."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        self._buffer += data
        frames: list[bytes] = []
        while True:
            buffer = self._buffer
            if len(buffer) >= len(MAGIC) and buffer[: len(MAGIC)] != MAGIC:
                raise BadMagic("peer link: bad magic")
            if len(buffer) < HEADER_SIZE:
                return frames
            (length,) = struct.unpack_from(">I", buffer, HEADER_SIZE - 4)
            if length > MAX_BODY:
                raise TooLarge(f"peer link: body of {length} bytes, over the {MAX_BODY}-byte limit")
            if len(buffer) < HEADER_SIZE + length:
                return frames
            frames.append(bytes(buffer[: HEADER_SIZE + length]))
            del buffer[: HEADER_SIZE + length]

    @property
    def pending(self) -> int:
        return len(self._buffer)


# --- the two ends ------------------------------------------------------------------------------


@dataclass(frozen=True)
class AnnouncementVerified:
    """Target side: an authenticated, fresh announcement for this host and one of its VMs;
    in the identity suite, with the attempt key both ends agreed."""

    announcement: Announcement
    key: AttemptKey | None = field(default=None, repr=False)


@dataclass(frozen=True)
class ChallengeAnswered:
    """Source side: send ``data`` (the announcement) to the target."""

    data: bytes = field(repr=False)


@dataclass(frozen=True)
class VerdictReceived:
    verdict: Verdict


class TargetLink:
    """The target's end of one peer-link connection: challenge, one announcement, verdict.

    With ``identity`` (this host's identity and trust store) the challenge carries a handshake
    hello, which costs a signature and an ephemeral key pair: build the link off the event
    loop. Announcements from ``identity_sources`` must then use the identity suite.

    :meth:`receive` raises a :class:`~gateway.errors.GatewayError` for anything refused; the
    caller then sends :meth:`verdict` with the error class and closes.
    """

    def __init__(
        self,
        host_id: str,
        keyring: Keyring,
        trusted_sources: Iterable[str],
        vm_ids: Iterable[uuid.UUID],
        *,
        now: float,
        clock_skew: int,
        random_bytes: Callable[[int], bytes] = os.urandom,
        identity: Identity | None = None,
        identity_sources: Iterable[str] = (),
    ) -> None:
        self.host_id = host_id
        self.keyring = keyring
        self.trusted_sources = frozenset(trusted_sources)
        self.identity_sources = frozenset(identity_sources)
        self.vm_ids = frozenset(vm_ids)
        self.now = now
        self.clock_skew = clock_skew
        self._identity = identity
        self._pending: PendingHello | None = None
        nonce = random_bytes(NONCE_SIZE)
        if identity is None:
            if self.identity_sources:
                raise ConfigError("sources that require the identity suite need an identity")
            self._challenge = encode_challenge(Challenge(host_id, nonce))
        else:
            message, self._pending = hello(identity[0], now=now, random_bytes=random_bytes)
            self._challenge = encode_challenge(Challenge(host_id, nonce, Suite.IDENTITY, message))
        self._reader = FrameReader()
        self._done = False

    def start(self) -> bytes:
        """The challenge frame, sent as soon as the source connects."""
        return self._challenge

    def receive(self, data: bytes) -> list[AnnouncementVerified]:
        events = []
        for frame in self._reader.feed(data):
            if self._done:
                raise ProtocolError("peer link: a second message after the announcement")
            self._done = True
            events.append(self._verify(frame))
        return events

    def _verify(self, frame: bytes) -> AnnouncementVerified:
        suite, _ = _split(frame, Kind.ANNOUNCE)
        key: AttemptKey | None = None
        if suite is Suite.IDENTITY:
            announcement, key = self._verify_identity(frame)
        else:
            announcement = self._verify_shared(frame)
            if announcement.source_host in self.identity_sources:
                raise DowngradeRefused(
                    "peer link: a shared-keyring announcement from a source that must use "
                    "the identity suite"
                )
        self._check(announcement)
        return AnnouncementVerified(announcement, key)

    def _verify_shared(self, frame: bytes) -> Announcement:
        key = self.keyring.for_opening(announcement_key_id(frame))
        mac = _mac(link_key(key.secret), self._challenge, frame[:-MAC_SIZE])
        if not hmac.compare_digest(mac, frame[-MAC_SIZE:]):
            raise AuthenticationFailed("peer link: announcement MAC does not verify")
        return decode_announcement(frame)

    def _verify_identity(self, frame: bytes) -> tuple[Announcement, AttemptKey]:
        if self._identity is None or self._pending is None:
            raise UnsupportedVersion("peer link: identity suite not offered by this target")
        # Structure only (every length bounded) to reach the offer; nothing is used before
        # the offer's signatures verify and it is shown to sign this very announcement.
        claimed = decode_announcement(frame)
        signed, key = accept(
            claimed.suite_data,
            self._pending,
            self._identity[1],
            now=self.now,
            clock_skew=self.clock_skew,
        )
        if not hmac.compare_digest(signed, signed_announcement(claimed)):
            raise AuthenticationFailed("peer link: the offer signs another announcement")
        if not hmac.compare_digest(claimed.key_id, key.key_id):
            raise AuthenticationFailed("peer link: announcement key id is not the attempt's")
        mac = _mac(confirmation_key(key), self._challenge, frame[:-MAC_SIZE], _LABEL_IDENTITY)
        if not hmac.compare_digest(mac, frame[-MAC_SIZE:]):
            raise AuthenticationFailed("peer link: announcement MAC does not verify")
        if claimed.source_host != key.source_host:
            raise ContextMismatch(
                "source_host", "peer link: announcement names another source than its signer"
            )
        return claimed, key

    def _check(self, announcement: Announcement) -> None:
        if announcement.target_host != self.host_id:
            raise ContextMismatch("target_host", "peer link: announcement for another target")
        if announcement.source_host not in self.trusted_sources:
            raise ContextMismatch("source_host", "peer link: announcement from an untrusted host")
        if announcement.vm_id not in self.vm_ids:
            raise ContextMismatch("vm_id", "peer link: announcement for a VM not served here")
        if announcement.issued_at > self.now + self.clock_skew:
            raise NotYetValid(
                f"peer link: announcement issued {announcement.issued_at - self.now:.0f} s ahead"
            )
        if announcement.issued_at < self.now - self.clock_skew:
            raise Expired(
                f"peer link: announcement issued {self.now - announcement.issued_at:.0f} s ago"
            )

    @staticmethod
    def verdict(accepted: bool, reason: str = "") -> bytes:
        return encode_verdict(Verdict(accepted, reason))


class SourceLink:
    """The source's end: answer the target's challenge with the announcement, read the verdict.

    With ``identity`` (this host's identity and trust store) the answer is the identity suite's
    offer, and only a challenge carrying a hello signed by ``target_host`` is answered; the
    attempt key is then :attr:`attempt_key`. Answering costs a KEM encapsulation and two
    signatures' worth of work: call :meth:`receive` off the event loop.
    """

    def __init__(
        self,
        *,
        host_id: str,
        target_host: str,
        keyring: Keyring | None,
        vm_id: uuid.UUID,
        migration_id: uuid.UUID,
        channels: Iterable[tuple[int, int]],
        now: float,
        identity: Identity | None = None,
        clock_skew: int = 5,
        random_bytes: Callable[[int], bytes] | None = None,
    ) -> None:
        if keyring is None and identity is None:
            raise ConfigError("the peer link needs a keyring or an identity")
        self.target_host = target_host
        self._keyring = keyring
        self._identity = identity
        self._now = now
        self._clock_skew = clock_skew
        self._random_bytes = random_bytes
        self._announcement = Announcement(
            key_id=keyring.active.key_id if identity is None and keyring else bytes(KEY_ID_SIZE),
            source_host=host_id,
            target_host=target_host,
            vm_id=vm_id,
            migration_id=migration_id,
            issued_at=int(now),
            channels=tuple(sorted(channels)),
            suite=Suite.SHARED_KEYRING if identity is None else Suite.IDENTITY,
        )
        self.attempt_key: AttemptKey | None = None
        self._reader = FrameReader()
        self._state = Kind.CHALLENGE

    @property
    def announcement(self) -> Announcement:
        return self._announcement

    def receive(self, data: bytes) -> list[ChallengeAnswered | VerdictReceived]:
        events: list[ChallengeAnswered | VerdictReceived] = []
        for frame in self._reader.feed(data):
            if self._state is Kind.CHALLENGE:
                challenge = decode_challenge(frame)
                if challenge.target_host != self.target_host:
                    raise ContextMismatch(
                        "target_host", "peer link: the peer is not the host sealed for"
                    )
                events.append(ChallengeAnswered(self._answer(frame, challenge)))
                self._state = Kind.VERDICT
            elif self._state is Kind.VERDICT:
                events.append(VerdictReceived(decode_verdict(frame)))
                self._state = Kind.ANNOUNCE  # nothing more is expected
            else:
                raise ProtocolError("peer link: a message after the verdict")
        return events

    def _answer(self, frame: bytes, challenge: Challenge) -> bytes:
        if self._identity is None:
            assert self._keyring is not None
            key = self._keyring.active
            prefix = _announce_prefix(self._announcement)
            return prefix + _mac(link_key(key.secret), frame, prefix)
        if challenge.suite is not Suite.IDENTITY:
            raise DowngradeRefused(
                "peer link: the target offers no identity handshake; this peer requires it"
            )
        own, trust = self._identity
        message, attempt = offer(
            challenge.suite_data,
            signed_announcement(self._announcement),
            own,
            trust,
            self.target_host,
            now=self._now,
            random_bytes=self._random_bytes,
            clock_skew=self._clock_skew,
        )
        self._announcement = replace(self._announcement, key_id=attempt.key_id, suite_data=message)
        self.attempt_key = attempt
        prefix = _announce_prefix(self._announcement)
        return prefix + _mac(confirmation_key(attempt), frame, prefix, _LABEL_IDENTITY)
