"""The largest valid state of each channel: every byte string, list and integer at its bound.

The envelope's per-channel payload bounds (``gateway.envelope.MAX_PAYLOAD``) must hold these;
the memory tests open them, and the worst adversarial payloads, at those bounds. Pending device
bytes are whole, well-formed inner streams (the target rules refuse anything else): VDI chunks for
the agent, VSC messages for smartcard, usbredir packets for usbredir.
"""

from __future__ import annotations

from collections.abc import Callable

from schemas import ChannelType, StateModel
from schemas.chardev import MAX_PENDING_WRITE, CharDeviceState
from schemas.display import (
    GLZ_MAX_ENCODERS,
    GLZ_MAX_WINDOW,
    MAX_COORDINATE,
    MAX_PIXMAP_CACHE_SIZE,
    NUM_SURFACES,
    DisplayState,
    GlzDictionary,
    LossyRect,
    LossySurface,
    SurfacesLossy,
)
from schemas.inputs import MAX_MOTION_COUNT, InputsState
from schemas.main import (
    AGENT_CLIENT_WINDOW,
    CONNECTED_READ_SLACK,
    MAIN_FIXED_SIZE,
    MAIN_MAX_BODY,
    VD_AGENT_MESSAGE_HEADER_SIZE,
    VDI_CHUNK_HEADER_SIZE,
    AgentReadState,
    AgentWriteState,
    MainState,
)
from schemas.smartcard import MAX_VSC_LENGTH, VSC_HEADER_SIZE, SmartcardState
from schemas.spicevmc import SpicevmcState, UsbredirState
from schemas.streams import (
    VD_AGENT_MAX_DATA_SIZE,
    VDP_CLIENT_PORT,
    VDP_SERVER_PORT,
    VSC_MAX_MESSAGE,
    usbredir_bulk_in,
    vdi_chunk,
    vsc_message,
)

U32 = 0xFFFF_FFFF
U64 = 0xFFFF_FFFF_FFFF_FFFF


def _device(data: bytes, write_tokens: int = 0, tokens: int = U32) -> CharDeviceState:
    return CharDeviceState(
        connected=True,
        num_client_tokens=tokens,
        num_send_tokens=U32,
        write_size=len(data),
        write_num_client_tokens=write_tokens,
        write_data=data,
    )


def _messages(size: int, header: int, most: int, make: Callable[[int, bytes], bytes]) -> bytes:
    """Exactly ``size`` bytes of whole messages (``header`` bytes each, then 1..``most`` bytes
    of data), as few as possible: ``make(index, data)`` builds message ``index``."""
    count = -(-size // (header + most))
    data = size - count * header
    assert count * 1 <= data <= count * most, size
    sizes = [data // count + (i < data % count) for i in range(count)]
    return b"".join(make(i, b"\xff" * n) for i, n in enumerate(sizes))


def _agent_chunks(size: int, client: int) -> bytes:
    """VDI chunks: the first ``client`` from the client (one token each), the rest the server's."""
    port = lambda i: VDP_CLIENT_PORT if i < client else VDP_SERVER_PORT  # noqa: E731
    return _messages(
        size, VDI_CHUNK_HEADER_SIZE, VD_AGENT_MAX_DATA_SIZE, lambda i, d: vdi_chunk(port(i), d)
    )


def worst_state(channel: ChannelType) -> StateModel:
    """The valid state of ``channel`` whose msgpack encoding is the longest."""
    if channel is ChannelType.MAIN:
        partial = VD_AGENT_MESSAGE_HEADER_SIZE - 1
        write = MAIN_MAX_BODY - MAIN_FIXED_SIZE - CONNECTED_READ_SLACK - partial
        return MainState(
            agent=_device(_agent_chunks(write, AGENT_CLIENT_WINDOW), AGENT_CLIENT_WINDOW, 0),
            client_agent_started=True,
            agent_to_client=AgentReadState(
                chunk_header_size=VDI_CHUNK_HEADER_SIZE,
                chunk_port=VDP_SERVER_PORT,
                chunk_size=U32,
                msg_header_done=False,
                msg_header_partial_len=partial,
                msg_header_partial=b"\xff" * partial,
                msg_remaining=2**31 - 1,
                msg_filter_result=3,
            ),
            client_to_agent=AgentWriteState(msg_remaining=2**31 - 1, msg_filter_result=3),
        )
    if channel is ChannelType.DISPLAY:
        edge = MAX_COORDINATE
        return DisplayState(
            message_serial=U64,
            low_bandwidth=True,
            pixmap_cache_id=255,
            pixmap_cache_size=MAX_PIXMAP_CACHE_SIZE,
            pixmap_cache_freezer=True,
            pixmap_cache_clients=(U64, U64, U64, U64),
            glz_dict_id=255,
            glz_dict=GlzDictionary(
                window_size=GLZ_MAX_WINDOW, max_encoders=GLZ_MAX_ENCODERS, last_image_id=U64
            ),
            surfaces=SurfacesLossy(
                surfaces=tuple(
                    LossySurface(
                        id=i, lossy_rect=LossyRect(left=edge, top=edge, right=edge, bottom=edge)
                    )
                    for i in range(NUM_SURFACES)
                )
            ),
        )
    if channel is ChannelType.INPUTS:
        return InputsState(motion_count=MAX_MOTION_COUNT)
    if channel is ChannelType.SMARTCARD:
        read = VSC_HEADER_SIZE + MAX_VSC_LENGTH
        header = (9).to_bytes(4, "big") + (U32).to_bytes(4, "big")
        header += MAX_VSC_LENGTH.to_bytes(4, "big")
        write = _messages(
            MAX_PENDING_WRITE, VSC_HEADER_SIZE, VSC_MAX_MESSAGE, lambda i, d: vsc_message(9, 0, d)
        )
        return SmartcardState(
            device=_device(write, write_tokens=MAX_PENDING_WRITE),
            reader_added=True,
            read_size=read,
            read_data=header + b"\xff" * (read - VSC_HEADER_SIZE),
        )
    if channel is ChannelType.USBREDIR:
        # One bulk packet (16-byte header, 10-byte type header) fills the queue.
        packet = usbredir_bulk_in(b"\xff" * (MAX_PENDING_WRITE - 26))
        return UsbredirState(device=_device(packet, write_tokens=len(packet)))
    pending = b"\xff" * MAX_PENDING_WRITE
    return SpicevmcState(device=_device(pending, write_tokens=MAX_PENDING_WRITE))
