"""The malformed-input catalogue: what each decoder refuses, and with exactly which error.

Every case damages a valid known-answer payload (``test_native_vectors``) at a body offset from
the format facts and names the error class the codec promises: ``Truncated`` before the fixed
part ends, ``OffsetOutOfRange`` / ``OffsetIntoFixedPart`` / ``OverlappingBlocks`` /
``UnaccountedBytes`` / ``NonCanonical`` for tail offsets, ``CountOutOfRange`` for sizes and
counts running past the data or over the surface limit, ``BadMagic``, ``UnsupportedVersion``
(payload and char-device versions), ``SchemaViolation`` for well-formed bytes breaking a schema
bound, ``TooLarge`` before anything is read. Messages name the channel and the field or offset,
on one short line, and never echo the payload.

The hypothesis tests at the end feed arbitrary, magic-prefixed, structurally plausible and
bit-flipped bytes to every decoder: only ``GatewayError`` may come out, and whatever decodes must
re-encode to exactly the bytes given.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway import native
from gateway.errors import (
    BadMagic,
    CountOutOfRange,
    GatewayError,
    MalformedInput,
    NonCanonical,
    OffsetIntoFixedPart,
    OffsetOutOfRange,
    OverlappingBlocks,
    SchemaViolation,
    TooLarge,
    Truncated,
    UnaccountedBytes,
    UnsupportedVersion,
)
from gateway.native import DEFAULT_MAX_PAYLOAD
from schemas import ChannelType, StateModel
from schemas.chardev import MAX_PENDING_WRITE
from schemas.display import GLZ_MAX_WINDOW
from schemas.main import CONNECTED_READ_SLACK, MAIN_MAX_BODY
from schemas.smartcard import MAX_VSC_LENGTH
from tests.strategies import MIGRATION_CHANNELS, budget, native_payloads
from tests.test_native_vectors import VECTORS, char_device, pack, vdi_fill, vector

MAX_MESSAGE = 240
_IDS = [c.name.lower() for c in MIGRATION_CHANNELS]
MAGICS = {b"MNMD", b"DCMD", b"ICMD", b"SCMD", b"SVMD"}


def patched(data: bytes, offset: int, fmt: str, value: int) -> bytes:
    """``data`` with one field at body ``offset`` overwritten (little-endian unless ``fmt``
    says otherwise)."""
    field = struct.pack(fmt if fmt[0] in "<>" else "<" + fmt, value)
    assert offset + len(field) <= len(data)
    return data[:offset] + field + data[offset + len(field) :]


def refuse(channel: ChannelType, data: bytes, error: type[GatewayError]) -> str:
    """Decode must raise exactly ``error``; returns the checked message."""
    with pytest.raises(GatewayError) as caught:
        native.decode(channel, data)
    assert type(caught.value) is error, f"{type(caught.value).__name__}: {caught.value}"
    message = str(caught.value)
    assert message.startswith(f"{channel.name.lower()}: "), message
    assert "\n" not in message
    assert len(message) <= MAX_MESSAGE, message
    return message


# --- truncation ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Shape:
    """Where a populated payload's parts are: the fixed part, then byte blocks (start, end)."""

    vector: str
    fixed: int
    blocks: tuple[tuple[int, int], ...]


BYTE_BLOCK_SHAPES = [
    Shape("main-full", 65, ((65, 133), (133, 139))),
    Shape("smartcard-full", 42, ((42, 59), (59, 75))),
    Shape("smartcard-partial-header", 42, ((42, 47),)),
    Shape("usbredir-full", 33, ((33, 57),)),
    Shape("port-full", 33, ((33, 54),)),
    Shape("webdav-full", 33, ((33, 59),)),
    Shape("inputs-7", 10, ()),
]


def expected_truncation(shape: Shape, length: int) -> type[GatewayError]:
    """Short of the fixed part: Truncated. Cut exactly where a block starts: its offset points
    at the end (OffsetOutOfRange). Cut inside a block: its size runs past the end."""
    if length < shape.fixed:
        return Truncated
    for start, end in shape.blocks:
        if length == start:
            return OffsetOutOfRange
        if start < length < end:
            return CountOutOfRange
    raise AssertionError(f"{length} is not a truncation of {shape.vector}")  # pragma: no cover


@pytest.mark.parametrize("shape", BYTE_BLOCK_SHAPES, ids=[s.vector for s in BYTE_BLOCK_SHAPES])
def test_every_truncation_of_a_byte_block_payload(shape: Shape) -> None:
    item = vector(shape.vector)
    assert len(item.data) == (shape.blocks[-1][1] if shape.blocks else shape.fixed)
    for length in range(len(item.data)):
        refuse(item.channel, item.data[:length], expected_truncation(shape, length))


def test_every_truncation_of_a_lossy_display_payload() -> None:
    data = vector("display-lossy").data  # 3 lossy entries at 84..143
    for length in range(len(data)):
        room = length - 84
        if length < 80:
            expected: type[GatewayError] = Truncated
        elif length == 80:
            expected = OffsetOutOfRange  # surfaces_at_client_ptr 80 points at the end
        elif length < 84 or room < 3 * 4:
            expected = CountOutOfRange  # num_surfaces, or 3 entries, run past the end
        elif room == 3 * 4:
            # Exactly 3 lossless entries: surface 0's id and rect left (0, 0): a repeated id.
            expected = SchemaViolation
        else:
            expected = UnaccountedBytes  # neither 3 * 4 nor 3 * 20 bytes
        refuse(ChannelType.DISPLAY, data[:length], expected)


def test_every_truncation_of_a_lossless_display_payload() -> None:
    data = vector("display-lossless").data  # 5 lossless entries at 84..103
    for length in range(len(data)):
        expected = (
            Truncated if length < 80 else OffsetOutOfRange if length == 80 else CountOutOfRange
        )
        refuse(ChannelType.DISPLAY, data[:length], expected)


# --- the catalogue -------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    name: str
    vector: str
    patches: tuple[tuple[int, str, int], ...]
    error: type[GatewayError]
    mentions: str
    append: bytes = b""


def case(
    name: str,
    vector_name: str,
    error: type[GatewayError],
    mentions: str,
    *patches: tuple[int, str, int],
    append: bytes = b"",
) -> Case:
    return Case(name, vector_name, patches, error, mentions, append)


CATALOGUE: list[Case] = [
    # main-full: write block 65..132 (ptr at 29, size at 21), partial header 133..138
    # (ptr at 51, length at 47)
    case("write ptr past end", "main-full", OffsetOutOfRange, "write_data_ptr", (29, "I", 139)),
    case("write ptr max", "main-full", OffsetOutOfRange, "write_data_ptr", (29, "I", 2**32 - 1)),
    case("write ptr 0", "main-full", OffsetIntoFixedPart, "write_data_ptr", (29, "I", 0)),
    case("write ptr header", "main-full", OffsetIntoFixedPart, "write_data_ptr", (29, "I", 4)),
    case("write ptr fixed-1", "main-full", OffsetIntoFixedPart, "write_data_ptr", (29, "I", 64)),
    case("write ptr gap", "main-full", UnaccountedBytes, "write_data_ptr", (29, "I", 66)),
    case("partial ptr in write", "main-full", OverlappingBlocks, "msg_header_ptr", (51, "I", 132)),
    case("partial ptr = write", "main-full", OverlappingBlocks, "msg_header_ptr", (51, "I", 65)),
    case("partial ptr gap", "main-full", UnaccountedBytes, "msg_header_ptr", (51, "I", 134)),
    case("partial ptr past end", "main-full", OffsetOutOfRange, "msg_header_ptr", (51, "I", 139)),
    case("partial ptr +2 quirk", "main-full", UnaccountedBytes, "msg_header_ptr", (51, "I", 135)),
    case("partial ptr fixed", "main-full", OffsetIntoFixedPart, "msg_header_ptr", (51, "I", 60)),
    case("main trailing", "main-full", UnaccountedBytes, "trailing", append=b"\0"),
    case("write_size max", "main-full", CountOutOfRange, "write_size", (21, "I", 2**32 - 1)),
    case("write_size +1", "main-full", OverlappingBlocks, "msg_header_ptr", (21, "I", 69)),
    case("write_size -1", "main-full", UnaccountedBytes, "msg_header_ptr", (21, "I", 67)),
    case(
        "partial_len max",
        "main-full",
        CountOutOfRange,
        "msg_header_partial_len",
        (47, "I", 2**32 - 1),
    ),
    case("partial_len +1", "main-full", CountOutOfRange, "msg_header_partial_len", (47, "I", 7)),
    case("partial_len -1", "main-full", UnaccountedBytes, "trailing", (47, "I", 5)),
    case("idle write ptr", "main-idle", NonCanonical, "write_data_ptr", (29, "I", 65)),
    case("idle partial ptr", "main-idle", NonCanonical, "msg_header_ptr", (51, "I", 65)),
    case("idle trailing", "main-idle", UnaccountedBytes, "trailing", append=b"\0" * 4),
    # main: schema bounds in well-formed bytes
    case("connected=2", "main-full", SchemaViolation, "connected at offset 12", (12, "B", 2)),
    case(
        "agent started=2",
        "main-full",
        SchemaViolation,
        "client_agent_started at offset 33",
        (33, "B", 2),
    ),
    case("header done=255", "main-full", SchemaViolation, "msg_header_done", (46, "B", 255)),
    case("chunk header 9", "main-full", SchemaViolation, "chunk_header_size", (34, "I", 9)),
    case("tokens over window", "main-full", SchemaViolation, "agent window", (13, "I", 9)),
    case("filter 4", "main-full", SchemaViolation, "msg_filter_result", (59, "B", 4)),
    case("c2a filter 255", "main-full", SchemaViolation, "msg_filter_result", (64, "B", 255)),
    case("msg_remaining 2^31", "main-full", SchemaViolation, "msg_remaining", (55, "I", 2**31)),
    case("partial after done", "main-full", SchemaViolation, "partial", (46, "B", 1)),
    case("partial, chunk 7", "main-full", SchemaViolation, "partial", (34, "I", 7)),
    case("disconnected, busy", "main-full", SchemaViolation, "disconnected", (12, "B", 0)),
    case("idle, agent started", "main-idle", SchemaViolation, "agent", (33, "B", 1)),
    case("idle, chunk port", "main-idle", SchemaViolation, "agent", (38, "I", 1)),
    case("char-device v0", "main-idle", UnsupportedVersion, "offset 8", (8, "I", 0)),
    case("char-device v2", "main-idle", UnsupportedVersion, "offset 8", (8, "I", 2)),
    # display-lossy: surfaces list at 80 (ptr at 76), 3 lossy entries at 84, 104, 124
    case(
        "surfaces ptr 0",
        "display-lossy",
        OffsetIntoFixedPart,
        "surfaces_at_client_ptr",
        (76, "I", 0),
    ),
    case(
        "surfaces ptr 79",
        "display-lossy",
        OffsetIntoFixedPart,
        "surfaces_at_client_ptr",
        (76, "I", 79),
    ),
    case(
        "surfaces ptr end",
        "display-lossy",
        OffsetOutOfRange,
        "surfaces_at_client_ptr",
        (76, "I", 144),
    ),
    case(
        "surfaces ptr max",
        "display-lossy",
        OffsetOutOfRange,
        "surfaces_at_client_ptr",
        (76, "I", 2**32 - 1),
    ),
    case(
        "surfaces ptr gap",
        "display-lossy",
        UnaccountedBytes,
        "surfaces_at_client_ptr",
        (76, "I", 84),
    ),
    case(
        "num_surfaces max", "display-lossy", CountOutOfRange, "num_surfaces", (80, "I", 2**32 - 1)
    ),
    case("num_surfaces 1025", "display-lossy", CountOutOfRange, "num_surfaces", (80, "I", 1025)),
    case("num_surfaces 1024", "display-lossy", CountOutOfRange, "num_surfaces", (80, "I", 1024)),
    case("num_surfaces 4", "display-lossy", UnaccountedBytes, "num_surfaces", (80, "I", 4)),
    case("num_surfaces 2", "display-lossy", UnaccountedBytes, "num_surfaces", (80, "I", 2)),
    case("display trailing", "display-lossy", UnaccountedBytes, "num_surfaces", append=b"\0"),
    case(
        "empty list trailing",
        "display-no-surfaces",
        UnaccountedBytes,
        "num_surfaces",
        append=b"\0" * 4,
    ),
    # display: schema bounds in well-formed bytes
    case(
        "low_bandwidth=2",
        "display-lossy",
        SchemaViolation,
        "low_bandwidth at offset 16",
        (16, "B", 2),
    ),
    case(
        "freezer=2",
        "display-lossy",
        SchemaViolation,
        "pixmap_cache_freezer at offset 26",
        (26, "B", 2),
    ),
    case("cache size -1", "display-lossy", SchemaViolation, "pixmap_cache_size", (18, "q", -1)),
    case(
        "cache size 2^32+1",
        "display-lossy",
        SchemaViolation,
        "pixmap_cache_size",
        (18, "q", 2**32 + 1),
    ),
    case(
        "glz window 2^25+1",
        "display-lossy",
        SchemaViolation,
        "window_size",
        (60, "I", GLZ_MAX_WINDOW + 1),
    ),
    case("glz window 0", "display-lossy", SchemaViolation, "window_size", (60, "I", 0)),
    case("max_encoders 3", "display-lossy", SchemaViolation, "max_encoders", (64, "I", 3)),
    case("max_encoders 5", "display-lossy", SchemaViolation, "max_encoders", (64, "I", 5)),
    case("max_encoders 0", "display-lossy", SchemaViolation, "max_encoders", (64, "I", 0)),
    case(
        "max_encoders max", "display-lossy", SchemaViolation, "max_encoders", (64, "I", 2**32 - 1)
    ),
    case("surface id 1024", "display-lossless", SchemaViolation, "ids", (100, "I", 1024)),
    case(
        "surface id top byte", "display-lossless", SchemaViolation, "ids", (100, "I", 0x0100_03FF)
    ),
    case("lossy id 1024", "display-lossy", SchemaViolation, "surfaces", (124, "I", 1024)),
    case("duplicate id", "display-lossless", SchemaViolation, "ascending", (88, "I", 0)),
    case("descending ids", "display-lossless", SchemaViolation, "ascending", (84, "I", 5)),
    case("duplicate lossy id", "display-lossy", SchemaViolation, "ascending", (104, "I", 0)),
    case("inverted rect x", "display-lossy", SchemaViolation, "order", (108, "i", 145)),
    case("inverted rect y", "display-lossy", SchemaViolation, "order", (112, "i", 97)),
    case("negative left", "display-lossy", SchemaViolation, "left", (88, "i", -1)),
    case("right too far", "display-lossy", SchemaViolation, "right", (96, "i", 65_537)),
    # inputs
    case("motion_count 65", "inputs-7", SchemaViolation, "motion_count", (8, "H", 65)),
    case("motion_count max", "inputs-7", SchemaViolation, "motion_count", (8, "H", 0xFFFF)),
    case("inputs trailing", "inputs-7", UnaccountedBytes, "trailing", append=b"\0"),
    # smartcard-full: write 42..58 (ptr at 29, size at 21), read 59..74 (ptr at 38, size at 34)
    case("sc write ptr 0", "smartcard-full", OffsetIntoFixedPart, "write_data_ptr", (29, "I", 0)),
    case("sc write ptr 41", "smartcard-full", OffsetIntoFixedPart, "write_data_ptr", (29, "I", 41)),
    case("sc write ptr end", "smartcard-full", OffsetOutOfRange, "write_data_ptr", (29, "I", 75)),
    case("sc write ptr gap", "smartcard-full", UnaccountedBytes, "write_data_ptr", (29, "I", 43)),
    case("read ptr 0", "smartcard-full", OffsetIntoFixedPart, "read_data_ptr", (38, "I", 0)),
    case("read ptr in write", "smartcard-full", OverlappingBlocks, "read_data_ptr", (38, "I", 58)),
    case("read ptr = write", "smartcard-full", OverlappingBlocks, "read_data_ptr", (38, "I", 42)),
    case("read ptr gap", "smartcard-full", UnaccountedBytes, "read_data_ptr", (38, "I", 60)),
    case("read ptr end", "smartcard-full", OffsetOutOfRange, "read_data_ptr", (38, "I", 75)),
    case("read ptr max", "smartcard-full", OffsetOutOfRange, "read_data_ptr", (38, "I", 2**32 - 1)),
    case("read_size max", "smartcard-full", CountOutOfRange, "read_size", (34, "I", 2**32 - 1)),
    case("read_size +1", "smartcard-full", CountOutOfRange, "read_size", (34, "I", 17)),
    case(
        "sc write_size max", "smartcard-full", CountOutOfRange, "write_size", (21, "I", 2**32 - 1)
    ),
    case("sc trailing", "smartcard-full", UnaccountedBytes, "trailing", append=b"\0"),
    case("sc idle write ptr", "smartcard-idle", NonCanonical, "write_data_ptr", (29, "I", 42)),
    case("sc idle read ptr", "smartcard-idle", NonCanonical, "read_data_ptr", (38, "I", 42)),
    case(
        "sc connected=2", "smartcard-full", SchemaViolation, "connected at offset 12", (12, "B", 2)
    ),
    case(
        "reader_added=2",
        "smartcard-full",
        SchemaViolation,
        "reader_added at offset 33",
        (33, "B", 2),
    ),
    # The partial VSC header at 59 says length (bytes 67..70, big-endian) 10; 16 bytes read.
    case("vsc longer than header", "smartcard-full", SchemaViolation, "read_size", (67, ">I", 3)),
    case(
        "vsc length over max",
        "smartcard-full",
        SchemaViolation,
        "announces",
        (67, ">I", MAX_VSC_LENGTH + 1),
    ),
    case("sc disconnected, busy", "smartcard-full", SchemaViolation, "disconnected", (12, "B", 0)),
    case("sc idle, reader", "smartcard-idle", SchemaViolation, "reader", (33, "B", 1)),
    case(
        "write tokens > bytes",
        "smartcard-full",
        SchemaViolation,
        "write_num_client_tokens",
        (25, "I", 18),
    ),
    case("sc char-device v0", "smartcard-idle", UnsupportedVersion, "offset 8", (8, "I", 0)),
    case("sc char-device v2", "smartcard-idle", UnsupportedVersion, "offset 8", (8, "I", 2)),
    # usbredir/port/webdav: write 33.. (ptr at 29, size at 21)
    case("vmc write ptr 0", "usbredir-full", OffsetIntoFixedPart, "write_data_ptr", (29, "I", 0)),
    case("vmc write ptr 32", "usbredir-full", OffsetIntoFixedPart, "write_data_ptr", (29, "I", 32)),
    case("vmc write ptr end", "usbredir-full", OffsetOutOfRange, "write_data_ptr", (29, "I", 57)),
    case("vmc write ptr gap", "usbredir-full", UnaccountedBytes, "write_data_ptr", (29, "I", 34)),
    case("vmc write_size max", "port-full", CountOutOfRange, "write_size", (21, "I", 2**32 - 1)),
    case("vmc write_size +1", "webdav-full", CountOutOfRange, "write_size", (21, "I", 27)),
    case("vmc trailing", "webdav-full", UnaccountedBytes, "trailing", append=b"\0"),
    case("vmc idle write ptr", "usbredir-idle", NonCanonical, "write_data_ptr", (29, "I", 33)),
    case("vmc connected=2", "port-idle", SchemaViolation, "connected at offset 12", (12, "B", 2)),
    case(
        "vmc disconnected",
        "usbredir-idle",
        SchemaViolation,
        "connected",
        (12, "B", 0),
        (13, "I", 0),
        (17, "I", 0),
    ),
    case("vmc char-device v0", "webdav-idle", UnsupportedVersion, "offset 8", (8, "I", 0)),
    case("vmc char-device v2", "usbredir-idle", UnsupportedVersion, "offset 8", (8, "I", 2)),
]


def _apply(item: Case) -> bytes:
    data = vector(item.vector).data
    for offset, fmt, value in item.patches:
        data = patched(data, offset, fmt, value)
    return data + item.append


@pytest.mark.parametrize("item", CATALOGUE, ids=[c.name for c in CATALOGUE])
def test_catalogue(item: Case) -> None:
    channel = vector(item.vector).channel
    data = _apply(item)
    message = refuse(channel, data, item.error)
    assert item.mentions in message, message


# --- header: magic and version, for every channel ------------------------------------------

IDLE = {v.channel: v for v in VECTORS if v.name.endswith("-idle") or v.name == "inputs-0"}


@pytest.mark.parametrize("channel", MIGRATION_CHANNELS, ids=_IDS)
def test_wrong_magic(channel: ChannelType) -> None:
    data = IDLE[channel].data
    own = data[:4]
    for magic in [*sorted(MAGICS - {own}), b"XXXX", own.lower(), bytes(4), own[::-1]]:
        message = refuse(channel, magic + data[4:], BadMagic)
        assert "magic" in message
        assert "offset 0" in message


@pytest.mark.parametrize("channel", MIGRATION_CHANNELS, ids=_IDS)
@pytest.mark.parametrize("version", [0, 2, 0x0100_0000, 2**32 - 1])
def test_unsupported_version(channel: ChannelType, version: int) -> None:
    message = refuse(channel, patched(IDLE[channel].data, 4, "I", version), UnsupportedVersion)
    assert "version" in message
    assert "offset 4" in message


@pytest.mark.parametrize("channel", MIGRATION_CHANNELS, ids=_IDS)
def test_header_checked_before_length(channel: ChannelType) -> None:
    """Wrong magic or version on a short body is named as such, not as a truncation."""
    refuse(channel, b"XXXX\x01\0\0\0", BadMagic)
    refuse(channel, IDLE[channel].data[:4] + pack("I", 2), UnsupportedVersion)
    refuse(channel, IDLE[channel].data[:7], Truncated)
    refuse(channel, b"", Truncated)


WITH_BOOLS = [c for c in MIGRATION_CHANNELS if c is not ChannelType.INPUTS]


@pytest.mark.parametrize("channel", WITH_BOOLS, ids=[c.name.lower() for c in WITH_BOOLS])
@pytest.mark.parametrize("value", [2, 255])
def test_every_bool_field_accepts_only_0_and_1(channel: ChannelType, value: int) -> None:
    layout = native.layout_for(channel)
    bools = [f.path for f in layout.fields if f.kind == "bool"]
    assert bools
    for path in bools:
        offset = layout.offsets[path]
        message = refuse(channel, patched(IDLE[channel].data, offset, "B", value), SchemaViolation)
        assert f"{path} at offset {offset} is {value}" in message


# --- limits ----------------------------------------------------------------------------------

LIMITS = {
    ChannelType.MAIN: MAIN_MAX_BODY,
    ChannelType.INPUTS: 2048,
    ChannelType.DISPLAY: DEFAULT_MAX_PAYLOAD,
    ChannelType.SMARTCARD: DEFAULT_MAX_PAYLOAD,
    ChannelType.USBREDIR: DEFAULT_MAX_PAYLOAD,
    ChannelType.PORT: DEFAULT_MAX_PAYLOAD,
    ChannelType.WEBDAV: DEFAULT_MAX_PAYLOAD,
}


@pytest.mark.parametrize("channel", MIGRATION_CHANNELS, ids=_IDS)
def test_too_large_is_refused_before_parsing(channel: ChannelType) -> None:
    limit = LIMITS[channel]
    # At the limit the bytes are parsed (and the zero magic refused)...
    refuse(channel, bytes(limit), BadMagic)
    # ...one more and they are not even looked at.
    message = refuse(channel, bytes(limit + 1), TooLarge)
    assert str(limit) in message
    if limit < 1 << 20:
        idle = IDLE[channel].data
        refuse(channel, idle + bytes(limit - len(idle)), UnaccountedBytes)
        refuse(channel, idle + bytes(limit + 1 - len(idle)), TooLarge)


def _main_with(write: int, partial: int) -> bytes:
    """A main payload with ``write`` pending bytes and a ``partial``-byte message header."""
    return (
        b"MNMD"
        + pack("I", 1)
        + char_device(
            connected=1, send_tokens=2**32 - 1, write_size=write, write_ptr=65 if write else 0
        )
        + pack("BIIIB", 1, 8, 1, 100, 0)  # 33 started, 34 chunk header complete, 46 done 0
        + pack("II", partial, 65 + write if partial else 0)  # 47 partial_len, 51 ptr
        + pack("IBIB", 0, 0, 0, 0)  # 55..64
        + vdi_fill(write)
        + bytes(partial)
    )


def test_main_body_limits() -> None:
    """The main channel's 26,624-byte receive buffer, less 8 for a connected record: the
    target's stored copy over-reads by 8 bytes (§4.1) and its partial-header read by 2 (§4.4)."""
    slack = CONNECTED_READ_SLACK
    assert len(_main_with(MAIN_MAX_BODY - 65 - slack, 0)) == MAIN_MAX_BODY - slack
    native.decode(ChannelType.MAIN, _main_with(MAIN_MAX_BODY - 65 - slack, 0))
    over = refuse(ChannelType.MAIN, _main_with(MAIN_MAX_BODY - 65 - slack + 1, 0), SchemaViolation)
    assert "receive buffer" in over
    native.decode(ChannelType.MAIN, _main_with(MAIN_MAX_BODY - 65 - slack - 1, 1))
    over = refuse(ChannelType.MAIN, _main_with(MAIN_MAX_BODY - 65 - slack, 1), SchemaViolation)
    assert "receive buffer" in over
    refuse(ChannelType.MAIN, _main_with(MAIN_MAX_BODY - 65, 1), TooLarge)
    refuse(ChannelType.MAIN, _main_with(MAIN_MAX_BODY - 65 - 20, 20), SchemaViolation)
    native.decode(ChannelType.MAIN, _main_with(0, 19))
    message = refuse(ChannelType.MAIN, _main_with(0, 20), SchemaViolation)
    assert "msg_header_partial_len" in message


@pytest.mark.parametrize("channel", [ChannelType.SMARTCARD, ChannelType.USBREDIR])
def test_pending_write_limit(channel: ChannelType) -> None:
    """More than MAX_PENDING_WRITE bytes still to write to the device: a schema violation."""
    fixed = 42 if channel is ChannelType.SMARTCARD else 33
    prefix = b"SCMD" if channel is ChannelType.SMARTCARD else b"SVMD"
    size = MAX_PENDING_WRITE + 1
    data = (
        prefix
        + pack("I", 1)
        + char_device(connected=1, write_size=size, write_ptr=fixed)
        + bytes(fixed - 33)
        + bytes(size)
    )
    message = refuse(channel, data, SchemaViolation)
    assert "write_size" in message


# --- messages ------------------------------------------------------------------------------


def test_messages_never_echo_the_payload() -> None:
    marker = b"MARKER-5a1f-DO-NOT-ECHO"
    data = spicevmc_with(marker)
    native.decode(ChannelType.PORT, data)
    for damaged, error in [
        (data + b"\0", UnaccountedBytes),
        (patched(data, 21, "I", len(marker) + 1), CountOutOfRange),
        (patched(data, 25, "I", len(marker) + 1), SchemaViolation),
        (patched(data, 12, "B", 7), SchemaViolation),
        (marker[:4] + data[4:], BadMagic),
    ]:
        message = refuse(ChannelType.PORT, damaged, error)
        assert marker.decode() not in message
        assert marker[4:12].decode() not in message


def spicevmc_with(write: bytes) -> bytes:
    return (
        b"SVMD"
        + pack("I", 1)
        + char_device(connected=1, write_size=len(write), write_tokens=1, write_ptr=33)
        + write
    )


def test_non_bytes_input_is_a_type_error() -> None:
    """A caller's mistake, not an input to refuse."""
    with pytest.raises(TypeError):
        native.decode(ChannelType.INPUTS, "ICMD")  # type: ignore[arg-type]


def test_channel_without_migration_data() -> None:
    with pytest.raises(BadMagic, match="channel type 4"):
        native.decode(ChannelType.CURSOR, vector("inputs-0").data)
    with pytest.raises(BadMagic):
        native.layout_for(99)


# --- hypothesis: nothing but GatewayError, and decoding is exact ---------------------------


def decode_or_refuse(channel: ChannelType, data: bytes) -> StateModel | None:
    """Either a GatewayError (None), or a state that re-encodes to exactly ``data``."""
    try:
        state = native.decode(channel, data)
    except GatewayError as error:
        message = str(error)
        assert "\n" not in message, message
        assert len(message) <= MAX_MESSAGE, message
        return None
    assert native.encode(state, channel) == data
    return state


INTERESTING_U32 = st.one_of(
    st.sampled_from(
        [
            0,
            1,
            2,
            3,
            4,
            8,
            10,
            19,
            20,
            33,
            42,
            65,
            80,
            84,
            1023,
            1024,
            1025,
            2**16,
            2**25,
            2**25 + 1,
            2**31 - 1,
            2**31,
            2**32 - 1,
        ]
    ),
    st.integers(0, 2**32 - 1),
)


@st.composite
def plausible_payloads(draw: st.DrawFn, channel: ChannelType) -> bytes:
    """Right magic and version, every fixed field an edge value or anything, then a tail."""
    layout = native.layout_for(channel)
    values: list[int] = []
    for field in layout.fields:
        size = struct.calcsize("<" + field.code)
        if field.kind == "const" and draw(st.booleans()):
            values.append(field.const)
        elif field.kind == "bool":
            values.append(draw(st.sampled_from([0, 1, 1, 2, 255])))
        elif size == 4:
            values.append(
                draw(INTERESTING_U32)
                if field.code == "I"
                else draw(st.integers(-(2**31), 2**31 - 1))
            )
        else:
            bits = 8 * size
            signed = field.code.islower()
            low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
            values.append(draw(st.integers(low, high)))
    fixed = layout.struct.pack(layout.magic, 1, *values)
    return fixed + draw(st.binary(max_size=96))


@pytest.mark.parametrize("channel", MIGRATION_CHANNELS, ids=_IDS)
def test_arbitrary_bytes_only_raise_gateway_errors(channel: ChannelType) -> None:
    magic = native.layout_for(channel).magic

    @budget(150)
    @given(
        data=st.one_of(
            st.binary(max_size=160),
            st.binary(max_size=160).map(lambda tail: magic + pack("I", 1) + tail),
            plausible_payloads(channel),
        )
    )
    def check(data: bytes) -> None:
        decode_or_refuse(channel, data)

    check()


@pytest.mark.parametrize("channel", MIGRATION_CHANNELS, ids=_IDS)
def test_bit_flips_are_refused_or_exact(channel: ChannelType) -> None:
    @budget(150)
    @given(data=native_payloads(channel), position=st.integers(min_value=0), bit=st.integers(0, 7))
    def check(data: bytes, position: int, bit: int) -> None:
        index = position % len(data)
        flipped = bytearray(data)
        flipped[index] ^= 1 << bit
        decode_or_refuse(channel, bytes(flipped))

    check()


def test_every_single_bit_flip_of_every_vector() -> None:
    """Exhaustive over the known-answer payloads (the large all-surfaces one excepted)."""
    refused = 0
    for item in VECTORS:
        if len(item.data) > 512:
            continue
        for index in range(len(item.data)):
            for bit in range(8):
                flipped = bytearray(item.data)
                flipped[index] ^= 1 << bit
                if decode_or_refuse(item.channel, bytes(flipped)) is None:
                    refused += 1
    assert refused > 0


def test_refusals_are_malformed_or_schema_errors() -> None:
    """The catalogue's classes sit where callers expect them in the hierarchy."""
    structural: list[type[GatewayError]] = [
        Truncated,
        BadMagic,
        OffsetOutOfRange,
        OffsetIntoFixedPart,
        OverlappingBlocks,
        UnaccountedBytes,
        CountOutOfRange,
        NonCanonical,
    ]
    for error in structural:
        assert issubclass(error, MalformedInput)
    for other in (SchemaViolation, UnsupportedVersion, TooLarge):
        assert issubclass(other, GatewayError)
        assert not issubclass(other, MalformedInput)
