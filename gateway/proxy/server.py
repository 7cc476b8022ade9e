"""The asyncio proxy: listeners, TLS, two pumps per connection around the sans-I/O core.

One process serves every route of its config. Each accepted client connection gets its own
upstream connection to spice-server, a :class:`~gateway.spice.connection.SpiceConnection` that
frames both directions, and a :class:`~gateway.proxy.channel.ChannelHandler` that decides what
to forward. The loop here only moves bytes, bounds resources and handles signals.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import ssl
import time
from collections import Counter
from collections.abc import Callable
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
from gateway.proxy.routes import RouteTable, os_reason
from gateway.proxy.sessions import SessionTable
from gateway.proxy.warmup import warm_up
from gateway.replay import ReplayGuard
from gateway.service.logs import LOG, audit, log
from gateway.service.metrics import Metrics
from gateway.spice.connection import ConnectionState, SpiceConnection
from gateway.spice.constants import Direction
from gateway.spice.events import Message, Passthrough

__all__ = ["ProxyServer", "run_proxy"]

READ_SIZE = 256 * 1024
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
    """One proxied channel: the client's streams, spice-server's, and the two pumps."""

    def __init__(
        self,
        proxy: ProxyServer,
        route: Route,
        client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        peer: str,
    ) -> None:
        self.proxy = proxy
        self.route = route
        self.client_reader, self.client_writer = client
        self.server_reader, self.server_writer = upstream
        limits = proxy.config.limits
        self.spice = SpiceConnection(max_message_size=limits.max_message_size + ENVELOPE_SLACK)
        self.handler = ChannelHandler(proxy.state, route, peer)
        #: Bytes of partial messages this connection holds, per direction, as counted in the
        #: proxy's memory budget.
        self.held = {Direction.CLIENT_TO_SERVER: 0, Direction.SERVER_TO_CLIENT: 0}
        for writer in (self.client_writer, self.server_writer):
            transport = writer.transport
            if isinstance(transport, asyncio.WriteTransport):
                transport.set_write_buffer_limits(high=limits.max_buffered_bytes)

    async def run(self) -> None:
        limits = self.proxy.config.limits
        pumps = [
            asyncio.create_task(
                self._pump(self.client_reader, self.server_writer, Direction.CLIENT_TO_SERVER)
            ),
            asyncio.create_task(
                self._pump(self.server_reader, self.client_writer, Direction.SERVER_TO_CLIENT)
            ),
        ]
        # A timer handle, not a task: an idle session holds less.
        watchdog = asyncio.get_running_loop().call_later(limits.link_timeout, self._link_timed_out)
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            watchdog.cancel()
            for task in pumps:
                task.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
            self.proxy.buffered_total -= sum(self.held.values())
            self.held = dict.fromkeys(self.held, 0)
            self.handler.close()
            for writer in (self.client_writer, self.server_writer):
                writer.close()
            for writer in (self.client_writer, self.server_writer):
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(writer.wait_closed(), timeout=2)

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
                peer=self.handler.peer,
            )
            self.client_writer.close()
            self.server_writer.close()

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, direction: Direction
    ) -> None:
        receive = (
            self.spice.receive_from_client
            if direction is Direction.CLIENT_TO_SERVER
            else self.spice.receive_from_server
        )
        forward = self.handler.forward
        metrics = self.proxy.state.metrics
        label = direction.sender
        try:
            while True:
                data = await reader.read(READ_SIZE)
                if not data:
                    return
                out = _Output(writer)
                events = receive(data)
                if not self._within_budget(direction):
                    return
                for event in events:
                    if type(event) is Passthrough:
                        # The bulk of the traffic: a run of ordinary messages, relayed as is.
                        out.add(event.raw)
                        continue
                    if type(event) is Message and isinstance(event.migration, AWAITED):
                        # What came before is already decided; send it first.
                        out.flush()
                        # Counted until its result is written: stop() must not cut a
                        # migration whose last blob was opened but not yet passed on.
                        self.proxy.rewriting += 1
                        try:
                            out.add(await self.handler.rewrite(event))
                        finally:
                            self.proxy.rewriting -= 1
                        continue
                    out.add(forward(event))
                out.flush()
                metrics.inc("smg_bytes_total", out.total, sender=label)
                await writer.drain()
        except GatewayError as error:
            # The handler already audited and counted migration refusals; framing errors
            # (malformed units, SASL, oversized messages) are counted and logged here.
            if not self.handler.refused:
                metrics.inc(
                    "smg_refused_total", reason="protocol", channel=self.handler.channel_kind
                )
            log(
                logging.WARNING,
                "closing channel",
                route=self.route.name,
                channel=self.handler.channel,
                peer=self.handler.peer,
                error=type(error).__name__,
                detail=str(error),
            )
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError, OSError):
            return
        except Exception as error:
            # A bug of ours: close this channel (the caller closes both sides), keep serving.
            LOG.exception(
                "internal error; closing channel",
                extra={
                    "fields": {
                        "route": self.route.name,
                        "channel": self.handler.channel,
                        "error": type(error).__name__,
                    }
                },
            )


    def _within_budget(self, direction: Direction) -> bool:
        """Count this direction's partial message in the proxy's memory budget; False (after a
        log line and a metric) when the budget is spent: the caller closes the channel."""
        held = self.spice.buffered(direction)
        proxy = self.proxy
        proxy.buffered_total += held - self.held[direction]
        self.held[direction] = held
        budget = proxy.config.limits.max_buffered_total
        if proxy.buffered_total <= budget:
            return True
        proxy.metrics.inc("smg_connection_limits_total", route=self.route.name, limit="memory")
        log(
            logging.WARNING,
            "memory budget for partial messages exhausted; closing channel",
            route=self.route.name,
            channel=self.handler.channel,
            peer=self.handler.peer,
            held=held,
            budget=budget,
        )
        return False


class _Output:
    """What one read produced, written with as few sends and copies as possible: small units
    (link units, migration messages, short runs of messages) are joined into one write, large
    ones are written on their own (joining would copy them)."""

    __slots__ = ("pending", "pending_size", "total", "writer")

    #: Units at least this large are not worth joining with their neighbours.
    LARGE = 64 * 1024

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.pending: list[bytes] = []
        self.pending_size = 0
        self.total = 0

    def add(self, unit: bytes) -> None:
        if len(unit) >= self.LARGE:
            self.flush()
            self.writer.write(unit)
            self.total += len(unit)
        else:
            self.pending.append(unit)
            self.pending_size += len(unit)

    def flush(self) -> None:
        if self.pending:
            pending = self.pending
            self.writer.write(pending[0] if len(pending) == 1 else b"".join(pending))
            self.total += self.pending_size
            self.pending = []
            self.pending_size = 0


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
        self.replay_guard = ReplayGuard(config.replay_db)
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
        self._connections: set[asyncio.Task[None]] = set()
        self.routes = RouteTable(
            self._accept,
            lambda route: (_client_tls(route), _upstream_tls(route)),
            lambda: self.config.limits.link_timeout,
            READ_SIZE,
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

    async def _accept(
        self, route: Route, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        peername = writer.get_extra_info("peername")
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
            writer.close()
            return
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        self._per_route[route.name] += 1
        self._per_client[client] += 1
        self.metrics.inc("smg_connections_total", route=route.name)
        self.metrics.set("smg_connections_active", len(self._connections))
        try:
            host, port = parse_address(route.upstream)
            try:
                upstream = await asyncio.wait_for(
                    asyncio.open_connection(
                        host,
                        port,
                        ssl=self.routes.upstream_tls(route),
                        server_hostname=route.upstream_server_name or host
                        if route.upstream_tls
                        else None,
                        limit=READ_SIZE,
                    ),
                    timeout=self.config.limits.link_timeout,
                )
            except (OSError, TimeoutError) as error:
                log(
                    logging.WARNING,
                    "upstream unreachable",
                    route=route.name,
                    upstream=route.upstream,
                    error=str(error),
                )
                writer.close()
                return
            await _Connection(self, route, (reader, writer), upstream, peer).run()
        except asyncio.CancelledError:
            # stop() cancels what is left after the grace period. This task is the end of the
            # line (asyncio's stream callback would report a cancelled handler as an error).
            writer.close()
        finally:
            self._connections.discard(task)
            for counts, key in ((self._per_route, route.name), (self._per_client, client)):
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
