"""What the proxy does with each SPICE event of one channel connection: forward it, or rewrite it.

Every unit is forwarded as the exact bytes received, except the migration payloads:

- server -> client ``MIGRATE_DATA`` (this host is the source): decoded strictly, validated and
  sealed for the target host the client was sent to;
- client -> server ``MIGRATE_DATA`` (this host is the target): opened (authenticated first, then
  decoded, validated, context and replay checked) and rebuilt into native bytes.

Anything refused raises a :class:`~gateway.errors.GatewayError` after an audit record and a
metric; the caller then closes both connections of the channel, so spice-server never sees a byte
the gateway did not authenticate. No I/O here: the asyncio layer feeds events in and writes the
returned bytes out.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import sqlite3
import threading
import time
import uuid
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import cast

from gateway import native
from gateway.envelope import (
    ANY_MIGRATION,
    Context,
    ExpectedContext,
    Policy,
    Verified,
    seal,
    spend,
    verify,
)
from gateway.errors import (
    ContextMismatch,
    Expired,
    GatewayError,
    ProtocolError,
    ReplayStoreError,
)
from gateway.handshake import SuitePolicy, policy_for
from gateway.identity import HostIdentity, TrustStore
from gateway.keys import Keyring
from gateway.proxy.config import ProxyConfig, Route
from gateway.proxy.sessions import DATA_CHANNELS, AttemptTable, Session, SessionTable
from gateway.replay import ReplayGuard
from gateway.service.logs import audit, log
from gateway.service.metrics import Metrics
from gateway.spice.constants import AuthMechanism, ChannelType
from gateway.spice.events import (
    AuthMechanismReceived,
    Event,
    LinkMessReceived,
    Message,
    reframe,
)
from gateway.spice.messages import (
    ClientMigrateData,
    MainInit,
    Migrate,
    MigrateBeginSeamless,
    MigrateCancel,
    MigrateData,
    MigrateDstDoSeamless,
    MigrateFlushMark,
    MigrateSwitchHost,
)

__all__ = [
    "AWAITED",
    "INLINE_SEAL_LIMIT",
    "Announcer",
    "ChannelHandler",
    "ProxyState",
    "record",
]

#: Migration messages the proxy hands to :meth:`ChannelHandler.rewrite` (they may wait).
AWAITED = (MigrateData, ClientMigrateData, MigrateBeginSeamless)

#: Source side: announce the session's new attempt to its target over the peer link; True
#: when the target took it. Holds the client's MIGRATE_BEGIN_SEAMLESS until it returns.
Announcer = Callable[[Route, Session], Awaitable[bool]]

#: Payloads below this size are sealed or verified on the event loop (see
#: :meth:`ChannelHandler.rewrite`).
INLINE_SEAL_LIMIT = 64 * 1024


@dataclass
class ProxyState:
    """Everything the channel handlers of one proxy process share."""

    config: ProxyConfig
    keyring: Callable[[], Keyring]
    replay_guard: ReplayGuard
    sessions: SessionTable
    metrics: Metrics
    policy: Policy
    clock: Callable[[], float] = time.time
    #: Target side: the attempt each VM's source announced over the peer link.
    attempts: AttemptTable = field(default_factory=AttemptTable)
    announcer: Announcer | None = None
    #: This host's identity and trust store (one consistent pair), when configured.
    identity: Callable[[], tuple[HostIdentity, TrustStore]] | None = None
    #: Client addresses refusals are counted under (the rest count as "other"): a label per
    #: address an attacker can vary (IPv6) must not grow the metrics without bound.
    refusal_clients: set[str] = field(default_factory=set)

    def suite(self, peer: str | None) -> SuitePolicy:
        """The suite ``peer``'s configuration requires (the shared key for an unknown one)."""
        found = self.config.peer(peer) if peer is not None else None
        return policy_for(found.suite if found is not None else "shared-key")


#: How many client addresses get their own refusal counter.
MAX_REFUSAL_CLIENTS = 256


def client_address(peer: str) -> str:
    """The address part of ``HOST:PORT`` (IPv6 as it comes, without its port)."""
    host, sep, _ = peer.rpartition(":")
    return host if sep else peer


#: Expectations kept (a few hundred bytes each): one per VM and channel, and per pinned
#: migration, so that an evacuation of hundreds of VMs at once builds each only once.
EXPECTED_CONTEXTS = 16384


@functools.lru_cache(maxsize=EXPECTED_CONTEXTS)
def _expected_context(
    channel_type: ChannelType,
    channel_id: int,
    vm_id: uuid.UUID,
    migration_id: uuid.UUID | None,
    sources: frozenset[str],
    host_id: str,
) -> ExpectedContext:
    """What a blob for this channel must carry (immutable, so shared between blobs).

    ``migration_id`` None accepts any migration: the session has not pinned one yet.
    """
    return ExpectedContext(
        channel_type=channel_type,
        channel_id=channel_id,
        vm_id=vm_id,
        migration_id=ANY_MIGRATION if migration_id is None else migration_id,
        sources=sources,
        target_host=host_id,
        schema_version=1,
    )


@functools.lru_cache(maxsize=256)
def _channel_name(channel_type: int) -> str:
    try:
        return ChannelType(channel_type).name.lower()
    except ValueError:
        return f"type-{channel_type}"


class ChannelHandler:
    """The gateway's decisions for one proxied channel connection."""

    def __init__(self, state: ProxyState, route: Route, peer: str) -> None:
        self.state = state
        self.route = route
        self.peer = peer
        self.channel_type = 0
        self.channel_id = 0
        self.session: Session | None = None
        #: A refusal was audited and counted here (the caller need not count it again).
        self.refused = False
        #: The client linked with a session id: on main, only then is it a migration target.
        self.connection_id = 0
        #: The server asked this channel for a flush mark (MIGRATE with NEED_FLUSH).
        self.flush_requested = False

    # --- what the caller uses -----------------------------------------------------------------

    @property
    def channel_kind(self) -> str:
        """The channel's name, or "unlinked" before the client's link message arrived."""
        return _channel_name(self.channel_type) if self.channel_type else "unlinked"

    @property
    def channel(self) -> str:
        return f"{self.channel_kind}:{self.channel_id}"

    def forward(self, event: Event) -> bytes:
        """The bytes to send on for ``event``; raises GatewayError when the channel must close."""
        if isinstance(event, Message):
            migration = event.migration
            if isinstance(migration, MigrateData):
                return reframe(event, self._seal(migration.payload))
            if isinstance(migration, ClientMigrateData):
                return reframe(event, self._open(migration.payload))
            if migration is not None:
                self._guard(migration)
                self._observe(migration)
            return event.raw
        if isinstance(event, LinkMessReceived):
            self.channel_type = event.mess.channel_type
            self.channel_id = event.mess.channel_id
            self.connection_id = event.mess.connection_id
            if event.mess.connection_id:
                self._attach(event.mess.connection_id)
            if self.session is not None and self.channel_type in DATA_CHANNELS:
                self.session.link((self.channel_type, self.channel_id))
        elif isinstance(event, AuthMechanismReceived) and event.mechanism == AuthMechanism.SASL:
            # A SASL security layer would wrap the data stage in a framing the gateway cannot
            # read; refusing is the only safe answer.
            self.refuse(
                "sasl", ProtocolError("SASL authentication is not supported by the gateway")
            )
        return event.raw

    def awaits(self, event: Message) -> bool:
        """Whether :meth:`rewrite` has to wait for ``event`` (the peer link, the replay commit,
        a worker thread). When not (a source sealing a real payload), :meth:`forward` gives the
        same unit at once, and the proxy spares a task and a pause in reading."""
        migration = event.migration
        return not (
            isinstance(migration, MigrateData) and len(migration.payload) < INLINE_SEAL_LIMIT
        )

    async def rewrite(self, event: Message) -> bytes:
        """:meth:`forward` for a MIGRATE_DATA message, without holding up the event loop.

        A real payload (tens of bytes to a few KiB) is sealed, or verified and re-encoded, on
        the loop: that costs less than a thread hand-off. Only what may wait for the disk, the
        replay guard's commit, leaves it, for the guard's one commit thread, which records
        every blob verified meanwhile (of any channel or session) in one transaction, and
        hands each outcome back to the loop; the native bytes exist only
        after that. A large payload (pending device data) goes to a worker thread whole.
        """
        migration = event.migration
        if isinstance(migration, MigrateBeginSeamless):
            # The client learns where to go only once the target knows the attempt.
            self._observe(migration)
            session = self.session
            if self.state.announcer is not None and session is not None:
                await self.state.announcer(self.route, session)
            return event.raw
        if isinstance(migration, MigrateData | ClientMigrateData) and (
            len(migration.payload) >= INLINE_SEAL_LIMIT
        ):
            return await asyncio.to_thread(self.forward, event)
        if isinstance(migration, ClientMigrateData):
            try:
                session, verified = self._verify(migration.payload)
            except GatewayError as error:
                if error.authentic_blob is not None:
                    await asyncio.to_thread(self._spend, error)
                raise
            with session.lock:
                session.recording += 1
            try:
                await self._record(session, verified)
            except BaseException as error:
                self._accepted(session, verified, error)
                raise  # pragma: no cover - _accepted() raises
            finally:
                with session.lock:
                    session.recording -= 1
            return reframe(event, self._accepted(session, verified, None))
        return self.forward(event)

    def refuse(self, reason: str, error: GatewayError) -> None:
        """Audit and count a refusal, then raise ``error`` so the caller closes the channel."""
        session = self.session
        migration = session.migration_id if session is not None else None
        self.refused = True
        metrics = self.state.metrics
        metrics.inc("smg_refused_total", reason=reason, channel=self.channel_kind)
        if isinstance(error, ReplayStoreError):
            metrics.inc("smg_replay_store_errors_total")
        metrics.inc("smg_refused_by_route_total", route=self.route.name)
        client = client_address(self.peer)
        known = self.state.refusal_clients
        if client not in known and len(known) < MAX_REFUSAL_CLIENTS:
            known.add(client)
        metrics.inc("smg_refused_by_client_total", client=client if client in known else "other")
        audit(
            "channel_refused",
            f"refused {self.channel} of route {self.route.name}: {type(error).__name__}",
            outcome="refused",
            reason=reason,
            error=type(error).__name__,
            detail=str(error),
            route=self.route.name,
            vm=str(self.route.vm_id),
            channel=self.channel,
            migration=str(migration) if migration else None,
            peer=self.peer,
        )
        raise error

    def close(self) -> None:
        if self.session is not None:
            self.state.sessions.detach(self.session)
            self.session = None

    # --- sessions ------------------------------------------------------------------------------

    def _attach(self, session_id: int) -> None:
        if self.session is not None:
            if self.session.session_id == session_id:
                return
            self.state.sessions.detach(self.session)
        self.session = self.state.sessions.attach(
            self.route.name, session_id, now=self.state.clock()
        )

    def _guard(self, message: object) -> None:
        """Refuse the two client messages that make spice-server abort when unexpected.

        spice-server calls abort() on a FLUSH_MARK it did not ask for (any channel), and on
        MIGRATE_DST_DO_SEAMLESS on a main channel that is not a migration target (linked with
        connection id 0). A real client sends neither; closing the channel keeps QEMU alive.
        """
        if isinstance(message, Migrate):
            self.flush_requested = message.need_flush
        elif isinstance(message, MigrateFlushMark):
            if not self.flush_requested:
                self.refuse(
                    "protocol",
                    ProtocolError(f"{self.channel}: FLUSH_MARK the server did not ask for"),
                )
            self.flush_requested = False
        elif isinstance(message, MigrateDstDoSeamless) and not self.connection_id:
            self.refuse(
                "protocol",
                ProtocolError(
                    f"{self.channel}: MIGRATE_DST_DO_SEAMLESS on a main channel that is not "
                    "a migration target"
                ),
            )

    def _observe(self, message: object) -> None:
        """Track the main channel's migration messages; they pass through unchanged."""
        if isinstance(message, MainInit):
            self._attach(message.session_id)
            if self.session is not None:
                self.session.link((self.channel_type, self.channel_id))
        elif isinstance(message, MigrateBeginSeamless) and self.session is not None:
            info = message.dst_info
            target = self.state.config.peer_for_address(info.host, info.port)
            if target is None and info.sport:
                target = self.state.config.peer_for_address(info.host, info.sport)
            session = self.session
            with session.lock:
                session.migration_id = uuid.uuid4()
                session.target_host = target
                session.target_address = (info.host, info.port)
                session.attempt_key = None
                session.sealed.clear()
                session.completed = False
            audit(
                "migration_begin",
                f"seamless migration of route {self.route.name} to {info.host}:{info.port}",
                route=self.route.name,
                vm=str(self.route.vm_id),
                migration=str(session.migration_id),
                target=target,
                trusted=target is not None,
            )
            if target is None:
                log(
                    logging.WARNING,
                    "migration destination is not a trusted peer; its data will be refused",
                    route=self.route.name,
                    host=info.host,
                )
        elif isinstance(message, MigrateCancel) and self.session is not None:
            # The source gave up; nothing more will be sealed for that attempt.
            session = self.session
            with session.lock:
                cancelled, session.migration_id = session.migration_id, None
                session.target_host = session.target_address = None
                session.attempt_key = None
            if cancelled is not None:
                audit(
                    "migration_cancelled",
                    f"migration of route {self.route.name} cancelled by the source",
                    route=self.route.name,
                    vm=str(self.route.vm_id),
                    migration=str(cancelled),
                )
        elif isinstance(message, MigrateSwitchHost):
            audit(
                "switch_host",
                f"switch-host fallback on route {self.route.name} passed through",
                route=self.route.name,
                vm=str(self.route.vm_id),
            )

    # --- the two rewrites ------------------------------------------------------------------------

    def _check_data_channel(self) -> None:
        if self.channel_type not in DATA_CHANNELS:
            raise ProtocolError(f"{self.channel}: MIGRATE_DATA on a channel without migration data")

    def _seal(self, payload: bytes) -> bytes:
        """Source host: native payload from spice-server -> sealed blob for the client."""
        session = self.session
        try:
            self._check_data_channel()
            if session is None or session.migration_id is None:
                raise ProtocolError(f"{self.channel}: MIGRATE_DATA outside a seamless migration")
            with session.lock:
                migration_id, target_host = session.migration_id, session.target_host
                attempt_key = session.attempt_key
            if target_host is None:
                raise ProtocolError(
                    f"{self.channel}: the migration's destination is not a trusted peer"
                )
            state = native.decode(self.channel_type, payload)
            context = Context(
                channel_type=ChannelType(self.channel_type),
                channel_id=self.channel_id,
                vm_id=self.route.vm_id,
                migration_id=migration_id,
                source_host=self.state.config.host_id,
                target_host=target_host,
                schema_version=type(state).schema_version,
            )
            # An identity peer's blobs are sealed with the attempt key agreed over the peer
            # link, never the shared keyring (DowngradeRefused when there is none).
            keyring = self.state.suite(target_host).sealing_keyring(
                attempt_key, self.state.keyring()
            )
            blob = seal(
                state,
                context,
                keyring,
                ttl=self.state.config.limits.blob_ttl,
                now=self.state.clock(),
            )
        except GatewayError as error:
            self.refuse("seal", error)
            raise  # pragma: no cover - refuse() raises
        with session.lock:
            session.sealed.add((self.channel_type, self.channel_id))
            # Every channel has handed its state over: the source's part is done.
            done = not session.completed and session.sealed >= session.expected_channels
            if done:
                session.completed = True
        self.state.metrics.inc("smg_sealed_total", channel=_channel_name(self.channel_type))
        # The records wait until the sealed blob is on its way to the client.
        _after(
            functools.partial(
                audit,
                "blob_sealed",
                f"sealed {self.channel} of route {self.route.name}",
                route=self.route.name,
                vm=str(self.route.vm_id),
                channel=self.channel,
                migration=str(migration_id),
                target=target_host,
                native_bytes=len(payload),
                sealed_bytes=len(blob),
            )
        )
        if done:
            _after(
                functools.partial(
                    audit,
                    "migration_sealed",
                    f"every channel of migration {migration_id} sealed on route "
                    f"{self.route.name}",
                    route=self.route.name,
                    vm=str(self.route.vm_id),
                    migration=str(migration_id),
                    target=target_host,
                    channels=len(session.sealed),
                )
            )
        return blob

    def _open(self, blob: bytes) -> bytes:
        """Target host: sealed blob from the client -> native payload for spice-server."""
        try:
            session, verified = self._verify(blob, seen=True)
        except GatewayError as error:
            self._spend(error)
            raise
        return self._accept(session, verified)

    def _spend(self, error: GatewayError) -> None:
        """Record the authentic blob ``error`` refused (waits for the disk): each is used once.

        The refusal was audited already; a failure to record is logged beside it, whatever
        the guard raised (a database error or a closed guard too, as in :meth:`_accept`).
        """
        try:
            spend(error, self.state.replay_guard)
        except (GatewayError, sqlite3.Error, RuntimeError) as store:
            log(
                logging.ERROR,
                "a refused authentic blob could not be recorded as used",
                route=self.route.name,
                channel=self.channel,
                error=type(store).__name__,
                detail=str(store),
            )

    def _verify(self, blob: bytes, *, seen: bool = False) -> tuple[Session, Verified]:
        """Every check of ``blob`` but single use: CPU only, fit for the event loop.

        ``seen``: first refuse a blob the replay guard already holds (a database read, so only
        off the loop; it keeps a used large blob from being decrypted and decoded again).
        """
        session = self.session
        try:
            self._check_data_channel()
            if session is None:
                raise ProtocolError(f"{self.channel}: MIGRATE_DATA on a link without a session")
            keyring, expected = self._opening(blob, session)
            verified = verify(
                blob,
                expected,
                keyring,
                policy=self.state.policy,
                now=self.state.clock(),
                replay_guard=self.state.replay_guard if seen else None,
            )
            try:
                self._check_attempt(session, verified)
            except GatewayError as error:
                # Authentic: used once, accepted or refused (see envelope.spend).
                error.authentic_blob = (verified.blob_id, verified.keep_until, verified.checked_at)
                raise
        except ReplayStoreError as error:
            self.refuse("replay_store", error)
            raise  # pragma: no cover - refuse() raises
        except GatewayError as error:
            unannounced = isinstance(error, ContextMismatch) and error.field == "attempt"
            self.refuse("peer_link_down" if unannounced else "open", error)
            raise  # pragma: no cover - refuse() raises
        return session, verified

    def _opening(self, blob: bytes, session: Session) -> tuple[Keyring, ExpectedContext]:
        """The keyring and the expectation for ``blob``.

        When the VM's announced attempt agreed a key (identity suite), the attempt's own key
        and its authenticated hosts decide: a blob under any other key is refused, one under
        the shared keyring as a downgrade when the source requires identities. Otherwise the
        shared keyring opens it, from a source that does not require identities. Once the
        session's migration id is pinned, a blob of another migration fails here; before,
        any migration passes and :meth:`_claim` decides.
        """
        config, shared = self.state.config, self.state.keyring()
        attempt = self.state.attempts.current(self.route.vm_id)
        key = attempt.key if attempt is not None else None
        channel_type = ChannelType(self.channel_type)
        if attempt is not None:
            keyring = self.state.suite(attempt.source_host).opening_keyring(blob, key, shared)
            if key is not None and keyring is key.keyring:
                return keyring, key.expect(
                    channel_type, self.channel_id, self.route.vm_id, attempt.migration_id, 1
                )
            sources = config.trusted_sources
        else:
            # No announcement (first-blob mode): the shared keyring cannot speak for a source
            # that requires identities.
            sources = config.trusted_sources - config.identity_peers
        return shared, _expected_context(
            channel_type,
            self.channel_id,
            self.route.vm_id,
            session.migration_id,
            sources,
            config.host_id,
        )

    def _check_attempt(self, session: Session, verified: Verified) -> None:
        """The blob belongs to the attempt this target runs: the newest one its VM's source
        announced over the peer link, and issued after the session began here."""
        context = verified.context
        attempt = self.state.attempts.current(self.route.vm_id)
        if attempt is None:
            if self.state.config.peer_link_down == "refuse":
                raise ContextMismatch(
                    "attempt",
                    f"{self.channel}: no migration of this VM was announced over the peer link",
                )
        else:
            for name, matches in (
                ("migration_id", context.migration_id == attempt.migration_id),
                ("source_host", context.source_host == attempt.source_host),
                ("channel_id", (self.channel_type, self.channel_id) in attempt.channels),
            ):
                if not matches:
                    raise ContextMismatch(
                        name,
                        f"context field {name!r} does not match "
                        f"({self.channel_kind} channel {self.channel_id})",
                    )
        skew = self.state.config.limits.clock_skew
        if session.began_at and verified.issued_at < session.began_at - skew:
            raise Expired(
                f"{self.channel}: blob issued {session.began_at - verified.issued_at:.0f} s "
                "before this session began on the target"
            )

    def _claim(self, session: Session, verified: Verified) -> Callable[[], None]:
        """The replay guard's last check for ``verified``, atomic with its record.

        The session's first blob recorded pins its migration id; a blob of another migration
        is refused before it is recorded. Blobs verified before the pin was known are
        checked here, so the session's channels need not wait for each other's commits.
        """
        migration_id = verified.context.migration_id
        attempts, vm_id = self.state.attempts, self.route.vm_id

        def claim() -> None:
            # A newer attempt announced since the blob was verified supersedes its own.
            attempt = attempts.current(vm_id)
            if attempt is not None and attempt.migration_id != migration_id:
                raise ContextMismatch(
                    "migration_id",
                    f"context field 'migration_id' does not match ({self.channel_kind} channel "
                    f"{self.channel_id}): a newer attempt superseded it",
                )
            with session.lock:
                if session.migration_id is None:
                    session.migration_id = migration_id
                elif session.migration_id != migration_id:
                    raise ContextMismatch(
                        "migration_id",
                        f"context field 'migration_id' does not match "
                        f"({self.channel_kind} channel {self.channel_id})",
                    )

        return claim

    def _accept(self, session: Session, verified: Verified) -> bytes:
        """The durable replay record (waits for the disk), then the native bytes."""
        try:
            verified.consume(self.state.replay_guard, claim=self._claim(session, verified))
        except BaseException as error:
            return self._accepted(session, verified, error)
        return self._accepted(session, verified, None)

    async def _record(self, session: Session, verified: Verified) -> None:
        """The durable replay record of ``verified``, by the guard's commit thread, awaited on
        the loop (raises what :meth:`ReplayGuard.consume` would)."""
        await record(
            self.state.replay_guard,
            verified.blob_id,
            verified.keep_until,
            now=verified.checked_at,
            issued_at=verified.issued_at,
            claim=self._claim(session, verified),
        )

    def _accepted(
        self, session: Session, verified: Verified, failure: BaseException | None
    ) -> bytes:
        """After the replay record of ``verified`` (``failure`` None) or its failure: the native
        bytes for spice-server, or the refusal, audited."""
        try:
            if failure is not None:
                if isinstance(failure, sqlite3.Error | RuntimeError):
                    # The guard reports its own failures as ReplayStoreError; anything else
                    # from the database is one too: single use cannot be guaranteed without
                    # the record.
                    raise ReplayStoreError(
                        f"{self.channel}: the replay database failed ({type(failure).__name__}); "
                        "blob refused"
                    ) from None
                raise failure
            # Recorded: what the blob holds may be acted on now (the guard is not asked again).
            opened = verified.consume(_RECORDED)
            native_payload = native.encode(
                opened.state,
                self.channel_type,
                jpeg_wan_compression=self.route.jpeg_wan_compression,
            )
            with session.lock:
                session.accepted.add((self.channel_type, self.channel_id))
                done = not session.completed and session.accepted >= session.expected_channels
                if done:
                    session.completed = True
        except ReplayStoreError as error:
            # Single use cannot be promised without the record: refused, and said why.
            self.refuse("replay_store", error)
            raise  # pragma: no cover - refuse() raises
        except GatewayError as error:
            self.refuse("open", error)
            raise  # pragma: no cover - refuse() raises
        name = _channel_name(self.channel_type)
        self.state.metrics.inc("smg_opened_total", channel=name)
        # The records of an acceptance wait until the native bytes are on their way.
        _after(
            functools.partial(
                audit,
                "blob_accepted",
                f"accepted {self.channel} of route {self.route.name}",
                route=self.route.name,
                vm=str(self.route.vm_id),
                channel=self.channel,
                migration=str(session.migration_id),
                source=opened.context.source_host,
                native_bytes=len(native_payload),
            )
        )
        if done:
            self.state.metrics.inc("smg_migrations_completed_total")
            _after(
                functools.partial(
                    audit,
                    "migration_accepted",
                    f"every channel of migration {session.migration_id} accepted on route "
                    f"{self.route.name}",
                    route=self.route.name,
                    vm=str(self.route.vm_id),
                    migration=str(session.migration_id),
                    channels=len(session.accepted),
                    channel_list=sorted(f"{_channel_name(t)}:{i}" for t, i in session.accepted),
                )
            )
        return native_payload


async def record(
    guard: ReplayGuard,
    blob_id: bytes,
    keep_until: int,
    *,
    now: int,
    issued_at: int | None = None,
    claim: Callable[[], None] | None = None,
) -> None:
    """:meth:`ReplayGuard.consume` awaited on the event loop: the guard's commit thread
    records the blob (with whatever else was submitted meanwhile) and hands the outcome back.
    Raises what ``consume`` would; the loop never waits for the disk."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[None] = loop.create_future()
    outcomes = _Outcomes.of(loop)
    guard.submit(
        blob_id,
        keep_until,
        now=now,
        issued_at=issued_at,
        claim=claim,
        done=functools.partial(outcomes.put, future),
    )
    await future


class _Outcomes:
    """Commit outcomes on their way from the commit thread to one event loop: the outcomes of
    one commit wake the loop once, not once per blob."""

    _by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Outcomes] = (
        weakref.WeakKeyDictionary()
    )
    _by_loop_lock = threading.Lock()

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.lock = threading.Lock()
        self.pending: list[tuple[asyncio.Future[None], BaseException | None]] = []

    @classmethod
    def of(cls, loop: asyncio.AbstractEventLoop) -> _Outcomes:
        with cls._by_loop_lock:
            found = cls._by_loop.get(loop)
            if found is None:
                found = cls._by_loop[loop] = cls(loop)
            return found

    def put(self, future: asyncio.Future[None], error: BaseException | None) -> None:
        """On the commit thread: queue ``future``'s outcome; the first of a run wakes the loop."""
        with self.lock:
            self.pending.append((future, error))
            if len(self.pending) > 1:
                return  # a wake-up is on its way already
        self.loop.call_soon_threadsafe(self.settle)

    def settle(self) -> None:
        """On the loop: complete every future whose outcome came."""
        with self.lock:
            pending, self.pending = self.pending, []
        for future, error in pending:
            if future.done():
                continue  # the waiting channel was cancelled (closed) meanwhile
            if error is None:
                future.set_result(None)
            else:
                future.set_exception(error)


def _after(record: Callable[[], object]) -> None:
    """Write ``record`` once the caller's current step is done (on the event loop: its next
    turn, after the bytes just decided were handed to the socket); at once in a thread."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        record()
    else:
        loop.call_soon(record)


class _Recorded:
    """Stands in for the replay guard once the guard's commit thread recorded a blob: the
    blob's :meth:`Verified.consume` then only hands over what was opened."""

    def consume(
        self,
        blob_id: bytes,
        keep_until: int,
        *,
        now: int,
        issued_at: int | None = None,
        claim: Callable[[], None] | None = None,
    ) -> None:
        return None


#: See :class:`_Recorded`; typed as the guard it stands in for.
_RECORDED = cast(ReplayGuard, _Recorded())
