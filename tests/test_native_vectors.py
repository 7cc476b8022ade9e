"""Known-answer vectors for every channel's native payload, written from the format facts.

Each vector is assembled field by field with ``struct.pack``; the comment on each piece is its
body offset (offset from the first byte of the magic) in the facts' tables (§1.3, §2.1, §4.1 to
§4.6). ``decode(vector) == model`` and ``encode(model) == vector`` byte for byte. The idle
vectors have the sizes a real spice-server 0.15.1 sends for an idle guest.

Other modules import ``VECTORS`` / ``vector()`` for populated payloads to damage.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from gateway import native
from schemas import (
    AgentReadState,
    AgentWriteState,
    ChannelType,
    CharDeviceState,
    DisplayState,
    GlzDictionary,
    InputsState,
    LossyRect,
    LossySurface,
    MainState,
    SmartcardState,
    SpicevmcState,
    StateModel,
    SurfacesLossless,
    SurfacesLossy,
    UsbredirState,
)
from schemas.streams import vdi_chunk


def vdi_fill(size: int) -> bytes:
    """``size`` bytes of whole VDI chunks from spice-server itself (port 2: no client token)."""
    out = b""
    while size:
        # A chunk is 9 to 8 + 2048 bytes; never leave a remainder too short for one.
        take = min(size, 8 + 2048)
        if 0 < size - take < 9:
            take = size - 9
        out += vdi_chunk(2, bytes(take - 8))
        size -= take
    return out


def pack(fmt: str, *values: int) -> bytes:
    """Little-endian, packed: how every field of the payloads is laid out (§1.1)."""
    return struct.pack("<" + fmt, *values)


def char_device(
    *,
    connected: int,
    client_tokens: int = 0,
    send_tokens: int = 0,
    write_size: int = 0,
    write_tokens: int = 0,
    write_ptr: int = 0,
    version: int = 1,
) -> bytes:
    """``SpiceMigrateDataCharDevice`` at body offset 8 (§2.1)."""
    return (
        pack("I", version)  # 8 version
        + pack("B", connected)  # 12 connected
        + pack("I", client_tokens)  # 13 num_client_tokens
        + pack("I", send_tokens)  # 17 num_send_tokens
        + pack("I", write_size)  # 21 write_size
        + pack("I", write_tokens)  # 25 write_num_client_tokens
        + pack("I", write_ptr)  # 29 write_data_ptr
    )


EMPTY_DEVICE = CharDeviceState(
    connected=False,
    num_client_tokens=0,
    num_send_tokens=0,
    write_size=0,
    write_num_client_tokens=0,
    write_data=b"",
)
NO_FLOW_CONTROL = 0xFFFF_FFFF


@dataclass(frozen=True)
class Vector:
    name: str
    channel: ChannelType
    data: bytes
    state: StateModel


VECTORS: list[Vector] = []


def _add(name: str, channel: ChannelType, data: bytes, state: StateModel) -> None:
    VECTORS.append(Vector(name, channel, data, state))


def vector(name: str) -> Vector:
    """The vector called ``name``."""
    for item in VECTORS:
        if item.name == name:
            return item
    raise KeyError(name)


# --- main (§4.1) ---------------------------------------------------------------------------

# No agent on the source: the empty char-device record and 32 zero bytes; 65 bytes.
_add(
    "main-idle",
    ChannelType.MAIN,
    b"MNMD"  # 0 magic
    + pack("I", 1)  # 4 version
    + char_device(connected=0)  # 8..32 agent_base, "empty"
    + pack("B", 0)  # 33 client_agent_started
    + pack("I", 0)  # 34 agent2client.chunk_header_size
    + pack("I", 0)  # 38 agent2client.chunk_header.port
    + pack("I", 0)  # 42 agent2client.chunk_header.size
    + pack("B", 0)  # 46 agent2client.msg_header_done
    + pack("I", 0)  # 47 agent2client.msg_header_partial_len
    + pack("I", 0)  # 51 agent2client.msg_header_ptr
    + pack("I", 0)  # 55 agent2client.msg_remaining
    + pack("B", 0)  # 59 agent2client.msg_filter_result
    + pack("I", 0)  # 60 client2agent.msg_remaining
    + pack("B", 0),  # 64 client2agent.msg_filter_result
    MainState(
        agent=EMPTY_DEVICE,
        client_agent_started=False,
        agent_to_client=AgentReadState(
            chunk_header_size=0,
            chunk_port=0,
            chunk_size=0,
            msg_header_done=False,
            msg_header_partial_len=0,
            msg_header_partial=b"",
            msg_remaining=0,
            msg_filter_result=0,
        ),
        client_to_agent=AgentWriteState(msg_remaining=0, msg_filter_result=0),
    ),
)

# A live agent with nothing queued, between two chunks: the chunk header fields are left over
# from the last complete chunk (a real source leaves them non-zero); 65 bytes.
_add(
    "main-agent-between-chunks",
    ChannelType.MAIN,
    b"MNMD"  # 0 magic
    + pack("I", 1)  # 4 version
    + char_device(connected=1, client_tokens=10, send_tokens=NO_FLOW_CONTROL - 3)  # 8..32
    + pack("B", 1)  # 33 client_agent_started
    + pack("I", 0)  # 34 chunk_header_size: no byte of the next header read yet
    + pack("I", 1)  # 38 chunk_header.port (left over)
    + pack("I", 33_554_460)  # 42 chunk_header.size (left over)
    + pack("B", 0)  # 46 msg_header_done
    + pack("I", 0)  # 47 msg_header_partial_len
    + pack("I", 0)  # 51 msg_header_ptr: empty block
    + pack("I", 0)  # 55 msg_remaining
    + pack("B", 0)  # 59 msg_filter_result: OK
    + pack("I", 0)  # 60 client2agent.msg_remaining
    + pack("B", 0),  # 64 client2agent.msg_filter_result
    MainState(
        agent=CharDeviceState(
            connected=True,
            num_client_tokens=10,
            num_send_tokens=NO_FLOW_CONTROL - 3,
            write_size=0,
            write_num_client_tokens=0,
            write_data=b"",
        ),
        client_agent_started=True,
        agent_to_client=AgentReadState(
            chunk_header_size=0,
            chunk_port=1,
            chunk_size=33_554_460,
            msg_header_done=False,
            msg_header_partial_len=0,
            msg_header_partial=b"",
            msg_remaining=0,
            msg_filter_result=0,
        ),
        client_to_agent=AgentWriteState(msg_remaining=0, msg_filter_result=0),
    ),
)

# Agent write buffer: two client messages, each a VDIChunkHeader (port 1 = VDP_CLIENT_PORT, size)
# followed by a VDAgentMessage (protocol 1, type, opaque u64, size) and its data.
MAIN_WRITE = (
    pack("II", 1, 28)  # chunk header: port 1, 28 bytes follow
    + pack("IIQI", 1, 6, 0, 8)  # VD_AGENT_ANNOUNCE_CAPABILITIES, 8 data bytes
    + pack("II", 1, 0x1F)  # request = 1, one capability word
    + pack("II", 1, 24)  # chunk header: port 1, 24 bytes follow
    + pack("IIQI", 1, 7, 0, 4)  # VD_AGENT_CLIPBOARD_GRAB, 4 data bytes
    + pack("I", 1)  # VD_AGENT_CLIPBOARD_UTF8_TEXT
)
assert len(MAIN_WRITE) == 68
# The first 6 of the 20 bytes of a VDAgentMessage header: protocol 1, half of type 4.
MAIN_PARTIAL = pack("I", 1) + pack("H", 4)

# Fully populated: pending writes, a complete chunk header and a partial message header.
# §4.4: msg_header_ptr is written body-relative (65 + write_size = 133), as the source writes
# it; a real target reads those bytes at 135.
_add(
    "main-full",
    ChannelType.MAIN,
    b"MNMD"  # 0 magic
    + pack("I", 1)  # 4 version
    + char_device(
        connected=1,  # 12
        client_tokens=7,  # 13
        send_tokens=NO_FLOW_CONTROL - 42,  # 17
        write_size=68,  # 21
        write_tokens=2,  # 25
        write_ptr=65,  # 29: the write tail starts right after the fixed part
    )
    + pack("B", 1)  # 33 client_agent_started
    + pack("I", 8)  # 34 chunk_header_size: complete
    + pack("I", 1)  # 38 chunk_header.port
    + pack("I", 40)  # 42 chunk_header.size: bytes of the chunk still to come
    + pack("B", 0)  # 46 msg_header_done: in the middle of a message header
    + pack("I", 6)  # 47 msg_header_partial_len
    + pack("I", 133)  # 51 msg_header_ptr = 65 + 68
    + pack("I", 0)  # 55 msg_remaining
    + pack("B", 0)  # 59 msg_filter_result: OK
    + pack("I", 12)  # 60 client2agent.msg_remaining
    + pack("B", 1)  # 64 client2agent.msg_filter_result: DISCARD
    + MAIN_WRITE  # 65..132 agent write data
    + MAIN_PARTIAL,  # 133..138 partial message header
    MainState(
        agent=CharDeviceState(
            connected=True,
            num_client_tokens=7,
            num_send_tokens=NO_FLOW_CONTROL - 42,
            write_size=68,
            write_num_client_tokens=2,
            write_data=MAIN_WRITE,
        ),
        client_agent_started=True,
        agent_to_client=AgentReadState(
            chunk_header_size=8,
            chunk_port=1,
            chunk_size=40,
            msg_header_done=False,
            msg_header_partial_len=6,
            msg_header_partial=MAIN_PARTIAL,
            msg_remaining=0,
            msg_filter_result=0,
        ),
        client_to_agent=AgentWriteState(msg_remaining=12, msg_filter_result=1),
    ),
)


# --- display (§4.2) ------------------------------------------------------------------------


def display_fixed(
    *,
    serial: int,
    low_bandwidth: int,
    cache_size: int,
    freezer: int,
    clients: tuple[int, int, int, int],
    window: int,
    last_image: int,
    max_encoders: int = 4,
    surfaces_ptr: int = 80,
) -> bytes:
    """The 80-byte fixed part of a display payload."""
    return (
        b"DCMD"  # 0 magic
        + pack("I", 1)  # 4 version
        + pack("Q", serial)  # 8 message_serial
        + pack("B", low_bandwidth)  # 16 low_bandwidth_setting
        + pack("B", 1)  # 17 pixmap_cache_id
        + pack("q", cache_size)  # 18 pixmap_cache_size
        + pack("B", freezer)  # 26 pixmap_cache_freezer
        + pack("Q", clients[0])  # 27 pixmap_cache_clients[0]
        + pack("Q", clients[1])  # 35 pixmap_cache_clients[1]
        + pack("Q", clients[2])  # 43 pixmap_cache_clients[2]
        + pack("Q", clients[3])  # 51 pixmap_cache_clients[3]
        + pack("B", 1)  # 59 glz_dict_id
        + pack("I", window)  # 60 glz_dict_data.size
        + pack("I", max_encoders)  # 64 glz_dict_data.max_encoders
        + pack("Q", last_image)  # 68 glz_dict_data.last_image_id
        + pack("I", surfaces_ptr)  # 76 surfaces_at_client_ptr
    )


def display_state(
    *,
    serial: int,
    low_bandwidth: bool,
    cache_size: int,
    freezer: bool,
    clients: tuple[int, int, int, int],
    window: int,
    last_image: int,
    surfaces: SurfacesLossless | SurfacesLossy,
) -> DisplayState:
    return DisplayState(
        message_serial=serial,
        low_bandwidth=low_bandwidth,
        pixmap_cache_id=1,
        pixmap_cache_size=cache_size,
        pixmap_cache_freezer=freezer,
        pixmap_cache_clients=clients,
        glz_dict_id=1,
        glz_dict=GlzDictionary(window_size=window, max_encoders=4, last_image_id=last_image),
        surfaces=surfaces,
    )


# What a spice-gtk 0.42 client of an idle guest leaves on a spice-server 0.15.1 source.
_IDLE_DISPLAY: dict[str, Any] = {
    "serial": 14,
    "cache_size": 20_971_520,
    "clients": (0, 0, 0, 0),
    "window": 6_290_432,
    "last_image": 4,
}

# One lossless surface (the 720x400 primary, id 0), a frozen pixmap cache; 88 bytes.
_add(
    "display-idle",
    ChannelType.DISPLAY,
    display_fixed(low_bandwidth=0, freezer=1, **_IDLE_DISPLAY)
    + pack("I", 1)  # 80 num_surfaces
    + pack("I", 0),  # 84 surface id 0
    display_state(
        low_bandwidth=False,
        freezer=True,
        surfaces=SurfacesLossless(ids=(0,)),
        **_IDLE_DISPLAY,
    ),
)

_FULL_CLIENTS = (1041, 2, 0xFFFF_FFFF_FFFF_FFFF, 77)

# Lossy list, all four pixmap-cache clients, frozen cache, largest GLZ window; 84 + 3 * 20.
_add(
    "display-lossy",
    ChannelType.DISPLAY,
    display_fixed(
        serial=0x0102_0304_0506_0708,
        low_bandwidth=1,
        cache_size=20_971_520,
        freezer=1,
        clients=_FULL_CLIENTS,
        window=1 << 25,
        last_image=0x0123_4567_89AB_CDEF,
    )
    + pack("I", 3)  # 80 num_surfaces
    + pack("I", 0)  # 84 surface 0
    + pack("iiii", 0, 0, 720, 400)  # 88 its rect: left, top, right, bottom
    + pack("I", 3)  # 104 surface 3
    + pack("iiii", 16, 32, 144, 96)  # 108
    + pack("I", 1023)  # 124 surface 1023, the last id
    + pack("iiii", 65_536, 65_536, 65_536, 65_536),  # 128 an empty rect at the edge
    display_state(
        serial=0x0102_0304_0506_0708,
        low_bandwidth=True,
        cache_size=20_971_520,
        freezer=True,
        clients=_FULL_CLIENTS,
        window=1 << 25,
        last_image=0x0123_4567_89AB_CDEF,
        surfaces=SurfacesLossy(
            surfaces=(
                LossySurface(id=0, lossy_rect=LossyRect(left=0, top=0, right=720, bottom=400)),
                LossySurface(id=3, lossy_rect=LossyRect(left=16, top=32, right=144, bottom=96)),
                LossySurface(
                    id=1023,
                    lossy_rect=LossyRect(left=65_536, top=65_536, right=65_536, bottom=65_536),
                ),
            )
        ),
    ),
)

# Lossless list of five surfaces; 84 + 5 * 4.
_add(
    "display-lossless",
    ChannelType.DISPLAY,
    display_fixed(
        serial=4_242,
        low_bandwidth=0,
        cache_size=1 << 32,
        freezer=0,
        clients=(5, 6, 7, 8),
        window=1,
        last_image=0,
    )
    + pack("I", 5)  # 80 num_surfaces
    + pack("IIIII", 0, 1, 2, 17, 1023),  # 84..103 ids, ascending
    display_state(
        serial=4_242,
        low_bandwidth=False,
        cache_size=1 << 32,
        freezer=False,
        clients=(5, 6, 7, 8),
        window=1,
        last_image=0,
        surfaces=SurfacesLossless(ids=(0, 1, 2, 17, 1023)),
    ),
)

# Empty list: 4 bytes, decoded as (canonical) lossless.
_add(
    "display-no-surfaces",
    ChannelType.DISPLAY,
    display_fixed(low_bandwidth=0, freezer=0, **_IDLE_DISPLAY) + pack("I", 0),  # 80 num_surfaces
    display_state(
        low_bandwidth=False,
        freezer=False,
        surfaces=SurfacesLossless(ids=()),
        **_IDLE_DISPLAY,
    ),
)

# Every surface id the target's arrays hold: 84 + 1024 * 4.
_add(
    "display-all-surfaces",
    ChannelType.DISPLAY,
    display_fixed(low_bandwidth=0, freezer=0, **_IDLE_DISPLAY)
    + pack("I", 1024)  # 80 num_surfaces
    + b"".join(pack("I", i) for i in range(1024)),  # 84..4179
    display_state(
        low_bandwidth=False,
        freezer=False,
        surfaces=SurfacesLossless(ids=tuple(range(1024))),
        **_IDLE_DISPLAY,
    ),
)


# --- inputs (§4.3) -------------------------------------------------------------------------

for _count in (0, 7, 64):
    _add(
        f"inputs-{_count}",
        ChannelType.INPUTS,
        b"ICMD"  # 0 magic
        + pack("I", 1)  # 4 version
        + pack("H", _count),  # 8 motion_count
        InputsState(motion_count=_count),
    )


# --- smartcard (§4.5) ----------------------------------------------------------------------


def vsc(msg_type: int, reader: int, length: int) -> bytes:
    """A VSCMsgHeader: type, reader_id, length, **big-endian** (libcacard)."""
    return struct.pack(">III", msg_type, reader, length)


# No device on the source: empty base record and zeros; 42 bytes.
_add(
    "smartcard-idle",
    ChannelType.SMARTCARD,
    b"SCMD"  # 0 magic
    + pack("I", 1)  # 4 version
    + char_device(connected=0)  # 8..32 base, "empty"
    + pack("B", 0)  # 33 reader_added
    + pack("I", 0)  # 34 read_size
    + pack("I", 0),  # 38 read_data_ptr
    SmartcardState(device=EMPTY_DEVICE, reader_added=False, read_size=0, read_data=b""),
)

# A device attached but idle: connected, no flow control, nothing pending; 42 bytes.
_add(
    "smartcard-idle-reader",
    ChannelType.SMARTCARD,
    b"SCMD"  # 0 magic
    + pack("I", 1)  # 4 version
    + char_device(connected=1, client_tokens=NO_FLOW_CONTROL, send_tokens=NO_FLOW_CONTROL)
    + pack("B", 0)  # 33 reader_added
    + pack("I", 0)  # 34 read_size
    + pack("I", 0),  # 38 read_data_ptr
    SmartcardState(
        device=CharDeviceState(
            connected=True,
            num_client_tokens=NO_FLOW_CONTROL,
            num_send_tokens=NO_FLOW_CONTROL,
            write_size=0,
            write_num_client_tokens=0,
            write_data=b"",
        ),
        reader_added=False,
        read_size=0,
        read_data=b"",
    ),
)

# A pending APDU to the card (SELECT) and the first 4 of 10 data bytes of the card's answer.
SMARTCARD_WRITE = vsc(7, 0, 5) + bytes.fromhex("00a4040000")  # VSC_APDU, reader 0
SMARTCARD_READ = vsc(7, 0, 10) + bytes.fromhex("6f088406")  # partial VSC_APDU
_add(
    "smartcard-full",
    ChannelType.SMARTCARD,
    b"SCMD"  # 0 magic
    + pack("I", 1)  # 4 version
    + char_device(
        connected=1,  # 12
        client_tokens=NO_FLOW_CONTROL,  # 13
        send_tokens=NO_FLOW_CONTROL,  # 17
        write_size=17,  # 21
        write_tokens=1,  # 25
        write_ptr=42,  # 29
    )
    + pack("B", 1)  # 33 reader_added
    + pack("I", 16)  # 34 read_size
    + pack("I", 59)  # 38 read_data_ptr = 42 + write_size
    + SMARTCARD_WRITE  # 42..58
    + SMARTCARD_READ,  # 59..74
    SmartcardState(
        device=CharDeviceState(
            connected=True,
            num_client_tokens=NO_FLOW_CONTROL,
            num_send_tokens=NO_FLOW_CONTROL,
            write_size=17,
            write_num_client_tokens=1,
            write_data=SMARTCARD_WRITE,
        ),
        reader_added=True,
        read_size=16,
        read_data=SMARTCARD_READ,
    ),
)

# Only 5 bytes of a VSC header read so far, nothing to write: read_data_ptr = 42.
_add(
    "smartcard-partial-header",
    ChannelType.SMARTCARD,
    b"SCMD"  # 0 magic
    + pack("I", 1)  # 4 version
    + char_device(connected=1, client_tokens=NO_FLOW_CONTROL, send_tokens=NO_FLOW_CONTROL)
    + pack("B", 1)  # 33 reader_added
    + pack("I", 5)  # 34 read_size
    + pack("I", 42)  # 38 read_data_ptr
    + vsc(7, 0, 10)[:5],  # 42..46
    SmartcardState(
        device=CharDeviceState(
            connected=True,
            num_client_tokens=NO_FLOW_CONTROL,
            num_send_tokens=NO_FLOW_CONTROL,
            write_size=0,
            write_num_client_tokens=0,
            write_data=b"",
        ),
        reader_added=True,
        read_size=5,
        read_data=vsc(7, 0, 10)[:5],
    ),
)


# --- usbredir, port, webdav (§4.6) ---------------------------------------------------------


def spicevmc(write: bytes, tokens: int) -> bytes:
    return (
        b"SVMD"  # 0 magic
        + pack("I", 1)  # 4 version
        + char_device(
            connected=1,  # 12: a real source always sends a connected record
            client_tokens=NO_FLOW_CONTROL,  # 13
            send_tokens=NO_FLOW_CONTROL,  # 17
            write_size=len(write),  # 21
            write_tokens=tokens,  # 25
            write_ptr=33 if write else 0,  # 29
        )
        + write  # 33..
    )


def spicevmc_state(
    write: bytes, tokens: int, channel: ChannelType = ChannelType.PORT
) -> SpicevmcState:
    model = UsbredirState if channel is ChannelType.USBREDIR else SpicevmcState
    return model(
        device=CharDeviceState(
            connected=True,
            num_client_tokens=NO_FLOW_CONTROL,
            num_send_tokens=NO_FLOW_CONTROL,
            write_size=len(write),
            write_num_client_tokens=tokens,
            write_data=write,
        )
    )


# Bytes of the usbredir stream for the guest: a packet header (type 103 interrupt_packet,
# length, 64-bit id), its type header (endpoint 0x81 IN, status, length 4) and the 4 data bytes.
USBREDIR_WRITE = pack("IIQ", 103, 8, 17) + pack("BBH", 0x81, 0, 4) + b"\x00\x01\x02\x03"
PORT_WRITE = b"serial console line\r\n"
# A webdav mux frame as spice-gtk writes it: client id (i64), length (u16), data.
WEBDAV_WRITE = pack("qH", 1, 16) + b"GET / HTTP/1.1\r\n"

for _channel in (ChannelType.USBREDIR, ChannelType.PORT, ChannelType.WEBDAV):
    _name = _channel.name.lower()
    _add(f"{_name}-idle", _channel, spicevmc(b"", 0), spicevmc_state(b"", 0, _channel))
for _channel, _write, _tokens in (
    (ChannelType.USBREDIR, USBREDIR_WRITE, 1),
    (ChannelType.PORT, PORT_WRITE, 2),
    (ChannelType.WEBDAV, WEBDAV_WRITE, 1),
):
    _add(
        f"{_channel.name.lower()}-full",
        _channel,
        spicevmc(_write, _tokens),
        spicevmc_state(_write, _tokens, _channel),
    )


# --- the tests -----------------------------------------------------------------------------

_IDS = [v.name for v in VECTORS]


@pytest.mark.parametrize("item", VECTORS, ids=_IDS)
def test_decode_known_answer(item: Vector) -> None:
    assert native.decode(item.channel, item.data) == item.state


@pytest.mark.parametrize("item", VECTORS, ids=_IDS)
def test_encode_known_answer(item: Vector) -> None:
    assert native.encode(item.state, item.channel) == item.data


@pytest.mark.parametrize("item", VECTORS, ids=_IDS)
def test_decode_accepts_bytearray_and_memoryview(item: Vector) -> None:
    # Accepted at run time although ``decode`` is annotated ``bytes``.
    assert native.decode(item.channel, bytearray(item.data)) == item.state
    assert native.decode(item.channel, memoryview(item.data)) == item.state


@pytest.mark.parametrize(
    ("name", "size"),
    [
        ("main-idle", 65),
        ("display-idle", 88),
        ("inputs-0", 10),
        ("smartcard-idle", 42),
        ("smartcard-idle-reader", 42),
        ("usbredir-idle", 33),
        ("port-idle", 33),
        ("webdav-idle", 33),
    ],
)
def test_idle_guest_sizes_match_a_real_source(name: str, size: int) -> None:
    item = vector(name)
    assert len(item.data) == size
    assert len(native.encode(item.state, item.channel)) == size


def test_main_partial_header_pointer_is_body_relative() -> None:
    """§4.4: the codec keeps the source's body-relative msg_header_ptr, not the target's +2."""
    data = vector("main-full").data
    (write_size,) = struct.unpack_from("<I", data, 21)
    (partial_len,) = struct.unpack_from("<I", data, 47)
    (ptr,) = struct.unpack_from("<I", data, 51)
    assert ptr == 65 + write_size
    assert data[ptr : ptr + partial_len] == MAIN_PARTIAL


def test_empty_blocks_have_zero_offsets() -> None:
    """§1.4: an empty tail block leaves its offset at 0."""
    assert struct.unpack_from("<I", vector("main-idle").data, 29) == (0,)
    assert struct.unpack_from("<I", vector("main-idle").data, 51) == (0,)
    assert struct.unpack_from("<II", vector("smartcard-idle").data, 34) == (0, 0)
    assert struct.unpack_from("<I", vector("usbredir-idle").data, 29) == (0,)


@pytest.mark.parametrize(
    ("magic", "value"),
    [
        (b"MNMD", 0x444D4E4D),
        (b"DCMD", 0x444D4344),
        (b"ICMD", 0x444D4349),
        (b"SCMD", 0x444D4353),
        (b"SVMD", 0x444D5653),
    ],
)
def test_magic_reads_as_the_documented_u32(magic: bytes, value: int) -> None:
    assert struct.unpack("<I", magic) == (value,)
    assert any(native.layout_for(c).magic == magic for c in native.CHANNEL_NAMES.values())


# Body offsets of every fixed field, from the facts' tables, keyed by the layout's field path.
def _base(prefix: str) -> dict[str, int]:
    return {
        f"{prefix}.version": 8,
        f"{prefix}.connected": 12,
        f"{prefix}.num_client_tokens": 13,
        f"{prefix}.num_send_tokens": 17,
        f"{prefix}.write_size": 21,
        f"{prefix}.write_num_client_tokens": 25,
        f"{prefix}.write_data_ptr": 29,
    }


DOC_OFFSETS: dict[ChannelType, tuple[int, dict[str, int]]] = {
    ChannelType.MAIN: (
        65,
        {
            **_base("agent"),
            "client_agent_started": 33,
            "agent_to_client.chunk_header_size": 34,
            "agent_to_client.chunk_port": 38,
            "agent_to_client.chunk_size": 42,
            "agent_to_client.msg_header_done": 46,
            "agent_to_client.msg_header_partial_len": 47,
            "agent_to_client.msg_header_ptr": 51,
            "agent_to_client.msg_remaining": 55,
            "agent_to_client.msg_filter_result": 59,
            "client_to_agent.msg_remaining": 60,
            "client_to_agent.msg_filter_result": 64,
        },
    ),
    ChannelType.DISPLAY: (
        80,
        {
            "message_serial": 8,
            "low_bandwidth": 16,
            "pixmap_cache_id": 17,
            "pixmap_cache_size": 18,
            "pixmap_cache_freezer": 26,
            "pixmap_cache_clients.0": 27,
            "pixmap_cache_clients.1": 35,
            "pixmap_cache_clients.2": 43,
            "pixmap_cache_clients.3": 51,
            "glz_dict_id": 59,
            "glz_dict.window_size": 60,
            "glz_dict.max_encoders": 64,
            "glz_dict.last_image_id": 68,
            "surfaces_at_client_ptr": 76,
        },
    ),
    ChannelType.INPUTS: (10, {"motion_count": 8}),
    ChannelType.SMARTCARD: (
        42,
        {**_base("device"), "reader_added": 33, "read_size": 34, "read_data_ptr": 38},
    ),
    ChannelType.USBREDIR: (33, _base("device")),
    ChannelType.PORT: (33, _base("device")),
    ChannelType.WEBDAV: (33, _base("device")),
}


@pytest.mark.parametrize("channel", list(DOC_OFFSETS), ids=lambda c: c.name.lower())
def test_layout_matches_the_documented_offsets(channel: ChannelType) -> None:
    fixed_size, offsets = DOC_OFFSETS[channel]
    layout = native.layout_for(channel)
    assert layout.fixed_size == fixed_size
    assert layout.offsets == offsets


def test_every_channel_with_migration_data_has_vectors() -> None:
    assert {v.channel for v in VECTORS} == set(native.CHANNEL_NAMES.values())
    assert set(DOC_OFFSETS) == set(native.CHANNEL_NAMES.values())


# --- payloads captured from a real migration -----------------------------------------------

REAL_DIR = Path(__file__).parent / "vectors" / "native" / "real"
_MAGIC_CHANNEL = {
    b"MNMD": ChannelType.MAIN,
    b"DCMD": ChannelType.DISPLAY,
    b"ICMD": ChannelType.INPUTS,
    b"SCMD": ChannelType.SMARTCARD,
    b"SVMD": ChannelType.USBREDIR,
}


def _real_captures() -> list[Path]:
    return sorted(REAL_DIR.glob("*.bin")) if REAL_DIR.is_dir() else []


def _capture_channel(path: Path, data: bytes) -> ChannelType:
    """The channel named by the file's name (``webdav.bin``, ``display-2.bin``...), else by
    its magic (any spicevmc name decodes the shared SVMD layout)."""
    stem = path.stem.lower()
    for name, channel in native.CHANNEL_NAMES.items():
        if stem == name or stem.startswith((f"{name}-", f"{name}_", f"{name}.")):
            return channel
    return _MAGIC_CHANNEL.get(data[:4], ChannelType.MAIN)


@pytest.mark.parametrize(
    "path",
    _real_captures()
    or [
        pytest.param(
            None, marks=pytest.mark.skip(reason="no captures in tests/vectors/native/real")
        )
    ],
    ids=lambda p: p.name if isinstance(p, Path) else "none",
)
def test_real_capture_round_trips_byte_exactly(path: Path) -> None:
    data = path.read_bytes()
    channel = _capture_channel(path, data)
    state = native.decode(channel, data)
    assert native.encode(state, channel) == data


#: The hand-written vector each real capture must equal, byte for byte.
REAL_EQUIVALENTS = {
    "main": "main-idle",
    "display": "display-idle",
    "inputs": "inputs-0",
    "smartcard": "smartcard-idle-reader",
    "usbredir": "usbredir-idle",
    "port": "port-idle",
    "webdav": "webdav-idle",
}


@pytest.mark.parametrize("name", sorted(REAL_EQUIVALENTS))
def test_hand_written_idle_vector_equals_the_real_capture(name: str) -> None:
    """The vectors assembled from the format facts are what a real source sent."""
    path = REAL_DIR / f"{name}.bin"
    if not path.is_file():
        pytest.skip(f"no real capture {path.name}")
    assert path.read_bytes() == vector(REAL_EQUIVALENTS[name]).data
