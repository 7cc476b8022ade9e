"""Inputs channel payload (``ICMD``, 10 bytes, no tail)."""

from __future__ import annotations

from gateway.native._layout import Field, Layout
from schemas.inputs import InputsState

__all__ = ["LAYOUT", "decode", "encode"]

#: The target receives inputs messages into a 2048-byte buffer.
INPUTS_MAX_BODY = 2048

LAYOUT: Layout[InputsState] = Layout(
    channel="inputs",
    magic=b"ICMD",
    version=1,
    fields=[Field("motion_count", "H")],
    blocks=[],
    model=InputsState,
    max_size=INPUTS_MAX_BODY,
)


def decode(data: bytes) -> InputsState:
    return LAYOUT.decode(data)


def encode(state: InputsState) -> bytes:
    return LAYOUT.encode(state)
