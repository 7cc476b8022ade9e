"""The largest valid state of each channel: every byte string, list and integer at its bound.

The envelope's per-channel payload bounds (``gateway.envelope.MAX_PAYLOAD``) must hold these;
the memory tests open them, and the worst adversarial payloads, at those bounds.
"""

from __future__ import annotations

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
from schemas.spicevmc import SpicevmcState

U32 = 0xFFFF_FFFF
U64 = 0xFFFF_FFFF_FFFF_FFFF


def _device(size: int, tokens: int = U32) -> CharDeviceState:
    return CharDeviceState(
        connected=True,
        num_client_tokens=tokens,
        num_send_tokens=U32,
        write_size=size,
        write_num_client_tokens=min(size, U32 if tokens == U32 else AGENT_CLIENT_WINDOW - tokens),
        write_data=b"\xff" * size,
    )


def worst_state(channel: ChannelType) -> StateModel:
    """The valid state of ``channel`` whose msgpack encoding is the longest."""
    if channel is ChannelType.MAIN:
        partial = VD_AGENT_MESSAGE_HEADER_SIZE - 1
        write = MAIN_MAX_BODY - MAIN_FIXED_SIZE - CONNECTED_READ_SLACK - partial
        return MainState(
            agent=_device(write, tokens=0),
            client_agent_started=True,
            agent_to_client=AgentReadState(
                chunk_header_size=VDI_CHUNK_HEADER_SIZE,
                chunk_port=U32,
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
        header = (U32).to_bytes(4, "big") * 2 + MAX_VSC_LENGTH.to_bytes(4, "big")
        return SmartcardState(
            device=_device(MAX_PENDING_WRITE),
            reader_added=True,
            read_size=read,
            read_data=header + b"\xff" * (read - VSC_HEADER_SIZE),
        )
    return SpicevmcState(device=_device(MAX_PENDING_WRITE))
