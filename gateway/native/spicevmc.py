"""The spicevmc family's payload (``SVMD``, 33-byte fixed body): usbredir, port and webdav.

Tail: the pending write bytes to the guest port. The three channels share one layout; each gets
its own name so that errors say which channel refused, and usbredir its own model (its pending
bytes must be whole usbredir packets).
"""

from __future__ import annotations

from gateway.native._layout import Layout
from gateway.native.chardev import char_device_fields, char_device_write_block
from schemas import ChannelType
from schemas.spicevmc import SpicevmcState, UsbredirState

__all__ = ["LAYOUTS", "decode", "encode"]

LAYOUTS: dict[ChannelType, Layout[SpicevmcState]] = {
    channel: Layout(
        channel=channel.name.lower(),
        magic=b"SVMD",
        version=1,
        fields=char_device_fields("device"),
        blocks=[char_device_write_block("device")],
        model=model,
    )
    for model in (UsbredirState, SpicevmcState)
    for channel in model.channel_types
}


def decode(data: bytes, channel: ChannelType = ChannelType.USBREDIR) -> SpicevmcState:
    return LAYOUTS[channel].decode(data)


def encode(state: SpicevmcState, channel: ChannelType = ChannelType.USBREDIR) -> bytes:
    return LAYOUTS[channel].encode(state)
