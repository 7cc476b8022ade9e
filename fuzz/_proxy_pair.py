"""Two proxies' decision layers side by side, without sockets: what ``proxy_pair_fuzzer`` drives.

A source proxy and a target proxy share a keyring and a clock the script advances. Each has a
:class:`~gateway.proxy.sessions.SessionTable`, an in-memory replay guard and a few connection
slots; a slot holds what the asyncio server keeps per proxied channel connection, a
:class:`~gateway.spice.SpiceConnection` that frames both directions and a
:class:`~gateway.proxy.channel.ChannelHandler` that decides, and :meth:`Slot.feed` hands the
handler each event exactly as the proxy's relay does (pass-through runs as they are, a
MIGRATE_DATA through ``rewrite``, anything else through ``forward``).

The pair's surroundings are the script's to choose too (:class:`Surroundings`): whether the
peer link delivers the source's announcement, in which ``peer_link_down`` mode the target runs,
whether the hosts use the identity suite (fixed test identities; the simulated link runs the
real handshake and stores each side's attempt key where the real peer link stores it), and a
replay guard that fails once on demand or sees a newer attempt announced while it commits.

This module is the one place that knows the proxy's public surface (how a state, a handler and
a connection are built and fed); when that surface changes, only this file follows.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import sqlite3
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from _identities import identity as _host_identity

from gateway import handshake, native
from gateway.envelope import Policy, read_header
from gateway.errors import GatewayError, Replayed, ReplayStoreError
from gateway.handshake import AttemptKey
from gateway.identity import HostIdentity, TrustStore
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
    "FAULTS",
    "SAMPLES",
    "SOURCE_ADDRESS",
    "SOURCE_HOST",
    "TARGET_ADDRESS",
    "TARGET_HOST",
    "VM",
    "MemoryReplayGuard",
    "Proxy",
    "Slot",
    "Surroundings",
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


#: What a failing replay guard raises: its own error (any operation), or what a database or a
#: closed guard can raise past it (where a blob is recorded: accepted, which turns it into
#: ReplayStoreError, or spent after a refusal, which leaves the refusal standing).
FAULTS: tuple[type[Exception] | None, ...] = (
    None,
    ReplayStoreError,
    sqlite3.OperationalError,
    RuntimeError,
)


class MemoryReplayGuard(ReplayGuard):
    """:class:`ReplayGuard`'s contract (single use, ``claim`` atomic with the record and the
    blob recorded even when the claim refuses it, pruning by ``now``) kept in a dict: no
    database, nothing on disk.

    ``fault``: the next operation fails with it instead, recording nothing (one shot; a
    database error other than the guard's own only where a blob is recorded). ``before_claim``:
    called once before the next claim, as a peer-link announcement can land while the guard
    commits.
    """

    def __init__(self) -> None:  # no database: the parent's fields are never used
        self.consumed: dict[bytes, int] = {}
        self.fault: type[Exception] | None = None
        self.before_claim: Callable[[], None] | None = None
        #: How many operations failed on purpose.
        self.failures = 0

    def _fail(self, recording: bool) -> None:
        fault = self.fault
        if fault is None or (fault is not ReplayStoreError and not recording):
            return
        self.fault = None
        self.failures += 1
        raise fault("the replay store failed (injected)")

    def consume(
        self,
        blob_id: bytes,
        keep_until: int,
        *,
        now: int,
        issued_at: int | None = None,
        claim: Callable[[], None] | None = None,
    ) -> None:
        self._fail(True)
        self.consumed = {k: until for k, until in self.consumed.items() if until >= now}
        if blob_id in self.consumed:
            raise Replayed(f"blob {blob_id[:8].hex()}… was already opened")
        self.consumed[blob_id] = keep_until
        if claim is not None:
            hook, self.before_claim = self.before_claim, None
            if hook is not None:
                hook()
            claim()

    def seen(self, blob_id: bytes, now: int) -> bool:
        self._fail(False)
        return self.consumed.get(blob_id, -1) >= now

    def __contains__(self, blob_id: object) -> bool:
        return blob_id in self.consumed

    def submit(
        self,
        blob_id: bytes,
        keep_until: int,
        *,
        now: int,
        issued_at: int | None = None,
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

#: Fixed host identities of the pair (constant seeds), each trusting the other.
IDENTITIES: dict[str, tuple[HostIdentity, TrustStore]] = {}
_SOURCE_ID, _TARGET_ID = _host_identity(SOURCE_HOST, 1), _host_identity(TARGET_HOST, 2)
IDENTITIES[SOURCE_HOST] = (_SOURCE_ID, TrustStore().with_peer(_TARGET_ID.public)[0])
IDENTITIES[TARGET_HOST] = (_TARGET_ID, TrustStore().with_peer(_SOURCE_ID.public)[0])


@dataclass
class Surroundings:
    """What the script chooses about the pair's world (see the module's docstring)."""

    #: The peer link delivers the source's announcement (else it is down: nothing recorded).
    delivers: bool = True
    #: The target's mode when no attempt was announced.
    peer_link_down: str = "refuse"
    #: Both hosts require the identity suite of each other.
    identity: bool = False
    #: The attempt keys the simulated link agreed, by key id (source side: what seals).
    keys: dict[bytes, AttemptKey] = field(default_factory=dict)

    def keyring_for(self, blob: bytes) -> Keyring:
        """The keyring a blob the pair sealed opens with (an attempt's, or the shared one)."""
        try:
            key = self.keys.get(read_header(blob).key_id)
        except GatewayError:
            return KEYRING
        return key.keyring if key is not None else KEYRING


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
    peer_host: str = ""
    peer_address: tuple[str, int] = ("", 0)

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

    def configure(self, surroundings: Surroundings) -> None:
        """Apply the script's choices as a configuration reload does (suite, link mode)."""
        suite = "identity" if surroundings.identity else "shared-key"
        self.state.config = _config(
            self.host_id, self.peer_host, self.peer_address, suite, surroundings.peer_link_down
        )
        found = IDENTITIES[self.host_id]
        self.state.identity = (lambda: found) if surroundings.identity else None

    def dispatch(self, handler: ChannelHandler, event: Event) -> bytes:
        """What the proxy's relay does with one event."""
        if type(event) is Passthrough:
            return event.raw
        if type(event) is Message and isinstance(event.migration, AWAITED):
            return self.loop.run_until_complete(handler.rewrite(event))
        return handler.forward(event)


@functools.lru_cache(maxsize=16)
def _config(
    host_id: str,
    peer: str,
    peer_address: tuple[str, int],
    suite: str = "shared-key",
    peer_link_down: str = "refuse",
) -> ProxyConfig:
    identity = suite == "identity"
    return ProxyConfig.model_validate(
        {
            "host_id": host_id,
            "keyring": "keyring.json",  # never read: the keyring is handed over directly
            "replay_db": "replay.sqlite",  # never opened: the guard lives in memory
            # Never read either: the identities are handed over directly.
            "identity": "identity.json" if identity else None,
            "trust_store": "trust.json" if identity else None,
            "peer_link_down": peer_link_down,
            "limits": Limits(max_message_size=MAX_MESSAGE_SIZE),
            "peers": (
                Peer(
                    host_id=peer,
                    addresses=(f"{peer_address[0]}:{peer_address[1]}",),
                    suite=suite,
                ),
            ),
            "routes": (
                Route(name="vm", listen="127.0.0.1:5901", upstream="127.0.0.1:5902", vm_id=VM),
            ),
        }
    )


def make_pair(
    clock: Clock, loop: asyncio.AbstractEventLoop, surroundings: Surroundings | None = None
) -> tuple[Proxy, Proxy]:
    """A fresh source proxy and target proxy sharing ``clock``, with no connections."""
    world = surroundings if surroundings is not None else Surroundings()
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
        proxy = Proxy(state, config.routes[0], loop, peer_host=peer, peer_address=address)
        proxy.configure(world)
        proxies.append(proxy)
    source, target = proxies
    source.state.announcer = _peer_link(source.state, target.state, world)
    return source, target


def _peer_link(
    source: ProxyState, target: ProxyState, world: Surroundings
) -> Callable[[Route, Session], Awaitable[bool]]:
    """The peer link as the script has it: the source's announcement recorded at once, or
    lost; under the identity suite the real handshake agrees the attempt's key, which the
    target records with the attempt and the source keeps in the session (as ``peer.py``).

    The link's own bytes are the ``peer_link`` harness's business; here only its outcome
    matters, the attempt the target then runs.
    """

    async def announce(route: Route, session: Session) -> bool:
        with session.lock:
            migration_id, target_host = session.migration_id, session.target_host
            channels = frozenset(session.expected_channels)
        if migration_id is None or target_host != target.config.host_id:
            return False
        if not world.delivers:
            return False
        now = int(source.clock())
        source_key = target_key = None
        if world.identity:
            own, trust = IDENTITIES[source.config.host_id]
            theirs, their_trust = IDENTITIES[target.config.host_id]
            hello, pending = handshake.hello(theirs, now=now)
            offer, source_key = handshake.offer(
                hello, f"{route.vm_id} {migration_id}".encode(), own, trust, target_host, now=now
            )
            _, target_key = handshake.accept(offer, pending, their_trust, now=now)
            world.keys[source_key.key_id] = source_key
        target.attempts.announce(
            Attempt(
                vm_id=route.vm_id,
                migration_id=migration_id,
                source_host=source.config.host_id,
                channels=channels,
                issued_at=now,
                key=target_key,
            )
        )
        with session.lock:
            if session.migration_id == migration_id:
                session.attempt_key = source_key
        return True

    return announce
