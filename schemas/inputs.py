"""Inputs channel (``ICMD``): unacknowledged mouse motion."""

from __future__ import annotations

from typing import Annotated, ClassVar

from pydantic import Field

from schemas._base import ChannelType, StateModel
from schemas.registry import register

__all__ = ["MAX_MOTION_COUNT", "InputsState"]

#: spice-gtk stops sending motion at 2 * SPICE_INPUT_MOTION_ACK_BUNCH (8) unacknowledged
#: events; the target queues one ACK per 4, so an unbounded count floods it with ACKs.
MAX_MOTION_COUNT = 64


@register
class InputsState(StateModel):
    """``SpiceMigrateDataInputs``."""

    schema_version: ClassVar[int] = 1
    channel_types: ClassVar[tuple[ChannelType, ...]] = (ChannelType.INPUTS,)

    motion_count: Annotated[int, Field(ge=0, le=MAX_MOTION_COUNT)]
