"""Smartcard channel (``SCMD``): the char device and a partially read VSC message."""

from __future__ import annotations

from typing import Annotated, ClassVar

from pydantic import Field, model_validator

from schemas._base import ChannelType, StateModel
from schemas.chardev import CharDeviceState
from schemas.registry import register
from schemas.streams import check_vsc_stream

__all__ = ["MAX_VSC_LENGTH", "TARGET_READ_BUFFER", "VSC_HEADER_SIZE", "SmartcardState"]

#: VSCMsgHeader: u32 type, u32 reader_id, u32 length, big-endian.
VSC_HEADER_SIZE = 12
#: VSC messages carry APDUs (at most 64 KiB plus framing); bound the length a header may claim.
MAX_VSC_LENGTH = 65_536 + 16
#: The target's read buffer starts at APDUBufSize (270) + the header, and grows to
#: length + 12 only for a message whose length exceeds its current size.
TARGET_READ_BUFFER = 270 + VSC_HEADER_SIZE


@register
class SmartcardState(StateModel):
    """``SpiceMigrateDataSmartcard``.

    The target copies ``read_size`` bytes into a buffer sized from the partial VSC header, so a
    partial read may never be longer than the message its own header announces.
    """

    schema_version: ClassVar[int] = 1
    channel_types: ClassVar[tuple[ChannelType, ...]] = (ChannelType.SMARTCARD,)

    device: CharDeviceState
    reader_added: bool
    read_size: Annotated[int, Field(ge=0, le=MAX_VSC_LENGTH + VSC_HEADER_SIZE)]
    read_data: Annotated[bytes, Field(max_length=MAX_VSC_LENGTH + VSC_HEADER_SIZE)]

    @model_validator(mode="after")
    def _consistent(self) -> SmartcardState:
        if len(self.read_data) != self.read_size:
            raise ValueError(
                f"read_data holds {len(self.read_data)} bytes but read_size is {self.read_size}"
            )
        # Pending writes to the card are whole VSC messages the passthru card can take.
        check_vsc_stream(self.device.write_data)
        if not self.device.connected and (self.reader_added or self.read_size):
            raise ValueError("without a device on the source there is no reader and no read data")
        if self.read_size >= VSC_HEADER_SIZE:
            length = int.from_bytes(self.read_data[8:12], "big")
            if length > MAX_VSC_LENGTH:
                raise ValueError(f"partial VSC message announces {length} bytes, over the limit")
            if self.read_size > VSC_HEADER_SIZE + length:
                raise ValueError(
                    f"read_size {self.read_size} exceeds the partial VSC message "
                    f"({VSC_HEADER_SIZE} + {length} bytes)"
                )
            buffer = VSC_HEADER_SIZE + length if length > TARGET_READ_BUFFER else TARGET_READ_BUFFER
            if self.read_size > buffer:
                raise ValueError(
                    f"read_size {self.read_size} exceeds the target's {buffer}-byte read buffer"
                )
        return self
