"""Smartcard channel payload (``SCMD``, 42-byte fixed body).

Tail: the device's pending write bytes, then the partially read VSC message.
"""

from __future__ import annotations

from gateway.native._layout import BytesBlock, Field, Layout
from gateway.native.chardev import char_device_fields, char_device_write_block
from schemas.smartcard import SmartcardState

__all__ = ["LAYOUT", "decode", "encode"]

LAYOUT: Layout[SmartcardState] = Layout(
    channel="smartcard",
    magic=b"SCMD",
    version=1,
    fields=[
        *char_device_fields("device"),
        Field("reader_added", "B", "bool"),
        Field("read_size", "I"),
        Field("read_data_ptr", "I", "ptr"),
    ],
    blocks=[
        char_device_write_block("device"),
        BytesBlock("read_data", "read_data_ptr", "read_size"),
    ],
    model=SmartcardState,
)


def decode(data: bytes) -> SmartcardState:
    return LAYOUT.decode(data)


def encode(state: SmartcardState) -> bytes:
    return LAYOUT.encode(state)
