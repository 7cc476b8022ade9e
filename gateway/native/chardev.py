"""``SpiceMigrateDataCharDevice``: the 25-byte base shared by main, smartcard and spicevmc."""

from __future__ import annotations

from gateway.native._layout import BytesBlock, Field

__all__ = ["CHAR_DEVICE_VERSION", "char_device_fields", "char_device_write_block"]

CHAR_DEVICE_VERSION = 1


def char_device_fields(prefix: str) -> list[Field]:
    """The base's fields, nested under the model attribute ``prefix``."""
    return [
        Field(f"{prefix}.version", "I", "const", CHAR_DEVICE_VERSION),
        Field(f"{prefix}.connected", "B", "bool"),
        Field(f"{prefix}.num_client_tokens", "I"),
        Field(f"{prefix}.num_send_tokens", "I"),
        Field(f"{prefix}.write_size", "I"),
        Field(f"{prefix}.write_num_client_tokens", "I"),
        Field(f"{prefix}.write_data_ptr", "I", "ptr"),
    ]


def char_device_write_block(prefix: str) -> BytesBlock:
    """The bytes still to be written to the guest device: always the first tail block."""
    return BytesBlock(f"{prefix}.write_data", f"{prefix}.write_data_ptr", f"{prefix}.write_size")
