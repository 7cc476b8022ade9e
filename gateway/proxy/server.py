"""The asyncio proxy: listeners, TLS, two protocol legs per connection around the sans-I/O core.

One process serves every route of its config. Each accepted client connection gets its own
upstream connection to spice-server, a :class:`~gateway.spice.connection.SpiceConnection` that
frames both directions, and a :class:`~gateway.proxy.channel.ChannelHandler` that decides what
to forward. The loop here only moves bytes (see :mod:`gateway.proxy.relay`), bounds resources
and handles signals.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import ssl
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

from gateway.envelope import Policy
from gateway.errors import ConfigError, GatewayError
from gateway.identity import HostIdentity, IdentityFiles, TrustStore
from gateway.keys import Keyring, KeyringFile
from gateway.proxy.channel import AWAITED, ChannelHandler, ProxyState, client_address
from gateway.proxy.config import ProxyConfig, Route, parse_address
from gateway.proxy.lifecycle import Lifecycle
from gateway.proxy.peer import PeerLinkServer, make_announcer
from gateway.proxy.relay import RECEIVE_SIZE, Leg, ReceiveBuffer
from gateway.proxy.routes import RouteTable, os_reason
from gateway.proxy.sessions import SessionTable
from gateway.proxy.warmup import warm_up
from gateway.replay import ReplayGuard
from gateway.service.logs import LOG, audit, log
from gateway.service.metrics import Metrics
from gateway.spice.connection import ConnectionState, SpiceConnection
from gateway.spice.constants import Direction
from gateway.spice.events import Event, Message, Passthrough

__all__ = ["ProxyServer", "run_proxy"]

#: The most one read of either side takes.
READ_SIZE = RECEIVE_SIZE

#: A sealed blob is larger than its native payload; allow for the envelope's framing.
ENVELOPE_SLACK = 64 * 1024


def _client_tls(route: Route) -> ssl.SSLContext | None:
    if route.tls_cert is None or route.tls_key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(route.tls_cert, route.tls_key)
    except (OSError, ssl.SSLError) as error:
        raise ConfigError(
            f"route {route.name}: cannot load tls_cert/tls_key: {_reason(error)}"
        ) from None
    return context


def _upstream_tls(route: Route) -> ssl.SSLContext | None:
    if not route.upstream_tls:
        return None
    try:
        context = ssl.create_default_context(cafile=route.upstream_ca)
    except (OSError, ssl.SSLError) as error:
        raise ConfigError(
            f"route {route.name}: cannot load upstream_ca: {_reason(error)}"
        ) from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def _reason(error: OSError) -> str:
    """``strerror`` for a missing file, OpenSSL's reason for a bad one (SSLError is an OSError)."""
    return str(error.strerror or getattr(error, "reason", None) or type(error).__name__)


class _Connection:
    """One proxied channel: the client's leg, spice-server's, and the sans-I/O core between.

    No task of its own: the legs call it when bytes arrive, and only a migration message that
    waits (sealing, opening, announcing) runs in a task while that side stops reading. ``done``
    ends once both sides are closed; cancelling it (stop()) closes them.
    """

    __slots__ = (
        "client",
        "done",
        "ended",
        "handler",
        "proxy",
        "route",
        "server",
        "spice",
        "tasks",
        "watchdog",
    )

    def __init__(self, proxy: ProxyServer, route: Route) -> None:
        self.proxy = proxy
        self.route = route
        limits = proxy.config.limits
        self.spice = SpiceConnection(max_message_size=limits.max_message_size + ENVELOPE_SLACK)
        self.handler: ChannelHandler | None = None
        self.client = Leg(self, Direction.CLIENT_TO_SERVER, proxy.receive_buffer)
        self.server = Leg(self, Direction.SERVER_TO_CLIENT, proxy.receive_buffer)
        self.client.other, self.server.other = self.server, self.client
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.done.add_done_callback(self._done)
        #: Connecting upstream, rewriting a migration message.
        self.tasks: set[asyncio.Task[None]] = set()
        # A timer handle, not a task: an idle session holds less.
        self.watchdog: asyncio.TimerHandle | None = None
        self.ended = False

    @property
    def client_writer(self) -> Leg:
        """The client's leg (its ``transport`` carries what is written to the client)."""
        return self.client

    @property
    def server_writer(self) -> Leg:
        """spice-server's leg."""
        return self.server

    # --- the legs' calls ---------------------------------------------------------------------

    def leg_made(self, leg: Leg) -> None:
        assert leg.transport is not None
        if self.ended:  # spice-server's side, connected after the connection ended
            leg.transport.close()
            return
        leg.transport.set_write_buffer_limits(high=self.proxy.config.limits.max_buffered_bytes)
        if leg is self.client:
            self.handler = self.proxy._admit(self, leg.transport)
            if self.handler is None:
                self.end()
                return
            # Nothing to relay to yet.
            leg.transport.pause_reading()
            self._spawn(self._connect())

    def received(self, leg: Leg, data: memoryview) -> None:
        if self.ended:
            return
        try:
            self._handle(leg, self.spice.receive_streaming(leg.direction, data))
        except Exception as error:
            self._failed(error)

    def room(self, leg: Leg) -> memoryview | None:
        """A large message's own buffer to read into, while the memory budget allows it
        (the leg asks only while a partial message is held)."""
        if self.ended:
            return None
        direction = leg.direction
        room = self.spice.room(direction, RECEIVE_SIZE + 1)
        if room is not None and not self._within_budget(leg, self.spice.buffered(direction)):
            self.end()
        return room

    def filled(self, leg: Leg, nbytes: int) -> None:
        if self.ended:
            return
        try:
            self._handle(leg, self.spice.filled(leg.direction, nbytes))
        except Exception as error:
            self._failed(error)

    def _handle(self, leg: Leg, events: list[Event | memoryview]) -> None:
        held = self.spice.buffered(leg.direction)
        # The budget can only be exceeded by a connection whose partial message grows.
        if held != leg.partial and not self._within_budget(leg, held):
            self.end()
        elif leg.held is not None:
            # A migration message is being rewritten: these go after it.
            leg.held += _copied(events)
        elif len(events) == 1 and type(events[0]) is memoryview:
            # Most reads: one run of ordinary messages.
            run = events[0]
            leg.other.send(run)
            self.proxy.metrics.inc("smg_bytes_total", len(run), sender=leg.sender)
        elif events:
            self._relay(leg, events)

    def leg_ended(self, leg: Leg) -> None:
        self.end()

    def leg_lost(self, leg: Leg) -> None:
        self.end()
        if not self.client.open and not self.server.open and not self.done.done():
            self.done.set_result(None)

    # --- relaying ----------------------------------------------------------------------------

    def _relay(self, leg: Leg, events: Sequence[Event | memoryview | bytes]) -> None:
        """Write ``events`` to the other side in order; at a migration message that waits,
        hold the rest back (copied: the receive buffer is reused) and rewrite it first."""
        handler = self.handler
        assert handler is not None
        out, forward = leg.other, handler.forward
        pending: list[bytes] = []
        total = 0
        for index, event in enumerate(events):
            if type(event) is memoryview:
                if pending:
                    out.send(b"".join(pending))
                    pending = []
                out.send(event)
                total += len(event)
                continue
            if type(event) is bytes:  # held back behind a rewrite
                pending.append(event)
                total += len(event)
                continue
            assert isinstance(event, Event)
            if (
                type(event) is Message
                and isinstance(event.migration, AWAITED)
                and handler.awaits(event)
            ):
                if pending:
                    out.send(b"".join(pending))
                leg.held = _copied(events[index + 1 :])
                leg.update_reading()
                self._spawn(self._rewrite(leg, event))
                break
            unit = event.raw if type(event) is Passthrough else forward(event)
            pending.append(unit)
            total += len(unit)
        else:
            if pending:
                out.send(pending[0] if len(pending) == 1 else b"".join(pending))
        if total:
            self.proxy.metrics.inc("smg_bytes_total", total, sender=leg.sender)

    async def _rewrite(self, leg: Leg, event: Message) -> None:
        assert self.handler is not None
        # Counted until its result is written: stop() must not cut a migration whose last
        # blob was opened but not yet passed on.
        self.proxy.rewriting += 1
        try:
            unit = await self.handler.rewrite(event)
            if self.ended:
                return
            leg.other.send(unit)
            self.proxy.metrics.inc("smg_bytes_total", len(unit), sender=leg.sender)
        except Exception as error:
            self._failed(error)
            return
        finally:
            self.proxy.rewriting -= 1
        held, leg.held = leg.held or [], None
        try:
            self._relay(leg, held)
        except Exception as error:
            self._failed(error)
            return
        leg.update_reading()

    def _failed(self, error: Exception) -> None:
        """Report why the channel closes (a refusal, a lost peer, a bug of ours) and close."""
        handler = self.handler
        if isinstance(error, GatewayError) and handler is not None:
            # The handler already audited and counted migration refusals; framing errors
            # (malformed units, SASL, oversized messages) are counted and logged here.
            if not handler.refused:
                self.proxy.metrics.inc(
                    "smg_refused_total", reason="protocol", channel=handler.channel_kind
                )
            log(
                logging.WARNING,
                "closing channel",
                route=self.route.name,
                channel=handler.channel,
                peer=handler.peer,
                error=type(error).__name__,
                detail=str(error),
            )
        elif not isinstance(error, ConnectionError | OSError):
            # A bug of ours: close this channel, keep serving.
            LOG.error(
                "internal error; closing channel",
                exc_info=error,
                extra={
                    "fields": {
                        "route": self.route.name,
                        "channel": handler.channel if handler else "unlinked:0",
                        "error": type(error).__name__,
                    }
                },
            )
        self.end()

    # --- set-up and teardown -----------------------------------------------------------------

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coroutine)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _connect(self) -> None:
        route, limits = self.route, self.proxy.config.limits
        host, port = parse_address(route.upstream)
        try:
            await asyncio.wait_for(
                asyncio.get_running_loop().create_connection(
                    lambda: self.server,
                    host,
                    port,
                    ssl=self.proxy.routes.upstream_tls(route),
                    server_hostname=route.upstream_server_name or host
                    if route.upstream_tls
                    else None,
                ),
                timeout=limits.link_timeout,
            )
        except (OSError, TimeoutError) as error:
            log(
                logging.WARNING,
                "upstream unreachable",
                route=route.name,
                upstream=route.upstream,
                error=str(error),
            )
            self.end()
            return
        except Exception as error:
            self._failed(error)
            return
        if self.ended:
            return
        self.watchdog = asyncio.get_running_loop().call_later(
            limits.link_timeout, self._link_timed_out
        )
        self.client.update_reading()

    def _link_timed_out(self) -> None:
        """A peer that never finishes the link stage holds nothing for long."""
        if self.spice.state is ConnectionState.LINKING:
            self.proxy.metrics.inc(
                "smg_connection_limits_total", route=self.route.name, limit="link_timeout"
            )
            log(
                logging.WARNING,
                "link stage timed out",
                route=self.route.name,
                peer=self.handler.peer if self.handler else "",
            )
            self.end()

    def end(self) -> None:
        """Close both sides (each after writing what it holds); ``done`` follows once both
        are closed, or after a grace of 2 s for a side that does not take its last bytes."""
        if self.ended:
            return
        self.ended = True
        for task in self.tasks:
            if task is not asyncio.current_task():
                task.cancel()
        if self.watchdog is not None:
            self.watchdog.cancel()
        for leg in (self.client, self.server):
            self.proxy.buffered_total -= leg.partial
            leg.partial = 0
        if self.handler is not None:
            self.handler.close()
        for leg in (self.client, self.server):
            if leg.transport is not None:
                leg.transport.close()
        if not self.client.open and not self.server.open:
            if not self.done.done():
                self.done.set_result(None)
            return
        asyncio.get_running_loop().call_later(2, self._closed_enough)

    def _closed_enough(self) -> None:
        if not self.done.done():
            self.done.set_result(None)

    def _done(self, done: asyncio.Future[None]) -> None:
        # stop() cancels what is left after the grace period.
        if done.cancelled():
            self.end()
        self.proxy._release(self)

    def _within_budget(self, leg: Leg, held: int) -> bool:
        """Count the partial message ``leg`` received, ``held`` bytes now, in the proxy's
        memory budget; False (after a log line and a metric) when the budget is spent: the
        caller closes the channel."""
        proxy = self.proxy
        proxy.buffered_total += held - leg.partial
        leg.partial = held
        budget = proxy.config.limits.max_buffered_total
        if proxy.buffered_total <= budget:
            return True
        proxy.metrics.inc("smg_connection_limits_total", route=self.route.name, limit="memory")
        log(
            logging.WARNING,
            "memory budget for partial messages exhausted; closing channel",
            route=self.route.name,
            channel=self.handler.channel if self.handler else "unlinked:0",
            peer=self.handler.peer if self.handler else "",
            held=held,
            budget=budget,
        )
        return False


def _copied(events: Sequence[Event | memoryview | bytes]) -> list[Event | memoryview | bytes]:
    """``events`` with what lies in the receive buffer copied out, to keep for later."""
    return [e.tobytes() if type(e) is memoryview else e for e in events]


class ProxyServer:
    """All routes of one config, their connections, and the process's shared state."""

    def __init__(
        self,
        config: ProxyConfig,
        *,
        keyring_file: KeyringFile | None = None,
        clock: Callable[[], float] = time.time,
        config_path: str | Path | None = None,
    ) -> None:
        self.config = config
        self.keyring_file = keyring_file or KeyringFile(config.keyring)
        self.identity_files = (
            IdentityFiles(config.identity, config.trust_store, config.host_id)
            if config.identity is not None and config.trust_store is not None
            else None
        )
        self.replay_guard = ReplayGuard(config.replay_db, fsync=config.replay_fsync)
        self.metrics = Metrics()
        self.state = ProxyState(
            config=config,
            keyring=self._keyring,
            replay_guard=self.replay_guard,
            sessions=SessionTable(),
            metrics=self.metrics,
            policy=Policy(
                clock_skew=config.limits.clock_skew,
                max_blob_size=config.limits.max_message_size + ENVELOPE_SLACK,
            ),
            clock=clock,
            identity=self._identity if self.identity_files is not None else None,
        )
        self.state.announcer = make_announcer(self.state)
        self.peer_link = (
            PeerLinkServer(
                config,
                self.state,
                lambda: [route.vm_id for route in self.routes.routes.values()],
            )
            if config.peer_listen
            else None
        )
        #: Each open connection's ``done`` (see _Connection).
        self._connections: set[asyncio.Future[None]] = set()
        #: What every connection reads into (see gateway.proxy.relay).
        self.receive_buffer = ReceiveBuffer()
        self.routes = RouteTable(
            self._accept,
            lambda route: (_client_tls(route), _upstream_tls(route)),
            lambda: self.config.limits.link_timeout,
        )
        self.lifecycle = Lifecycle(self, config_path)
        self._per_route: Counter[str] = Counter()
        self._per_client: Counter[str] = Counter()
        #: Bytes of partial messages held by every connection (see Limits.max_buffered_total).
        self.buffered_total = 0
        #: Migration messages being sealed or opened in a worker thread right now.
        self.rewriting = 0
        self._stopping = asyncio.Event()
        #: Set once every route listens: until then health says "starting" (the control socket
        #: and /healthz answer during the warm-up, before any port is open).
        self._serving = False
        self.started = time.time()

    @property
    def addresses(self) -> dict[str, tuple[str, int]]:
        """Where each serving route listens (its bound address)."""
        return self.routes.addresses

    def _keyring(self) -> Keyring:
        return self.keyring_file.keyring

    def _identity(self) -> tuple[HostIdentity, TrustStore]:
        assert self.identity_files is not None
        return self.identity_files.pair

    # --- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        # Every route's TLS settings are checked before any port opens.
        for route in self.config.routes:
            _client_tls(route)
            _upstream_tls(route)
        # The control socket before any port opens: a second proxy on this control socket
        # stops here, not after it took clients.
        await self.lifecycle.start()
        # The first migration's critical path should not pay for lazy set-up.
        await warm_up(self.replay_guard)
        changes = await self.routes.apply(self.config.routes, "config")
        for route in self.config.routes:
            self.metrics.route_added(route.name)
        if changes.failed:
            name, reason = next(iter(changes.failed.items()))
            raise ConfigError(reason if name in reason else f"route {name}: {reason}")
        if self.peer_link is not None:
            try:
                await self.peer_link.start()
            except OSError as error:
                raise ConfigError(
                    f"peer_listen {self.config.peer_listen}: cannot listen: {os_reason(error)}"
                ) from None
        self._serving = True

    def health(self) -> dict[str, Any]:
        return {
            "status": "stopping"
            if self._stopping.is_set()
            else "serving"
            if self._serving
            else "starting",
            "host_id": self.config.host_id,
            "routes": {name: f"{h}:{p}" for name, (h, p) in self.addresses.items()},
            "connections": len(self._connections),
            "sessions": len(self.state.sessions),
            "uptime": round(time.time() - self.started, 3),
        }

    def reload(self) -> int:
        """Re-read the keyring; on failure the keys in use stay in use."""
        return self.lifecycle.reload_keys()

    async def serve_forever(self) -> None:
        await self._stopping.wait()

    def request_stop(self) -> None:
        self._stopping.set()

    async def stop(self) -> None:
        """Stop accepting; let in-flight migrations finish within the grace period; close."""
        self._stopping.set()
        self.routes.close()
        deadline = time.monotonic() + self.config.limits.shutdown_grace
        while (self.state.sessions.in_flight() or self.rewriting) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if self.peer_link is not None:
            await self.peer_link.close()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        await self.routes.wait_closed()
        await self.lifecycle.stop()
        self.replay_guard.close()
        log(logging.INFO, "stopped")

    # --- connections -----------------------------------------------------------------------------

    def _accept(self, route: Route) -> tuple[Leg, asyncio.Future[None]]:
        """A new client connection's leg, and what ends when the connection does."""
        connection = _Connection(self, route)
        return connection.client, connection.done

    def _admit(
        self, connection: _Connection, transport: asyncio.Transport
    ) -> ChannelHandler | None:
        """Count a connected client in, or None (logged) when a connection limit is reached."""
        route = connection.route
        peername = transport.get_extra_info("peername")
        peer = f"{peername[0]}:{peername[1]}" if isinstance(peername, tuple) else str(peername)
        client = client_address(peer)
        limit = self._limit_reached(route, client)
        if limit is not None:
            self.metrics.inc("smg_connections_rejected_total", route=route.name)
            self.metrics.inc("smg_connection_limits_total", route=route.name, limit=limit)
            log(
                logging.WARNING,
                "connection rejected",
                route=route.name,
                peer=peer,
                limit=limit,
                active=len(self._connections),
            )
            return None
        self._connections.add(connection.done)
        self._per_route[route.name] += 1
        self._per_client[client] += 1
        self.metrics.inc("smg_connections_total", route=route.name)
        self.metrics.set("smg_connections_active", len(self._connections))
        return ChannelHandler(self.state, route, peer)

    def _release(self, connection: _Connection) -> None:
        """Count an admitted connection out once it ended."""
        if connection.done not in self._connections:
            return
        self._connections.discard(connection.done)
        assert connection.handler is not None
        client = client_address(connection.handler.peer)
        for counts, key in ((self._per_route, connection.route.name), (self._per_client, client)):
            counts[key] -= 1
            if counts[key] <= 0:
                del counts[key]
        self.metrics.set("smg_connections_active", len(self._connections))

    def _limit_reached(self, route: Route, client: str) -> str | None:
        """Which connection limit a new connection would break, if any."""
        limits = self.config.limits
        if self._stopping.is_set():
            return "stopping"
        if len(self._connections) >= limits.max_connections:
            return "max_connections"
        if self._per_route[route.name] >= limits.max_connections_per_route:
            return "max_connections_per_route"
        if self._per_client[client] >= limits.max_connections_per_client:
            return "max_connections_per_client"
        return None


async def run_proxy(
    config: ProxyConfig,
    *,
    ready: Callable[[ProxyServer], None] | None = None,
    config_path: str | Path | None = None,
) -> None:
    """Run until SIGTERM or SIGINT; SIGHUP re-reads the config at ``config_path`` (routes,
    peers, limits), the keyring and the identity files, or only the key files without a path."""
    proxy = ProxyServer(config, config_path=config_path)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, proxy.request_stop)
    loop.add_signal_handler(signal.SIGHUP, proxy.lifecycle.schedule_reload)
    started = False
    try:
        # Inside the try: a route that cannot listen still closes the ones already open.
        await proxy.start()
        audit("proxy_started", "proxy started", host_id=config.host_id, routes=len(config.routes))
        started = True
        proxy.lifecycle.ready()
        if ready is not None:
            ready(proxy)
        await proxy.serve_forever()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        proxy.lifecycle.stopping()
        await proxy.stop()
        if started:  # every proxy_stopped pairs with a proxy_started
            audit("proxy_stopped", "proxy stopped", host_id=config.host_id)
