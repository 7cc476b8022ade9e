"""The connection state machine: scripted exchanges, split feeding, raw slices, pass-through runs,
refusals."""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.errors import ConfigError, GatewayError, ProtocolError
from gateway.spice import (
    AuthMechanismReceived,
    ChannelType,
    ConnectionState,
    Direction,
    DstInfo,
    Event,
    HeaderKind,
    LinkError,
    LinkHeaderReceived,
    LinkMessReceived,
    LinkReplyReceived,
    LinkResultReceived,
    MainInit,
    Message,
    Migrate,
    MigrateBeginSeamless,
    MigrateConnectedSeamless,
    MigrateData,
    MigrateFlags,
    MigrateFlushMark,
    SpiceConnection,
    TicketReceived,
    encode_auth_mechanism,
    encode_data_message,
    encode_link_result,
    reframe,
)
from gateway.spice.connection import ROOM_SHARE, _Buffer, _migration_types
from gateway.spice.events import Passthrough
from gateway.spice.messages import ClientMigrateData, migration_class
from gateway.spice.scripted import (
    PLACEHOLDER_TICKET,
    client_auth,
    client_link,
    link_exchange,
    server_link_reply,
)

C2S = Direction.CLIENT_TO_SERVER
S2C = Direction.SERVER_TO_CLIENT
Steps = list[tuple[Direction, bytes]]
Chunker = Callable[[bytes], Iterator[bytes]]

PAYLOAD = b"MNMD\x01\0\0\0" + bytes(range(256)) * 400  # ~100 KiB, arrives in many reads


def whole(data: bytes) -> Iterator[bytes]:
    yield data


def bytewise(data: bytes) -> Iterator[bytes]:
    for i in range(len(data)):
        yield data[i : i + 1]


def feed(conn: SpiceConnection, steps: Steps, chunker: Chunker = whole) -> list[Event]:
    events: list[Event] = []
    for direction, data in steps:
        receive = conn.receive_from_client if direction is C2S else conn.receive_from_server
        for chunk in chunker(data):
            events.extend(receive(chunk))
    return events


def linked(
    channel: int = ChannelType.MAIN, *, mini: bool = True, selection: bool = True
) -> SpiceConnection:
    conn = SpiceConnection()
    feed(conn, link_exchange(channel, mini_header=mini, auth_selection=selection))
    assert conn.state is ConnectionState.ESTABLISHED
    return conn


def main_session(*, mini: bool, selection: bool) -> Steps:
    """Link the main channel, then a seamless migration as the source sees it."""
    kind = HeaderKind.MINI if mini else HeaderKind.FULL
    serial = iter(range(1, 100))

    def msg(msg_type: int, body: bytes) -> bytes:
        return encode_data_message(kind, msg_type, body, serial=0 if mini else next(serial))

    dst = DstInfo(port=5910, sport=0xFFFF, host="127.0.0.1")
    return [
        *link_exchange(ChannelType.MAIN, mini_header=mini, auth_selection=selection),
        (S2C, msg(3, struct.pack("<II", 1, 20))),  # SET_ACK
        (S2C, msg(103, MainInit(session_id=0x5E55, agent_tokens=10).encode_body())),
        (C2S, msg(1, struct.pack("<I", 1))),  # ACK_SYNC
        (S2C, msg(116, MigrateBeginSeamless(dst, 1).encode_body())),
        (C2S, msg(111, b"")),
        (S2C, msg(1, struct.pack("<I", 3))),
        (C2S, msg(4, b"")),
        (S2C, msg(2, PAYLOAD)),
    ]


def by_direction(steps: Steps, direction: Direction) -> bytes:
    return b"".join(data for d, data in steps if d is direction)


def raw_of(events: list[Event], direction: Direction) -> bytes:
    return b"".join(e.raw for e in events if e.direction is direction)


@pytest.mark.parametrize("selection", [True, False], ids=["auth-selection", "no-selection"])
@pytest.mark.parametrize("mini", [True, False], ids=["mini", "full"])
def test_scripted_main_session(mini: bool, selection: bool) -> None:
    steps = main_session(mini=mini, selection=selection)
    conn = SpiceConnection()
    events = feed(conn, steps)

    link_types = [
        LinkHeaderReceived,
        LinkMessReceived,
        LinkHeaderReceived,
        LinkReplyReceived,
        *([AuthMechanismReceived] if selection else []),
        TicketReceived,
        LinkResultReceived,
    ]
    data_types = [Passthrough, Message, Passthrough, *[Message] * 5]
    assert [type(e) for e in events] == [*link_types, *data_types]
    assert conn.state is ConnectionState.ESTABLISHED
    assert conn.header_kind is (HeaderKind.MINI if mini else HeaderKind.FULL)
    assert (conn.channel_type, conn.channel_id) == (ChannelType.MAIN, 0)

    ticket = next(e for e in events if isinstance(e, TicketReceived))
    assert ticket.raw == PLACEHOLDER_TICKET
    assert "raw" not in repr(ticket)

    # SET_ACK and ACK_SYNC are ordinary: relayed as runs of one, not decoded.
    runs = [e for e in events if isinstance(e, Passthrough)]
    assert [(r.direction, r.count, r.raw) for r in runs] == [
        (S2C, 1, steps[-8][1]),
        (C2S, 1, steps[-6][1]),
    ]
    messages = [e for e in events if isinstance(e, Message)]
    assert [(m.direction, m.msg_type) for m in messages] == [
        (S2C, 103), (S2C, 116), (C2S, 111), (S2C, 1), (C2S, 4), (S2C, 2)
    ]  # fmt: skip
    assert [m.kind for m in messages] == [conn.header_kind] * 6
    if mini:
        assert all(m.serial is None and m.sub_list is None for m in messages)
    else:
        assert [m.serial for m in messages] == [2, 4, 5, 6, 7, 8]
        assert all(m.sub_list == 0 for m in messages)

    init, begin, connected, migrate, flush, data = messages
    assert init.migration == MainInit(session_id=0x5E55, agent_tokens=10)
    assert isinstance(begin.migration, MigrateBeginSeamless)
    assert begin.migration.dst_info.host == "127.0.0.1"
    assert begin.migration.src_mig_version == 1
    assert connected.migration == MigrateConnectedSeamless()
    assert migrate.migration == Migrate(MigrateFlags.NEED_FLUSH | MigrateFlags.NEED_DATA_TRANSFER)
    assert flush.migration == MigrateFlushMark()
    assert data.migration == MigrateData(PAYLOAD)
    assert data.body == PAYLOAD

    # Pass-through bytes are the input, unit by unit, in order.
    for direction in Direction:
        assert raw_of(events, direction) == by_direction(steps, direction)
        assert conn.buffered(direction) == 0


@pytest.mark.parametrize("mini", [True, False], ids=["mini", "full"])
def test_byte_at_a_time_equals_whole(mini: bool) -> None:
    steps = main_session(mini=mini, selection=True)
    # A smaller MIGRATE_DATA keeps the byte-wise run short.
    kind = HeaderKind.MINI if mini else HeaderKind.FULL
    steps[-1] = (S2C, encode_data_message(kind, 2, PAYLOAD[:1500], serial=0 if mini else 8))
    assert feed(SpiceConnection(), steps, bytewise) == feed(SpiceConnection(), steps)


@settings(max_examples=60, deadline=None)
@given(mini=st.booleans(), selection=st.booleans(), data=st.data())
def test_random_splits_equal_whole(mini: bool, selection: bool, data: st.DataObject) -> None:
    steps = main_session(mini=mini, selection=selection)
    expected = feed(SpiceConnection(), steps)

    def random_chunks(blob: bytes) -> Iterator[bytes]:
        cuts = sorted(data.draw(st.lists(st.integers(0, len(blob)), max_size=6)))
        start = 0
        for cut in [*cuts, len(blob)]:
            yield blob[start:cut]
            start = cut

    conn = SpiceConnection()
    events = feed(conn, steps, random_chunks)
    assert events == expected
    for direction in Direction:
        assert raw_of(events, direction) == by_direction(steps, direction)


def test_large_message_in_small_reads() -> None:
    conn = linked(ChannelType.DISPLAY)
    body = bytes(range(256)) * 8192  # 2 MiB
    raw = encode_data_message(HeaderKind.MINI, 2, body)
    events: list[Event] = []
    for i in range(0, len(raw), 4096):
        events.extend(conn.receive_from_server(raw[i : i + 4096]))
        if i + 4096 < len(raw):
            assert conn.buffered(S2C) == i + 4096
    assert len(events) == 1
    assert isinstance(events[0], Message)
    assert events[0].raw == raw
    assert conn.buffered(S2C) == 0


def test_buffer_compacts_consumed_bytes() -> None:
    buf = _Buffer()
    buf.feed(b"\xff" * 5)  # always 5 bytes pending, so the buffer never empties
    expected = b"\xff" * 5
    for i in range(1000):
        chunk = bytes([i % 256]) * 10
        buf.feed(chunk)
        expected += chunk
        assert buf.take(10) == expected[:10]
        expected = expected[10:]
        # What was consumed is dropped before it outgrows what is live.
        assert len(buf.data) <= 30
    assert buf.consumed == 10_000
    assert len(buf) == 5


def test_buffer_copies_what_the_caller_may_change() -> None:
    buf = _Buffer()
    chunk = bytearray(b"abcdef")
    buf.feed(chunk)
    chunk[:] = b"XXXXXX"
    view = memoryview(bytearray(b"ghij"))
    buf.feed(view)
    view[:] = b"YYYY"
    assert buf.take(10) == b"abcdefghij"


def test_message_events_only_when_complete() -> None:
    conn = linked(ChannelType.INPUTS)
    raw = encode_data_message(HeaderKind.MINI, 101, b"key-down")
    assert conn.receive_from_client(raw[:5]) == []
    assert conn.receive_from_client(raw[5:-1]) == []
    assert conn.buffered(C2S) == len(raw) - 1
    (event,) = conn.receive_from_client(raw[-1:] + raw[:3])
    assert event == Passthrough(C2S, raw, 1)
    assert conn.buffered(C2S) == 3
    flush = MigrateFlushMark().encode(HeaderKind.MINI)
    assert conn.receive_from_client(raw[3:] + flush[:-1]) == [Passthrough(C2S, raw, 1)]
    (event,) = conn.receive_from_client(flush[-1:])
    assert isinstance(event, Message)
    assert (event.raw, event.migration) == (flush, MigrateFlushMark())


def test_main_only_types_are_generic_on_other_channels() -> None:
    conn = linked(ChannelType.DISPLAY)
    # 116 on display is a display message, not BEGIN_SEAMLESS: no DstInfo checks apply.
    (event,) = conn.receive_from_server(encode_data_message(HeaderKind.MINI, 116, b"\xff"))
    assert isinstance(event, Passthrough)
    (event,) = conn.receive_from_server(Migrate(MigrateFlags(3)).encode(HeaderKind.MINI))
    assert isinstance(event, Message)
    assert event.migration == Migrate(MigrateFlags(3))


def test_reframed_message_parses_as_one_message() -> None:
    conn = linked(ChannelType.DISPLAY, mini=False)
    (original,) = conn.receive_from_server(
        encode_data_message(HeaderKind.FULL, 2, b"DCMD native", serial=77, sub_list=0)
    )
    assert isinstance(original, Message)
    receiver = linked(ChannelType.DISPLAY, mini=False)
    (replaced,) = receiver.receive_from_server(reframe(original, b"sealed"))
    assert isinstance(replaced, Message)
    assert (replaced.serial, replaced.msg_type, replaced.body) == (77, 2, b"sealed")


# --- pass-through runs ----------------------------------------------------------------------


def split_messages(raw: bytes, kind: HeaderKind) -> list[tuple[int, bytes]]:
    """(type, whole message) of each data message in ``raw``, which must hold whole ones only."""
    header = struct.Struct("<HI" if kind is HeaderKind.MINI else "<8xHI4x")
    out, pos = [], 0
    while pos < len(raw):
        msg_type, size = header.unpack_from(raw, pos)
        end = pos + header.size + size
        assert end <= len(raw), "a run ends inside a message"
        out.append((msg_type, raw[pos:end]))
        pos = end
    return out


def data_units(
    events: list[Event], channel: int, kind: HeaderKind
) -> list[tuple[Direction, int, bytes, object]]:
    """Every data message of ``events`` on its own: (direction, type, raw, decoded migration).

    Checks on the way what a run promises: ``count`` whole messages, none a migration message.
    """
    units: list[tuple[Direction, int, bytes, object]] = []
    for event in events:
        if isinstance(event, Passthrough):
            inside = split_messages(event.raw, kind)
            assert len(inside) == event.count >= 1
            for msg_type, raw in inside:
                assert migration_class(channel, event.direction, msg_type) is None
                units.append((event.direction, msg_type, raw, None))
        elif isinstance(event, Message):
            assert event.migration is not None
            units.append((event.direction, event.msg_type, event.raw, event.migration))
    return units


def test_ordinary_messages_coalesce_into_one_run() -> None:
    conn = linked(ChannelType.DISPLAY)
    parts = [encode_data_message(HeaderKind.MINI, 100 + n, bytes(n)) for n in range(50)]
    stream = b"".join(parts)
    assert conn.receive_from_server(stream) == [Passthrough(S2C, stream, 50)]
    # A read that ends inside a message: the whole ones go now, the rest when it completes.
    cut = len(stream) - 10
    assert conn.receive_from_server(stream[:cut]) == [
        Passthrough(S2C, stream[: -len(parts[-1])], 49)
    ]
    assert conn.buffered(S2C) == len(parts[-1]) - 10
    assert conn.receive_from_server(stream[cut:]) == [Passthrough(S2C, parts[-1], 1)]


def test_runs_stop_at_migration_messages() -> None:
    conn = linked(ChannelType.DISPLAY)
    ordinary = [encode_data_message(HeaderKind.MINI, 102, bytes([n])) for n in range(4)]
    migrate = Migrate(MigrateFlags.NEED_FLUSH).encode(HeaderKind.MINI)
    data = MigrateData(b"DCMD").encode(HeaderKind.MINI)
    stream = ordinary[0] + ordinary[1] + migrate + data + ordinary[2] + ordinary[3]
    events = conn.receive_from_server(stream)
    assert [type(e) for e in events] == [Passthrough, Message, Message, Passthrough]
    assert events[0] == Passthrough(S2C, ordinary[0] + ordinary[1], 2)
    assert events[3] == Passthrough(S2C, ordinary[2] + ordinary[3], 2)
    assert isinstance(events[1], Message)
    assert events[1].migration == Migrate(MigrateFlags.NEED_FLUSH)
    assert isinstance(events[2], Message)
    assert events[2].migration == MigrateData(b"DCMD")


def test_whole_read_is_relayed_without_a_copy() -> None:
    conn = linked(ChannelType.DISPLAY)
    stream = encode_data_message(HeaderKind.MINI, 102, bytes(5000)) * 3
    (event,) = conn.receive_from_server(stream)
    assert event.raw is stream


def test_large_ordinary_message_in_small_reads() -> None:
    conn = linked(ChannelType.DISPLAY, mini=False)
    raw = encode_data_message(HeaderKind.FULL, 102, bytes(range(256)) * 4096, serial=1)
    events: list[Event] = []
    for i in range(0, len(raw), 4096):
        events.extend(conn.receive_from_server(raw[i : i + 4096]))
    assert events == [Passthrough(S2C, raw, 1)]
    assert conn.buffered(S2C) == 0


#: Valid migration messages of each direction on a display channel (the common types).
MIGRATION_UNITS = {
    S2C: [Migrate(MigrateFlags(3)), MigrateData(b"DCMD" * 3)],
    C2S: [MigrateFlushMark(), ClientMigrateData(b"sealed")],
}


@settings(max_examples=150, deadline=None)
@given(
    direction=st.sampled_from(Direction),
    mini=st.booleans(),
    plan=st.lists(
        st.one_of(
            st.tuples(st.integers(0, 0xFFFF), st.binary(max_size=40)),
            st.integers(0, 1),  # index into MIGRATION_UNITS
        ),
        max_size=30,
    ),
    data=st.data(),
)
def test_runs_and_messages_for_any_split(
    direction: Direction,
    mini: bool,
    plan: list[tuple[int, bytes] | int],
    data: st.DataObject,
) -> None:
    kind = HeaderKind.MINI if mini else HeaderKind.FULL
    expected: list[tuple[Direction, int, bytes, object]] = []
    for item in plan:
        if isinstance(item, int):
            migration = MIGRATION_UNITS[direction][item]
            unit = migration.encode(kind)
            expected.append((direction, migration.MSG_TYPE, unit, migration))
        elif migration_class(ChannelType.DISPLAY, direction, item[0]) is None:
            unit = encode_data_message(kind, item[0], item[1])
            expected.append((direction, item[0], unit, None))
    stream = b"".join(unit for _, _, unit, _ in expected)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))

    conn = linked(ChannelType.DISPLAY, mini=mini)
    receive = conn.receive_from_client if direction is C2S else conn.receive_from_server
    events: list[Event] = []
    for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        batch = receive(stream[start:end])
        # Within one read, ordinary messages in a row are one run.
        assert (Passthrough, Passthrough) not in pairwise(type(e) for e in batch)
        events.extend(batch)
    assert data_units(events, ChannelType.DISPLAY, kind) == expected
    assert raw_of(events, direction) == stream
    assert conn.buffered(direction) == 0


@pytest.mark.parametrize("channel", [ChannelType.MAIN, ChannelType.DISPLAY, 200])
@pytest.mark.parametrize("direction", list(Direction))
def test_migration_types_match_the_registry(channel: int, direction: Direction) -> None:
    every = {t for t in range(0x10000) if migration_class(channel, direction, t) is not None}
    assert _migration_types(channel, direction) == every


# --- capabilities --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("client_mini", "server_mini", "kind"),
    [
        (True, True, HeaderKind.MINI),
        (False, True, HeaderKind.FULL),  # spice-server reads such a client's headers as full
        (True, False, HeaderKind.FULL),  # spice-gtk reads such a server's headers as full
        (False, False, HeaderKind.FULL),
    ],
)
def test_mini_header_needs_both_caps(
    client_mini: bool, server_mini: bool, kind: HeaderKind
) -> None:
    conn = SpiceConnection()
    conn.receive_from_client(client_link(ChannelType.MAIN, mini_header=client_mini))
    conn.receive_from_server(server_link_reply(mini_header=server_mini))
    assert conn.header_kind is kind


@pytest.mark.parametrize(("client_sel", "server_sel"), [(True, False), (False, True)])
def test_one_sided_auth_selection_means_ticket_only(client_sel: bool, server_sel: bool) -> None:
    conn = SpiceConnection()
    conn.receive_from_client(client_link(ChannelType.MAIN, auth_selection=client_sel))
    conn.receive_from_server(server_link_reply(auth_selection=server_sel))
    (ticket,) = conn.receive_from_client(PLACEHOLDER_TICKET)
    assert isinstance(ticket, TicketReceived)


# --- link failures -------------------------------------------------------------------------


def test_error_reply_ends_the_link() -> None:
    conn = SpiceConnection()
    conn.receive_from_client(client_link(ChannelType.DISPLAY))
    events = conn.receive_from_server(server_link_reply(error=LinkError.NEED_SECURED))
    assert isinstance(events[-1], LinkReplyReceived)
    assert not events[-1].ok
    assert conn.state is ConnectionState.LINK_FAILED
    assert conn.header_kind is None
    with pytest.raises(ProtocolError, match="after the link ended with an error"):
        conn.receive_from_client(client_auth())


def test_error_result_ends_the_link() -> None:
    conn = SpiceConnection()
    steps = link_exchange(ChannelType.DISPLAY)[:3]
    feed(conn, steps)
    (event,) = conn.receive_from_server(encode_link_result(LinkError.BAD_CONNECTION_ID))
    assert isinstance(event, LinkResultReceived)
    assert event.result == LinkError.BAD_CONNECTION_ID
    assert not event.ok
    assert conn.state is ConnectionState.LINK_FAILED
    with pytest.raises(ProtocolError, match="after the link ended"):
        conn.receive_from_server(b"\0")


def test_early_error_result_before_the_ticket() -> None:
    # spice-server refuses an auth mechanism it does not offer right after the word.
    conn = SpiceConnection()
    feed(conn, link_exchange(ChannelType.MAIN)[:2])
    conn.receive_from_client(encode_auth_mechanism(1))
    (event,) = conn.receive_from_server(encode_link_result(LinkError.INVALID_DATA))
    assert isinstance(event, LinkResultReceived)
    assert conn.state is ConnectionState.LINK_FAILED


def test_ok_result_before_the_ticket_is_refused() -> None:
    conn = SpiceConnection()
    feed(conn, link_exchange(ChannelType.MAIN)[:2])
    conn.receive_from_client(encode_auth_mechanism(1) + PLACEHOLDER_TICKET[:100])
    with pytest.raises(
        ProtocolError, match="link result OK at offset 0 before the client's ticket"
    ):
        conn.receive_from_server(encode_link_result(LinkError.OK))


# --- refusals ------------------------------------------------------------------------------


def test_sasl_is_refused() -> None:
    conn = SpiceConnection()
    feed(conn, link_exchange(ChannelType.MAIN)[:2])
    with pytest.raises(ProtocolError, match="SASL is not supported by the gateway"):
        conn.receive_from_client(encode_auth_mechanism(2))
    assert conn.state is ConnectionState.BROKEN


def test_unknown_auth_mechanism_is_refused() -> None:
    conn = SpiceConnection()
    feed(conn, link_exchange(ChannelType.MAIN)[:2])
    with pytest.raises(ProtocolError, match="auth_mechanism at offset 0 is 3"):
        conn.receive_from_client(encode_auth_mechanism(3))


@pytest.mark.parametrize("prefix", [b"G", b"GET ", b"\x16\x03\x01", b"RE\0"])
def test_wrong_magic_is_refused_as_soon_as_it_shows(prefix: bytes) -> None:
    with pytest.raises(ProtocolError, match="client link header: field magic at offset 0"):
        SpiceConnection().receive_from_client(prefix)


def test_partial_magic_waits() -> None:
    conn = SpiceConnection()
    assert conn.receive_from_client(b"RE") == []
    assert conn.receive_from_client(b"DQ") == []
    assert conn.buffered(C2S) == 4


@pytest.mark.parametrize(
    ("header", "match"),
    [
        (b"REDQ" + struct.pack("<III", 1, 2, 18), "major_version at offset 4 is 1"),
        (b"REDQ" + struct.pack("<III", 2, 2, 17), "size at offset 12 is 17"),
        (b"REDQ" + struct.pack("<III", 2, 2, 5000), "size at offset 12 is 5000"),
    ],
)
def test_bad_client_link_header(header: bytes, match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        SpiceConnection().receive_from_client(header)


def test_bad_caps_in_client_link_message() -> None:
    mess = struct.pack("<IBBIII", 0, 1, 0, 2000, 0, 18)
    conn = SpiceConnection()
    with pytest.raises(ProtocolError, match="num_common_caps at offset 6 is 2000") as info:
        conn.receive_from_client(b"REDQ" + struct.pack("<III", 2, 2, 18) + mess)
    assert "client->server link message at stream offset 16" in str(info.value)


def test_bad_server_reply_header() -> None:
    conn = SpiceConnection()
    conn.receive_from_client(client_link(ChannelType.MAIN))
    with pytest.raises(ProtocolError, match="server link header: field magic"):
        conn.receive_from_server(b"HTTP/1.1 400")


def test_server_must_not_speak_first() -> None:
    conn = SpiceConnection()
    conn.receive_from_client(client_link(ChannelType.MAIN)[:20])
    with pytest.raises(ProtocolError, match="server sent 4 bytes before the other side's link"):
        conn.receive_from_server(b"REDQ")


def test_client_must_wait_for_the_reply() -> None:
    conn = SpiceConnection()
    conn.receive_from_client(client_link(ChannelType.MAIN))
    with pytest.raises(ProtocolError, match="client sent 4 bytes before the other side's link"):
        conn.receive_from_client(encode_auth_mechanism(1))


def test_client_must_wait_for_the_result() -> None:
    conn = SpiceConnection()
    feed(conn, link_exchange(ChannelType.MAIN)[:3])
    with pytest.raises(ProtocolError, match="client sent 6 bytes before"):
        conn.receive_from_client(MigrateFlushMark().encode(HeaderKind.MINI))


def test_client_may_not_send_more_with_its_link_message() -> None:
    with pytest.raises(ProtocolError, match="client sent 1 bytes before"):
        SpiceConnection().receive_from_client(client_link(ChannelType.MAIN) + b"\x01")


@pytest.mark.parametrize("mini", [True, False])
def test_oversized_message_refused_at_its_header(mini: bool) -> None:
    conn = SpiceConnection(max_message_size=1000)
    feed(conn, link_exchange(ChannelType.DISPLAY, mini_header=mini))
    kind = HeaderKind.MINI if mini else HeaderKind.FULL
    fits = encode_data_message(kind, 2, bytes(1000))
    assert len(conn.receive_from_server(fits)) == 1
    too_big = encode_data_message(kind, 2, bytes(1001))
    at = 2 if mini else 10
    with pytest.raises(
        ProtocolError, match=f"field size at offset {at} is 1001, more than the max"
    ):
        conn.receive_from_server(too_big[: kind.size])  # the body never needs to arrive


@pytest.mark.parametrize("whole", [True, False], ids=["whole", "header-only"])
@pytest.mark.parametrize("mini", [True, False])
def test_oversized_message_after_a_run_names_its_own_offset(mini: bool, whole: bool) -> None:
    conn = SpiceConnection(max_message_size=1000)
    link = link_exchange(ChannelType.DISPLAY, mini_header=mini)
    feed(conn, link)
    kind = HeaderKind.MINI if mini else HeaderKind.FULL
    run = b"".join(encode_data_message(kind, 102, bytes(n)) for n in (0, 1000, 7))
    too_big = encode_data_message(kind, 103, bytes(1001))
    start = len(by_direction(link, S2C))  # where the server's data stage begins
    with pytest.raises(ProtocolError) as info:
        conn.receive_from_server(run + (too_big if whole else too_big[: kind.size + 1]))
    assert f"data message at stream offset {start + len(run)}: " in str(info.value)
    assert "is 1001, more than the maximum message size 1000 (type 103)" in str(info.value)


def test_malformed_migration_message_names_where() -> None:
    conn = linked(ChannelType.MAIN)
    bad = encode_data_message(HeaderKind.MINI, 116, struct.pack("<HHIIIII", 1, 2, 5, 24, 0, 0, 1))
    with pytest.raises(ProtocolError) as info:
        conn.receive_from_server(bad)
    message = str(info.value)
    assert "main:0 channel, server->client data message at stream offset 202" in message
    assert "message type 116: MigrateBeginSeamless: host at body offset 24 with 5 bytes" in message
    # After a run of ordinary messages in the same read, the offset is still the message's own.
    conn = linked(ChannelType.MAIN)
    run = encode_data_message(HeaderKind.MINI, 3, struct.pack("<II", 1, 20)) * 3
    with pytest.raises(ProtocolError, match=f"data message at stream offset {202 + len(run)}: "):
        conn.receive_from_server(run + bad)


def test_refuses_everything_after_an_error() -> None:
    conn = SpiceConnection()
    with pytest.raises(ProtocolError):
        conn.receive_from_client(b"XXXX")
    for receive in (conn.receive_from_client, conn.receive_from_server):
        with pytest.raises(ProtocolError, match="connection already failed, input refused"):
            receive(b"REDQ")
    assert conn.state is ConnectionState.BROKEN


def test_max_message_size_is_checked() -> None:
    with pytest.raises(ConfigError):
        SpiceConnection(max_message_size=-1)
    with pytest.raises(ConfigError):
        SpiceConnection(max_message_size=2**32)


# --- arbitrary input -----------------------------------------------------------------------


@given(st.binary(max_size=400), st.integers(1, 64))
def test_arbitrary_client_bytes_from_the_start(data: bytes, step: int) -> None:
    conn = SpiceConnection()
    events: list[Event] = []
    try:
        for i in range(0, len(data), step):
            events.extend(conn.receive_from_client(data[i : i + step]))
    except GatewayError:
        assert conn.state is ConnectionState.BROKEN
    # Whatever was accepted is an exact prefix of the input.
    assert data.startswith(raw_of(events, C2S))


@given(st.binary(min_size=1, max_size=200))
def test_arbitrary_server_bytes_before_the_link_message(data: bytes) -> None:
    with pytest.raises(ProtocolError):
        SpiceConnection().receive_from_server(data)


@given(
    stage=st.integers(0, 3),
    direction=st.sampled_from(Direction),
    mini=st.booleans(),
    channel=st.sampled_from([ChannelType.MAIN, ChannelType.DISPLAY, 200]),
    data=st.binary(max_size=600),
    step=st.integers(1, 100),
)
def test_arbitrary_bytes_after_a_valid_prefix(
    stage: int, direction: Direction, mini: bool, channel: int, data: bytes, step: int
) -> None:
    conn = SpiceConnection(max_message_size=4096)
    feed(conn, link_exchange(channel, mini_header=mini)[: stage + 1])
    receive = conn.receive_from_client if direction is C2S else conn.receive_from_server
    events: list[Event] = []
    try:
        for i in range(0, len(data), step):
            events.extend(receive(data[i : i + step]))
    except GatewayError:
        assert conn.state is ConnectionState.BROKEN
        assert data.startswith(raw_of(events, direction))
        return
    assert raw_of(events, direction) + data[len(data) - conn.buffered(direction) :] == data


def test_a_linked_connection_stays_small() -> None:
    """A proxy holds one connection object per channel, thousands at once: no per-instance
    dict, and nothing per instance that grows with the number of parser stages."""
    conn = linked(ChannelType.DISPLAY)
    assert not hasattr(conn, "__dict__")
    with pytest.raises(AttributeError):
        conn.unexpected = 1  # type: ignore[attr-defined]


# --- streaming: runs relayed as views of a reused receive buffer ----------------------------------

Item = Event | memoryview


def streamed(conn: SpiceConnection, direction: Direction, pieces: list[bytes]) -> list[object]:
    """Every piece through ``receive_streaming`` from one buffer that is overwritten after each
    call, as a proxy's receive buffer is; views are copied out at once, as a relay writes them."""
    buffer = bytearray(max((len(p) for p in pieces), default=0))
    out: list[object] = []
    for piece in pieces:
        buffer[: len(piece)] = piece
        items = conn.receive_streaming(direction, memoryview(buffer)[: len(piece)])
        out += [item.tobytes() if isinstance(item, memoryview) else item for item in items]
        buffer[:] = b"\xee" * len(buffer)
    return out


def merged(items: list[object]) -> list[object]:
    """Runs of ordinary messages (Passthrough events or relayed bytes) joined where adjacent:
    how runs fall may differ between the two APIs, what they carry and where not."""
    out: list[object] = []
    for item in items:
        run = item.raw if isinstance(item, Passthrough) else item
        if isinstance(run, bytes) and out and isinstance(out[-1], bytes):
            out[-1] += run
        else:
            out.append(run)
    return out


def pieces_of(stream: bytes, cuts: list[int]) -> list[bytes]:
    return [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]


@settings(max_examples=150, deadline=None)
@given(
    direction=st.sampled_from(Direction),
    mini=st.booleans(),
    limit=st.sampled_from([1 << 20, 48]),
    plan=st.lists(
        st.one_of(
            st.tuples(st.integers(0, 0xFFFF), st.binary(max_size=60)),
            st.integers(0, 1),  # index into MIGRATION_UNITS
        ),
        max_size=30,
    ),
    data=st.data(),
)
def test_streaming_gives_the_plain_events_for_any_split(
    direction: Direction,
    mini: bool,
    limit: int,
    plan: list[tuple[int, bytes] | int],
    data: st.DataObject,
) -> None:
    kind = HeaderKind.MINI if mini else HeaderKind.FULL
    units = [
        MIGRATION_UNITS[direction][item].encode(kind)
        if isinstance(item, int)
        else encode_data_message(kind, item[0], item[1])
        for item in plan
    ]
    stream = b"".join(units)
    pieces = pieces_of(stream, sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8))))
    plain, streaming = SpiceConnection(max_message_size=limit), SpiceConnection(
        max_message_size=limit
    )
    for conn in (plain, streaming):
        feed(conn, link_exchange(ChannelType.DISPLAY, mini_header=mini))
    receive = plain.receive_from_client if direction is C2S else plain.receive_from_server
    expected: list[object] = []
    refusal: str | None = None
    try:
        for piece in pieces:
            expected += receive(piece)
    except ProtocolError as error:
        refusal = str(error)
    if refusal is not None:
        # The same refusal, with the same offset.
        with pytest.raises(ProtocolError) as caught:
            streamed(streaming, direction, pieces)
        assert str(caught.value) == refusal
        return
    assert merged(streamed(streaming, direction, pieces)) == merged(expected)
    assert streaming.buffered(direction) == plain.buffered(direction)


def test_streamed_runs_are_views_of_the_input() -> None:
    conn = linked(ChannelType.DISPLAY)
    stream = encode_data_message(HeaderKind.MINI, 102, bytes(5000)) * 3
    buffer = bytearray(stream + b"\0\0")  # a partial header after the whole messages
    (run,) = conn.receive_streaming(S2C, memoryview(buffer))
    assert isinstance(run, memoryview)
    assert run.obj is buffer
    assert run == stream
    assert conn.buffered(S2C) == 2


def test_streaming_completes_a_held_message_with_what_it_lacks_only() -> None:
    conn = linked(ChannelType.DISPLAY)
    first = encode_data_message(HeaderKind.MINI, 102, bytes(range(200)))
    rest = encode_data_message(HeaderKind.MINI, 103, b"x" * 300) * 2
    assert conn.receive_streaming(S2C, memoryview(first[:50])) == []
    buffer = bytearray(first[50:] + rest)
    held, run = conn.receive_streaming(S2C, memoryview(buffer))
    # The held message, completed: a copy of its own, not a view of the caller's buffer.
    assert isinstance(held, memoryview)
    assert held.obj is not buffer
    assert held == first
    # Everything after the held message is relayed from the caller's buffer, uncopied.
    assert isinstance(run, memoryview)
    assert run.obj is buffer
    assert run == rest
    assert conn.buffered(S2C) == 0


def test_streaming_in_the_link_stage_is_the_plain_api() -> None:
    plain, streaming = SpiceConnection(), SpiceConnection()
    for direction, unit in link_exchange(ChannelType.DISPLAY):
        receive = plain.receive_from_client if direction is C2S else plain.receive_from_server
        assert streaming.receive_streaming(direction, memoryview(bytearray(unit))) == receive(
            unit
        )
    assert streaming.state is ConnectionState.ESTABLISHED


def test_streaming_refusal_names_the_stream_offset() -> None:
    conn = linked(ChannelType.DISPLAY)
    ordinary = encode_data_message(HeaderKind.MINI, 102, bytes(10))
    oversized = struct.pack("<HI", 102, conn.max_message_size + 1)
    with pytest.raises(ProtocolError) as plain:
        linked(ChannelType.DISPLAY).receive_from_server(ordinary + oversized)
    linked_at = len(by_direction(link_exchange(ChannelType.DISPLAY), S2C))
    assert f"at stream offset {linked_at + len(ordinary)}:" in str(plain.value)
    with pytest.raises(ProtocolError) as caught:
        conn.receive_streaming(S2C, memoryview(ordinary + oversized))
    assert str(caught.value) == str(plain.value)
    with pytest.raises(ProtocolError, match="already failed"):
        conn.receive_streaming(S2C, memoryview(ordinary))


def test_a_large_message_is_read_into_a_room_of_its_own() -> None:
    conn = linked(ChannelType.DISPLAY)
    body = bytes(range(256)) * 4096  # 1 MiB
    message = encode_data_message(HeaderKind.MINI, 102, body)
    after = encode_data_message(HeaderKind.MINI, 103, b"next")
    assert conn.room(S2C, 1000) is None  # nothing partial
    assert conn.receive_streaming(S2C, memoryview(message[:1000])) == []
    # Not before a quarter of it is in: the header alone claims nothing.
    assert conn.room(S2C, len(message)) is None
    assert conn.buffered(S2C) == 1000
    quarter = -(-len(message) // ROOM_SHARE)
    assert conn.receive_streaming(S2C, memoryview(message[1000 : quarter - 1])) == []
    assert conn.room(S2C, len(message)) is None
    assert conn.receive_streaming(S2C, memoryview(message[quarter - 1 : quarter])) == []
    assert conn.room(S2C, len(message) + 1) is None  # smaller than asked for
    room = conn.room(S2C, len(message))
    assert room is not None
    assert len(room) == len(message) - quarter
    # The room is counted whole: it is allocated whole.
    assert conn.buffered(S2C) == len(message)
    for start in range(0, len(room) - 4096, 4096):
        room[start : start + 4096] = message[quarter + start : quarter + start + 4096]
        assert conn.filled(S2C, 4096) == []
    # The next call hands out what is still missing, from where the reads stopped.
    tail = conn.room(S2C, len(message))
    assert tail is not None
    assert len(tail) < 4096
    tail[:] = message[len(message) - len(tail) :]
    (whole_message,) = conn.filled(S2C, len(tail))
    assert isinstance(whole_message, memoryview)
    assert whole_message == message
    assert conn.buffered(S2C) == 0
    # The stream offset went on past the message.
    (run,) = conn.receive_streaming(S2C, memoryview(after))
    assert run == after
    offset = len(by_direction(link_exchange(ChannelType.DISPLAY), S2C)) + len(message + after)
    with pytest.raises(ProtocolError, match=f"at stream offset {offset}:"):
        conn.receive_streaming(S2C, memoryview(struct.pack("<HI", 1, 1 << 30)))


def test_bytes_for_a_room_that_come_another_way_fill_it() -> None:
    conn = linked(ChannelType.DISPLAY)
    message = encode_data_message(HeaderKind.MINI, 102, bytes(range(256)) * 1024)
    after = encode_data_message(HeaderKind.MINI, 103, b"next")
    part = len(message) // 2
    conn.receive_streaming(S2C, memoryview(message[:part]))
    assert conn.room(S2C, 1) is not None
    assert conn.receive_streaming(S2C, memoryview(message[part : part + 5000])) == []
    done = conn.receive_streaming(S2C, memoryview(message[part + 5000 :] + after))
    assert [bytes(item) for item in done if isinstance(item, memoryview)] == [message, after]
    assert conn.buffered(S2C) == 0


def test_a_header_claiming_a_huge_message_holds_only_what_was_sent() -> None:
    # A peer that sends headers of the largest messages and then little else must not make the
    # proxy reserve (and count against its memory budget) the messages' full size.
    conn = linked(ChannelType.DISPLAY)  # max_message_size: 64 MiB by default
    header = struct.pack("<HI", 102, (64 << 20) - 6)
    assert conn.receive_streaming(S2C, memoryview(header + bytes(4096))) == []
    assert conn.room(S2C, 1) is None
    assert conn.buffered(S2C) == len(header) + 4096


def test_migration_messages_get_no_room() -> None:
    conn = linked(ChannelType.DISPLAY)
    data = MigrateData(b"DCMD" + bytes(5000)).encode(HeaderKind.MINI)
    conn.receive_streaming(S2C, memoryview(data[:100]))
    # It is decoded from the connection's own buffer, as ever.
    assert conn.room(S2C, 1) is None
    (message,) = conn.receive_streaming(S2C, memoryview(data[100:]))
    assert isinstance(message, Message)
    assert message.raw == data
