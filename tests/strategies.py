"""Hypothesis strategies for *valid* migration states of every channel.

Each strategy respects every invariant of the schemas (sizes equal to lengths, ascending unique
surface ids, ordered rects, the agent token window, the partial-header and partial-VSC rules,
all-zero disconnected records, connected spicevmc records), so whatever they draw validates and
encodes. Other test modules (envelope, fuzz) build on ``states(channel)``,
``channel_states()`` and ``native_payloads(channel)``.

Tail blocks are kept small (tens of bytes) so that a few hundred examples run in well under a
second; the bounds themselves are tested explicitly in ``test_schemas``.
"""

from __future__ import annotations

import os
import struct

from hypothesis import settings
from hypothesis import strategies as st

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
from schemas.display import (
    GLZ_MAX_ENCODERS,
    GLZ_MAX_WINDOW,
    MAX_COORDINATE,
    MAX_PIXMAP_CACHE_SIZE,
    NUM_SURFACES,
)
from schemas.inputs import MAX_MOTION_COUNT
from schemas.main import AGENT_CLIENT_WINDOW
from schemas.smartcard import MAX_VSC_LENGTH, VSC_HEADER_SIZE
from schemas.streams import (
    USBREDIR_CAPS,
    VDP_CLIENT_PORT,
    VDP_SERVER_PORT,
    usbredir_packet,
    vdi_chunk,
    vsc_message,
)

__all__ = [
    "MIGRATION_CHANNELS",
    "agent_devices",
    "agent_read_states",
    "agent_write_states",
    "budget",
    "channel_states",
    "char_devices",
    "display_states",
    "glz_dictionaries",
    "inputs_states",
    "lossy_rects",
    "main_states",
    "native_payloads",
    "smartcard_states",
    "spicevmc_states",
    "states",
    "surfaces",
    "surfaces_lossless",
    "surfaces_lossy",
    "usbredir_states",
    "usbredir_streams",
    "vdi_chunk_stream",
    "vsc_partial_reads",
    "vsc_streams",
]

#: Every channel that carries migration data, in channel-type order.
MIGRATION_CHANNELS: tuple[ChannelType, ...] = tuple(sorted(native.CHANNEL_NAMES.values()))

U8 = st.integers(0, 0xFF)
U32 = st.integers(0, 0xFFFF_FFFF)
U64 = st.integers(0, 0xFFFF_FFFF_FFFF_FFFF)
MSG_REMAINING = st.integers(0, 2**31 - 1)
FILTER_RESULT = st.integers(0, 3)
VSC_HEADER = struct.Struct(">III")


@st.composite
def usbredir_streams(draw: st.DrawFn, max_packets: int = 4) -> bytes:
    """Whole usbredir packets a usb host sends to the guest (optionally after a hello)."""
    out = b""
    if draw(st.booleans()):
        hello = b"host 0.13".ljust(64, b"\0") + struct.pack("<I", USBREDIR_CAPS)
        out += struct.pack("<III", 0, len(hello), 0) + hello
    for _ in range(draw(st.integers(0, max_packets))):
        kind = draw(st.sampled_from((2, 8, 100, 101, 103, 104)))
        packet_id = draw(U64)
        if kind == 2:
            out += usbredir_packet(2, b"", packet_id=packet_id)
        elif kind == 8:
            out += usbredir_packet(8, bytes([draw(U8), draw(U8)]), packet_id=packet_id)
        else:
            data = draw(st.binary(max_size=24))
            endpoint = 0x80 | draw(st.integers(0, 15))
            if kind == 100:
                head = struct.pack("<BBBBHHH", endpoint, 6, 0x80, 0, 0x100, 0, len(data))
            elif kind == 101:
                head = struct.pack("<BBHIH", endpoint, 0, len(data), 0, 0)
            elif kind == 103:
                head = struct.pack("<BBH", endpoint, 0, len(data))
            else:
                head = struct.pack("<IIBB", 0, len(data), endpoint, 0)
            out += usbredir_packet(kind, head, data, packet_id)
    return out


@st.composite
def vsc_streams(draw: st.DrawFn, max_messages: int = 3) -> bytes:
    """Whole VSC messages for the passthru card."""
    messages = draw(
        st.lists(st.tuples(st.integers(1, 9), U32, st.binary(max_size=24)), max_size=max_messages)
    )
    return b"".join(vsc_message(kind, reader, data) for kind, reader, data in messages)


def budget(examples: int) -> settings:
    """Per-test hypothesis settings: no deadline (a loaded CI machine must not flake), and
    ``examples`` scaled by the ``SMG_HYPOTHESIS_SCALE`` environment variable for a deeper run."""
    scale = float(os.environ.get("SMG_HYPOTHESIS_SCALE", "1"))
    return settings(max_examples=max(1, int(examples * scale)), deadline=None)


# --- char-device base ----------------------------------------------------------------------


@st.composite
def vdi_chunk_stream(draw: st.DrawFn, max_chunks: int = 4) -> tuple[bytes, int]:
    """Agent write data as the source queues it: VDIChunkHeader (port, size) + data, per client
    message. Returns the bytes and the number of messages (tokens) they account for."""
    chunks = draw(
        st.lists(
            st.tuples(
                st.sampled_from((VDP_CLIENT_PORT, VDP_SERVER_PORT)),
                st.binary(min_size=1, max_size=24),
            ),
            max_size=max_chunks,
        )
    )
    data = b"".join(vdi_chunk(port, c) for port, c in chunks)
    return data, sum(port == VDP_CLIENT_PORT for port, _ in chunks)


def _empty_device() -> CharDeviceState:
    return CharDeviceState(
        connected=False,
        num_client_tokens=0,
        num_send_tokens=0,
        write_size=0,
        write_num_client_tokens=0,
        write_data=b"",
    )


@st.composite
def char_devices(
    draw: st.DrawFn,
    connected: bool | None = None,
    max_write: int = 64,
    writes: st.SearchStrategy[bytes] | None = None,
) -> CharDeviceState:
    """Any valid char-device record; ``connected`` None draws both kinds; ``writes`` draws the
    pending bytes (any bytes by default: a port's)."""
    if connected is None:
        connected = draw(st.booleans())
    if not connected:
        return _empty_device()
    data = draw(st.binary(max_size=max_write) if writes is None else writes)
    return CharDeviceState(
        connected=True,
        num_client_tokens=draw(U32),
        num_send_tokens=draw(U32),
        write_size=len(data),
        write_num_client_tokens=draw(st.integers(0, len(data))),
        write_data=data,
    )


@st.composite
def agent_devices(draw: st.DrawFn) -> CharDeviceState:
    """A connected vdagent port: tokens within the client window, VDI-framed pending data."""
    data, tokens = draw(vdi_chunk_stream(max_chunks=AGENT_CLIENT_WINDOW))
    return CharDeviceState(
        connected=True,
        num_client_tokens=draw(st.integers(0, AGENT_CLIENT_WINDOW - tokens)),
        num_send_tokens=draw(st.integers(1, 0xFFFF_FFFF)),
        write_size=len(data),
        write_num_client_tokens=tokens,
        write_data=data,
    )


# --- main ----------------------------------------------------------------------------------


@st.composite
def agent_read_states(draw: st.DrawFn) -> AgentReadState:
    """Agent->client reading state; a partial message header only after a complete chunk
    header and before the message header is done."""
    chunk_header_size = draw(st.integers(0, 8))
    complete = chunk_header_size == 8
    msg_header_done = complete and draw(st.booleans())
    partial = b""
    if complete and not msg_header_done:
        partial = draw(st.binary(max_size=19))
    return AgentReadState(
        chunk_header_size=chunk_header_size,
        chunk_port=draw(st.sampled_from((VDP_CLIENT_PORT, VDP_SERVER_PORT)) if complete else U32),
        chunk_size=draw(st.integers(1 if partial else 0, 0xFFFF_FFFF)),
        msg_header_done=msg_header_done,
        msg_header_partial_len=len(partial),
        msg_header_partial=partial,
        msg_remaining=draw(MSG_REMAINING),
        msg_filter_result=draw(FILTER_RESULT),
    )


def agent_write_states() -> st.SearchStrategy[AgentWriteState]:
    return st.builds(AgentWriteState, msg_remaining=MSG_REMAINING, msg_filter_result=FILTER_RESULT)


_IDLE_READ = AgentReadState(
    chunk_header_size=0,
    chunk_port=0,
    chunk_size=0,
    msg_header_done=False,
    msg_header_partial_len=0,
    msg_header_partial=b"",
    msg_remaining=0,
    msg_filter_result=0,
)
_IDLE_WRITE = AgentWriteState(msg_remaining=0, msg_filter_result=0)


@st.composite
def main_states(draw: st.DrawFn) -> MainState:
    """With an agent (any valid state), or without one (the all-zero record)."""
    if not draw(st.booleans()):
        return MainState(
            agent=_empty_device(),
            client_agent_started=False,
            agent_to_client=_IDLE_READ,
            client_to_agent=_IDLE_WRITE,
        )
    return MainState(
        agent=draw(agent_devices()),
        client_agent_started=draw(st.booleans()),
        agent_to_client=draw(agent_read_states()),
        client_to_agent=draw(agent_write_states()),
    )


# --- display -------------------------------------------------------------------------------


def glz_dictionaries() -> st.SearchStrategy[GlzDictionary]:
    return st.builds(
        GlzDictionary,
        window_size=st.integers(1, GLZ_MAX_WINDOW),
        max_encoders=st.just(GLZ_MAX_ENCODERS),
        last_image_id=U64,
    )


@st.composite
def lossy_rects(draw: st.DrawFn) -> LossyRect:
    coordinate = st.integers(0, MAX_COORDINATE)
    left, right = sorted((draw(coordinate), draw(coordinate)))
    top, bottom = sorted((draw(coordinate), draw(coordinate)))
    return LossyRect(left=left, top=top, right=right, bottom=bottom)


def _surface_ids(min_size: int, max_size: int) -> st.SearchStrategy[list[int]]:
    return st.lists(
        st.integers(0, NUM_SURFACES - 1), min_size=min_size, max_size=max_size, unique=True
    ).map(sorted)


def surfaces_lossless(max_size: int = 16) -> st.SearchStrategy[SurfacesLossless]:
    return _surface_ids(0, max_size).map(lambda ids: SurfacesLossless(ids=tuple(ids)))


@st.composite
def surfaces_lossy(draw: st.DrawFn, max_size: int = 8) -> SurfacesLossy:
    ids = draw(_surface_ids(1, max_size))
    return SurfacesLossy(
        surfaces=tuple(LossySurface(id=i, lossy_rect=draw(lossy_rects())) for i in ids)
    )


def surfaces() -> st.SearchStrategy[SurfacesLossless | SurfacesLossy]:
    return st.one_of(surfaces_lossless(), surfaces_lossy())


def display_states() -> st.SearchStrategy[DisplayState]:
    return st.builds(
        DisplayState,
        message_serial=U64,
        low_bandwidth=st.booleans(),
        pixmap_cache_id=U8,
        pixmap_cache_size=st.integers(0, MAX_PIXMAP_CACHE_SIZE),
        pixmap_cache_freezer=st.booleans(),
        pixmap_cache_clients=st.tuples(U64, U64, U64, U64),
        glz_dict_id=U8,
        glz_dict=glz_dictionaries(),
        surfaces=surfaces(),
    )


# --- inputs, smartcard, spicevmc -----------------------------------------------------------


def inputs_states() -> st.SearchStrategy[InputsState]:
    return st.builds(InputsState, motion_count=st.integers(0, MAX_MOTION_COUNT))


@st.composite
def vsc_partial_reads(draw: st.DrawFn) -> bytes:
    """A partially read VSC message: nothing, part of the 12-byte big-endian header, or a
    whole header followed by no more data than its ``length`` announces."""
    kind = draw(st.sampled_from(("none", "header", "message")))
    if kind == "none":
        return b""
    if kind == "header":
        return draw(st.binary(min_size=1, max_size=VSC_HEADER_SIZE - 1))
    length = draw(st.integers(0, MAX_VSC_LENGTH))
    header = VSC_HEADER.pack(draw(U32), draw(U32), length)
    return header + draw(st.binary(max_size=min(length, 48)))


@st.composite
def smartcard_states(draw: st.DrawFn) -> SmartcardState:
    device = draw(char_devices(writes=vsc_streams()))
    if not device.connected:
        return SmartcardState(device=device, reader_added=False, read_size=0, read_data=b"")
    read = draw(vsc_partial_reads())
    return SmartcardState(
        device=device, reader_added=draw(st.booleans()), read_size=len(read), read_data=read
    )


def spicevmc_states() -> st.SearchStrategy[SpicevmcState]:
    """Port and webdav: any pending bytes."""
    return st.builds(SpicevmcState, device=char_devices(connected=True))


def usbredir_states() -> st.SearchStrategy[UsbredirState]:
    """usbredir: whole usbredir packets pending."""
    return st.builds(UsbredirState, device=char_devices(connected=True, writes=usbredir_streams()))


# --- by channel ----------------------------------------------------------------------------


def states(channel: ChannelType | int) -> st.SearchStrategy[StateModel]:
    """Valid states of ``channel``'s model."""
    channel = ChannelType(channel)
    strategy: st.SearchStrategy[StateModel]
    if channel is ChannelType.MAIN:
        strategy = main_states()
    elif channel is ChannelType.DISPLAY:
        strategy = display_states()
    elif channel is ChannelType.INPUTS:
        strategy = inputs_states()
    elif channel is ChannelType.SMARTCARD:
        strategy = smartcard_states()
    elif channel is ChannelType.USBREDIR:
        strategy = usbredir_states()
    elif channel in SpicevmcState.channel_types:
        strategy = spicevmc_states()
    else:
        raise ValueError(f"channel {channel.name} carries no migration data")
    return strategy


@st.composite
def channel_states(draw: st.DrawFn) -> tuple[ChannelType, StateModel]:
    """A channel that carries migration data and a valid state of it."""
    channel = draw(st.sampled_from(MIGRATION_CHANNELS))
    return channel, draw(states(channel))


def native_payloads(channel: ChannelType | int) -> st.SearchStrategy[bytes]:
    """Valid native payloads of ``channel``: encoded valid states."""
    return states(channel).map(lambda state: native.encode(state, channel))
