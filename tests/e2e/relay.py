"""A test-only SPICE-aware TCP relay: watches the migration messages on one leg, and can tamper.

The end-to-end tests put one relay on each leg they want to see: between spice-server and its
proxy (the native bytes, independently of the gateway) and between the client and a proxy (the
sealed blobs the client relays). Each relay frames both directions of every connection with
:class:`gateway.spice.SpiceConnection` and records every migration message it forwards, with the
time it arrived. A :class:`Tamper` rewrites the client->server ``MIGRATE_DATA`` of chosen
channels, as a malicious client would.

A relay runs its own asyncio loop in a daemon thread, listens on an ephemeral port of 127.0.0.1
(bound before anything learns the port, so there is no race for it) and stops with
:meth:`Relay.close`. It forwards everything else unchanged, byte for byte. A connection whose
bytes cannot be framed is closed and the reason kept in :attr:`Relay.errors`: the tests treat
that as a failure of the relay, not something to work around.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal, Protocol, TypeVar

from gateway.errors import GatewayError
from gateway.spice import (
    ChannelType,
    ClientMigrateData,
    Direction,
    Message,
    MigrateData,
    MigrationMessage,
    SpiceConnection,
    reframe,
)

__all__ = [
    "ConnectionRecord",
    "FlipByte",
    "Observed",
    "Relay",
    "Replace",
    "ReplaceEach",
    "Swap",
    "Tamper",
    "Truncate",
    "Withhold",
    "channel_name",
]

LOCALHOST = "127.0.0.1"
READ_SIZE = 256 * 1024
#: Longest a tamper may hold one message (Swap waits for its partner).
HOLD_TIMEOUT = 15.0
_CONNECT_TIMEOUT = 10.0
_START_TIMEOUT = 10.0

T = TypeVar("T")


def channel_name(channel_type: int) -> str:
    try:
        return ChannelType(channel_type).name.lower()
    except ValueError:
        return f"type-{channel_type}"


@dataclass(frozen=True)
class Observed:
    """One migration message the relay forwarded (see :mod:`gateway.spice.messages`)."""

    relay: str
    connection: int
    channel_type: int
    channel_id: int
    direction: Direction
    message: MigrationMessage
    #: The body as it arrived, and as it was sent on (they differ only when tampered).
    body: bytes = field(repr=False)
    forwarded: bytes = field(repr=False)
    #: time.monotonic() when the read that completed it returned, and when it was written on.
    received_at: float
    sent_at: float

    @property
    def channel(self) -> str:
        return channel_name(self.channel_type)

    @property
    def is_migrate_data(self) -> bool:
        return isinstance(self.message, MigrateData | ClientMigrateData)

    @property
    def tampered(self) -> bool:
        return self.body != self.forwarded


@dataclass
class ConnectionRecord:
    """One accepted connection: its channel once linked, and how it ended."""

    index: int
    opened_at: float
    channel_type: int | None = None
    channel_id: int | None = None
    closed_at: float | None = None
    #: "client", "server" (whichever side ended it first), "error" or "relay".
    closed_by: str | None = None

    @property
    def channel(self) -> str:
        return "unlinked" if self.channel_type is None else channel_name(self.channel_type)


class Tamper(Protocol):
    """Rewrites the body of client->server MIGRATE_DATA on the channels it names."""

    @property
    def channel_types(self) -> frozenset[int]: ...

    async def rewrite(self, channel_type: int, body: bytes) -> bytes: ...


@dataclass(frozen=True)
class FlipByte:
    """Invert every bit of one byte: ``offset`` bytes after the start of the body, after its
    middle, or before its last byte (``anchor``), since the tests pick a region rather than
    an index of a blob whose length they learn only on the wire."""

    channel_type: int
    offset: int = 0
    anchor: Literal["start", "middle", "end"] = "start"

    @property
    def channel_types(self) -> frozenset[int]:
        return frozenset({self.channel_type})

    def position(self, length: int) -> int:
        base = {"start": 0, "middle": length // 2, "end": length - 1}[self.anchor]
        return base - self.offset if self.anchor == "end" else base + self.offset

    async def rewrite(self, channel_type: int, body: bytes) -> bytes:
        changed = bytearray(body)
        changed[self.position(len(body))] ^= 0xFF
        return bytes(changed)


@dataclass(frozen=True)
class Truncate:
    """Keep only the first ``keep`` bytes."""

    channel_type: int
    keep: int

    @property
    def channel_types(self) -> frozenset[int]:
        return frozenset({self.channel_type})

    async def rewrite(self, channel_type: int, body: bytes) -> bytes:
        return body[: self.keep]


@dataclass(frozen=True)
class Replace:
    """Send ``blob`` instead (say, one recorded in an earlier migration)."""

    channel_type: int
    blob: bytes = field(repr=False)

    @property
    def channel_types(self) -> frozenset[int]:
        return frozenset({self.channel_type})

    async def rewrite(self, channel_type: int, body: bytes) -> bytes:
        return self.blob


@dataclass(frozen=True)
class Withhold:
    """Never pass the body on: the channel's MIGRATE_DATA waits until the relay closes, and the
    rest of the connection with it (the client keeps the blob, the target never sees it)."""

    types: frozenset[int]

    @property
    def channel_types(self) -> frozenset[int]:
        return self.types

    async def rewrite(self, channel_type: int, body: bytes) -> bytes:
        await asyncio.get_running_loop().create_future()  # never set: cancelled at close
        raise AssertionError("a withheld body was released")


@dataclass(frozen=True)
class ReplaceEach:
    """Send ``blobs[channel type]`` instead, on every channel named."""

    blobs: Mapping[int, bytes] = field(repr=False)

    @property
    def channel_types(self) -> frozenset[int]:
        return frozenset(self.blobs)

    async def rewrite(self, channel_type: int, body: bytes) -> bytes:
        return self.blobs[channel_type]


class Swap:
    """Send channel ``a``'s body on channel ``b`` and the other way round.

    The two arrive on different connections in no fixed order, so whichever comes first is held
    until its partner arrives (bounded by HOLD_TIMEOUT). Both run on the relay's loop, which is
    where the futures are made.
    """

    def __init__(self, a: int, b: int) -> None:
        self.a, self.b = a, b
        self._bodies: dict[int, asyncio.Future[bytes]] = {}

    @property
    def channel_types(self) -> frozenset[int]:
        return frozenset({self.a, self.b})

    def _body(self, channel_type: int) -> asyncio.Future[bytes]:
        if channel_type not in self._bodies:
            self._bodies[channel_type] = asyncio.get_running_loop().create_future()
        return self._bodies[channel_type]

    async def rewrite(self, channel_type: int, body: bytes) -> bytes:
        self._body(channel_type).set_result(body)
        partner = self.b if channel_type == self.a else self.a
        return await asyncio.wait_for(asyncio.shield(self._body(partner)), HOLD_TIMEOUT)


class Relay:
    """Listens on 127.0.0.1 and forwards each connection to ``upstream``, watching SPICE."""

    def __init__(self, name: str, upstream_port: int, *, tamper: Tamper | None = None) -> None:
        self.name = name
        self.upstream = (LOCALHOST, upstream_port)
        self.tamper = tamper
        self.port = 0
        self.errors: list[str] = []
        self._observed: list[Observed] = []
        self._connections: list[ConnectionRecord] = []
        self._cond = threading.Condition()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._closing = False
        self._thread = threading.Thread(target=self._run, name=f"relay-{name}", daemon=True)
        self._started = threading.Event()
        self._start_error: BaseException | None = None

    # --- lifecycle (test thread) -------------------------------------------------------------

    def start(self) -> Relay:
        self._thread.start()
        if not self._started.wait(_START_TIMEOUT):
            raise TimeoutError(f"relay {self.name} did not start within {_START_TIMEOUT}s")
        if self._start_error is not None:
            raise RuntimeError(f"relay {self.name} could not listen") from self._start_error
        return self

    def close(self) -> None:
        """Stop listening, close every connection and end the thread (bounded)."""
        loop = self._loop
        if loop is None or not self._thread.is_alive():
            return
        try:
            asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(_START_TIMEOUT)
        finally:
            with contextlib.suppress(RuntimeError):  # the loop is already closed
                loop.call_soon_threadsafe(loop.stop)
            self._thread.join(_START_TIMEOUT)

    def __enter__(self) -> Relay:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- what it saw (test thread) ----------------------------------------------------------

    def observed(self) -> list[Observed]:
        with self._cond:
            return list(self._observed)

    def connections(self) -> list[ConnectionRecord]:
        with self._cond:
            return [ConnectionRecord(**vars(c)) for c in self._connections]

    def migrate_data(self, direction: Direction | None = None) -> list[Observed]:
        """Every MIGRATE_DATA forwarded (in ``direction``), in arrival order."""
        return [
            o
            for o in self.observed()
            if o.is_migrate_data and (direction is None or o.direction is direction)
        ]

    def messages(self, kind: type[MigrationMessage]) -> list[Observed]:
        return [o for o in self.observed() if isinstance(o.message, kind)]

    def wait_for(self, check: Callable[[Relay], T | None], timeout: float, what: str) -> T:
        """Wait until ``check(self)`` is not None; bounded."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                result = check(self)
                if result is not None:
                    return result
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(
                        f"relay {self.name}: timed out after {timeout:.1f}s waiting for {what}"
                    )
                self._cond.wait(remaining)

    # --- the loop (relay thread) ------------------------------------------------------------

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            self._server = loop.run_until_complete(
                asyncio.start_server(self._accept, LOCALHOST, 0, limit=READ_SIZE)
            )
            self.port = int(self._server.sockets[0].getsockname()[1])
        except OSError as error:
            self._start_error = error
            loop.close()
            self._started.set()
            return
        self._loop = loop
        self._started.set()
        try:
            loop.run_forever()
        finally:
            loop.close()

    async def _shutdown(self) -> None:
        """Abort every socket, so each connection's pumps end as if the peer had gone.

        Aborting (rather than cancelling the connection tasks) drops unsent bytes at once and
        lets each task finish normally; asyncio logs an error for a cancelled handler task.
        """
        assert self._server is not None
        self._closing = True
        self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        if self._tasks:
            _, stuck = await asyncio.wait(self._tasks, timeout=_START_TIMEOUT / 2)
            for task in stuck:
                task.cancel()

    def _error(self, message: str) -> None:
        with self._cond:
            self.errors.append(message)
            self._cond.notify_all()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        with self._cond:
            record = ConnectionRecord(len(self._connections), time.monotonic())
            self._connections.append(record)
        try:
            try:
                upstream = await asyncio.wait_for(
                    asyncio.open_connection(*self.upstream, limit=READ_SIZE), _CONNECT_TIMEOUT
                )
            except (OSError, TimeoutError) as error:
                self._error(f"connect to {self.upstream}: {error}")
                writer.close()
                return
            self._writers.add(upstream[1])
            await self._relay(record, (reader, writer), upstream)
        finally:
            self._tasks.discard(task)
            self._writers.discard(writer)

    async def _relay(
        self,
        record: ConnectionRecord,
        client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        server: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    ) -> None:
        spice = SpiceConnection()
        pumps = {
            asyncio.create_task(
                self._pump(record, spice, client[0], server[1], Direction.CLIENT_TO_SERVER)
            ): "client",
            asyncio.create_task(
                self._pump(record, spice, server[0], client[1], Direction.SERVER_TO_CLIENT)
            ): "server",
        }
        closed_by = "relay"
        try:
            done, _ = await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
            first = next(iter(done))
            if first.exception() is not None:
                closed_by = "error"
            elif not self._closing:
                closed_by = pumps[first]
        finally:
            for task in pumps:
                task.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
            for _, writer in (client, server):
                writer.close()
            for _, writer in (client, server):
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(writer.wait_closed(), 2)
                self._writers.discard(writer)

            with self._cond:
                record.closed_at = time.monotonic()
                record.closed_by = closed_by
                self._cond.notify_all()

    async def _pump(
        self,
        record: ConnectionRecord,
        spice: SpiceConnection,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        direction: Direction,
    ) -> None:
        """Forward one direction until EOF; a framing error is recorded and ends it."""
        receive = (
            spice.receive_from_client
            if direction is Direction.CLIENT_TO_SERVER
            else spice.receive_from_server
        )
        try:
            while True:
                data = await reader.read(READ_SIZE)
                arrived = time.monotonic()
                if not data:
                    return
                try:
                    events = receive(data)
                except GatewayError as error:
                    self._error(f"connection {record.index} ({record.channel}): {error}")
                    raise
                for event in events:
                    if isinstance(event, Message) and event.migration is not None:
                        await self._forward_migration(record, spice, event, arrived, writer)
                    else:
                        writer.write(event.raw)
                    if record.channel_type is None and spice.channel_type is not None:
                        with self._cond:
                            record.channel_type = spice.channel_type
                            record.channel_id = spice.channel_id
                            self._cond.notify_all()
                await writer.drain()
        except (ConnectionError, OSError):
            return

    async def _forward_migration(
        self,
        record: ConnectionRecord,
        spice: SpiceConnection,
        event: Message,
        arrived: float,
        writer: asyncio.StreamWriter,
    ) -> None:
        migration = event.migration
        assert migration is not None
        channel_type = spice.channel_type or 0
        body = event.body
        forwarded = body
        out = event.raw
        if (
            self.tamper is not None
            and isinstance(migration, ClientMigrateData)
            and channel_type in self.tamper.channel_types
        ):
            forwarded = await self.tamper.rewrite(channel_type, body)
            out = reframe(event, forwarded)
        # Recorded before the write: whoever reacts to the bytes must find them recorded.
        observed = Observed(
            relay=self.name,
            connection=record.index,
            channel_type=channel_type,
            channel_id=spice.channel_id or 0,
            direction=event.direction,
            message=migration,
            body=body,
            forwarded=forwarded,
            received_at=arrived,
            sent_at=time.monotonic(),
        )
        with self._cond:
            self._observed.append(observed)
            self._cond.notify_all()
        writer.write(out)
