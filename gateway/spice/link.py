"""Link-stage structures: ``SpiceLinkHeader``, ``SpiceLinkMess``, ``SpiceLinkReply``.

Decoders take exactly the bytes of one unit and check every count and offset against the
limits spice-server applies (and, for the reply, those spice-gtk applies), so the gateway never
accepts a link that either endpoint would read differently. Encoders write the canonical layout
(capability words right after the fixed part), as spice-gtk and spice-server do.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from gateway.errors import ProtocolError
from gateway.spice.constants import (
    LINK_HEADER_SIZE,
    LINK_MAGIC,
    LINK_MESS_SIZE,
    LINK_REPLY_SIZE,
    MAX_CAPS_WORDS,
    MAX_LINK_SIZE,
    PUB_KEY_SIZE,
    VERSION_MAJOR,
    VERSION_MINOR,
    Direction,
    LinkError,
)

__all__ = [
    "LinkHeader",
    "LinkMess",
    "LinkReply",
    "caps_words",
    "decode_u32",
    "encode_auth_mechanism",
    "encode_link_result",
    "has_cap",
    "pack",
]

_HEADER = struct.Struct("<4sIII")
_MESS = struct.Struct("<IBBIII")
_REPLY = struct.Struct(f"<I{PUB_KEY_SIZE}sIII")
_U32 = struct.Struct("<I")


def pack(st: struct.Struct, *values: object, what: str) -> bytes:
    """``st.pack`` that reports out-of-range values as a ``ProtocolError`` naming ``what``."""
    try:
        return st.pack(*values)
    except struct.error as exc:
        raise ProtocolError(f"cannot encode {what}: {exc}") from None


def caps_words(caps: Iterable[int]) -> tuple[int, ...]:
    """Pack capability numbers into u32 words: cap N is bit N % 32 of word N // 32."""
    words: list[int] = []
    for cap in caps:
        if not 0 <= cap < 32 * MAX_CAPS_WORDS:
            raise ProtocolError(f"cannot encode capability {cap}: outside 0..{32 * MAX_CAPS_WORDS}")
        index, bit = divmod(cap, 32)
        words.extend([0] * (index + 1 - len(words)))
        words[index] |= 1 << bit
    return tuple(words)


def has_cap(words: Sequence[int], cap: int) -> bool:
    """Whether capability ``cap`` is set in ``words`` (missing words count as zero)."""
    index, bit = divmod(cap, 32)
    return index < len(words) and bool(words[index] >> bit & 1)


def decode_u32(data: bytes, what: str) -> int:
    """The one u32 of an auth-mechanism word or a link result."""
    if len(data) != _U32.size:
        raise ProtocolError(f"{what}: expected {_U32.size} bytes, got {len(data)}")
    (value,) = _U32.unpack(data)
    return int(value)


def encode_auth_mechanism(mechanism: int) -> bytes:
    return pack(_U32, mechanism, what="auth mechanism")


def encode_link_result(result: int) -> bytes:
    return pack(_U32, result, what="link result")


def _decode_caps(
    data: bytes,
    *,
    fixed: int,
    counts_at: int,
    num_common: int,
    num_channel: int,
    caps_offset: int,
    what: str,
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Check the two caps counts and the caps offset, then read the words.

    Like spice-server (and spice-gtk for the reply), the offset only matters when there are
    capability words; error replies carry no caps and a zero offset.
    """
    for name, count, at in (
        ("num_common_caps", num_common, counts_at),
        ("num_channel_caps", num_channel, counts_at + 4),
    ):
        if count > MAX_CAPS_WORDS:
            raise ProtocolError(
                f"{what}: field {name} at offset {at} is {count}, more than {MAX_CAPS_WORDS}"
            )
    total = num_common + num_channel
    if total == 0:
        return (), ()
    if caps_offset < fixed or caps_offset + 4 * total > len(data):
        raise ProtocolError(
            f"{what}: field caps_offset at offset {counts_at + 8} is {caps_offset}; "
            f"{total} caps words must lie between offset {fixed} and the end of the "
            f"{len(data)}-byte message"
        )
    words = struct.unpack_from(f"<{total}I", data, caps_offset)
    return tuple(words[:num_common]), tuple(words[num_common:])


@dataclass(frozen=True, slots=True)
class LinkHeader:
    """``SpiceLinkHeader``: magic, version, and the size of the link message that follows."""

    size: int
    major: int = VERSION_MAJOR
    minor: int = VERSION_MINOR

    def encode(self) -> bytes:
        return pack(_HEADER, LINK_MAGIC, self.major, self.minor, self.size, what="link header")

    @classmethod
    def decode(cls, data: bytes, direction: Direction) -> LinkHeader:
        """Decode and check a header sent in ``direction``.

        The size bounds are spice-server's for a client's link message ([18, 4096]) and, for a
        server's reply, the fixed reply size up to the same 4096 (spice-gtk has no upper bound,
        but no real reply comes near it).
        """
        what = f"{direction.sender} link header"
        if len(data) != LINK_HEADER_SIZE:
            raise ProtocolError(f"{what}: expected {LINK_HEADER_SIZE} bytes, got {len(data)}")
        magic, major, minor, size = _HEADER.unpack(data)
        if magic != LINK_MAGIC:
            raise ProtocolError(f"{what}: field magic at offset 0 is {magic!r}, not {LINK_MAGIC!r}")
        if major != VERSION_MAJOR:
            raise ProtocolError(
                f"{what}: field major_version at offset 4 is {major}, not {VERSION_MAJOR}"
            )
        low = LINK_MESS_SIZE if direction is Direction.CLIENT_TO_SERVER else LINK_REPLY_SIZE
        if not low <= size <= MAX_LINK_SIZE:
            raise ProtocolError(
                f"{what}: field size at offset 12 is {size}, outside [{low}, {MAX_LINK_SIZE}]"
            )
        return cls(size=size, major=major, minor=minor)


@dataclass(frozen=True, slots=True)
class LinkMess:
    """``SpiceLinkMess``: which channel the client links, for which session, with which caps."""

    channel_type: int
    channel_id: int = 0
    connection_id: int = 0
    common_caps: tuple[int, ...] = ()
    channel_caps: tuple[int, ...] = ()

    def encode(self) -> bytes:
        """The message body; prefix it with ``LinkHeader(len(body)).encode()``."""
        caps = (*self.common_caps, *self.channel_caps)
        fixed = pack(
            _MESS,
            self.connection_id,
            self.channel_type,
            self.channel_id,
            len(self.common_caps),
            len(self.channel_caps),
            LINK_MESS_SIZE,
            what="link message",
        )
        return fixed + pack(struct.Struct(f"<{len(caps)}I"), *caps, what="link message caps")

    def encode_with_header(self) -> bytes:
        body = self.encode()
        return LinkHeader(len(body)).encode() + body

    @classmethod
    def decode(cls, data: bytes) -> LinkMess:
        """Decode exactly the ``size`` bytes announced by the client's link header."""
        what = "client link message"
        if not LINK_MESS_SIZE <= len(data) <= MAX_LINK_SIZE:
            raise ProtocolError(
                f"{what}: {len(data)} bytes, outside [{LINK_MESS_SIZE}, {MAX_LINK_SIZE}]"
            )
        connection_id, channel_type, channel_id, n_common, n_channel, caps_offset = (
            _MESS.unpack_from(data)
        )
        common, channel = _decode_caps(
            data,
            fixed=LINK_MESS_SIZE,
            counts_at=6,
            num_common=n_common,
            num_channel=n_channel,
            caps_offset=caps_offset,
            what=what,
        )
        return cls(
            channel_type=channel_type,
            channel_id=channel_id,
            connection_id=connection_id,
            common_caps=common,
            channel_caps=channel,
        )


@dataclass(frozen=True, slots=True)
class LinkReply:
    """``SpiceLinkReply``: the server's verdict on the link, its ticket key, and its caps."""

    error: int = LinkError.OK
    pub_key: bytes = field(default=bytes(PUB_KEY_SIZE), repr=False)
    common_caps: tuple[int, ...] = ()
    channel_caps: tuple[int, ...] = ()

    def encode(self) -> bytes:
        """The reply body; spice-server writes a zero caps offset only in error replies."""
        if len(self.pub_key) != PUB_KEY_SIZE:
            raise ProtocolError(
                f"cannot encode link reply: pub_key has {len(self.pub_key)} bytes, "
                f"not {PUB_KEY_SIZE}"
            )
        caps = (*self.common_caps, *self.channel_caps)
        caps_offset = LINK_REPLY_SIZE if self.error == LinkError.OK or caps else 0
        fixed = pack(
            _REPLY,
            self.error,
            self.pub_key,
            len(self.common_caps),
            len(self.channel_caps),
            caps_offset,
            what="link reply",
        )
        return fixed + pack(struct.Struct(f"<{len(caps)}I"), *caps, what="link reply caps")

    def encode_with_header(self) -> bytes:
        body = self.encode()
        return LinkHeader(len(body)).encode() + body

    @classmethod
    def decode(cls, data: bytes) -> LinkReply:
        """Decode exactly the ``size`` bytes announced by the server's link header."""
        what = "server link reply"
        if not LINK_REPLY_SIZE <= len(data) <= MAX_LINK_SIZE:
            raise ProtocolError(
                f"{what}: {len(data)} bytes, outside [{LINK_REPLY_SIZE}, {MAX_LINK_SIZE}]"
            )
        error, pub_key, n_common, n_channel, caps_offset = _REPLY.unpack_from(data)
        common, channel = _decode_caps(
            data,
            fixed=LINK_REPLY_SIZE,
            counts_at=4 + PUB_KEY_SIZE,
            num_common=n_common,
            num_channel=n_channel,
            caps_offset=caps_offset,
            what=what,
        )
        return cls(error=error, pub_key=pub_key, common_caps=common, channel_caps=channel)
