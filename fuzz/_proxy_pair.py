"""Two proxies' decision layers side by side, without sockets: what ``proxy_pair_fuzzer`` drives.

A source proxy and a target proxy share a keyring and a clock the script advances. Each has a
:class:`~gateway.proxy.sessions.SessionTable`, an in-memory replay guard and a few connection
slots; a slot holds what the asyncio server keeps per proxied channel connection, a
:class:`~gateway.spice.SpiceConnection` that frames both directions and a
:class:`~gateway.proxy.channel.ChannelHandler` that decides, and :meth:`Slot.feed` hands the
handler each event exactly as the server's pump does (pass-through runs as they are, a
MIGRATE_DATA through ``rewrite``, anything else through ``forward``).

This module is the one place that knows the proxy's public surface (how a state, a handler and
a connection are built and fed); when that surface changes, only this file follows.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from gateway import native
from gateway.envelope import Policy
from gateway.errors import Replayed
from gateway.keys import Key, Keyring, KeyState
from gateway.proxy.channel import AWAITED, ChannelHandler, ProxyState
from gateway.proxy.config import Limits, Peer, ProxyConfig, Route
from gateway.proxy.sessions import DATA_CHANNELS, Attempt, Session, SessionTable
from gateway.replay import ReplayGuard
from gateway.service.metrics import Metrics
from gateway.spice import (
    ChannelType,
    Direction,
    Event,
    HeaderKind,
    Message,
    Passthrough,
    SpiceConnection,
)

__all__ = [
    "SAMPLES",
    "SOURCE_ADDRESS",
    "SOURCE_HOST",
    "TARGET_ADDRESS",
    "TARGET_HOST",
    "VM",
    "MemoryReplayGuard",
    "Proxy",
    "Slot",
    "make_pair",
]

SOURCE_HOST, TARGET_HOST = "source-host", "target-host"
#: Where clients are told to reach each gateway (the peers tables).
SOURCE_ADDRESS, TARGET_ADDRESS = ("192.0.2.1", 5900), ("192.0.2.2", 5900)
VM = uuid.UUID("6f1c1b9e-0d5e-4d8a-9a53-2f43c0a5f0a1")
START = 1_800_000_000.0
MAX_MESSAGE_SIZE = 1 << 20

#: A real native payload per data channel: the captured samples the package ships.
SAMPLES: dict[ChannelType, bytes] = {
    ChannelType(channel): (
        Path(native.__file__).parents[1] / "samples" / f"{ChannelType(channel).name.lower()}.bin"
    ).read_bytes()
    for channel in sorted(DATA_CHANNELS)
}

# The decision layer audits every step; a fuzzer has no use for millions of log records.
_LOG = logging.getLogger("spice_migration_gateway")
_LOG.setLevel(logging.CRITICAL + 1)
_LOG.propagate = False
_LOG.addHandler(logging.NullHandler())


class MemoryReplayGuard(ReplayGuard):
    """:class:`ReplayGuard`'s contract (single use, ``claim`` atomic with the record, pruning
    by ``now``) kept in a dict: no database, nothing on disk."""

    def __init__(self) -> None:  # no database: the parent's fields are never used
        self.consumed: dict[bytes, int] = {}

    def consume(
        self,
        blob_id: bytes,
        keep_until: int,
        *,
        now: int,
        claim: Callable[[], None] | None = None,
    ) -> None:
        self.consumed = {k: until for k, until in self.consumed.items() if until >= now}
        if blob_id in self.consumed:
            raise Replayed(f"blob {blob_id[:8].hex()}… was already opened")
        if claim is not None:
            claim()
        self.consumed[blob_id] = keep_until

    def submit(
        self,
        blob_id: bytes,
        keep_until: int,
        *,
        now: int,
        claim: Callable[[], None] | None = None,
        done: Callable[[BaseException | None], None],
    ) -> None:
        """:meth:`consume` at once (no commit thread), its outcome handed to ``done``."""
        try:
            self.consume(blob_id, keep_until, now=now, claim=claim)
        except Exception as error:
            done(error)
        else:
            done(None)

    def __len__(self) -> int:
        return len(self.consumed)

    def close(self) -> None:
        self.consumed.clear()

    def __repr__(self) -> str:
        return "MemoryReplayGuard()"


def _keyring() -> Keyring:
    """One active key, the same on both hosts (a test key: fixed bytes)."""
    key = Key(bytes(range(16)), KeyState.ACTIVE, 1_700_000_000, bytes(range(0x40, 0x60)))
    return Keyring([key])


KEYRING = _keyring()


@dataclass
class Clock:
    now: float = START

    def __call__(self) -> float:
        return self.now


@dataclass
class Slot:
    """One proxied channel connection: its framing and its handler."""

    proxy: Proxy
    conn: SpiceConnection
    handler: ChannelHandler

    def feed(
        self, direction: Direction, data: bytes, check: Callable[[Slot, Event, bytes], None]
    ) -> None:
        """Frame ``data`` as ``direction``'s sender wrote it and pass each event, with what the
        proxy sends on for it, to ``check`` as soon as it is decided. Raises GatewayError where
        the server would close the channel."""
        receive = (
            self.conn.receive_from_client
            if direction is Direction.CLIENT_TO_SERVER
            else self.conn.receive_from_server
        )
        for event in receive(data):
            check(self, event, self.proxy.dispatch(self.handler, event))

    @property
    def header_kind(self) -> HeaderKind | None:
        return self.conn.header_kind

    def close(self) -> None:
        self.handler.close()


@dataclass
class Proxy:
    """One gateway host's shared state and its open connections."""

    state: ProxyState
    route: Route
    loop: asyncio.AbstractEventLoop
    slots: dict[int, Slot] = field(default_factory=dict)

    @property
    def host_id(self) -> str:
        return self.state.config.host_id

    @property
    def guard(self) -> MemoryReplayGuard:
        guard = self.state.replay_guard
        assert isinstance(guard, MemoryReplayGuard)
        return guard

    def connect(self, slot: int) -> Slot:
        """A new client connection in ``slot``; one already there is closed first."""
        self.disconnect(slot)
        conn = SpiceConnection(max_message_size=MAX_MESSAGE_SIZE)
        handler = ChannelHandler(self.state, self.route, f"client-{slot}")
        self.slots[slot] = Slot(self, conn, handler)
        return self.slots[slot]

    def disconnect(self, slot: int) -> None:
        old = self.slots.pop(slot, None)
        if old is not None:
            old.close()

    def dispatch(self, handler: ChannelHandler, event: Event) -> bytes:
        """What the server's pump does with one event."""
        if type(event) is Passthrough:
            return event.raw
        if type(event) is Message and isinstance(event.migration, AWAITED):
            return self.loop.run_until_complete(handler.rewrite(event))
        return handler.forward(event)


def _config(host_id: str, peer: str, peer_address: tuple[str, int]) -> ProxyConfig:
    return ProxyConfig(
        host_id=host_id,
        keyring="keyring.json",  # never read: the keyring is handed over directly
        replay_db="replay.sqlite",  # never opened: the guard lives in memory
        limits=Limits(max_message_size=MAX_MESSAGE_SIZE),
        peers=(Peer(host_id=peer, addresses=(f"{peer_address[0]}:{peer_address[1]}",)),),
        routes=(Route(name="vm", listen="127.0.0.1:5901", upstream="127.0.0.1:5902", vm_id=VM),),
    )


def make_pair(clock: Clock, loop: asyncio.AbstractEventLoop) -> tuple[Proxy, Proxy]:
    """A fresh source proxy and target proxy sharing ``clock``, with no connections."""
    proxies = []
    for host, peer, address in (
        (SOURCE_HOST, TARGET_HOST, TARGET_ADDRESS),
        (TARGET_HOST, SOURCE_HOST, SOURCE_ADDRESS),
    ):
        config = _config(host, peer, address)
        state = ProxyState(
            config=config,
            keyring=lambda: KEYRING,
            replay_guard=MemoryReplayGuard(),
            sessions=SessionTable(),
            metrics=Metrics(),
            policy=Policy(clock_skew=config.limits.clock_skew),
            clock=clock,
        )
        proxies.append(Proxy(state, config.routes[0], loop))
    source, target = proxies
    source.state.announcer = _peer_link(source.state, target.state)
    return source, target


def _peer_link(
    source: ProxyState, target: ProxyState
) -> Callable[[Route, Session], Awaitable[bool]]:
    """The peer link as a working one delivers it: the source's announcement, recorded at once.

    The link's own bytes are the ``peer_link`` harness's business; here only its outcome
    matters, the attempt the target then runs.
    """

    async def announce(route: Route, session: Session) -> bool:
        with session.lock:
            migration_id, target_host = session.migration_id, session.target_host
            channels = frozenset(session.expected_channels)
        if migration_id is None or target_host != target.config.host_id:
            return False
        target.attempts.announce(
            Attempt(
                vm_id=route.vm_id,
                migration_id=migration_id,
                source_host=source.config.host_id,
                channels=channels,
                issued_at=int(source.clock()),
            )
        )
        return True

    return announce
