"""Shared building blocks of every channel schema: strict config, bounded ints, channel types."""

from __future__ import annotations

import enum
from typing import Annotated, ClassVar

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "I32",
    "I64",
    "U8",
    "U16",
    "U32",
    "U64",
    "ChannelType",
    "StateModel",
    "StrictModel",
]

U8 = Annotated[int, Field(ge=0, le=0xFF)]
U16 = Annotated[int, Field(ge=0, le=0xFFFF)]
U32 = Annotated[int, Field(ge=0, le=0xFFFF_FFFF)]
U64 = Annotated[int, Field(ge=0, le=0xFFFF_FFFF_FFFF_FFFF)]
I32 = Annotated[int, Field(ge=-(2**31), le=2**31 - 1)]
I64 = Annotated[int, Field(ge=-(2**63), le=2**63 - 1)]


class ChannelType(enum.IntEnum):
    """SPICE channel types, numbered as in spice-protocol's enums.h."""

    MAIN = 1
    DISPLAY = 2
    INPUTS = 3
    CURSOR = 4
    PLAYBACK = 5
    RECORD = 6
    TUNNEL = 7
    SMARTCARD = 8
    USBREDIR = 9
    PORT = 10
    WEBDAV = 11


class StrictModel(BaseModel):
    """Strict, closed and immutable; errors never quote the offending input."""

    model_config = ConfigDict(
        strict=True,
        extra="forbid",
        frozen=True,
        hide_input_in_errors=True,
        ser_json_bytes="base64",
        val_json_bytes="base64",
        validate_default=True,
    )


class StateModel(StrictModel):
    """A channel's whole migration state: the unit that is sealed and opened.

    ``schema_version`` tags the model's shape; the registry maps
    (channel type, schema version) to the model class.
    """

    schema_version: ClassVar[int]
    channel_types: ClassVar[tuple[ChannelType, ...]]
