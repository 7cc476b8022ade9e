"""The spicevmc family (``SVMD``): usbredir, port and webdav carry only their char-device state."""

from __future__ import annotations

from typing import ClassVar

from pydantic import model_validator

from schemas._base import ChannelType, StateModel
from schemas.chardev import CharDeviceState
from schemas.registry import register

__all__ = ["SpicevmcState"]


@register
class SpicevmcState(StateModel):
    """``SpiceMigrateDataSpiceVmc``.

    A real source always sends a connected record here, and the target asserts it (a zero
    aborts QEMU), so a disconnected one is refused.
    """

    schema_version: ClassVar[int] = 1
    channel_types: ClassVar[tuple[ChannelType, ...]] = (
        ChannelType.USBREDIR,
        ChannelType.PORT,
        ChannelType.WEBDAV,
    )

    device: CharDeviceState

    @model_validator(mode="after")
    def _connected(self) -> SpicevmcState:
        if not self.device.connected:
            raise ValueError("a spicevmc record must be connected (the target asserts it)")
        return self
