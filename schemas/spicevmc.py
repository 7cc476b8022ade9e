"""The spicevmc family (``SVMD``): usbredir, port and webdav carry only their char-device state."""

from __future__ import annotations

from typing import ClassVar

from pydantic import model_validator

from schemas._base import ChannelType, StateModel
from schemas.chardev import CharDeviceState
from schemas.registry import register
from schemas.streams import check_usbredir_stream

__all__ = ["SpicevmcState", "UsbredirState"]


@register
class SpicevmcState(StateModel):
    """``SpiceMigrateDataSpiceVmc`` of a port or webdav channel.

    A real source always sends a connected record here, and the target asserts it (a zero
    aborts QEMU), so a disconnected one is refused. The pending bytes of a port belong to the
    application behind it; webdav's are spice-webdavd's mux, read by the guest daemon alone.
    """

    schema_version: ClassVar[int] = 1
    channel_types: ClassVar[tuple[ChannelType, ...]] = (ChannelType.PORT, ChannelType.WEBDAV)

    device: CharDeviceState

    @model_validator(mode="after")
    def _connected(self) -> SpicevmcState:
        if not self.device.connected:
            raise ValueError("a spicevmc record must be connected (the target asserts it)")
        return self


@register
class UsbredirState(SpicevmcState):
    """``SpiceMigrateDataSpiceVmc`` of a usbredir channel: the pending bytes are usbredir packets.

    QEMU's usb-redir parser stops at the first packet it cannot parse without consuming the
    rest, and its next chardev read then aborts QEMU, so only whole, well-formed packets pass.
    """

    channel_types: ClassVar[tuple[ChannelType, ...]] = (ChannelType.USBREDIR,)

    @model_validator(mode="after")
    def _packets(self) -> UsbredirState:
        check_usbredir_stream(self.device.write_data)
        return self
