"""The link-stage traffic of well-behaved peers, built from the encoders.

For tests, fuzz seeds and scripted test peers: what spice-gtk and spice-server send to link a
channel, with the two capabilities that change the framing (AUTH_SELECTION, MINI_HEADER)
switchable. The ticket and the public key are placeholders; nothing here encrypts.
"""

from __future__ import annotations

from collections.abc import Sequence

from gateway.spice.constants import (
    PUB_KEY_SIZE,
    TICKET_SIZE,
    AuthMechanism,
    CommonCap,
    Direction,
    LinkError,
)
from gateway.spice.link import (
    LinkMess,
    LinkReply,
    caps_words,
    encode_auth_mechanism,
    encode_link_result,
)

__all__ = [
    "PLACEHOLDER_PUB_KEY",
    "PLACEHOLDER_TICKET",
    "client_auth",
    "client_link",
    "common_caps",
    "link_exchange",
    "server_link_reply",
]

PLACEHOLDER_PUB_KEY = bytes(range(PUB_KEY_SIZE))
PLACEHOLDER_TICKET = bytes(range(0x80, 0x80 + TICKET_SIZE))


def common_caps(*, auth_selection: bool = True, mini_header: bool = True) -> tuple[int, ...]:
    """Common caps words as stock peers send them (AUTH_SPICE always)."""
    caps = [CommonCap.AUTH_SPICE]
    if auth_selection:
        caps.append(CommonCap.PROTOCOL_AUTH_SELECTION)
    if mini_header:
        caps.append(CommonCap.MINI_HEADER)
    return caps_words(caps)


def client_link(
    channel_type: int,
    channel_id: int = 0,
    *,
    connection_id: int = 0,
    auth_selection: bool = True,
    mini_header: bool = True,
    channel_caps: Sequence[int] = (),
) -> bytes:
    """The client's link header and link message."""
    return LinkMess(
        channel_type=channel_type,
        channel_id=channel_id,
        connection_id=connection_id,
        common_caps=common_caps(auth_selection=auth_selection, mini_header=mini_header),
        channel_caps=caps_words(channel_caps),
    ).encode_with_header()


def server_link_reply(
    *,
    error: int = LinkError.OK,
    auth_selection: bool = True,
    mini_header: bool = True,
    channel_caps: Sequence[int] = (),
) -> bytes:
    """The server's link header and reply; an error reply is all zeros but the error."""
    if error != LinkError.OK:
        return LinkReply(error=error).encode_with_header()
    return LinkReply(
        pub_key=PLACEHOLDER_PUB_KEY,
        common_caps=common_caps(auth_selection=auth_selection, mini_header=mini_header),
        channel_caps=caps_words(channel_caps),
    ).encode_with_header()


def client_auth(*, auth_selection: bool = True, ticket: bytes = PLACEHOLDER_TICKET) -> bytes:
    """The auth-mechanism word (when both sides select) and the ticket."""
    word = encode_auth_mechanism(AuthMechanism.SPICE) if auth_selection else b""
    return word + ticket


def link_exchange(
    channel_type: int,
    channel_id: int = 0,
    *,
    connection_id: int = 0,
    auth_selection: bool = True,
    mini_header: bool = True,
) -> list[tuple[Direction, bytes]]:
    """A whole successful link stage, in the order the bytes cross the proxy."""
    return [
        (
            Direction.CLIENT_TO_SERVER,
            client_link(
                channel_type,
                channel_id,
                connection_id=connection_id,
                auth_selection=auth_selection,
                mini_header=mini_header,
            ),
        ),
        (
            Direction.SERVER_TO_CLIENT,
            server_link_reply(auth_selection=auth_selection, mini_header=mini_header),
        ),
        (Direction.CLIENT_TO_SERVER, client_auth(auth_selection=auth_selection)),
        (Direction.SERVER_TO_CLIENT, encode_link_result(LinkError.OK)),
    ]
