"""spice-server's native migration payloads <-> schema models, one module per channel.

Pure functions: bytes in, validated model out (or a ``GatewayError``), and back to the exact
bytes spice-server writes.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from gateway.errors import BadMagic, schema_violation
from gateway.native import display, inputs, main, smartcard, spicevmc
from gateway.native._layout import DEFAULT_MAX_PAYLOAD, Layout
from schemas import ChannelType, DisplayState, StateModel
from schemas.display import JpegWanCompression

__all__ = [
    "CHANNEL_NAMES",
    "DEFAULT_MAX_PAYLOAD",
    "channel_by_name",
    "decode",
    "encode",
    "layout_for",
]

_LAYOUTS: dict[ChannelType, Layout[Any]] = {
    ChannelType.MAIN: main.LAYOUT,
    ChannelType.DISPLAY: display.LAYOUT,
    ChannelType.INPUTS: inputs.LAYOUT,
    ChannelType.SMARTCARD: smartcard.LAYOUT,
    **spicevmc.LAYOUTS,
}

#: Channels that carry migration data, by the names the CLI and the config use.
CHANNEL_NAMES: dict[str, ChannelType] = {channel.name.lower(): channel for channel in _LAYOUTS}


def channel_by_name(name: str) -> ChannelType:
    try:
        return CHANNEL_NAMES[name]
    except KeyError:
        raise ValueError(f"unknown channel {name!r}; one of: {', '.join(CHANNEL_NAMES)}") from None


def layout_for(channel: ChannelType | int) -> Layout[Any]:
    """The native layout of ``channel``; BadMagic for a channel without migration data."""
    try:
        return _LAYOUTS[ChannelType(channel)]
    except (KeyError, ValueError):
        raise BadMagic(f"channel type {channel} carries no migration data") from None


def decode(channel: ChannelType | int, data: bytes | bytearray | memoryview) -> StateModel:
    """Decode ``data`` as ``channel``'s native payload into its validated model."""
    state: StateModel = layout_for(channel).decode(data)
    return state


def encode(
    state: StateModel,
    channel: ChannelType | int | None = None,
    *,
    jpeg_wan_compression: JpegWanCompression | None = None,
) -> bytes:
    """The native bytes of ``state``; ``channel`` picks among the spicevmc family's names.

    ``jpeg_wan_compression``, the target spice-server's setting, writes a display state's
    surface list in the format that server will read (see ``DisplayState.for_target``); without
    it the list keeps the format the source wrote.
    """
    if jpeg_wan_compression is not None and isinstance(state, DisplayState):
        state = state.for_target(jpeg_wan_compression)
    if channel is None:
        channel = state.channel_types[0]
    layout = layout_for(channel)
    if not isinstance(state, layout.model):
        if not issubclass(layout.model, type(state)):
            raise TypeError(f"{layout.channel}: expected {layout.model.__name__}")
        # A family model (a spicevmc state for a usbredir channel): check it under the
        # channel's own rules before writing it.
        try:
            state = layout.model.model_validate(dict(state))
        except ValidationError as error:
            raise schema_violation(layout.channel, error) from None
    data: bytes = layout.encode(state)
    return data
