"""The rules that tie a state to what the target will do with it.

Each family below was seen to abort the destination QEMU, corrupt its memory or silence the
guest agent for the session when the gateway accepted it (spice-migration-data.md §13): the
display surface list read in the other format, usbredir bytes QEMU's parser stops at, VSC
messages the passthru card cannot hold, agent bytes and reader states the agent cannot follow.
"""

from __future__ import annotations

import random
import struct
from typing import Any

import pytest
from hypothesis import given
from pydantic import ValidationError

from gateway import native
from gateway.errors import ConfigError, SchemaViolation
from gateway.proxy.config import parse_config
from schemas import (
    AgentReadState,
    ChannelType,
    CharDeviceState,
    DisplayState,
    LossyRect,
    LossySurface,
    MainState,
    SmartcardState,
    SurfacesLossless,
    SurfacesLossy,
    UsbredirState,
)
from schemas.display import reads_lossy_list
from schemas.streams import (
    USBREDIR_CAPS,
    VSC_MAX_MESSAGE,
    check_usbredir_stream,
    check_vdi_chunks,
    check_vsc_stream,
    usbredir_bulk_in,
    usbredir_packet,
    vdi_chunk,
    vsc_message,
)
from tests.strategies import budget, usbredir_streams, vsc_streams
from tests.test_native_vectors import vector

MIB = 1024 * 1024


def device(write: bytes, tokens: int = 0, **fields: Any) -> CharDeviceState:
    values: dict[str, Any] = {
        "connected": True,
        "num_client_tokens": 0xFFFF_FFFF,
        "num_send_tokens": 0xFFFF_FFFF,
        "write_size": len(write),
        "write_num_client_tokens": tokens,
        "write_data": write,
    }
    return CharDeviceState(**(values | fields))


def refused(check: Any, data: bytes, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        check(data)


# --- display: the list in the format the target reads --------------------------------------

DISPLAY = vector("display-lossy").state
assert isinstance(DISPLAY, DisplayState)


def _display(low_bandwidth: bool, surfaces: SurfacesLossless | SurfacesLossy) -> DisplayState:
    return DISPLAY.model_copy(update={"low_bandwidth": low_bandwidth, "surfaces": surfaces})


LOSSY_TWO = SurfacesLossy(
    surfaces=(
        LossySurface(id=0, lossy_rect=LossyRect(left=0, top=0, right=720, bottom=400)),
        LossySurface(id=1, lossy_rect=LossyRect(left=65_536, top=0, right=65_536, bottom=0)),
    )
)


@pytest.mark.parametrize(
    ("setting", "low_bandwidth", "lossy"),
    [
        ("auto", False, False),
        ("auto", True, True),
        ("always", False, True),
        ("always", True, True),
        ("never", False, False),
        ("never", True, False),
    ],
)
def test_which_list_a_target_reads(setting: Any, low_bandwidth: bool, lossy: bool) -> None:
    """dcc.cpp: lossy iff enable_jpeg; auto follows the body's low_bandwidth."""
    assert reads_lossy_list(setting, low_bandwidth) is lossy
    for surfaces in (LOSSY_TWO, SurfacesLossless(ids=(0, 1))):
        data = native.encode(_display(low_bandwidth, surfaces), jpeg_wan_compression=setting)
        entry = 20 if lossy else 4
        assert len(data) == 84 + 2 * entry
        decoded = native.decode(ChannelType.DISPLAY, data)
        assert isinstance(decoded, DisplayState)
        assert decoded.surfaces.kind == ("lossy" if lossy else "lossless")
        assert [s.id for s in getattr(decoded.surfaces, "surfaces", ())] or list(
            getattr(decoded.surfaces, "ids", ())
        ) == [0, 1]


def test_always_source_to_auto_target_becomes_lossless_ids() -> None:
    """What killed a default target: low_bandwidth 0 and a lossy list of two surfaces (ids
    read from the rects: surface 0 twice; with left 65536, a write 64 KiB past the array)."""
    state = _display(False, LOSSY_TWO)
    data = native.encode(state, jpeg_wan_compression="auto")
    assert data[80:] == struct.pack("<III", 2, 0, 1)
    # Without the target's setting, the source's bytes stay as they were.
    assert native.encode(state)[80:84] == struct.pack("<I", 2)
    assert len(native.encode(state)) == 84 + 40


def test_lossless_to_lossy_is_exact() -> None:
    """A lossless entry means an empty lossy region: an empty rect says the same."""
    state = _display(True, SurfacesLossless(ids=tuple(range(1024))))
    converted = state.for_target("auto")
    assert isinstance(converted.surfaces, SurfacesLossy)
    assert [s.id for s in converted.surfaces.surfaces] == list(range(1024))
    assert {s.lossy_rect for s in converted.surfaces.surfaces} == {
        LossyRect(left=0, top=0, right=0, bottom=0)
    }
    assert len(native.encode(converted)) == 84 + 1024 * 20
    # An empty list is the same four bytes either way.
    empty = _display(True, SurfacesLossless(ids=()))
    assert empty.for_target("always") is empty


def test_a_matching_list_is_left_alone() -> None:
    lossy = _display(True, LOSSY_TWO)
    assert lossy.for_target("auto") is lossy
    lossless = _display(False, SurfacesLossless(ids=(0,)))
    assert lossless.for_target("never") is lossless


def test_route_setting_defaults_to_auto_and_is_checked() -> None:
    base = """host_id = "h"
keyring = "k"
replay_db = "r"
[[routes]]
name = "vm"
listen = "127.0.0.1:5901"
upstream = "127.0.0.1:15901"
vm_id = "9b1c1f1e-5a38-4d3f-a3f0-6a2b8d1c7e42"
"""
    assert parse_config(base.encode()).routes[0].jpeg_wan_compression == "auto"
    for value in ("always", "never", "auto"):
        text = base + f'jpeg_wan_compression = "{value}"\n'
        assert parse_config(text.encode()).routes[0].jpeg_wan_compression == value
    with pytest.raises(ConfigError, match="jpeg_wan_compression"):
        parse_config((base + 'jpeg_wan_compression = "sometimes"\n').encode())


# --- usbredir --------------------------------------------------------------------------------


def hello(caps: int = USBREDIR_CAPS) -> bytes:
    body = b"usbredir 0.13.0".ljust(64, b"\0") + struct.pack("<I", caps)
    return struct.pack("<III", 0, len(body), 0) + body


@budget(100)
@given(stream=usbredir_streams())
def test_well_formed_usbredir_streams_pass(stream: bytes) -> None:
    check_usbredir_stream(stream)
    UsbredirState(device=device(stream))


def test_usbredir_measured_states() -> None:
    """§13: 64 bytes and 1 MiB + 64 bytes of 0x41 (abort on the next read); 32 MiB of
    well-formed bulk packets (taken)."""
    refused(check_usbredir_stream, b"\x41" * 64, "offset 0")
    refused(check_usbredir_stream, b"\x41" * (MIB + 64), "offset 0")
    packet = usbredir_bulk_in(bytes(MIB - 26))
    stream = packet * 32
    assert len(stream) == 32 * MIB
    UsbredirState(device=device(stream, tokens=32))


def test_every_truncation_of_a_usbredir_stream_is_refused() -> None:
    stream = hello() + usbredir_bulk_in(b"abc") + usbredir_packet(8, b"\0\1", packet_id=9)
    check_usbredir_stream(stream)
    boundaries = {0, len(hello()), len(hello()) + len(usbredir_bulk_in(b"abc")), len(stream)}
    for length in range(1, len(stream)):
        if length in boundaries:
            check_usbredir_stream(stream[:length])
        else:
            refused(check_usbredir_stream, stream[:length], "usbredir")


def test_bit_flips_in_a_usbredir_stream_are_refused_or_well_formed() -> None:
    """A flip either breaks the stream (refused) or leaves one QEMU still parses whole."""
    stream = usbredir_bulk_in(b"0123456789") + usbredir_packet(
        103, struct.pack("<BBH", 0x82, 0, 2), b"hi"
    )
    rng = random.Random(9)
    messages = []
    for _ in range(400):
        flipped = bytearray(stream)
        bit = rng.randrange(len(stream) * 8)
        flipped[bit // 8] ^= 1 << (bit % 8)
        try:
            check_usbredir_stream(bytes(flipped))
        except ValueError as error:  # anything else (IndexError, struct.error) fails the test
            messages.append(str(error))
    assert messages
    assert all(message.startswith("usbredir packet") for message in messages)


@pytest.mark.parametrize(
    ("stream", "words"),
    [
        (usbredir_packet(6, b"\1"), "type 6 is not one a usb host sends"),  # set_configuration
        (usbredir_packet(22, b""), "type 22"),  # filter_reject: guest to host only
        (usbredir_packet(999, b""), "type 999"),
        (usbredir_packet(2, b"\0"), "length 1 for type 2"),
        (usbredir_packet(8, b"\0"), "length 1 for type 8"),
        (usbredir_packet(4, struct.pack("<I", 33) + bytes(128)), "more than 32 interfaces"),
        (usbredir_packet(17, b"\0\x01"), "output endpoint"),
        (usbredir_packet(23, b"1,2,3"), "NUL-terminated"),
        (usbredir_bulk_in(b"abc")[:-1] + b"", "runs past the end"),
        (
            usbredir_packet(101, struct.pack("<BBHIH", 0x81, 0, 5, 0, 0), b"abc"),
            "3 data bytes, the header announces 5",
        ),
        (
            usbredir_packet(101, struct.pack("<BBHIH", 0x01, 0, 3, 0, 0), b"abc"),
            "output endpoint",
        ),
        (usbredir_packet(102, struct.pack("<BBH", 0x02, 0, 0)), "output endpoint"),
        (
            usbredir_packet(101, struct.pack("<BBHIH", 0x01, 0, 0, 0, 0x0801)),
            "bulk length",
        ),
        (
            usbredir_packet(2, b"") + usbredir_packet(0, hello()[12:]),
            "hello after the first packet",
        ),
        (hello(caps=USBREDIR_CAPS & ~(1 << 5)), "capabilities"),
        (struct.pack("<III", 0, 10, 0) + bytes(10), "hello of length 10"),
        (struct.pack("<IIQ", 101, 0xFFFF_FFFF, 0), "over the limit"),
    ],
)
def test_usbredir_refusals(stream: bytes, words: str) -> None:
    refused(check_usbredir_stream, stream, words)


def test_usbredir_rule_holds_after_authentication_and_in_encode() -> None:
    """The target validates the model it opened, and native.encode re-checks a family model."""
    with pytest.raises(ValidationError, match="usbredir packet at offset 0"):
        UsbredirState.model_validate({"device": device(b"\x41" * 64).model_dump()})
    from schemas import SpicevmcState

    port_state = SpicevmcState(device=device(b"\x41" * 64))
    native.encode(port_state, ChannelType.PORT)
    native.encode(port_state, ChannelType.WEBDAV)
    with pytest.raises(SchemaViolation, match="usbredir"):
        native.encode(port_state, ChannelType.USBREDIR)


# --- smartcard -------------------------------------------------------------------------------


@budget(100)
@given(stream=vsc_streams())
def test_well_formed_vsc_streams_pass(stream: bytes) -> None:
    check_vsc_stream(stream)


def test_vsc_limits() -> None:
    check_vsc_stream(vsc_message(7, 0, bytes(VSC_MAX_MESSAGE)))
    refused(check_vsc_stream, vsc_message(7, 0, bytes(VSC_MAX_MESSAGE + 1)), "length 65525")
    # §13: one 1 MiB VSC message made the card log 5,461 "unexpected message" lines.
    refused(check_vsc_stream, vsc_message(7, 0, bytes(MIB)), "over the card")
    refused(check_vsc_stream, vsc_message(0, 0, b""), "unknown type 0")
    refused(check_vsc_stream, vsc_message(10, 0, b""), "unknown type 10")
    whole = vsc_message(7, 0, b"abcd") + vsc_message(5, 0, b"atr")
    for length in range(1, len(whole)):
        if length != 16:
            refused(check_vsc_stream, whole[:length], "VSC message")


def test_smartcard_model_checks_its_pending_bytes() -> None:
    smartcard = vector("smartcard-full").state
    assert isinstance(smartcard, SmartcardState)
    data = smartcard.model_dump()
    data["device"] = device(b"\0" * 13, tokens=1).model_dump()
    with pytest.raises(ValidationError, match="VSC message"):
        SmartcardState.model_validate(data)


# --- main: the agent --------------------------------------------------------------------------

MAIN = vector("main-full").state
assert isinstance(MAIN, MainState)


def _main(**updates: Any) -> dict[str, Any]:
    data = MAIN.model_dump()
    for path, value in updates.items():
        node = data
        *parents, name = path.split("__")
        for part in parents:
            node = node[part]
        node[name] = value
    return data


def test_vdi_chunks() -> None:
    assert check_vdi_chunks(vdi_chunk(1, b"a") + vdi_chunk(2, b"bb") + vdi_chunk(1, b"c")) == 2
    refused(check_vdi_chunks, vdi_chunk(0, b"a"), "port 0")
    refused(check_vdi_chunks, vdi_chunk(3, b"a"), "port 3")
    refused(check_vdi_chunks, vdi_chunk(1, b""), "size 0")
    refused(check_vdi_chunks, vdi_chunk(1, bytes(2049)), "size 2049")
    check_vdi_chunks(vdi_chunk(1, bytes(2048)))
    whole = vdi_chunk(1, b"abcd")
    for length in range(1, len(whole)):
        refused(check_vdi_chunks, whole[:length], "VDI chunk")


@pytest.mark.parametrize(
    ("updates", "words"),
    [
        # §13: each of these left the destination with no agent traffic for the session.
        ({"agent__num_send_tokens": 0}, "num_send_tokens 0"),
        (
            {"agent_to_client__chunk_size": 0},
            "partial message header in a chunk with no bytes left",
        ),
        (
            {
                "agent_to_client__chunk_header_size": 7,
                "agent_to_client__msg_header_done": True,
                "agent_to_client__msg_header_partial_len": 0,
                "agent_to_client__msg_header_partial": b"",
            },
            "msg_header_done with a partial chunk header",
        ),
        # Pending agent bytes that are not VDI-framed: vdagentd loses sync and reconnects.
        (
            {
                "agent__write_data": b"\x41" * 68,
            },
            "VDI chunk at offset 0",
        ),
        (
            {"agent__write_num_client_tokens": 1, "agent__num_client_tokens": 7},
            "2 client chunks but write_num_client_tokens is 1",
        ),
        ({"agent_to_client__chunk_port": 7}, "chunk port 7"),
    ],
)
def test_agent_refusals(updates: dict[str, Any], words: str) -> None:
    with pytest.raises(ValidationError, match=words):
        MainState.model_validate(_main(**updates))


def test_agent_states_a_real_source_writes_pass() -> None:
    # The client never started the agent: no send window yet.
    MainState.model_validate(_main(client_agent_started=False, agent__num_send_tokens=0))
    # Between chunks: the left-over header fields stay whatever they were.
    AgentReadState.model_validate(
        _main(
            agent_to_client__chunk_header_size=0,
            agent_to_client__chunk_port=0,
            agent_to_client__chunk_size=33_554_460,
            agent_to_client__msg_header_partial_len=0,
            agent_to_client__msg_header_partial=b"",
        )["agent_to_client"]
    )
    # In the middle of a message, header done.
    MainState.model_validate(
        _main(
            agent_to_client__msg_header_done=True,
            agent_to_client__msg_header_partial_len=0,
            agent_to_client__msg_header_partial=b"",
            agent_to_client__chunk_size=0,
        )
    )
