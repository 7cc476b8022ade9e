"""What :class:`~gateway.spice.connection.SpiceConnection` returns: an event per protocol unit.

Every event carries the exact bytes of its unit or run of units (``raw``), in order, so a proxy
forwards pass-through traffic by writing ``event.raw`` unchanged; concatenating the ``raw`` of
every event of one direction gives back exactly the bytes consumed in that direction.

The data phase has two events. A :class:`Message` is one migration message, decoded; a
:class:`Passthrough` is a run of ordinary messages in one piece, since nearly all traffic is
display updates, inputs and cursor moves that the gateway only relays, and building an object
per message would cost more than relaying it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.errors import TooLarge
from gateway.spice.constants import Direction, HeaderKind, LinkError
from gateway.spice.link import LinkHeader, LinkMess, LinkReply
from gateway.spice.messages import MigrationMessage, encode_data_message

__all__ = [
    "AuthMechanismReceived",
    "Event",
    "LinkHeaderReceived",
    "LinkMessReceived",
    "LinkReplyReceived",
    "LinkResultReceived",
    "Message",
    "Passthrough",
    "TicketReceived",
    "reframe",
]


@dataclass(frozen=True, slots=True)
class Event:
    direction: Direction
    raw: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class LinkHeaderReceived(Event):
    """A ``SpiceLinkHeader`` from either side."""

    header: LinkHeader


@dataclass(frozen=True, slots=True)
class LinkMessReceived(Event):
    """The client's ``SpiceLinkMess``: channel, session and capabilities."""

    mess: LinkMess


@dataclass(frozen=True, slots=True)
class LinkReplyReceived(Event):
    """The server's ``SpiceLinkReply``; a non-zero ``reply.error`` ends the link."""

    reply: LinkReply

    @property
    def ok(self) -> bool:
        return self.reply.error == LinkError.OK


@dataclass(frozen=True, slots=True)
class AuthMechanismReceived(Event):
    """The client's choice of authentication (only SPICE tickets get past the gateway)."""

    mechanism: int


@dataclass(frozen=True, slots=True)
class TicketReceived(Event):
    """The client's RSA-encrypted ticket; its bytes are ``raw`` (kept out of ``repr``)."""


@dataclass(frozen=True, slots=True)
class LinkResultReceived(Event):
    """The server's u32 link result; 0 opens the data phase, anything else ends the link."""

    result: int

    @property
    def ok(self) -> bool:
        return self.result == LinkError.OK


@dataclass(frozen=True, slots=True)
class Passthrough(Event):
    """``count`` consecutive complete data messages (at least one), none of them a migration
    message for its channel and direction; ``raw`` is all of them, headers included.

    Only the headers were read: each size was checked against the maximum message size, and
    no body was looked at. The run ends where a read ends, at a migration message, or at a
    message not yet complete, so how runs fall depends on how the input was split.
    """

    count: int


@dataclass(frozen=True, slots=True)
class Message(Event):
    """One complete data message (header and body), emitted only once all of it arrived.

    ``serial`` and ``sub_list`` exist only in the full header (``None`` for the mini header).
    ``migration`` is the decoded body (see :mod:`gateway.spice.messages`). The connection emits
    a ``Message`` only for a migration message of its channel and direction, so from there it is
    never ``None``; the type allows ``None`` for a message built by hand (to test a rewrite).
    """

    kind: HeaderKind
    msg_type: int
    serial: int | None
    sub_list: int | None
    migration: MigrationMessage | None = None

    @property
    def header_size(self) -> int:
        return self.kind.size

    @property
    def header(self) -> bytes:
        return self.raw[: self.kind.size]

    @property
    def body(self) -> bytes:
        """A copy of the body; the raw unit stays the one to forward."""
        return self.raw[self.kind.size :]

    @property
    def body_size(self) -> int:
        return len(self.raw) - self.kind.size


def reframe(message: Message, body: bytes) -> bytes:
    """``message`` with its body replaced: same header kind and type, new size.

    A full header keeps the original serial (one message replaced by one message, so serials
    and ACK counting stay consistent) and gets ``sub_list`` 0, since a sub-message list would
    point into the old body.
    """
    if len(body) > 0xFFFF_FFFF:
        raise TooLarge(f"replacement body of {len(body)} bytes does not fit a u32 size field")
    serial = message.serial if message.serial is not None else 0
    return encode_data_message(message.kind, message.msg_type, body, serial=serial)
