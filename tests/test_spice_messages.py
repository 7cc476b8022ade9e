"""Migration message bodies: exact layouts, per-channel recognition, and every refusal."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.errors import ProtocolError, TooLarge
from gateway.spice import (
    ChannelType,
    ClientMigrateData,
    ClientMigrateEnd,
    Direction,
    DstInfo,
    HeaderKind,
    MainInit,
    Message,
    Migrate,
    MigrateBegin,
    MigrateBeginSeamless,
    MigrateCancel,
    MigrateConnected,
    MigrateConnectedSeamless,
    MigrateConnectError,
    MigrateData,
    MigrateDstDoSeamless,
    MigrateDstSeamlessAck,
    MigrateDstSeamlessNack,
    MigrateEnd,
    MigrateFlags,
    MigrateFlushMark,
    MigrateSwitchHost,
    MigrationMessage,
    decode_migration,
    encode_data_message,
    reframe,
)
from gateway.spice.messages import MAX_CERT_SUBJECT_SIZE, MAX_HOST_SIZE

C2S = Direction.CLIENT_TO_SERVER
S2C = Direction.SERVER_TO_CLIENT
#: Characters a DstInfo string can hold: anything UTF-8 encodable but NUL.
TEXT = st.characters(exclude_characters="\0", exclude_categories=["Cs"])
DST = DstInfo(port=5900, sport=5901, host="dst.example", cert_subject="C=IL, CN=dst")

#: Every recognised message with (channel it is checked on, direction, type number).
ALL: list[tuple[MigrationMessage, ChannelType, Direction, int]] = [
    (
        Migrate(MigrateFlags.NEED_FLUSH | MigrateFlags.NEED_DATA_TRANSFER),
        ChannelType.DISPLAY,
        S2C,
        1,
    ),
    (MigrateData(b"DCMD\x01\0\0\0payload"), ChannelType.DISPLAY, S2C, 2),
    (MigrateFlushMark(), ChannelType.INPUTS, C2S, 4),
    (ClientMigrateData(b"ICMD\x01\0\0\0\0\0"), ChannelType.INPUTS, C2S, 5),
    (MigrateBegin(DST), ChannelType.MAIN, S2C, 101),
    (MigrateCancel(), ChannelType.MAIN, S2C, 102),
    (MainInit(session_id=0xDEADBEEF, agent_tokens=10, ram_hint=64), ChannelType.MAIN, S2C, 103),
    (MigrateSwitchHost(DstInfo(5900, 0xFFFF, "10.0.0.2")), ChannelType.MAIN, S2C, 111),
    (MigrateEnd(), ChannelType.MAIN, S2C, 112),
    (MigrateBeginSeamless(DST, src_mig_version=1), ChannelType.MAIN, S2C, 116),
    (MigrateDstSeamlessAck(), ChannelType.MAIN, S2C, 117),
    (MigrateDstSeamlessNack(), ChannelType.MAIN, S2C, 118),
    (MigrateConnected(), ChannelType.MAIN, C2S, 102),
    (MigrateConnectError(), ChannelType.MAIN, C2S, 103),
    (ClientMigrateEnd(), ChannelType.MAIN, C2S, 109),
    (MigrateDstDoSeamless(src_version=1), ChannelType.MAIN, C2S, 110),
    (MigrateConnectedSeamless(), ChannelType.MAIN, C2S, 111),
]


@pytest.mark.parametrize(("msg", "channel", "direction", "msg_type"), ALL)
def test_every_migration_message_round_trips(
    msg: MigrationMessage, channel: ChannelType, direction: Direction, msg_type: int
) -> None:
    assert msg_type == msg.MSG_TYPE
    assert msg.DIRECTION is direction
    assert decode_migration(channel, direction, msg_type, msg.encode_body()) == msg


@pytest.mark.parametrize(("msg", "channel", "direction", "msg_type"), ALL)
def test_main_only_types_are_generic_elsewhere(
    msg: MigrationMessage, channel: ChannelType, direction: Direction, msg_type: int
) -> None:
    other = decode_migration(ChannelType.CURSOR, direction, msg_type, msg.encode_body())
    if msg_type > 100:
        assert other is None
    else:
        assert other == msg


def test_direction_selects_the_meaning() -> None:
    # C->S type 1 is ACK_SYNC, S->C type 4 is PING, S->C 110 is AGENT_TOKEN: not migration.
    assert decode_migration(ChannelType.MAIN, C2S, 1, b"\0\0\0\0") is None
    assert decode_migration(ChannelType.MAIN, S2C, 4, b"") is None
    assert decode_migration(ChannelType.MAIN, S2C, 110, b"\0\0\0\0") is None
    # S->C 111 is SWITCH_HOST, C->S 111 is CONNECTED_SEAMLESS.
    assert decode_migration(ChannelType.MAIN, C2S, 111, b"") == MigrateConnectedSeamless()


def test_begin_seamless_exact_layout() -> None:
    body = MigrateBeginSeamless(DstInfo(5900, 5901, "dst", "CN=a"), 1).encode_body()
    assert body == struct.pack("<HHIIIII", 5900, 5901, 4, 24, 5, 28, 1) + b"dst\0CN=a\0"


def test_begin_and_switch_host_layout_without_cert() -> None:
    body = MigrateBegin(DstInfo(1, 2, "h")).encode_body()
    assert body == struct.pack("<HHIIII", 1, 2, 2, 20, 0, 0) + b"h\0"
    assert MigrateSwitchHost(DstInfo(1, 2, "h")).encode_body() == body
    # An empty cert subject is a lone NUL, distinct from none at all.
    empty = MigrateBegin(DstInfo(1, 2, "h", "")).encode_body()
    assert empty == struct.pack("<HHIIII", 1, 2, 2, 20, 1, 22) + b"h\0\0"
    assert MigrateBegin.decode_body(empty).dst_info.cert_subject == ""


def test_migrate_flags() -> None:
    both = Migrate.decode_body(b"\x03\0\0\0")
    assert both.need_flush
    assert both.need_data_transfer
    none = Migrate.decode_body(b"\0\0\0\0")
    assert not none.need_flush
    assert not none.need_data_transfer
    with pytest.raises(ProtocolError, match="unknown bits 0x8"):
        Migrate.decode_body(b"\x0b\0\0\0")
    with pytest.raises(ProtocolError, match="body must be 4 bytes"):
        Migrate.decode_body(b"\x03\0\0")
    with pytest.raises(ProtocolError, match="body must be 4 bytes"):
        Migrate.decode_body(b"\x03\0\0\0\0")


def test_fixed_size_bodies_are_exact() -> None:
    with pytest.raises(ProtocolError, match="MigrateDstSeamlessAck: body must be empty, got 1"):
        MigrateDstSeamlessAck.decode_body(b"\0")
    with pytest.raises(ProtocolError, match="MigrateFlushMark: body must be empty"):
        MigrateFlushMark.decode_body(b"x")
    with pytest.raises(ProtocolError, match="MigrateDstDoSeamless: body must be 4 bytes"):
        MigrateDstDoSeamless.decode_body(b"\x01\0")
    with pytest.raises(ProtocolError, match="MainInit: body must be 32 bytes, got 28"):
        MainInit.decode_body(bytes(28))


def test_main_init_session_id_first() -> None:
    body = struct.pack("<8I", 0x01020304, 1, 3, 2, 1, 10, 12345, 65536)
    init = MainInit.decode_body(body)
    assert init.session_id == 0x01020304
    assert init.ram_hint == 65536
    assert init.encode_body() == body


def _dst(host_size: int, host_ptr: int, cert_size: int, cert_ptr: int, tail: bytes) -> bytes:
    return struct.pack("<HHIIII", 5900, 0, host_size, host_ptr, cert_size, cert_ptr) + tail


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (b"\0" * 19, "MigrateBegin: body of 19 bytes is shorter than its 20-byte fixed part"),
        (_dst(3, 20, 0, 0, b"ab"), "host at body offset 20 with 3 bytes reaches past the end"),
        (_dst(3, 21, 0, 0, b"ab\0"), "reaches past the end of the 23-byte body"),
        (_dst(3, 0xFFFFFFFF, 0, 0, b"ab\0"), "host at body offset 4294967295"),
        (_dst(3, 12, 0, 0, b"ab\0"), "host_ptr at offset 8 is 12, inside the 20-byte fixed part"),
        (_dst(3, 20, 0, 0, b"abc"), "host at body offset 20 is not NUL-terminated"),
        (_dst(3, 20, 0, 0, b"a\0\0"), "host at body offset 20 has a NUL at offset 21"),
        (_dst(0, 0, 0, 0, b""), "host_size at offset 4 is 0"),
        (_dst(3, 20, 0, 20, b"ab\0"), "cert_subject_ptr at offset 16 is 20 although"),
        (_dst(3, 20, 2, 23, b"ab\0x"), "cert_subject at body offset 23 with 2 bytes reaches past"),
        (_dst(3, 20, 2, 23, b"ab\0xy"), "cert_subject at body offset 23 is not NUL-terminated"),
        (_dst(3, 20, 0, 0, b"\xff\xfe\0"), "host at body offset 20 is not UTF-8"),
        (
            _dst(MAX_HOST_SIZE + 1, 20, 0, 0, b"a" * MAX_HOST_SIZE + b"\0"),
            f"host_size at offset 4 is {MAX_HOST_SIZE + 1}, more than {MAX_HOST_SIZE}",
        ),
        (
            _dst(2, 20, MAX_CERT_SUBJECT_SIZE + 1, 22, b"a\0" + b"c" * (MAX_CERT_SUBJECT_SIZE + 1)),
            f"cert_subject_size at offset 12 is {MAX_CERT_SUBJECT_SIZE + 1}",
        ),
    ],
)
def test_dst_info_refusals(body: bytes, match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        MigrateBegin.decode_body(body)


def test_begin_seamless_fixed_part_includes_version() -> None:
    # Truncated inside the version, and a host pointer into the version field.
    with pytest.raises(ProtocolError, match="shorter than its 24-byte fixed part"):
        MigrateBeginSeamless.decode_body(_dst(2, 20, 0, 0, b"x\0"))
    with pytest.raises(ProtocolError, match="host_ptr at offset 8 is 20, inside the 24-byte"):
        MigrateBeginSeamless.decode_body(_dst(2, 20, 0, 0, b"\x01\0\0\0x\0"))


def test_dst_info_encode_refusals() -> None:
    with pytest.raises(ProtocolError, match="cannot encode host"):
        MigrateBegin(DstInfo(1, 1, "a\0b")).encode_body()
    with pytest.raises(ProtocolError, match="cannot encode DstInfo"):
        MigrateBegin(DstInfo(70000, 1, "a")).encode_body()


@given(
    port=st.integers(0, 0xFFFF),
    sport=st.integers(0, 0xFFFF),
    host=st.text(TEXT, max_size=60),
    cert=st.none() | st.text(TEXT),
    version=st.integers(0, 2**32 - 1),
)
def test_dst_info_round_trip(
    port: int, sport: int, host: str, cert: str | None, version: int
) -> None:
    msg = MigrateBeginSeamless(DstInfo(port, sport, host, cert), version)
    assert MigrateBeginSeamless.decode_body(msg.encode_body()) == msg


@given(st.binary(max_size=120))
def test_dst_info_arbitrary_bodies_refused_cleanly(body: bytes) -> None:
    try:
        msg = MigrateBeginSeamless.decode_body(body)
    except ProtocolError:
        return
    # Whatever decodes re-encodes to a body that decodes the same.
    assert MigrateBeginSeamless.decode_body(msg.encode_body()) == msg


def test_encode_data_message_headers() -> None:
    assert encode_data_message(HeaderKind.MINI, 2, b"abc") == struct.pack("<HI", 2, 3) + b"abc"
    assert encode_data_message(HeaderKind.FULL, 2, b"abc", serial=9, sub_list=5) == (
        struct.pack("<QHII", 9, 2, 3, 5) + b"abc"
    )
    with pytest.raises(ProtocolError, match="mini header with a serial"):
        encode_data_message(HeaderKind.MINI, 2, b"", serial=1)
    assert MigrateFlushMark().encode(HeaderKind.MINI) == b"\x04\0\0\0\0\0"


def _message(kind: HeaderKind, raw: bytes) -> Message:
    if kind is HeaderKind.MINI:
        msg_type, _ = struct.unpack_from("<HI", raw)
        return Message(S2C, raw, kind, msg_type, None, None)
    serial, msg_type, _, sub_list = struct.unpack_from("<QHII", raw)
    return Message(S2C, raw, kind, msg_type, serial, sub_list)


def test_reframe_mini() -> None:
    original = _message(HeaderKind.MINI, struct.pack("<HI", 2, 4) + b"MNMD")
    assert original.header == struct.pack("<HI", 2, 4)
    assert original.body == b"MNMD"
    assert reframe(original, b"sealed blob") == struct.pack("<HI", 2, 11) + b"sealed blob"


def test_reframe_full_keeps_serial_and_clears_sub_list() -> None:
    original = _message(HeaderKind.FULL, struct.pack("<QHII", 41, 2, 4, 7) + b"DCMD")
    assert original.body_size == 4
    new = reframe(original, b"xy")
    assert new == struct.pack("<QHII", 41, 2, 2, 0) + b"xy"


def test_reframe_refuses_bodies_beyond_u32() -> None:
    class Huge(bytes):
        def __len__(self) -> int:
            return 2**32

    original = _message(HeaderKind.MINI, struct.pack("<HI", 2, 0))
    with pytest.raises(TooLarge, match="does not fit a u32"):
        reframe(original, Huge())
