"""Property tests: model -> native -> model and native -> model -> native, for every channel.

Besides equality both ways, each encoded payload is checked against the layout rules of the
format facts, computed here independently of the codec: its length, and where each tail-block
offset points (the block right after the previous one, 0 when empty).
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import given

import schemas
from gateway import native
from schemas import (
    ChannelType,
    DisplayState,
    GlzDictionary,
    MainState,
    SmartcardState,
    SpicevmcState,
    StateModel,
    SurfacesLossless,
    SurfacesLossy,
)
from tests.strategies import MIGRATION_CHANNELS, budget, channel_states, native_payloads, states

_IDS = [c.name.lower() for c in MIGRATION_CHANNELS]


def _u32(data: bytes, offset: int) -> int:
    value: int = struct.unpack_from("<I", data, offset)[0]
    return value


def _check_layout(state: StateModel, data: bytes) -> None:
    """The native rules of §1.4 / §4, from the model alone."""
    if isinstance(state, MainState):
        write, partial = state.agent.write_size, state.agent_to_client.msg_header_partial_len
        assert len(data) == 65 + write + partial
        assert _u32(data, 29) == (65 if write else 0)
        assert _u32(data, 51) == (65 + write if partial else 0)
        assert data[65 : 65 + write] == state.agent.write_data
    elif isinstance(state, DisplayState):
        surfaces = state.surfaces
        entry, count = (
            (4, len(surfaces.ids))
            if isinstance(surfaces, SurfacesLossless)
            else (20, len(surfaces.surfaces))
        )
        assert len(data) == 84 + entry * count
        assert _u32(data, 76) == 80
        assert _u32(data, 80) == count
    elif isinstance(state, SmartcardState):
        write = state.device.write_size
        assert len(data) == 42 + write + state.read_size
        assert _u32(data, 29) == (42 if write else 0)
        assert _u32(data, 38) == (42 + write if state.read_size else 0)
        assert data[42 + write :] == state.read_data
    elif isinstance(state, SpicevmcState):
        write = state.device.write_size
        assert len(data) == 33 + write
        assert _u32(data, 29) == (33 if write else 0)
    else:
        assert len(data) == 10


@pytest.mark.parametrize("channel", MIGRATION_CHANNELS, ids=_IDS)
def test_model_native_model(channel: ChannelType) -> None:
    @budget(150)
    @given(state=states(channel))
    def check(state: StateModel) -> None:
        data = native.encode(state, channel)
        _check_layout(state, data)
        assert native.decode(channel, data) == state

    check()


@pytest.mark.parametrize("channel", MIGRATION_CHANNELS, ids=_IDS)
def test_native_model_native(channel: ChannelType) -> None:
    @budget(150)
    @given(data=native_payloads(channel))
    def check(data: bytes) -> None:
        state = native.decode(channel, data)
        assert native.encode(state, channel) == data

    check()


@budget(100)
@given(item=channel_states())
def test_encode_defaults_to_the_models_first_channel(item: tuple[ChannelType, StateModel]) -> None:
    channel, state = item
    # The spicevmc family shares one layout: the default name gives the same bytes.
    assert native.encode(state) == native.encode(state, channel)


@budget(60)
@given(state=states(ChannelType.USBREDIR))
def test_spicevmc_family_shares_one_layout(state: StateModel) -> None:
    family = (ChannelType.USBREDIR, *SpicevmcState.channel_types)
    payloads = {native.encode(state, c) for c in family}
    assert len(payloads) == 1
    (data,) = payloads
    for channel in family:
        decoded = native.decode(channel, data)
        # One layout, one model per channel: usbredir's adds the packet rules.
        assert type(decoded) is schemas.model_for(channel, 1)
        assert decoded.model_dump() == state.model_dump()


def _display(surfaces: SurfacesLossless | SurfacesLossy) -> DisplayState:
    return DisplayState(
        message_serial=1,
        low_bandwidth=False,
        pixmap_cache_id=1,
        pixmap_cache_size=1024,
        pixmap_cache_freezer=False,
        pixmap_cache_clients=(0, 0, 0, 0),
        glz_dict_id=1,
        glz_dict=GlzDictionary(window_size=1024, max_encoders=4, last_image_id=0),
        surfaces=surfaces,
    )


def test_empty_surface_list_is_canonically_lossless() -> None:
    """An empty list is 4 bytes whatever the source's mode; it decodes as lossless, and a
    "lossy" empty list (which the schema refuses to build) would be the very same bytes."""
    lossless = _display(SurfacesLossless(ids=()))
    data = native.encode(lossless)
    assert len(data) == 84
    assert data[80:] == b"\0\0\0\0"
    decoded = native.decode(ChannelType.DISPLAY, data)
    assert isinstance(decoded, DisplayState)
    assert decoded.surfaces == SurfacesLossless(ids=())
    # Bypass validation to build the form the schema refuses: same bytes.
    lossy = SurfacesLossy.model_construct(surfaces=())
    lossy_empty = lossless.model_copy(update={"surfaces": lossy})
    assert native.encode(lossy_empty) == data


def test_lossy_empty_list_is_refused_by_the_schema() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        SurfacesLossy(surfaces=())
