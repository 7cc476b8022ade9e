"""The char-device base state shared by main (the agent port), smartcard and the spicevmc family."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, model_validator

from schemas._base import U32, StrictModel

__all__ = ["MAX_PENDING_WRITE", "CharDeviceState"]

#: Upper bound of the bytes a source may hand over as still to be written to the guest device.
#: spice-server queues whole client messages; 32 MiB is far above what a usbredir or port channel
#: keeps in flight and stays below the 2 GiB where spice-server's int-sized allocator wraps.
MAX_PENDING_WRITE = 32 * 1024 * 1024


class CharDeviceState(StrictModel):
    """``SpiceMigrateDataCharDevice``: flow-control tokens and bytes not yet written to the guest.

    ``connected`` False is spice-server's "empty" record: every other field is then zero.
    The native char-device version is always 1; it is checked by the codec, not stored.
    """

    connected: bool
    num_client_tokens: U32
    num_send_tokens: U32
    write_size: Annotated[int, Field(ge=0, le=MAX_PENDING_WRITE)]
    write_num_client_tokens: U32
    write_data: Annotated[bytes, Field(max_length=MAX_PENDING_WRITE)]

    @model_validator(mode="after")
    def _consistent(self) -> CharDeviceState:
        if len(self.write_data) != self.write_size:
            raise ValueError(
                f"write_data holds {len(self.write_data)} bytes but write_size is {self.write_size}"
            )
        # Each client message (token) that is still pending carries at least one byte.
        if self.write_num_client_tokens > self.write_size:
            raise ValueError(
                f"write_num_client_tokens {self.write_num_client_tokens} exceeds "
                f"write_size {self.write_size}"
            )
        if not self.connected and (
            self.num_client_tokens
            or self.num_send_tokens
            or self.write_size
            or self.write_num_client_tokens
        ):
            raise ValueError("a disconnected char device must carry no tokens and no data")
        return self
