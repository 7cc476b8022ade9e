"""Main channel (``MNMD``): the guest agent's char-device state and the agent message filters."""

from __future__ import annotations

from typing import Annotated, ClassVar

from pydantic import Field, model_validator

from schemas._base import U32, ChannelType, StateModel, StrictModel
from schemas.chardev import CharDeviceState
from schemas.registry import register
from schemas.streams import VDP_CLIENT_PORT, VDP_SERVER_PORT, check_vdi_chunks

__all__ = [
    "AGENT_CLIENT_WINDOW",
    "MAIN_FIXED_SIZE",
    "MAIN_MAX_BODY",
    "AgentReadState",
    "AgentWriteState",
    "MainState",
]

#: spice-server's main channel receives MIGRATE_DATA into a fixed 4096 + 11 * 2048 byte buffer;
#: a larger body is refused by the target, so the source can never produce one.
MAIN_MAX_BODY = 26_624
#: The native body's fixed part (header included) before the tail blocks.
MAIN_FIXED_SIZE = 65
#: Tokens spice-server hands the client for client->agent messages (REDS_AGENT_WINDOW_SIZE).
AGENT_CLIENT_WINDOW = 10
#: sizeof(VDAgentMessage): a partial header is always shorter.
VD_AGENT_MESSAGE_HEADER_SIZE = 20
#: sizeof(VDIChunkHeader).
VDI_CHUNK_HEADER_SIZE = 8
#: A target whose agent is not attached yet keeps a copy of a connected record that starts 8
#: bytes into the body but is as long as the whole body, reading 8 bytes past it; the partial
#: agent header is read 2 bytes after where the source put it. Keeping a connected body 8 bytes
#: under the receive buffer keeps both reads inside it.
CONNECTED_READ_SLACK = 8

FilterResult = Annotated[int, Field(ge=0, le=3)]
"""AgentMsgFilterResult: 0 OK, 1 DISCARD, 2 PROTO_ERROR, 3 MONITORS_CONFIG."""
MessageRemaining = Annotated[int, Field(ge=0, le=2**31 - 1)]
"""Stored into a C int on the target."""


class AgentReadState(StrictModel):
    """Where the source was in reading agent->client data from the guest."""

    chunk_header_size: Annotated[int, Field(ge=0, le=VDI_CHUNK_HEADER_SIZE)]
    # Left over from the last complete chunk when chunk_header_size is 0: not required to be zero.
    chunk_port: U32
    chunk_size: U32
    msg_header_done: bool
    msg_header_partial_len: Annotated[int, Field(ge=0, lt=VD_AGENT_MESSAGE_HEADER_SIZE)]
    msg_header_partial: Annotated[bytes, Field(max_length=VD_AGENT_MESSAGE_HEADER_SIZE - 1)]
    msg_remaining: MessageRemaining
    msg_filter_result: FilterResult

    @model_validator(mode="after")
    def _consistent(self) -> AgentReadState:
        if len(self.msg_header_partial) != self.msg_header_partial_len:
            raise ValueError(
                f"msg_header_partial holds {len(self.msg_header_partial)} bytes but "
                f"msg_header_partial_len is {self.msg_header_partial_len}"
            )
        if self.msg_header_partial_len and (
            self.chunk_header_size != VDI_CHUNK_HEADER_SIZE or self.msg_header_done
        ):
            raise ValueError(
                "a partial message header needs a complete chunk header and an unfinished message"
            )
        # While the chunk header is still being read the source has no message header: a done
        # flag there leaves the target's agent reader out of step for the session.
        if self.chunk_header_size < VDI_CHUNK_HEADER_SIZE and self.msg_header_done:
            raise ValueError("msg_header_done with a partial chunk header")
        if self.chunk_header_size == VDI_CHUNK_HEADER_SIZE:
            # The source got past the header, so its port was one it reads; the size is the
            # rest of the chunk, and a message header still being read has chunk bytes to come.
            if self.chunk_port not in (VDP_CLIENT_PORT, VDP_SERVER_PORT):
                raise ValueError(f"chunk port {self.chunk_port} in a complete chunk header")
            if self.msg_header_partial_len and not self.chunk_size:
                raise ValueError("a partial message header in a chunk with no bytes left")
        return self


class AgentWriteState(StrictModel):
    """Where the source was in filtering client->agent messages."""

    msg_remaining: MessageRemaining
    msg_filter_result: FilterResult


@register
class MainState(StateModel):
    """``SpiceMigrateDataMain``: the vdagent port and the agent message filters."""

    schema_version: ClassVar[int] = 1
    channel_types: ClassVar[tuple[ChannelType, ...]] = (ChannelType.MAIN,)

    agent: CharDeviceState
    client_agent_started: bool
    agent_to_client: AgentReadState
    client_to_agent: AgentWriteState

    @model_validator(mode="after")
    def _consistent(self) -> MainState:
        agent = self.agent
        if not agent.connected and (
            self.client_agent_started
            or self.agent_to_client != _IDLE_READ
            or self.client_to_agent != _IDLE_WRITE
        ):
            raise ValueError("without an agent on the source every agent field must be zero")
        if agent.connected:
            # Pending agent bytes are whole VDI chunks, one per client token.
            client_chunks = check_vdi_chunks(agent.write_data)
            if client_chunks != agent.write_num_client_tokens:
                raise ValueError(
                    f"write_data holds {client_chunks} client chunks but "
                    f"write_num_client_tokens is {agent.write_num_client_tokens}"
                )
            # A client that started the agent holds a send window; with none left the target
            # never reads the agent again (spice-gtk hands 2^32 - 1 tokens and returns none).
            if self.client_agent_started and not agent.num_send_tokens:
                raise ValueError("num_send_tokens 0: the target would never read the agent")
        if agent.num_client_tokens + agent.write_num_client_tokens > AGENT_CLIENT_WINDOW:
            raise ValueError(
                f"num_client_tokens + write_num_client_tokens exceeds the agent window of "
                f"{AGENT_CLIENT_WINDOW}"
            )
        body = (
            MAIN_FIXED_SIZE
            + agent.write_size
            + self.agent_to_client.msg_header_partial_len
            + (CONNECTED_READ_SLACK if agent.connected else 0)
        )
        if body > MAIN_MAX_BODY:
            raise ValueError(
                f"native body would be {body} bytes (with read slack), over the main channel's "
                f"{MAIN_MAX_BODY}-byte receive buffer"
            )
        return self


_IDLE_READ = AgentReadState(
    chunk_header_size=0,
    chunk_port=0,
    chunk_size=0,
    msg_header_done=False,
    msg_header_partial_len=0,
    msg_header_partial=b"",
    msg_remaining=0,
    msg_filter_result=0,
)
_IDLE_WRITE = AgentWriteState(msg_remaining=0, msg_filter_result=0)
