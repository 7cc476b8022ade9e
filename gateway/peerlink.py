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
authenticated; suite 1 is a MAC under a key derived (HKDF-SHA256, its own label) from a key of
the shared keyring, named by id in the announcement. Every message carries a length-bounded
``suite_data`` field, empty in suite 1, where a later suite carries its key-agreement material
(the target's signed ephemeral key in the challenge, the source's encapsulation and signature in
the announcement) without a change of framing.

Nothing of an announcement but its key id (fixed offset) is read before its MAC verifies. The
nonce makes every transcript fresh, so a recorded announcement fails on any other connection.
No I/O here: the asyncio side (``gateway/proxy/peer.py``) moves the bytes.
"""

from __future__ import annotations

import enum
import hmac
import os
import struct
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from gateway.errors import (
    AuthenticationFailed,
    BadMagic,
    ConfigError,
    ContextMismatch,
    CountOutOfRange,
    Expired,
    MalformedInput,
    NotYetValid,
    ProtocolError,
    TooLarge,
    Truncated,
    UnaccountedBytes,
    UnsupportedVersion,
)
from gateway.keys import KEY_ID_SIZE, Keyring

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


class Kind(enum.IntEnum):
    CHALLENGE = 1
    ANNOUNCE = 2
    VERDICT = 3


class Suite(enum.IntEnum):
    #: MAC over the transcript under an HKDF-derived key of the shared keyring.
    SHARED_KEYRING = 1


def link_key(secret: bytes) -> bytes:
    """The peer-link MAC key of one keyring secret (never the secret itself)."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_LABEL).derive(secret)


def _mac(key: bytes, challenge_frame: bytes, announce_prefix: bytes) -> bytes:
    transcript = b"".join(
        (_LABEL, struct.pack(">I", len(challenge_frame)), challenge_frame, announce_prefix)
    )
    return hmac.new(key, transcript, "sha256").digest()


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


class _Cursor:
    """Reads a body front to back; every read is bounds-checked and names what it reads."""

    def __init__(self, data: bytes, what: str) -> None:
        self.data = data
        self.offset = 0
        self.what = what

    def take(self, size: int, name: str) -> bytes:
        end = self.offset + size
        if end > len(self.data):
            raise Truncated(
                f"peer link: {self.what} {name} needs {size} bytes at offset {self.offset}, "
                f"{len(self.data) - self.offset} left"
            )
        chunk = self.data[self.offset : end]
        self.offset = end
        return chunk

    def u8(self, name: str) -> int:
        return self.take(1, name)[0]

    def host(self, name: str) -> str:
        size = self.u8(name)
        if not 1 <= size <= MAX_HOST_ID:
            raise CountOutOfRange(f"peer link: {self.what} {name} of {size} bytes")
        raw = self.take(size, name)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise MalformedInput(f"peer link: {self.what} {name} is not UTF-8") from None
        if not text.isprintable():
            raise MalformedInput(f"peer link: {self.what} {name} is not printable")
        return text

    def suite_data(self) -> bytes:
        (size,) = struct.unpack(">H", self.take(2, "suite data length"))
        if size > MAX_SUITE_DATA:
            raise TooLarge(f"peer link: {self.what} suite data of {size} bytes")
        return self.take(size, "suite data")

    def end(self) -> None:
        if self.offset != len(self.data):
            raise UnaccountedBytes(
                f"peer link: {len(self.data) - self.offset} bytes after the {self.what}"
            )


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
    cursor = _Cursor(body, "challenge")
    target = cursor.host("target_host")
    nonce = cursor.take(NONCE_SIZE, "nonce")
    data = cursor.suite_data()
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
    cursor = _Cursor(body[:-MAC_SIZE] if len(body) >= MAC_SIZE else body, "announcement")
    key_id = cursor.take(KEY_ID_SIZE, "key id")
    source = cursor.host("source_host")
    target = cursor.host("target_host")
    vm_id = uuid.UUID(bytes=cursor.take(16, "vm_id"))
    migration_id = uuid.UUID(bytes=cursor.take(16, "migration_id"))
    (issued_at,) = struct.unpack(">Q", cursor.take(8, "issued_at"))
    if issued_at >= 1 << 63:
        raise MalformedInput("peer link: announcement issued_at out of range")
    count = cursor.u8("channel count")
    if count > MAX_CHANNELS:
        raise CountOutOfRange(f"peer link: {count} channels, at most {MAX_CHANNELS}")
    raw = cursor.take(2 * count, "channels")
    channels = tuple((raw[i], raw[i + 1]) for i in range(0, len(raw), 2))
    if len(set(channels)) != len(channels):
        raise MalformedInput("peer link: a channel is announced twice")
    data = cursor.suite_data()
    cursor.end()
    if len(body) < MAC_SIZE:
        raise Truncated("peer link: announcement without its MAC")
    return Announcement(
        key_id, source, target, vm_id, migration_id, issued_at, channels, suite, data
    )


def decode_verdict(frame: bytes) -> Verdict:
    _, body = _split(frame, Kind.VERDICT)
    cursor = _Cursor(body, "verdict")
    status = cursor.u8("status")
    if status > 1:
        raise MalformedInput(f"peer link: verdict status {status}")
    size = cursor.u8("reason length")
    if size > MAX_REASON:
        raise CountOutOfRange(f"peer link: verdict reason of {size} bytes")
    reason = cursor.take(size, "reason").decode("ascii", "replace")
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
    """Target side: an authenticated, fresh announcement for this host and one of its VMs."""

    announcement: Announcement


@dataclass(frozen=True)
class ChallengeAnswered:
    """Source side: send ``data`` (the announcement) to the target."""

    data: bytes = field(repr=False)


@dataclass(frozen=True)
class VerdictReceived:
    verdict: Verdict


class TargetLink:
    """The target's end of one peer-link connection: challenge, one announcement, verdict.

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
    ) -> None:
        self.host_id = host_id
        self.keyring = keyring
        self.trusted_sources = frozenset(trusted_sources)
        self.vm_ids = frozenset(vm_ids)
        self.now = now
        self.clock_skew = clock_skew
        self._challenge = encode_challenge(Challenge(host_id, random_bytes(NONCE_SIZE)))
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
            events.append(AnnouncementVerified(self._verify(frame)))
        return events

    def _verify(self, frame: bytes) -> Announcement:
        key = self.keyring.for_opening(announcement_key_id(frame))
        mac = _mac(link_key(key.secret), self._challenge, frame[:-MAC_SIZE])
        if not hmac.compare_digest(mac, frame[-MAC_SIZE:]):
            raise AuthenticationFailed("peer link: announcement MAC does not verify")
        announcement = decode_announcement(frame)
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
        return announcement

    @staticmethod
    def verdict(accepted: bool, reason: str = "") -> bytes:
        return encode_verdict(Verdict(accepted, reason))


class SourceLink:
    """The source's end: answer the target's challenge with the announcement, read the verdict."""

    def __init__(
        self,
        *,
        host_id: str,
        target_host: str,
        keyring: Keyring,
        vm_id: uuid.UUID,
        migration_id: uuid.UUID,
        channels: Iterable[tuple[int, int]],
        now: float,
    ) -> None:
        self.target_host = target_host
        self._key = keyring.active
        self._announcement = Announcement(
            key_id=self._key.key_id,
            source_host=host_id,
            target_host=target_host,
            vm_id=vm_id,
            migration_id=migration_id,
            issued_at=int(now),
            channels=tuple(sorted(channels)),
        )
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
                prefix = _announce_prefix(self._announcement)
                mac = _mac(link_key(self._key.secret), frame, prefix)
                events.append(ChallengeAnswered(prefix + mac))
                self._state = Kind.VERDICT
            elif self._state is Kind.VERDICT:
                events.append(VerdictReceived(decode_verdict(frame)))
                self._state = Kind.ANNOUNCE  # nothing more is expected
            else:
                raise ProtocolError("peer link: a message after the verdict")
        return events
