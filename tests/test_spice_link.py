"""Link-stage structures: exact layouts, round trips, and every limit spice-server applies."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.errors import ProtocolError
from gateway.spice import (
    CommonCap,
    Direction,
    LinkError,
    LinkHeader,
    LinkMess,
    LinkReply,
    caps_words,
    encode_auth_mechanism,
    encode_link_result,
    has_cap,
)
from gateway.spice.link import decode_u32

C2S = Direction.CLIENT_TO_SERVER
S2C = Direction.SERVER_TO_CLIENT


def test_link_header_layout() -> None:
    raw = LinkHeader(size=26).encode()
    assert raw == b"REDQ" + struct.pack("<III", 2, 2, 26)
    assert LinkHeader.decode(raw, C2S) == LinkHeader(size=26, major=2, minor=2)


def test_link_header_minor_is_not_checked() -> None:
    raw = LinkHeader(size=18, minor=77).encode()
    assert LinkHeader.decode(raw, C2S).minor == 77


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        (b"REDX" + struct.pack("<III", 2, 2, 18), "magic at offset 0"),
        (b"REDQ" + struct.pack("<III", 1, 2, 18), "major_version at offset 4"),
        (b"REDQ" + struct.pack("<III", 3, 2, 18), "major_version at offset 4"),
        (b"REDQ" + struct.pack("<III", 2, 2, 17), "size at offset 12"),
        (b"REDQ" + struct.pack("<III", 2, 2, 4097), "size at offset 12"),
        (b"REDQ" + struct.pack("<III", 2, 2, 0xFFFFFFFF), "size at offset 12"),
    ],
)
def test_link_header_refusals(raw: bytes, field: str) -> None:
    with pytest.raises(ProtocolError, match=field):
        LinkHeader.decode(raw, C2S)


def test_link_header_size_bounds_per_direction() -> None:
    assert LinkHeader.decode(LinkHeader(18).encode(), C2S).size == 18
    assert LinkHeader.decode(LinkHeader(4096).encode(), C2S).size == 4096
    # A server reply is never shorter than the fixed SpiceLinkReply.
    with pytest.raises(ProtocolError, match=r"server link header: field size .* \[178, 4096\]"):
        LinkHeader.decode(LinkHeader(177).encode(), S2C)
    assert LinkHeader.decode(LinkHeader(178).encode(), S2C).size == 178


def test_link_header_wrong_length() -> None:
    with pytest.raises(ProtocolError, match="expected 16 bytes, got 15"):
        LinkHeader.decode(LinkHeader(18).encode()[:15], C2S)


def test_caps_words_and_has_cap() -> None:
    words = caps_words([CommonCap.MINI_HEADER, 0, 33])
    assert words == (0b1001, 0b10)
    assert has_cap(words, CommonCap.MINI_HEADER)
    assert has_cap(words, 33)
    assert not has_cap(words, CommonCap.AUTH_SASL)
    assert not has_cap(words, 64)  # beyond the words present
    assert caps_words([]) == ()
    with pytest.raises(ProtocolError, match="capability -1"):
        caps_words([-1])


def test_link_mess_layout() -> None:
    mess = LinkMess(
        channel_type=2,
        channel_id=1,
        connection_id=0x11223344,
        common_caps=(0xB,),
        channel_caps=(1, 2),
    )
    raw = mess.encode()
    assert raw == struct.pack("<IBBIII", 0x11223344, 2, 1, 1, 2, 18) + struct.pack(
        "<III", 0xB, 1, 2
    )
    assert LinkMess.decode(raw) == mess
    assert mess.encode_with_header() == LinkHeader(len(raw)).encode() + raw


def test_link_mess_caps_at_a_later_offset_and_trailing_bytes() -> None:
    # spice-server reads caps wherever caps_offset says, and ignores bytes after them.
    raw = struct.pack("<IBBIII", 0, 1, 0, 1, 1, 22) + b"\xee" * 4 + struct.pack("<II", 8, 9) + b"xy"
    assert LinkMess.decode(raw) == LinkMess(channel_type=1, common_caps=(8,), channel_caps=(9,))


def test_link_mess_without_caps_ignores_caps_offset() -> None:
    raw = struct.pack("<IBBIII", 5, 3, 0, 0, 0, 0)
    assert LinkMess.decode(raw) == LinkMess(channel_type=3, connection_id=5)


@pytest.mark.parametrize(
    ("counts", "caps_offset", "size", "field"),
    [
        ((1025, 0), 18, 18, "num_common_caps at offset 6 is 1025"),
        ((0, 1025), 18, 18, "num_channel_caps at offset 10 is 1025"),
        ((1, 0), 17, 22, "caps_offset at offset 14 is 17"),
        ((1, 0), 0, 22, "caps_offset at offset 14 is 0"),
        ((1, 1), 18, 22, "caps_offset at offset 14 is 18"),  # second word past the end
        ((1, 0), 0xFFFFFFFF, 22, "caps_offset at offset 14"),
    ],
)
def test_link_mess_refusals(
    counts: tuple[int, int], caps_offset: int, size: int, field: str
) -> None:
    fixed = struct.pack("<IBBIII", 0, 1, 0, counts[0], counts[1], caps_offset)
    raw = fixed + bytes(max(0, size - len(fixed)))
    with pytest.raises(ProtocolError, match=f"client link message: field {field}"):
        LinkMess.decode(raw)


def test_link_mess_length_bounds() -> None:
    with pytest.raises(ProtocolError, match="17 bytes"):
        LinkMess.decode(bytes(17))
    with pytest.raises(ProtocolError, match="4097 bytes"):
        LinkMess.decode(bytes(4097))


def test_link_mess_encode_out_of_range() -> None:
    with pytest.raises(ProtocolError, match="cannot encode link message"):
        LinkMess(channel_type=256).encode()


def test_link_reply_layout() -> None:
    key = bytes(range(162))
    reply = LinkReply(pub_key=key, common_caps=(0xF,), channel_caps=(0x9,))
    raw = reply.encode()
    assert raw == struct.pack("<I", 0) + key + struct.pack("<IIIII", 1, 1, 178, 0xF, 0x9)
    assert LinkReply.decode(raw) == reply


def test_link_error_reply_is_zeros_but_error() -> None:
    raw = LinkReply(error=LinkError.NEED_SECURED).encode()
    assert raw == struct.pack("<I", 5) + bytes(174)
    assert LinkReply.decode(raw) == LinkReply(error=LinkError.NEED_SECURED)


def test_link_reply_refusals() -> None:
    fixed = struct.pack("<I", 0) + bytes(162)
    with pytest.raises(ProtocolError, match="num_common_caps at offset 166 is 2000"):
        LinkReply.decode(fixed + struct.pack("<III", 2000, 0, 178))
    with pytest.raises(ProtocolError, match="caps_offset at offset 174 is 100"):
        LinkReply.decode(fixed + struct.pack("<III", 1, 0, 100) + bytes(4))
    with pytest.raises(ProtocolError, match="caps_offset at offset 174 is 178"):
        LinkReply.decode(fixed + struct.pack("<III", 2, 0, 178) + bytes(4))
    with pytest.raises(ProtocolError, match="177 bytes"):
        LinkReply.decode(bytes(177))
    with pytest.raises(ProtocolError, match="pub_key has 3 bytes"):
        LinkReply(pub_key=b"abc").encode()


def test_u32_units() -> None:
    assert encode_auth_mechanism(1) == b"\x01\0\0\0"
    assert encode_link_result(LinkError.PERMISSION_DENIED) == b"\x07\0\0\0"
    assert decode_u32(b"\x09\0\0\0", "link result") == 9
    with pytest.raises(ProtocolError, match="link result: expected 4 bytes, got 3"):
        decode_u32(b"\0\0\0", "link result")


@given(
    channel_type=st.integers(0, 255),
    channel_id=st.integers(0, 255),
    connection_id=st.integers(0, 2**32 - 1),
    common=st.lists(st.integers(0, 2**32 - 1), max_size=8).map(tuple),
    channel=st.lists(st.integers(0, 2**32 - 1), max_size=8).map(tuple),
)
def test_link_mess_round_trip(
    channel_type: int,
    channel_id: int,
    connection_id: int,
    common: tuple[int, ...],
    channel: tuple[int, ...],
) -> None:
    mess = LinkMess(channel_type, channel_id, connection_id, common, channel)
    assert LinkMess.decode(mess.encode()) == mess


@given(st.binary(min_size=178, max_size=600))
def test_link_reply_decode_arbitrary_bytes(data: bytes) -> None:
    # Any input either decodes to caps that lie inside it or is refused as a ProtocolError.
    try:
        reply = LinkReply.decode(data)
    except ProtocolError:
        return
    assert 178 + 4 * (len(reply.common_caps) + len(reply.channel_caps)) <= len(data)
