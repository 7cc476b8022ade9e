"""The proxy's routes while it runs: one listener per route, added, removed and replaced live.

A route comes from the config file (``origin="config"``) or from the control API
(``origin="control"``, e.g. the libvirt hook). Re-reading the config (SIGHUP) replaces the set
of config routes and leaves the control routes alone. A removed route *drains*: its listener
closes at once, its connections run until they end on their own. A changed route is a removal
followed by an addition under the same name: its old connections drain, new ones get the new
settings. Unchanged routes and their connections are not touched at all. Every change is
audited.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import ssl
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from gateway.errors import ConfigError
from gateway.proxy.config import Route, parse_address
from gateway.service.logs import audit, log

__all__ = ["Origin", "RouteChanges", "RouteTable", "TlsContexts", "os_reason"]


def os_reason(error: OSError) -> str:
    """The system's short reason ("Address already in use"), not asyncio's long wording."""
    return os.strerror(error.errno) if error.errno else (error.strerror or type(error).__name__)

Origin = Literal["config", "control"]

#: (client-facing TLS, upstream TLS) of one route; either may be None.
TlsContexts = tuple[ssl.SSLContext | None, ssl.SSLContext | None]

#: A new client connection of a route: its protocol, and what ends when the connection does.
Accept = Callable[[Route], tuple[asyncio.BaseProtocol, asyncio.Future[None]]]


@dataclass
class _Listener:
    route: Route
    origin: Origin
    server: asyncio.AbstractServer
    address: tuple[str, int]
    upstream_tls: ssl.SSLContext | None
    connections: set[asyncio.Future[None]] = field(default_factory=set)


@dataclass
class RouteChanges:
    """What one :meth:`RouteTable.apply` did, by route name."""

    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "added": self.added,
            "removed": self.removed,
            "replaced": self.replaced,
            "unchanged": self.unchanged,
            "failed": self.failed,
        }


class RouteTable:
    """The listening routes of one proxy process and the connections each one carries."""

    def __init__(
        self,
        accept: Accept,
        tls: Callable[[Route], TlsContexts],
        handshake_timeout: Callable[[], float],
    ) -> None:
        self._accept = accept
        self._tls = tls
        self._handshake_timeout = handshake_timeout
        self._active: dict[str, _Listener] = {}
        #: Removed or replaced listeners whose connections have not all ended yet.
        self._draining: list[_Listener] = []
        self._lock = asyncio.Lock()

    # --- queries ---------------------------------------------------------------------------------

    def __contains__(self, name: object) -> bool:
        return name in self._active

    def __len__(self) -> int:
        return len(self._active)

    def origin(self, name: str) -> Origin | None:
        """Where the serving route ``name`` came from; None when there is none."""
        listener = self._active.get(name)
        return None if listener is None else listener.origin

    @property
    def routes(self) -> dict[str, Route]:
        return {name: listener.route for name, listener in self._active.items()}

    @property
    def addresses(self) -> dict[str, tuple[str, int]]:
        return {name: listener.address for name, listener in self._active.items()}

    def upstream_tls(self, route: Route) -> ssl.SSLContext | None:
        listener = self._active.get(route.name)
        if listener is not None and listener.route == route:
            return listener.upstream_tls
        for old in self._draining:
            if old.route == route:
                return old.upstream_tls
        # The route is gone and its last listener with it: build the context again.
        return self._tls(route)[1]

    def listing(self) -> list[dict[str, Any]]:
        """Every route, serving or draining, for the control API."""
        rows = []
        for name, listener in sorted(self._active.items()):
            rows.append(_row(listener, "serving") | {"name": name})
        for listener in self._draining:
            rows.append(_row(listener, "draining") | {"name": listener.route.name})
        return rows

    # --- changes ---------------------------------------------------------------------------------

    async def add(self, route: Route, origin: Origin, *, replace: bool = False) -> str:
        """Start serving ``route``; "added", "replaced" or "unchanged" (already served as is).

        Refuses (ConfigError) a route whose name is taken by a different route unless
        ``replace``, a route whose listen address another route listens on or forwards to,
        a route that forwards to another route's listen address, and one that proxies to
        itself.
        """
        async with self._lock:
            return await self._add(route, origin, replace=replace)

    async def remove(self, name: str, *, origin: Origin | None = None) -> Route:
        """Stop listening for ``name`` at once; its connections drain."""
        async with self._lock:
            listener = self._active.get(name)
            if listener is None or (origin is not None and listener.origin != origin):
                raise ConfigError(f"no route named {name!r}")
            self._retire(listener, "route_removed", f"route {name} removed; draining")
            return listener.route

    async def apply(self, routes: Iterable[Route], origin: Origin) -> RouteChanges:
        """Make the routes of ``origin`` exactly ``routes``; the other origin's stay as they are.

        Removals go first (they free listen addresses), then additions and replacements. A route
        that cannot be served is reported in ``failed`` and the others still apply.
        """
        changes = RouteChanges()
        wanted = {route.name: route for route in routes}
        async with self._lock:
            for name, listener in list(self._active.items()):
                if listener.origin != origin:
                    continue
                if name not in wanted:
                    self._retire(listener, "route_removed", f"route {name} removed; draining")
                    changes.removed.append(name)
            for name, route in wanted.items():
                current = self._active.get(name)
                if current is not None and current.origin != origin:
                    changes.failed[name] = (
                        f"route {name} is already served from the {current.origin}"
                    )
                    continue
                try:
                    outcome = await self._add(route, origin, replace=True)
                except ConfigError as error:
                    changes.failed[name] = str(error)
                    continue
                {"added": changes.added, "replaced": changes.replaced}.get(
                    outcome, changes.unchanged
                ).append(name)
        return changes

    def close(self) -> None:
        """Stop listening on every route (shutdown); connections are the caller's business."""
        for listener in (*self._active.values(), *self._draining):
            listener.server.close()

    async def wait_closed(self) -> None:
        for listener in (*self._active.values(), *self._draining):
            try:
                await listener.server.wait_closed()
            except Exception:  # noqa: S112 - shutting down: a listener's late error is moot
                continue

    # --- internals -------------------------------------------------------------------------------

    async def _add(self, route: Route, origin: Origin, *, replace: bool) -> str:
        current = self._active.get(route.name)
        if current is not None:
            if current.route == route and current.origin == origin:
                return "unchanged"
            if not replace:
                raise ConfigError(f"route {route.name} exists with other settings")
        listen = parse_address(route.listen)
        upstream = parse_address(route.upstream)
        for name, other in self._active.items():
            if name == route.name:
                continue
            if parse_address(other.route.listen) == listen:
                raise ConfigError(
                    f"route {route.name}: route {name} already listens on {route.listen}"
                )
            if parse_address(other.route.listen) == upstream:
                raise ConfigError(
                    f"route {route.name}: upstream {route.upstream} would proxy to route {name}"
                )
            if parse_address(other.route.upstream) == listen:
                # Free while that VM's spice-server is down: its clients would reach this VM.
                raise ConfigError(
                    f"route {route.name}: {route.listen} is route {name}'s upstream"
                )
        # TLS settings are checked before anything changes.
        client_tls, upstream_tls = self._tls(route)
        # On the same address the old listener must go first; on another one it stays until
        # the new one listens, so that a replacement that cannot listen leaves the route as it
        # was.
        moving = current is not None and parse_address(current.route.listen) != listen
        if current is not None and not moving:
            self._retire(current, "route_replaced", f"route {route.name} replaced; draining")
        slot: dict[str, _Listener] = {}
        try:
            server = await asyncio.get_running_loop().create_server(
                functools.partial(self._serve, slot),
                listen[0],
                listen[1],
                ssl=client_tls,
                # A TLS handshake is part of linking: bound it the same way.
                ssl_handshake_timeout=self._handshake_timeout() if client_tls else None,
                reuse_address=True,
            )
        except OSError as error:
            audit(
                "route_refused",
                f"route {route.name} cannot listen",
                route=route.name,
                listen=route.listen,
                origin=origin,
                outcome="refused",
                error=os_reason(error),
            )
            raise ConfigError(
                f"route {route.name}: cannot listen on {route.listen}: {os_reason(error)}"
            ) from None
        bound = server.sockets[0].getsockname()
        listener = _Listener(route, origin, server, (bound[0], bound[1]), upstream_tls)
        slot["listener"] = listener
        if current is not None and moving:
            self._retire(current, "route_replaced", f"route {route.name} replaced; draining")
        self._active[route.name] = listener
        log(
            logging.INFO,
            "listening",
            route=route.name,
            listen=f"{bound[0]}:{bound[1]}",
            upstream=route.upstream,
            tls=route.tls_cert is not None,
        )
        audit(
            "route_added",
            f"route {route.name} serving",
            route=route.name,
            vm=str(route.vm_id),
            listen=f"{bound[0]}:{bound[1]}",
            upstream=route.upstream,
            origin=origin,
        )
        return "added" if current is None else "replaced"

    def _retire(self, listener: _Listener, event: str, message: str) -> None:
        listener.server.close()
        del self._active[listener.route.name]
        if listener.connections:
            self._draining.append(listener)
        audit(
            event,
            message,
            route=listener.route.name,
            vm=str(listener.route.vm_id),
            listen=listener.route.listen,
            origin=listener.origin,
            draining=len(listener.connections),
        )

    def _serve(self, slot: dict[str, _Listener]) -> asyncio.BaseProtocol:
        listener = slot["listener"]
        protocol, done = self._accept(listener.route)
        listener.connections.add(done)
        done.add_done_callback(functools.partial(self._ended, listener))
        return protocol

    def _ended(self, listener: _Listener, done: asyncio.Future[None]) -> None:
        listener.connections.discard(done)
        if not listener.connections and listener in self._draining:
            self._draining.remove(listener)
            audit(
                "route_drained",
                f"route {listener.route.name}: last connection of the old listener ended",
                route=listener.route.name,
                vm=str(listener.route.vm_id),
            )


def _row(listener: _Listener, status: str) -> dict[str, Any]:
    route = listener.route
    return {
        "status": status,
        "origin": listener.origin,
        "listen": f"{listener.address[0]}:{listener.address[1]}",
        "upstream": route.upstream,
        "vm_id": str(route.vm_id),
        "tls": route.tls_cert is not None,
        "upstream_tls": route.upstream_tls,
        "connections": len(listener.connections),
    }
