"""A running proxy's life around its routes: the control API, the monitoring listener, the
service manager's notifications, and reloading (SIGHUP or ``reload``).

Reloading re-reads the keyring and, when the proxy knows its config file, the whole config:
routes are applied as a difference (see :mod:`gateway.proxy.routes`), peers and limits take
effect for what happens next, and the keys that need a restart (:data:`RESTART_KEYS`) must
not change. A reload that fails
changes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from gateway.envelope import Policy
from gateway.errors import ConfigError, GatewayError
from gateway.proxy.config import ProxyConfig, Route, load_config, parse_address
from gateway.proxy.routes import Origin, os_reason
from gateway.service.control import ControlServer
from gateway.service.http import MonitoringServer
from gateway.service.logs import audit, log
from gateway.service.notify import Notifier

if TYPE_CHECKING:
    from gateway.proxy.server import ProxyServer

__all__ = ["RESTART_KEYS", "Lifecycle"]

#: Top-level keys a reload cannot change (the config reference lists them as "restart").
RESTART_KEYS = (
    "host_id",
    "keyring",
    "replay_db",
    "replay_fsync",
    "control_socket",
    "metrics_listen",
    "identity",
    "trust_store",
    "peer_listen",
)


class Lifecycle:
    """Everything of a :class:`ProxyServer` that is not moving bytes."""

    def __init__(self, proxy: ProxyServer, config_path: str | Path | None) -> None:
        self.proxy = proxy
        self.config_path = None if config_path is None else Path(config_path)
        self.notifier = Notifier()
        self.control: ControlServer | None = None
        self.monitoring: MonitoringServer | None = None
        self._reloads: set[asyncio.Task[Any]] = set()
        self._reload_lock = asyncio.Lock()

    async def start(self) -> None:
        config = self.proxy.config
        if config.metrics_listen is not None:
            host, port = parse_address(config.metrics_listen)
            self.monitoring = MonitoringServer(
                host, port, self.proxy.metrics.render, self.proxy.health
            )
            try:
                await self.monitoring.start()
            except OSError as error:
                self.monitoring = None
                raise ConfigError(
                    f"metrics_listen {config.metrics_listen}: cannot listen: {os_reason(error)}"
                ) from None
        if config.control_socket:
            self.control = ControlServer(
                config.control_socket,
                {
                    "health": lambda _: self.proxy.health(),
                    "metrics": lambda _: {"metrics": self.proxy.metrics.snapshot()},
                    "prometheus": lambda _: {"text": self.proxy.metrics.render()},
                    "reload": self._cmd_reload,
                    "route_add": self._cmd_route_add,
                    "route_remove": self._cmd_route_remove,
                    "route_list": lambda _: {"routes": self.proxy.routes.listing()},
                },
            )
            try:
                await self.control.start()
            except OSError as error:
                self.control = None  # nothing of ours to close or unlink
                raise ConfigError(
                    f"control_socket {config.control_socket}: cannot listen: {os_reason(error)}"
                ) from None

    async def stop(self) -> None:
        await self.notifier.close()
        if self.control is not None:
            await self.control.close()
        if self.monitoring is not None:
            await self.monitoring.close()

    def ready(self) -> None:
        self.notifier.ready(f"serving {len(self.proxy.routes)} route(s)")

    def stopping(self) -> None:
        self.notifier.stopping()

    # --- reloading -------------------------------------------------------------------------------

    def reload_keys(self) -> int:
        """Re-read the keyring, and the identity and trust store when configured; on failure
        the keys in use stay in use (each file set independently)."""
        try:
            keyring = self.proxy.keyring_file.reload()
        except GatewayError as error:
            log(
                logging.ERROR,
                "keyring reload failed; keeping the current keys",
                error=type(error).__name__,
                detail=str(error),
            )
            raise
        log(logging.INFO, "keyring reloaded", keys=len(keyring))
        identity_files = self.proxy.identity_files
        if identity_files is not None:
            try:
                identity, trust = identity_files.reload()
            except GatewayError as error:
                log(
                    logging.ERROR,
                    "identity reload failed; keeping the current identity and trust store",
                    error=type(error).__name__,
                    detail=str(error),
                )
                raise
            log(
                logging.INFO,
                "identity reloaded",
                identity=identity.active.key_id.hex(),
                trusted=len(trust.hosts),
            )
        return len(keyring)

    def schedule_reload(self) -> None:
        """SIGHUP: reload in a task (a signal handler cannot wait); failures are logged."""
        task = asyncio.get_running_loop().create_task(self._reload_logged())
        self._reloads.add(task)
        task.add_done_callback(self._reloads.discard)

    async def _reload_logged(self) -> None:
        with contextlib.suppress(GatewayError):  # reload() logged and audited it
            await self.reload()

    async def reload(self) -> dict[str, Any]:
        """Re-read the config file (if known) and the keyring; apply what changed."""
        async with self._reload_lock:
            self.notifier.reloading()
            try:
                return await self._reload()
            finally:
                self.notifier.ready(f"serving {len(self.proxy.routes)} route(s)")

    async def _reload(self) -> dict[str, Any]:
        new: ProxyConfig | None = None
        if self.config_path is not None:
            try:
                new = load_config(self.config_path)
                _same_restart_keys(self.proxy.config, new)
            except ConfigError as error:
                log(
                    logging.ERROR,
                    "config reload failed; nothing changed",
                    error=type(error).__name__,
                    detail=str(error),
                )
                audit(
                    "config_reload_refused",
                    "config reload refused",
                    outcome="refused",
                    detail=str(error),
                )
                raise
        keys = self.reload_keys()
        if new is None:
            return {"keys": keys}
        changes = await self.proxy.routes.apply(new.routes, "config")
        from gateway.proxy.server import ENVELOPE_SLACK

        proxy = self.proxy
        proxy.config = new
        proxy.state.config = new
        proxy.state.policy = Policy(
            clock_skew=new.limits.clock_skew,
            max_blob_size=new.limits.max_message_size + ENVELOPE_SLACK,
        )
        for route in new.routes:
            proxy.metrics.route_added(route.name)
        audit(
            "config_reloaded",
            "config reloaded",
            outcome="partial" if changes.failed else "ok",
            keys=keys,
            peers=len(new.peers),
            **changes.as_dict(),
        )
        return {"keys": keys, "routes": changes.as_dict()}

    # --- control commands ------------------------------------------------------------------------

    async def _cmd_reload(self, _: dict[str, Any]) -> dict[str, Any]:
        return await self.reload()

    async def _cmd_route_add(self, request: dict[str, Any]) -> dict[str, Any]:
        table = request.get("route")
        if not isinstance(table, dict):
            raise ConfigError("route_add needs a 'route' object")
        try:
            route = Route.model_validate(table)
        except ValidationError as error:
            raise ConfigError(f"route: {_first_problem(error)}") from None
        replace = request.get("replace", False) is True
        origin = _origin(request)
        current = self.proxy.routes.routes.get(route.name)
        if replace and origin is not None and current is not None and current != route:
            # The libvirt hook names its routes after domains that any libvirt user may
            # define: with an origin it replaces only a route of that origin and that VM.
            if self.proxy.routes.origin(route.name) != origin:
                raise ConfigError(
                    f"route {route.name} is served from the "
                    f"{self.proxy.routes.origin(route.name)}; only a route from the {origin} "
                    "may be replaced here"
                )
            if current.vm_id != route.vm_id:
                raise ConfigError(
                    f"route {route.name} serves VM {current.vm_id}; it cannot be replaced by "
                    f"a route for VM {route.vm_id}"
                )
        outcome = await self.proxy.routes.add(route, "control", replace=replace)
        self.proxy.metrics.route_added(route.name)
        host, port = self.proxy.routes.addresses[route.name]
        return {"route": route.name, "outcome": outcome, "listen": f"{host}:{port}"}

    async def _cmd_route_remove(self, request: dict[str, Any]) -> dict[str, Any]:
        name = request.get("name")
        if not isinstance(name, str):
            raise ConfigError("route_remove needs a string 'name'")
        origin = _origin(request)
        vm_id = request.get("vm_id")
        if vm_id is not None and not isinstance(vm_id, str):
            raise ConfigError("route_remove's 'vm_id' is a string")
        route_origin = self.proxy.routes.origin(name)
        current = self.proxy.routes.routes.get(name)
        other = (origin is not None and route_origin != origin) or (
            vm_id is not None and current is not None and str(current.vm_id) != vm_id.lower()
        )
        if request.get("missing_ok") is True and (current is None or other):
            return {"route": name, "outcome": "absent"}
        if other:
            raise ConfigError(f"no route named {name!r} of that origin and VM")
        await self.proxy.routes.remove(name, origin=origin)
        return {"route": name, "outcome": "removed"}


def _origin(request: dict[str, Any]) -> Origin | None:
    """A route command's optional ``origin``: act only on a route that came from there."""
    origin = request.get("origin")
    if origin is None or origin == "config" or origin == "control":
        return origin
    raise ConfigError("'origin' is 'config' or 'control'")


def _same_restart_keys(old: ProxyConfig, new: ProxyConfig) -> None:
    changed = [key for key in RESTART_KEYS if getattr(old, key) != getattr(new, key)]
    if changed:
        raise ConfigError(f"{', '.join(changed)} changed: these take effect only on a restart")


def _first_problem(error: ValidationError) -> str:
    item = error.errors(include_input=False, include_url=False)[0]
    where = ".".join(str(part)[:40] for part in item["loc"]) or "route"
    return f"{where}: {item['msg'].removeprefix('Value error, ')[:200]}"
