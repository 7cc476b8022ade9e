"""Main channel payload (``MNMD``, 65-byte fixed body).

Tail: the agent's pending write bytes, then the partial VDAgentMessage header. The source writes
``msg_header_ptr`` body-relative and so does this codec; a real target reads it 2 bytes later
(spice-server subtracts the 6-byte mini header instead of the 8-byte migration header). The codec
keeps the source's bytes exactly; ``schemas.main`` keeps such a body 2 bytes under the target's
receive buffer so that shifted read stays inside it.
"""

from __future__ import annotations

from gateway.native._layout import BytesBlock, Field, Layout
from gateway.native.chardev import char_device_fields, char_device_write_block
from schemas.main import MAIN_MAX_BODY, MainState

__all__ = ["LAYOUT", "decode", "encode"]

LAYOUT: Layout[MainState] = Layout(
    channel="main",
    magic=b"MNMD",
    version=1,
    fields=[
        *char_device_fields("agent"),
        Field("client_agent_started", "B", "bool"),
        Field("agent_to_client.chunk_header_size", "I"),
        Field("agent_to_client.chunk_port", "I"),
        Field("agent_to_client.chunk_size", "I"),
        Field("agent_to_client.msg_header_done", "B", "bool"),
        Field("agent_to_client.msg_header_partial_len", "I"),
        Field("agent_to_client.msg_header_ptr", "I", "ptr"),
        Field("agent_to_client.msg_remaining", "I"),
        Field("agent_to_client.msg_filter_result", "B"),
        Field("client_to_agent.msg_remaining", "I"),
        Field("client_to_agent.msg_filter_result", "B"),
    ],
    blocks=[
        char_device_write_block("agent"),
        BytesBlock(
            "agent_to_client.msg_header_partial",
            "agent_to_client.msg_header_ptr",
            "agent_to_client.msg_header_partial_len",
        ),
    ],
    model=MainState,
    max_size=MAIN_MAX_BODY,
)


def decode(data: bytes) -> MainState:
    return LAYOUT.decode(data)


def encode(state: MainState) -> bytes:
    return LAYOUT.encode(state)
