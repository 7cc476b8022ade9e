"""The proxy's byte path: two protocol legs per connection, one receive buffer for them all.

A connection has a client leg (what the SPICE client sends, relayed to spice-server) and an
upstream leg (the other way). Both are :class:`asyncio.BufferedProtocol`: the transport reads
straight into the buffer a leg hands out, and the leg passes what arrived to its connection at
once. Every leg of one proxy reads into the same :class:`ReceiveBuffer`, so an idle session
holds no read buffer at all. That is safe because the loop is single-threaded and a leg's
``buffer_updated`` consumes the bytes (relays them, or copies what it must keep) before any
leg asks for the buffer again, with one exception that :meth:`Leg.send` takes care of: a
transport may keep what it could not send at once.

A message larger than the receive buffer is read straight into a buffer of its own size (its
*room*, see :meth:`~gateway.spice.connection.SpiceConnection.room`) once its header is in.

Backpressure: when a leg's transport holds more than its high-water mark of unsent bytes, the
other leg stops reading until it drains.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Protocol

from gateway.spice.constants import Direction
from gateway.spice.events import Event

__all__ = ["RECEIVE_SIZE", "Leg", "Owner", "ReceiveBuffer"]

#: What one read takes at most: a few display updates, or a quarter of a large one.
RECEIVE_SIZE = 256 * 1024

#: Whether asyncio's socket transport may keep a view of what it is given rather than a copy
#: of what it could not send at once: Python 3.11 copies the rest into its bytearray buffer,
#: from 3.12 on it queues ``memoryview(data)[sent:]`` (selector_events, write()).
TRANSPORT_KEEPS_VIEWS = sys.version_info >= (3, 12)


class ReceiveBuffer:
    """The buffer every leg of one proxy reads into (see the module's notes)."""

    __slots__ = ("view",)

    def __init__(self) -> None:
        self.view = memoryview(bytearray(RECEIVE_SIZE))

    def give_up(self) -> None:
        """A transport still refers to the current buffer: read into a new one from now on."""
        self.view = memoryview(bytearray(RECEIVE_SIZE))


class Owner(Protocol):
    """What a leg tells its connection."""

    def leg_made(self, leg: Leg) -> None: ...

    def received(self, leg: Leg, data: memoryview) -> None: ...

    def room(self, leg: Leg) -> memoryview | None: ...

    def filled(self, leg: Leg, nbytes: int) -> None: ...

    def leg_ended(self, leg: Leg) -> None: ...

    def leg_lost(self, leg: Leg) -> None: ...


class Leg(asyncio.BufferedProtocol):
    """One side's transport: what it receives goes to the owner, what the owner relays the
    other way is written with :meth:`send`."""

    __slots__ = (
        "blocked",
        "buffer",
        "direction",
        "held",
        "in_room",
        "open",
        "other",
        "owner",
        "partial",
        "sender",
        "tls",
        "transport",
    )

    def __init__(self, owner: Owner, direction: Direction, buffer: ReceiveBuffer) -> None:
        self.owner = owner
        #: The direction of what this leg receives.
        self.direction = direction
        #: Its metric label, looked up once.
        self.sender = direction.sender
        #: Bytes of the partial message the owner holds for this leg, as counted in the
        #: proxy's memory budget.
        self.partial = 0
        self.buffer = buffer
        self.transport: asyncio.Transport | None = None
        self.other: Leg = self
        self.open = False
        self.tls = False
        #: The other leg's transport is full: this one does not read until it drains.
        self.blocked = False
        #: Events received but held back behind a migration message being rewritten.
        self.held: list[Event | memoryview | bytes] | None = None
        #: The last buffer handed out is the owner's room for a large message.
        self.in_room = False

    # --- asyncio.BufferedProtocol -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.open = True
        self.tls = transport.get_extra_info("ssl_object") is not None
        self.owner.leg_made(self)

    def get_buffer(self, sizehint: int) -> memoryview:
        # Only a partial message held may be a large one that wants a room of its own.
        room = self.owner.room(self) if self.partial else None
        self.in_room = room is not None
        return self.buffer.view if room is None else room

    def buffer_updated(self, nbytes: int) -> None:
        if self.in_room:
            self.owner.filled(self, nbytes)
        else:
            self.owner.received(self, self.buffer.view[:nbytes])

    def eof_received(self) -> None:
        self.owner.leg_ended(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.open = False
        self.owner.leg_lost(self)

    def pause_writing(self) -> None:
        self.other.blocked = True
        self.other.update_reading()

    def resume_writing(self) -> None:
        self.other.blocked = False
        self.other.update_reading()

    # --- what the owner uses ------------------------------------------------------------------

    def update_reading(self) -> None:
        """Read unless the other side is full or a rewrite holds this side's events back."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if self.blocked or self.held is not None:
            transport.pause_reading()
        else:
            transport.resume_reading()

    def send(self, data: bytes | memoryview) -> None:
        """Write ``data``; a memoryview of the receive buffer is safe to pass (any other
        memoryview must be the caller's to give away).

        A plain socket transport with nothing queued sends at once and keeps only what the
        socket did not take, a copy of it (see TRANSPORT_KEEPS_VIEWS) or a view. Where it may
        keep a view, a view goes out only to a transport with an empty queue, and if any of it
        stayed queued the receive buffer is left to the transport. A TLS transport queues what
        it is given before encrypting it, so it gets bytes.
        """
        transport = self.transport
        if transport is None:
            return
        if type(data) is memoryview and data.obj is self.buffer.view.obj:
            if self.tls:
                transport.write(data.tobytes())
            elif not TRANSPORT_KEEPS_VIEWS:
                transport.write(data)
            elif transport.get_write_buffer_size():
                transport.write(data.tobytes())
            else:
                transport.write(data)
                if transport.get_write_buffer_size():
                    self.buffer.give_up()
            return
        transport.write(data)
