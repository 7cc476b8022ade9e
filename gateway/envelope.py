"""The sealed envelope: seal a channel's migration state for one migration, open it once.

A blob is authenticated, encrypted and bound to its context (channel, VM, migration, source,
target, direction, versions, lifetime). The SPICE client relays it but can neither read, alter,
replay nor redirect it. SECURITY.md describes the byte format field by field; in short::

    header (60 bytes, fixed) | context | ciphertext | GCM tag (16) | HMAC (32)

Suite 1 (the only suite; it names one fixed set of algorithms and nothing in a blob can pick
another): per-blob keys from HKDF-SHA256(secret, salt) with separate labels for encryption and
MAC, AES-256-GCM over the msgpack-encoded state with header + context as associated data, and
HMAC-SHA256 over header + context + GCM tag.

Opening checks, in this order, and nothing is skipped: size (overall and the expected
channel's bound); fixed header fields; key id; HMAC (constant time); with the guard at hand, a
lookup that refuses a used blob; the authenticated channel's payload bound; GCM decryption;
context; msgpack object count and every limit; strict schema; context comparison; lifetime and
clock skew; minimum versions; and last, the replay guard's record. A blob whose signature and
ciphertext verified is recorded whatever the outcome (see :func:`spend`): each authentic blob is
processed at most once, accepted or refused.

:func:`open_envelope` is the one-call API. Beneath it, :func:`verify` runs every check but the
last and returns a :class:`Verified` whose state only :meth:`Verified.consume` hands out, after the
replay guard recorded the blob: a caller may run the checks (CPU) and the guard's commit (a wait
for the disk) in different places, but cannot get the state without both.
"""

from __future__ import annotations

import contextlib
import enum
import functools
import hmac
import io
import os
import struct
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Final, Literal, NamedTuple, get_args

import msgpack
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pydantic import BaseModel, ValidationError

from gateway.errors import (
    AuthenticationFailed,
    BadMagic,
    ConfigError,
    ContextMismatch,
    CountOutOfRange,
    DowngradeRefused,
    Expired,
    GatewayError,
    MalformedInput,
    NotYetValid,
    Replayed,
    TooLarge,
    Truncated,
    UnaccountedBytes,
    UnsupportedVersion,
    schema_violation,
)
from gateway.keys import Key, Keyring
from gateway.replay import ReplayGuard
from schemas import ChannelType, StateModel, model_for
from schemas.chardev import MAX_PENDING_WRITE
from schemas.display import NUM_SURFACES
from schemas.smartcard import MAX_VSC_LENGTH, VSC_HEADER_SIZE

__all__ = [
    "ANY_MIGRATION",
    "DEFAULT_CLOCK_SKEW",
    "DEFAULT_POLICY",
    "DEFAULT_TTL",
    "FORMAT_VERSION",
    "HEADER_SIZE",
    "MAGIC",
    "MAX_CLOCK_SKEW",
    "MAX_OBJECTS",
    "MAX_PAYLOAD",
    "MAX_TTL",
    "SUITE",
    "Context",
    "Direction",
    "ExpectedContext",
    "Header",
    "Opened",
    "Policy",
    "Verified",
    "decode_state",
    "max_blob_size",
    "open_envelope",
    "read_header",
    "read_unauthenticated",
    "seal",
    "spend",
    "verify",
]

MAGIC: Final = b"SMGE"
FORMAT_VERSION: Final = 1
SUITE: Final = 1

#: magic, format version, suite, context length, body length, key id, salt; big-endian.
_HEADER: Final = struct.Struct(">4sBBHI16s32s")
HEADER_SIZE: Final = _HEADER.size
SALT_SIZE: Final = 32
TAG_SIZE: Final = 16
MAC_SIZE: Final = 32
#: Each blob has its own encryption key, used for exactly one message, so a fixed nonce is
#: safe (the construction age uses for its payload key).
_NONCE: Final = bytes(12)
_INFO_ENC: Final = b"spice-migration-gateway envelope v1 suite 1 encryption"
_INFO_MAC: Final = b"spice-migration-gateway envelope v1 suite 1 mac"

#: channel type, channel id, direction, schema version, VM id, migration id, issued-at,
#: expires-at; then two host ids, each a length byte and UTF-8.
_CONTEXT: Final = struct.Struct(">BBBH16s16sQQ")
MAX_HOST_ID: Final = 255
_MIN_CONTEXT: Final = _CONTEXT.size + 2 * (1 + 1)
_MAX_CONTEXT: Final = _CONTEXT.size + 2 * (1 + MAX_HOST_ID)

DEFAULT_TTL: Final = 300
"""Seconds a blob stays valid: minutes, enough for a client to relay it after migration."""
MAX_TTL: Final = 3600
DEFAULT_CLOCK_SKEW: Final = 30
"""Seconds the hosts' clocks may differ, applied to both ends of a blob's lifetime. The one
default for the library, the command and the proxy (SECURITY.md, "Clock skew")."""
MAX_CLOCK_SKEW: Final = 300
"""The largest clock skew any opener accepts: it lengthens every lifetime and replay row. The
replay guard keeps every blob id until its expiry plus this, whoever recorded it, so an opener
with a small skew never prunes a blob that one with a larger skew sharing the database would
still accept."""

#: Largest msgpack payload a valid state of each channel can have, from what spice-server 0.15
#: can produce for it (SECURITY.md, "Limits", gives the derivation). Checked against the
#: expected channel before anything else, and against the authenticated channel before
#: decryption: a display or inputs blob of megabytes is refused without being decrypted.
_CHARDEV_PAYLOAD: Final = MAX_PENDING_WRITE + 4 * 1024
MAX_PAYLOAD: Final[dict[ChannelType, int]] = {
    # 26,624-byte receive buffer; the largest state encodes to 26,908 bytes.
    ChannelType.MAIN: 40 * 1024,
    # 1,024 lossy surfaces (native 20,564 bytes) encode to 62,356 bytes: room for an encoder
    # that writes every integer in its widest form.
    ChannelType.DISPLAY: 128 * 1024,
    # One u16 (15 bytes encoded).
    ChannelType.INPUTS: 256,
    # The pending write queue and a partial VSC message of at most 65,564 bytes.
    ChannelType.SMARTCARD: _CHARDEV_PAYLOAD + VSC_HEADER_SIZE + MAX_VSC_LENGTH,
    ChannelType.USBREDIR: _CHARDEV_PAYLOAD,
    ChannelType.PORT: _CHARDEV_PAYLOAD,
    ChannelType.WEBDAV: _CHARDEV_PAYLOAD,
}
#: Header, the longest context, GCM tag and signature.
_FRAMING: Final = HEADER_SIZE + _MAX_CONTEXT + TAG_SIZE + MAC_SIZE
MAX_OBJECTS: Final = 16 * 1024
"""msgpack objects (every value, key and container) in one payload. The largest state, a display
with 1,024 lossy surfaces, has 13,345; the bound keeps a key holder's payload of millions of
one-byte objects from becoming millions of Python objects."""

RandomBytes = Callable[[int], bytes]


class Direction(enum.IntEnum):
    """Which way the state travels; bound so a blob cannot be turned around."""

    SOURCE_TO_TARGET = 1
    TARGET_TO_SOURCE = 2


class _Any(enum.Enum):
    ANY = "any"

    def __repr__(self) -> str:
        return "ANY_MIGRATION"


ANY_MIGRATION: Final = _Any.ANY
"""Expected migration id for the first channel of a session, before the target knows it."""


def _check_host(value: str, name: str) -> None:
    # isprintable() is False for surrogates, so encode() cannot fail after it.
    if (
        not isinstance(value, str)
        or not value.isprintable()
        or not (1 <= len(value.encode()) <= MAX_HOST_ID)
    ):
        raise ConfigError(f"{name} must be 1 to {MAX_HOST_ID} bytes of printable UTF-8")


def _check_u(value: int, bits: int, name: str, low: int = 0) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value < 1 << bits:
        raise ConfigError(f"{name} must be an integer from {low} to {(1 << bits) - 1}")


def _coerce_enums(context: Context | ExpectedContext) -> None:
    """Accept plain ints for the enum fields, store the enums (frozen, hence __setattr__)."""
    try:
        if type(context.channel_type) is not ChannelType:
            object.__setattr__(context, "channel_type", ChannelType(context.channel_type))
        if type(context.direction) is not Direction:
            object.__setattr__(context, "direction", Direction(context.direction))
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


@dataclass(frozen=True)
class Context:
    """What a blob is for: bound inside the authenticated part of every blob."""

    channel_type: ChannelType
    channel_id: int
    vm_id: uuid.UUID
    migration_id: uuid.UUID
    source_host: str
    target_host: str
    schema_version: int
    direction: Direction = Direction.SOURCE_TO_TARGET

    def __post_init__(self) -> None:
        _coerce_enums(self)
        _check_u(self.channel_id, 8, "channel_id")
        _check_u(self.schema_version, 16, "schema_version", low=1)
        if not isinstance(self.vm_id, uuid.UUID) or not isinstance(self.migration_id, uuid.UUID):
            raise ConfigError("vm_id and migration_id must be UUIDs")
        _check_host(self.source_host, "source_host")
        _check_host(self.target_host, "target_host")

    @classmethod
    def _decoded(
        cls,
        channel_type: ChannelType,
        channel_id: int,
        vm_id: uuid.UUID,
        migration_id: uuid.UUID,
        source_host: str,
        target_host: str,
        schema_version: int,
        direction: Direction,
    ) -> Context:
        """A context whose every field :func:`_decode_context` has already checked.

        Skips ``__post_init__``, which would repeat those checks; the types come from the
        fixed layout (a u8, a u16, 16-byte UUIDs), the rest was checked on the bytes.
        """
        context = object.__new__(cls)
        context.__dict__.update(
            channel_type=channel_type,
            channel_id=channel_id,
            vm_id=vm_id,
            migration_id=migration_id,
            source_host=source_host,
            target_host=target_host,
            schema_version=schema_version,
            direction=direction,
        )
        return context


@dataclass(frozen=True)
class ExpectedContext:
    """What the opener expects. Every field must match, with two deliberate freedoms:

    ``sources`` is the set of trusted source host ids, and ``migration_id`` may be
    :data:`ANY_MIGRATION` for the first blob of a client session; the caller then pins
    :attr:`Opened.context.migration_id <Context.migration_id>` for the session's other channels.
    """

    channel_type: ChannelType
    channel_id: int
    vm_id: uuid.UUID
    migration_id: uuid.UUID | Literal[_Any.ANY]
    sources: frozenset[str]
    target_host: str
    schema_version: int
    direction: Direction = Direction.SOURCE_TO_TARGET

    def __post_init__(self) -> None:
        _coerce_enums(self)
        object.__setattr__(self, "sources", frozenset(self.sources))
        if not self.sources:
            raise ConfigError("the set of trusted source hosts is empty")
        for source in self.sources:
            _check_host(source, "source host")
        migration = self.migration_id
        # Reuse Context's checks on everything else.
        Context(
            self.channel_type,
            self.channel_id,
            self.vm_id,
            uuid.UUID(int=0) if migration is ANY_MIGRATION else migration,
            next(iter(self.sources)),
            self.target_host,
            self.schema_version,
            self.direction,
        )

    @classmethod
    def of(
        cls,
        context: Context,
        *,
        sources: Iterable[str] | None = None,
        migration_id: uuid.UUID | Literal[_Any.ANY] | None = None,
    ) -> ExpectedContext:
        """Expect exactly ``context`` (optionally widening the sources or the migration)."""
        return cls(
            channel_type=context.channel_type,
            channel_id=context.channel_id,
            vm_id=context.vm_id,
            migration_id=context.migration_id if migration_id is None else migration_id,
            sources=frozenset([context.source_host] if sources is None else sources),
            target_host=context.target_host,
            schema_version=context.schema_version,
            direction=context.direction,
        )


@dataclass(frozen=True)
class Policy:
    """The opener's limits. All have safe defaults; none can switch a check off."""

    max_blob_size: int = max(MAX_PAYLOAD.values()) + _FRAMING
    """Refused before anything else is looked at, whatever the channel (each channel has its
    own, smaller bound as well: :func:`max_blob_size`). Default: the largest valid state of any
    channel with the largest framing."""
    clock_skew: int = DEFAULT_CLOCK_SKEW
    """Seconds the two hosts' clocks may differ, applied to both ends of the lifetime."""
    max_ttl: int = MAX_TTL
    """Longest lifetime accepted; bounds how long the replay guard keeps a row."""
    min_format_version: int = FORMAT_VERSION
    min_schema_version: int = 1
    max_depth: int = 16
    """msgpack nesting; the deepest state (display, lossy surfaces) needs 5."""
    max_str_len: int = 64
    """Strings are only field names and union tags."""
    max_array_len: int = NUM_SURFACES
    max_map_len: int = 64
    max_objects: int = MAX_OBJECTS
    """msgpack objects in the whole payload, counted before any is built."""

    def __post_init__(self) -> None:
        for name in (
            "max_blob_size",
            "max_ttl",
            "max_depth",
            "max_str_len",
            "max_map_len",
            "max_objects",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"policy {name} must be positive")
        if not 0 <= self.clock_skew <= MAX_CLOCK_SKEW:
            raise ConfigError(f"policy clock_skew must be from 0 to {MAX_CLOCK_SKEW} seconds")
        if self.max_array_len < 0 or self.min_format_version < 1 or self.min_schema_version < 1:
            raise ConfigError("policy limits and minimum versions must be positive")


DEFAULT_POLICY: Final = Policy()


class Header(NamedTuple):
    """The fixed header. Unauthenticated until :func:`open_envelope` verified the blob."""

    format_version: int
    suite: int
    context_length: int
    body_length: int
    key_id: bytes
    salt: bytes

    @property
    def blob_id(self) -> bytes:
        """The random salt doubles as the blob's single-use id."""
        return self.salt

    @property
    def total_length(self) -> int:
        return HEADER_SIZE + self.context_length + self.body_length + TAG_SIZE + MAC_SIZE


@dataclass(frozen=True)
class Opened:
    """An opened blob: the validated state and the authenticated context it was sealed for."""

    state: StateModel
    context: Context
    issued_at: int
    expires_at: int
    key_id: bytes
    blob_id: bytes


# --- the format ----------------------------------------------------------------------------


def _hmac(key: bytes, message: bytes) -> bytes:
    # The one-shot public form (OpenSSL's HMAC underneath): for messages this small, hmac.new's
    # Python object layers would cost more than the hashing, and every blob takes four HMACs.
    return hmac.digest(key, message, "sha256")


def _derive(secret: bytes, salt: bytes) -> tuple[bytes, bytes]:
    """HKDF-SHA256 (RFC 5869) with one extract and two single-block expands.

    For a 32-byte output, HKDF-Expand is exactly one HMAC of ``info || 0x01``; spelling that out
    saves a second extract per label (checked against a reference HKDF in the tests).
    """
    prk = _hmac(salt, secret)
    return _hmac(prk, _INFO_ENC + b"\x01"), _hmac(prk, _INFO_MAC + b"\x01")


def _encode_context(context: Context, issued_at: int, expires_at: int) -> bytes:
    source = context.source_host.encode()
    target = context.target_host.encode()
    fixed = _CONTEXT.pack(
        context.channel_type,
        context.channel_id,
        context.direction,
        context.schema_version,
        context.vm_id.bytes,
        context.migration_id.bytes,
        issued_at,
        expires_at,
    )
    return b"".join((fixed, bytes([len(source)]), source, bytes([len(target)]), target))


#: Enum members by wire value: a lookup that fails cleanly on an unknown value.
_CHANNEL_TYPES: Final = {int(member): member for member in ChannelType}
_DIRECTIONS: Final = {int(member): member for member in Direction}


def _read_host(data: bytes, offset: int, name: str) -> tuple[str, int]:
    size = data[offset]
    end = offset + 1 + size
    if end > len(data):
        raise Truncated(f"context: {name} runs past the context at offset {offset}")
    try:
        host = data[offset + 1 : end].decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedInput(f"context: {name} is not UTF-8") from None
    # The length byte bounds the size from above; Context's other host rules apply as well.
    if not host or not host.isprintable():
        raise MalformedInput(f"context: {name} must be 1 to {MAX_HOST_ID} bytes of printable UTF-8")
    return host, end


def _uuid(raw: bytes, known: uuid.UUID | Literal[_Any.ANY]) -> uuid.UUID:
    """``raw`` as a UUID, sharing ``known`` when equal (as it is whenever the blob matches)."""
    if known is not ANY_MIGRATION and raw == known.bytes:
        return known
    return uuid.UUID(bytes=raw)


def _decode_context(
    data: bytes, expected: ExpectedContext | None = None
) -> tuple[Context, int, int]:
    """The authenticated context; only ever called on bytes the MAC has verified.

    Every check ``Context`` makes is made here on the bytes, so a compromised key holder's
    context is refused as malformed. ``expected`` only lends its objects for equal values; it
    checks nothing (the comparison comes later, in its documented place).
    """
    channel, channel_id, direction, schema, vm, migration, issued, expires = _CONTEXT.unpack_from(
        data
    )
    source, offset = _read_host(data, _CONTEXT.size, "source_host")
    if offset >= len(data):
        raise Truncated(f"context: target_host missing at offset {offset}")
    target, offset = _read_host(data, offset, "target_host")
    if offset != len(data):
        raise UnaccountedBytes(f"context: {len(data) - offset} bytes after target_host")
    if expires < issued:
        raise MalformedInput("context: expires_at is before issued_at")
    channel_type = _CHANNEL_TYPES.get(channel)
    if channel_type is None:
        raise MalformedInput(f"context: unknown channel type {channel}")
    direction_member = _DIRECTIONS.get(direction)
    if direction_member is None:
        raise MalformedInput(f"context: unknown direction {direction}")
    if schema < 1:
        raise MalformedInput("context: schema version 0")
    context = Context._decoded(
        channel_type,
        channel_id,
        _uuid(vm, ANY_MIGRATION if expected is None else expected.vm_id),
        _uuid(migration, ANY_MIGRATION if expected is None else expected.migration_id),
        source,
        target,
        schema,
        direction_member,
    )
    return context, issued, expires


def read_header(blob: bytes) -> Header:
    """Parse and bounds-check the fixed header: the only parsing done before authentication."""
    if len(blob) < HEADER_SIZE:
        raise Truncated(
            f"envelope is truncated or not a sealed blob: {len(blob)} bytes, shorter than the "
            f"{HEADER_SIZE}-byte header"
        )
    magic, version, suite, context_length, body_length, key_id, salt = _HEADER.unpack_from(blob)
    if magic != MAGIC:
        raise BadMagic("envelope is not a sealed blob or was tampered with: bad magic at offset 0")
    if version != FORMAT_VERSION:
        raise UnsupportedVersion(
            f"envelope is from another gateway version or was tampered with: format version "
            f"{version} at offset 4"
        )
    if suite != SUITE:
        raise UnsupportedVersion(
            f"envelope is from another gateway version or was tampered with: suite {suite} "
            "at offset 5"
        )
    if not _MIN_CONTEXT <= context_length <= _MAX_CONTEXT:
        raise CountOutOfRange(
            f"envelope is malformed or tampered with: context length {context_length} at "
            f"offset 6 is outside "
            f"{_MIN_CONTEXT}..{_MAX_CONTEXT}"
        )
    header = Header(version, suite, context_length, body_length, key_id, salt)
    total = header.total_length
    if len(blob) < total:
        raise Truncated(
            f"envelope is truncated or tampered with: {len(blob)} bytes, the length fields "
            f"of its header (offsets 6 and 8) declare {total}"
        )
    if len(blob) > total:
        raise UnaccountedBytes(
            f"envelope is malformed or tampered with: {len(blob)} bytes, the length fields of "
            f"its header (offsets 6 and 8) declare {total}, leaving {len(blob) - total} bytes "
            f"after offset {total}"
        )
    return header


def read_unauthenticated(blob: bytes) -> tuple[Header, Context, int, int]:
    """The header, context, issued-at and expires-at a blob carries in the clear, NOT verified.

    For showing an operator what a blob claims (``inspect``), never for deciding anything: the
    opening path parses no context before the MAC verified it. The same strict checks as after
    authentication apply (every length bounded by the header's, itself bounded).
    """
    header = read_header(blob)
    context, issued_at, expires_at = _decode_context(
        blob[HEADER_SIZE : HEADER_SIZE + header.context_length]
    )
    return header, context, issued_at, expires_at


#: Byte strings at least this long (msgpack's bin32 from here on) are fed to the cipher from
#: their own buffer rather than copied into the packed payload first (:func:`_pack`).
_STREAM_MIN: Final = 64 * 1024
_BIN32: Final = struct.Struct(">BI")


_FieldPath = tuple[str, ...]


@functools.cache
def _bytes_fields(model: type[BaseModel]) -> tuple[_FieldPath, ...] | None:
    """Where a state of ``model`` holds byte strings, as paths of field names through its
    dump; None when one may sit in a container or a union (look at every part then)."""
    paths: list[_FieldPath] = []
    for name, info in model.model_fields.items():
        annotation = info.annotation
        if annotation is bytes:
            paths.append((name,))
        elif isinstance(annotation, type) and issubclass(annotation, BaseModel):
            inner = _bytes_fields(annotation)
            if inner is None:
                return None
            paths += [(name, *path) for path in inner]
        elif _mentions_bytes(annotation):
            return None
    return tuple(paths)


def _mentions_bytes(annotation: object) -> bool:
    if annotation is bytes:
        return True
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return _bytes_fields(annotation) != ()
    return any(_mentions_bytes(arg) for arg in get_args(annotation))  # containers, unions


def _pieces(obj: object) -> list[bytes]:
    """The msgpack encoding of ``obj`` (``use_bin_type``) as pieces that join to exactly
    ``msgpack.packb``'s bytes, every byte string of :data:`_STREAM_MIN` or more a piece of its
    own, not copied. One piece when there is none."""
    packer = msgpack.Packer(use_bin_type=True, autoreset=False)
    pieces: list[bytes] = []
    todo: list[Any] = [obj]
    while todo:  # depth first, in msgpack's order
        item = todo.pop()
        kind = type(item)
        if kind is dict:
            packer.pack_map_header(len(item))
            todo.extend(reversed([part for pair in item.items() for part in pair]))
        elif kind is list or kind is tuple:
            packer.pack_array_header(len(item))
            todo.extend(reversed(item))
        elif kind is bytes and len(item) >= _STREAM_MIN:
            # bin32 (msgpack's own choice from 64 KiB on), then the bytes themselves.
            pieces += (packer.bytes(), _BIN32.pack(0xC6, len(item)), item)
            packer.reset()
        else:
            packer.pack(item)
    pieces.append(packer.bytes())
    return pieces


def _pack(state: StateModel) -> list[bytes]:
    """The msgpack payload of ``state`` as :func:`_pieces`, without walking the states that
    hold no large byte string (most)."""
    dumped = state.model_dump(mode="python")
    paths = _bytes_fields(type(state))
    if paths is None:
        return _pieces(dumped)
    for path in paths:
        value: Any = dumped
        for name in path:
            value = value[name]
        if len(value) >= _STREAM_MIN:
            return _pieces(dumped)
    return [msgpack.packb(dumped, use_bin_type=True)]


def _seal_into(
    authenticated: bytes, pieces: list[bytes], size: int, enc_key: bytes, mac_key: bytes
) -> bytes:
    """The blob of a large payload, encrypted piece by piece straight into the blob's buffer.

    Packing megabytes, encrypting them to a new buffer and joining that to the header would
    copy the state three times; here the only write of it is the cipher's output. The buffer is
    a BytesIO's, whose value then is the blob itself (no final copy to bytes).
    """
    out = io.BytesIO(bytes(len(authenticated) + size + TAG_SIZE + MAC_SIZE))
    with out.getbuffer() as view:
        offset = len(authenticated)
        view[:offset] = authenticated
        encryptor = Cipher(algorithms.AES(enc_key), modes.GCM(_NONCE)).encryptor()
        encryptor.authenticate_additional_data(authenticated)
        for piece in pieces:
            offset += encryptor.update_into(piece, view[offset:])
        encryptor.finalize()
        tag = encryptor.tag
        view[offset : offset + TAG_SIZE] = tag
        view[offset + TAG_SIZE :] = _hmac(mac_key, authenticated + tag)
    return out.getvalue()


def _seal_payload(
    pieces: list[bytes],
    context: Context,
    issued_at: int,
    expires_at: int,
    key: Key,
    salt: bytes,
) -> bytes:
    """Seal already-encoded bytes, given as pieces (:func:`_pack`). No validation of the
    payload: the opener never relies on it."""
    if len(salt) != SALT_SIZE:
        raise ConfigError(f"the random source gave a {len(salt)}-byte salt, not {SALT_SIZE}")
    encoded = _encode_context(context, issued_at, expires_at)
    size = sum(map(len, pieces))
    header = _HEADER.pack(MAGIC, FORMAT_VERSION, SUITE, len(encoded), size, key.key_id, salt)
    enc_key, mac_key = _derive(key.secret, salt)
    authenticated = header + encoded
    if len(pieces) > 1:
        return _seal_into(authenticated, pieces, size, enc_key, mac_key)
    # Small payloads: the one-shot cipher is faster than the streaming one's setup.
    body = AESGCM(enc_key).encrypt(_NONCE, pieces[0], authenticated)
    mac = _hmac(mac_key, authenticated + body[-TAG_SIZE:])
    return b"".join((authenticated, body, mac))


def _check_time(value: float, name: str) -> int:
    seconds = int(value)
    if not 0 <= seconds < 1 << 63:
        raise ConfigError(f"{name} is outside the representable range")
    return seconds


def seal(
    state: StateModel,
    context: Context,
    keyring: Keyring,
    *,
    ttl: int = DEFAULT_TTL,
    now: float | None = None,
    random_bytes: RandomBytes | None = None,
) -> bytes:
    """Seal ``state`` for ``context`` with the keyring's active key, valid for ``ttl`` seconds."""
    model = type(state)
    if context.channel_type not in model.channel_types:
        raise ContextMismatch(
            "channel_type",
            f"a {model.__name__} cannot be sealed for channel {context.channel_type.name}",
        )
    if context.schema_version != model.schema_version:
        raise ContextMismatch(
            "schema_version",
            f"context names schema version {context.schema_version}, the state is "
            f"{model.__name__} v{model.schema_version}",
        )
    if isinstance(ttl, bool) or not isinstance(ttl, int) or not 1 <= ttl <= MAX_TTL:
        raise ConfigError(f"ttl must be from 1 to {MAX_TTL} seconds")
    issued_at = _check_time(time.time() if now is None else now, "now")
    salt = (random_bytes or os.urandom)(SALT_SIZE)
    return _seal_payload(
        _pack(state),
        context,
        issued_at,
        issued_at + ttl,
        keyring.active,
        salt,
    )


# --- opening -------------------------------------------------------------------------------


def _unique_keys(pairs: list[tuple[Any, Any]]) -> dict[Any, Any]:
    mapping = dict(pairs)
    if len(mapping) != len(pairs):
        raise MalformedInput("sealed state: duplicate map key")
    return mapping


def _no_ext(code: int, data: bytes) -> object:
    raise MalformedInput(f"sealed state: msgpack extension type {code} is not allowed")


_CONTAINERS: Final = frozenset({dict, tuple})


def _check_depth(obj: object, limit: int) -> None:
    """Refuse nesting deeper than ``limit``, one level at a time (no recursion)."""
    # Only dicts and tuples come out of the unpacker as containers (exact types, no
    # subclasses), hence Any and type() checks: this walk runs on every opened blob.
    level: list[Any] = [obj] if type(obj) in _CONTAINERS else []
    depth = 0
    while level:
        depth += 1
        if depth > limit:
            raise CountOutOfRange(f"sealed state: nesting deeper than {limit}")
        below: list[Any] = []
        for item in level:
            for child in item.values() if type(item) is dict else item:
                if type(child) in _CONTAINERS:
                    below.append(child)
        level = below


#: For each msgpack lead byte (not a fix type): the size of its length field (0 for none), the
#: bytes after it that belong to it, and what the length counts: 0 bytes, 1 items, 2 pairs.
_LENGTHS: Final = {
    0xC4: (1, 0, 0), 0xC5: (2, 0, 0), 0xC6: (4, 0, 0),   # bin
    0xD9: (1, 0, 0), 0xDA: (2, 0, 0), 0xDB: (4, 0, 0),   # str
    0xDC: (2, 0, 1), 0xDD: (4, 0, 1),                    # array
    0xDE: (2, 0, 2), 0xDF: (4, 0, 2),                    # map
    0xCA: (0, 4, 0), 0xCB: (0, 8, 0),                    # float
    0xCC: (0, 1, 0), 0xCD: (0, 2, 0), 0xCE: (0, 4, 0), 0xCF: (0, 8, 0),  # uint
    0xD0: (0, 1, 0), 0xD1: (0, 2, 0), 0xD2: (0, 4, 0), 0xD3: (0, 8, 0),  # int
    0xC0: (0, 0, 0), 0xC2: (0, 0, 0), 0xC3: (0, 0, 0),   # nil, false, true
}  # fmt: skip


def _count_objects(payload: bytes, limit: int) -> None:
    """Refuse a payload of more than ``limit`` msgpack objects, building none of them.

    A walk over the lead bytes that skips strings and byte strings whole, so it costs one step
    per object (a handful for a char device's megabytes) and stops at the limit. It decides
    nothing else: malformed input is left for the unpacker to refuse.
    """
    size = len(payload)
    offset = count = 0
    pending = 1
    while pending and offset < size:
        pending -= 1
        count += 1
        if count > limit:
            raise CountOutOfRange(f"sealed state: more than {limit} msgpack objects")
        lead = payload[offset]
        offset += 1
        if lead <= 0x7F or lead >= 0xE0:
            continue  # fixint
        if lead <= 0x8F:
            pending += 2 * (lead & 0x0F)  # fixmap
        elif lead <= 0x9F:
            pending += lead & 0x0F  # fixarray
        elif lead <= 0xBF:
            offset += lead & 0x1F  # fixstr
        else:
            shape = _LENGTHS.get(lead)
            if shape is None:
                return  # ext or the unused lead byte: refused by the unpacker
            width, fixed, unit = shape
            length = int.from_bytes(payload[offset : offset + width], "big") if width else 0
            offset += width + fixed
            if unit == 0:
                offset += length
            else:
                pending += unit * length


def _unpack(payload: bytes, policy: Policy) -> object:
    """msgpack with every limit set before the input can make anything allocate."""
    # Every object takes at least one byte, so only a longer payload can hold too many.
    if len(payload) > policy.max_objects:
        _count_objects(payload, policy.max_objects)
    try:
        obj = msgpack.unpackb(
            payload,
            raw=False,
            use_list=False,
            strict_map_key=True,
            object_pairs_hook=_unique_keys,
            ext_hook=_no_ext,
            max_str_len=policy.max_str_len,
            max_bin_len=min(policy.max_blob_size, len(payload)),
            max_array_len=min(policy.max_array_len, len(payload)),
            max_map_len=min(policy.max_map_len, len(payload)),
            max_ext_len=0,
        )
    except GatewayError:
        raise
    except Exception as exc:  # msgpack's errors are ValueError subclasses and a few others
        raise MalformedInput(
            f"sealed state: not msgpack within limits ({type(exc).__name__}: {str(exc)[:80]})"
        ) from None
    _check_depth(obj, policy.max_depth)
    return obj


def decode_state(
    payload: bytes,
    channel_type: ChannelType,
    schema_version: int,
    *,
    policy: Policy = DEFAULT_POLICY,
) -> StateModel:
    """The layer after authentication: msgpack with every limit set, then the strict model of
    ``channel_type`` at ``schema_version``. Public so that it can be fuzzed and reused alone;
    :func:`verify` calls it only on a decrypted, authenticated payload."""
    obj = _unpack(payload, policy)
    model = model_for(channel_type, schema_version)
    if model is None:
        raise UnsupportedVersion(f"no schema v{schema_version} for channel {channel_type.name}")
    try:
        return model.model_validate(obj)
    except ValidationError as exc:
        raise schema_violation(channel_type.name.lower(), exc) from None


def _compare(expected: ExpectedContext, got: Context) -> None:
    checks: tuple[tuple[str, bool], ...] = (
        ("channel_type", got.channel_type == expected.channel_type),
        ("channel_id", got.channel_id == expected.channel_id),
        ("vm_id", got.vm_id == expected.vm_id),
        (
            "migration_id",
            expected.migration_id is ANY_MIGRATION or got.migration_id == expected.migration_id,
        ),
        ("source_host", got.source_host in expected.sources),
        ("target_host", got.target_host == expected.target_host),
        ("direction", got.direction == expected.direction),
        ("schema_version", got.schema_version == expected.schema_version),
    )
    for name, ok in checks:
        if not ok:
            raise ContextMismatch(
                name,
                f"context field {name!r} does not match "
                f"({expected.channel_type.name.lower()} channel {expected.channel_id})",
            )


@dataclass(frozen=True)
class Verified:
    """A blob that passed every check but single use: not yet safe to act on.

    Its state stays inside until :meth:`consume` had the replay guard record the blob; the
    context, authenticated and checked, may be read before (to decide what to claim).
    """

    _opened: Opened = field(repr=False)
    keep_until: int
    """Unix seconds the replay guard must keep the blob id: expiry plus the largest skew any
    opener may allow (:data:`MAX_CLOCK_SKEW`)."""
    checked_at: int
    """The clock the checks used, which the guard prunes with."""

    @property
    def context(self) -> Context:
        return self._opened.context

    @property
    def blob_id(self) -> bytes:
        return self._opened.blob_id

    @property
    def issued_at(self) -> int:
        return self._opened.issued_at

    def consume(
        self, replay_guard: ReplayGuard, *, claim: Callable[[], None] | None = None
    ) -> Opened:
        """Record the blob as used (durably) and return what was opened, or raise Replayed.

        ``claim`` goes to :meth:`ReplayGuard.consume`: a last check, atomic with the record;
        if it raises, the blob stays recorded (it is authentic: used once, accepted or refused)
        and this raises its error.
        """
        replay_guard.consume(
            self.blob_id,
            self.keep_until,
            now=self.checked_at,
            issued_at=self.issued_at,
            claim=claim,
        )
        return self._opened


def max_blob_size(channel_type: ChannelType, policy: Policy = DEFAULT_POLICY) -> int:
    """The largest blob an opener accepts for ``channel_type``: the channel's largest payload
    (:data:`MAX_PAYLOAD`) with the largest framing, never more than ``policy.max_blob_size``."""
    bound = MAX_PAYLOAD.get(channel_type)
    # A channel without migration data has no state at all; its schema lookup refuses it.
    return policy.max_blob_size if bound is None else min(policy.max_blob_size, bound + _FRAMING)


def _keep_until(expires_at: int) -> int:
    return min(expires_at + MAX_CLOCK_SKEW, (1 << 63) - 1)


def spend(error: GatewayError, replay_guard: ReplayGuard) -> bool:
    """Record the authentic blob that ``error`` refused, if any, so it cannot be offered again.

    :func:`verify` marks every refusal that comes after the signature and the ciphertext
    verified (:attr:`GatewayError.authentic_blob`): such a blob is used once, accepted or
    refused. Returns whether there was one; raises
    :class:`~gateway.errors.ReplayStoreError` if the guard could not record it.
    """
    spent = error.authentic_blob
    if spent is None:
        return False
    blob_id, keep_until, checked_at = spent
    with contextlib.suppress(Replayed):
        replay_guard.consume(blob_id, keep_until, now=checked_at)
    return True


def verify(
    blob: bytes,
    expected: ExpectedContext,
    keyring: Keyring,
    *,
    policy: Policy = DEFAULT_POLICY,
    now: float | None = None,
    replay_guard: ReplayGuard | None = None,
) -> Verified:
    """Every check of :func:`open_envelope` except recording the blob, which the result's
    :meth:`~Verified.consume` does.

    Raises a :class:`~gateway.errors.GatewayError` subclass for every refusal. A refusal of a
    blob whose signature and ciphertext verified carries
    :attr:`~gateway.errors.GatewayError.authentic_blob`: pass it to :func:`spend`.

    With ``replay_guard``, a blob it already holds is refused as Replayed as soon as its
    signature verifies: a used blob, accepted or refused, is never decrypted or decoded again.
    The lookup reads the database (it may wait for a commit in progress).
    """
    limit = max_blob_size(expected.channel_type, policy)
    if len(blob) > limit:
        raise TooLarge(
            f"envelope: {len(blob)} bytes, over the {limit}-byte limit for "
            f"{expected.channel_type.name.lower()} state"
        )
    blob = bytes(blob)
    header = read_header(blob)
    key = keyring.for_opening(header.key_id)
    enc_key, mac_key = _derive(key.secret, header.salt)

    context_end = HEADER_SIZE + header.context_length
    tag_end = len(blob) - MAC_SIZE
    authenticated = blob[:context_end]
    mac = _hmac(mac_key, authenticated + blob[tag_end - TAG_SIZE : tag_end])
    if not hmac.compare_digest(mac, blob[tag_end:]):
        raise AuthenticationFailed(
            "envelope was tampered with, or sealed with a different secret under the same key "
            "id: signature does not verify"
        )
    clock = _check_time(time.time() if now is None else now, "now")
    if replay_guard is not None and replay_guard.seen(header.salt, clock):
        raise Replayed(f"blob {header.salt[:8].hex()}… was already used")
    # The header and context are a key holder's from here on. Until the context is decoded its
    # expiry is unknown: keep a refused blob as long as any blob issued now could live.
    keep_until = _keep_until(clock + MAX_CLOCK_SKEW + MAX_TTL)
    try:
        # The authenticated channel's bound, before decryption (the expected one was checked
        # first; a blob naming another channel is refused later as a mismatch anyway).
        channel = _CHANNEL_TYPES.get(blob[HEADER_SIZE])
        bound = None if channel is None else MAX_PAYLOAD.get(channel)
        if channel is not None and bound is not None and header.body_length > bound:
            raise TooLarge(
                f"envelope: a {header.body_length}-byte payload is over the "
                f"{bound}-byte limit for {channel.name.lower()} state"
            )
    except GatewayError as error:
        error.authentic_blob = (header.salt, keep_until, clock)
        raise
    try:
        payload = AESGCM(enc_key).decrypt(
            _NONCE, memoryview(blob)[context_end:tag_end], authenticated
        )
    except InvalidTag:
        # Not authentic: the ciphertext is not the key holder's, so nothing is spent.
        raise AuthenticationFailed(
            "envelope was tampered with: ciphertext does not verify"
        ) from None
    try:
        return _check_authentic(blob, header, payload, expected, policy, clock, context_end)
    except GatewayError as error:
        if error.authentic_blob is None:  # the context itself was refused
            error.authentic_blob = (header.salt, keep_until, clock)
        raise


def _check_authentic(
    blob: bytes,
    header: Header,
    payload: bytes,
    expected: ExpectedContext,
    policy: Policy,
    clock: int,
    context_end: int,
) -> Verified:
    """The checks after authentication; a refusal here spends the blob (see :func:`spend`)."""
    context, issued_at, expires_at = _decode_context(blob[HEADER_SIZE:context_end], expected)
    keep_until = _keep_until(expires_at)
    try:
        state = decode_state(payload, context.channel_type, context.schema_version, policy=policy)
        del payload  # the state holds its own copy of any large bytes; free this one early

        _compare(expected, context)
        if expires_at - issued_at > policy.max_ttl:
            raise ContextMismatch(
                "expires_at",
                f"lifetime {expires_at - issued_at} s exceeds the accepted {policy.max_ttl} s",
            )
        if clock > expires_at + policy.clock_skew:
            raise Expired(f"envelope expired {clock - expires_at} s ago")
        if issued_at > clock + policy.clock_skew:
            raise NotYetValid(f"envelope issued {issued_at - clock} s in the future")
        if header.format_version < policy.min_format_version:
            raise DowngradeRefused(
                f"format version {header.format_version} is below the minimum "
                f"{policy.min_format_version}"
            )
        if context.schema_version < policy.min_schema_version:
            raise DowngradeRefused(
                f"schema version {context.schema_version} is below the minimum "
                f"{policy.min_schema_version}"
            )
    except GatewayError as error:
        error.authentic_blob = (header.salt, keep_until, clock)
        raise
    opened = Opened(state, context, issued_at, expires_at, header.key_id, header.salt)
    return Verified(opened, keep_until, clock)


def open_envelope(
    blob: bytes,
    expected: ExpectedContext,
    keyring: Keyring,
    replay_guard: ReplayGuard,
    *,
    policy: Policy = DEFAULT_POLICY,
    now: float | None = None,
) -> Opened:
    """Verify, decrypt, decode and check ``blob``; record it as consumed; return its state.

    Raises a :class:`~gateway.errors.GatewayError` subclass for every refusal. A blob whose
    signature and ciphertext verified is recorded whatever the outcome (an authentic blob is
    used once, accepted or refused); any other blob records nothing. The record is durable
    before this returns.
    """
    try:
        verified = verify(
            blob, expected, keyring, policy=policy, now=now, replay_guard=replay_guard
        )
        return verified.consume(replay_guard)
    except GatewayError as error:
        if error.authentic_blob is not None and not isinstance(error, Replayed):
            try:
                spend(error, replay_guard)
            except GatewayError as store:
                # The refusal stands; say that it could not be recorded as well.
                error.add_note(f"not recorded as used: {type(store).__name__}: {store}")
        raise
