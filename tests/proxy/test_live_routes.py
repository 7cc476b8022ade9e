"""Routes of a running proxy: added, removed and listed through the control socket, and the
whole config re-read on reload, each change applied as a difference. Everything over real
sockets on 127.0.0.1: a client linking through the proxy to a scripted spice-server."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import uuid
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from gateway.errors import ConfigError
from gateway.proxy.config import load_config
from gateway.proxy.server import ProxyServer
from gateway.service.control import request
from gateway.spice.constants import ChannelType

from .conftest import TEST_LIMITS, LogRecords, config_toml, free_port
from .peers import Endpoint, ScriptedServer, bounded, link_client

DISPLAY = ChannelType.DISPLAY


async def control(proxy: ProxyServer, command: dict[str, Any]) -> dict[str, Any]:
    path = proxy.config.control_socket
    assert path is not None
    return await asyncio.to_thread(request, path, command)


class Host:
    """One proxy with a config file, its scripted servers, and the clients linked through it."""

    def __init__(self, tmp_path: Path, keyring: Path, socket_dir: Path) -> None:
        self.config_path = tmp_path / "proxy.toml"
        self.keyring = keyring
        self.replay_db = tmp_path / "replay.sqlite"
        self.socket = socket_dir / "control.sock"
        self.servers: dict[str, ScriptedServer] = {}
        self.ports: dict[str, int] = {}
        self.vm_ids: dict[str, uuid.UUID] = {}
        self.endpoints: list[Endpoint] = []
        self.proxy: ProxyServer | None = None

    async def server(self, name: str) -> ScriptedServer:
        server = ScriptedServer(name)
        await server.start()
        self.servers[name] = server
        return server

    def route(self, name: str, server: str, **extra: Any) -> dict[str, Any]:
        port = self.ports.setdefault(name, free_port())
        vm_id = self.vm_ids.setdefault(name, uuid.uuid4())
        host, upstream_port = self.servers[server].address
        return {
            "name": name,
            "listen": f"127.0.0.1:{port}",
            "upstream": f"{host}:{upstream_port}",
            "vm_id": str(vm_id),
            **extra,
        }

    def write(self, routes: list[dict[str, Any]], **top: Any) -> None:
        text = config_toml(
            host_id=top.get("host_id", "host-a"),
            keyring=self.keyring,
            replay_db=self.replay_db,
            routes=routes,
            limits=TEST_LIMITS,
            control_socket=self.socket,
        )
        self.config_path.write_text(text)

    async def start(self) -> ProxyServer:
        self.proxy = ProxyServer(load_config(self.config_path), config_path=self.config_path)
        await self.proxy.start()
        return self.proxy

    async def link(self, route: str, server: str) -> tuple[Endpoint, Endpoint]:
        """A display channel linked through ``route``, arriving at ``server``; both ends."""
        client = await link_client(("127.0.0.1", self.ports[route]), DISPLAY)
        self.endpoints.append(client)
        upstream = await self.servers[server].channel(DISPLAY)
        self.endpoints.append(upstream)
        return client, upstream

    async def close(self) -> None:
        for endpoint in self.endpoints:
            await endpoint.close()
        if self.proxy is not None:
            await bounded(self.proxy.stop(), "the proxy to stop")
        for server in self.servers.values():
            await server.close()


@contextlib.asynccontextmanager
async def host(tmp_path: Path, keyring: Path, socket_dir: Path) -> AsyncIterator[Host]:
    rig = Host(tmp_path, keyring, socket_dir)
    try:
        yield rig
    finally:
        await rig.close()


async def relays(client: Endpoint, server: Endpoint, tag: int) -> None:
    """One message each way arrives unchanged."""
    body = bytes([tag]) * 16
    await client.send(0x200, body)
    assert (await server.recv()).body == body
    await server.send(0x201, body[::-1])
    assert (await client.recv()).body == body[::-1]


def refused(port: int) -> bool:
    """Nothing listens on 127.0.0.1:port any more."""
    with socket.socket() as sock:
        try:
            sock.connect(("127.0.0.1", port))
        except ConnectionRefusedError:
            return True
    return False


def by_name(rows: list[dict[str, Any]]) -> Mapping[tuple[str, str], dict[str, Any]]:
    return {(row["name"], row["status"]): row for row in rows}


async def test_route_add_list_and_remove_with_draining(
    tmp_path: Path, keyring_path: Path, socket_dir: Path, logs: LogRecords
) -> None:
    async with host(tmp_path, keyring_path, socket_dir) as rig:
        await rig.server("a")
        await rig.server("b")
        rig.write([rig.route("a", "a")])
        proxy = await rig.start()

        route_b = rig.route("b", "b")
        added = await control(proxy, {"cmd": "route_add", "route": route_b})
        assert added == {"ok": True, "route": "b", "outcome": "added", "listen": route_b["listen"]}
        client, server = await rig.link("b", "b")
        await relays(client, server, 1)
        again = await control(proxy, {"cmd": "route_add", "route": route_b})
        assert again["outcome"] == "unchanged"
        other = {**route_b, "vm_id": str(uuid.uuid4())}
        clash = await control(proxy, {"cmd": "route_add", "route": other})
        assert clash["ok"] is False
        assert "exists with other settings" in clash["error"]

        rows = by_name((await control(proxy, {"cmd": "route_list"}))["routes"])
        assert rows["a", "serving"]["origin"] == "config"
        assert rows["b", "serving"]["origin"] == "control"
        assert rows["b", "serving"]["connections"] == 1
        metrics = (await control(proxy, {"cmd": "metrics"}))["metrics"]
        assert metrics['smg_connections_total{route="b"}'] == 1

        removed = await control(proxy, {"cmd": "route_remove", "name": "b"})
        assert removed["outcome"] == "removed"
        # The listener is gone at once; the connection it accepted carries on (draining).
        assert refused(rig.ports["b"])
        await relays(client, server, 2)
        rows = by_name((await control(proxy, {"cmd": "route_list"}))["routes"])
        assert ("b", "serving") not in rows
        assert rows["b", "draining"]["connections"] == 1
        await client.close()
        assert await server.frames_until_closed() == []
        # The proxy notices the end on its own schedule; wait for it, bounded.
        while logs.audit("route_drained", route="b") == []:
            await asyncio.sleep(0.02)
        rows = by_name((await control(proxy, {"cmd": "route_list"}))["routes"])
        assert set(rows) == {("a", "serving")}

        missing = await control(proxy, {"cmd": "route_remove", "name": "b"})
        assert missing["ok"] is False
        tolerated = await control(proxy, {"cmd": "route_remove", "name": "b", "missing_ok": True})
        assert tolerated["outcome"] == "absent"
        assert [e["origin"] for e in logs.audit("route_added")] == ["config", "control"]
        assert [e["draining"] for e in logs.audit("route_removed", route="b")] == [1]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"listen": "LISTEN_A"}, "already listens on"),
        ({"upstream": "LISTEN_A"}, "would proxy to route a"),
        ({"upstream": "SELF"}, "listen and upstream are the same address"),
        ({"listen": "BUSY"}, "cannot listen on"),
        ({"vm_id": "not-a-uuid"}, "route: vm_id"),
        ({"extra": 1}, "route: extra"),
        ({"tls_cert": "/nonexistent/cert.pem", "tls_key": "/nonexistent/key.pem"}, "tls_cert"),
    ],
)
async def test_route_add_refusals_change_nothing(
    tmp_path: Path,
    keyring_path: Path,
    socket_dir: Path,
    logs: LogRecords,
    change: dict[str, Any],
    message: str,
) -> None:
    async with host(tmp_path, keyring_path, socket_dir) as rig:
        await rig.server("a")
        rig.write([rig.route("a", "a")])
        proxy = await rig.start()
        route = rig.route("b", "a")
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            values = {
                "LISTEN_A": f"127.0.0.1:{rig.ports['a']}",
                "SELF": route["listen"],
                "BUSY": f"127.0.0.1:{busy.getsockname()[1]}",
            }
            route |= {key: values.get(value, value) for key, value in change.items()}
            answer = await control(proxy, {"cmd": "route_add", "route": route})
        assert answer["ok"] is False
        assert message in answer["error"]
        rows = (await control(proxy, {"cmd": "route_list"}))["routes"]
        assert [row["name"] for row in rows] == ["a"]
        client, server = await rig.link("a", "a")
        await relays(client, server, 3)


async def test_a_route_cannot_listen_on_another_routes_upstream(
    tmp_path: Path, keyring_path: Path, socket_dir: Path
) -> None:
    """While a VM's spice-server is down (QEMU not started yet), its loopback port is free: a
    route listening there would take that VM's clients to another VM's spice-server."""
    async with host(tmp_path, keyring_path, socket_dir) as rig:
        await rig.server("a")
        down = f"127.0.0.1:{free_port()}"
        rig.write([rig.route("a", "a", upstream=down)])
        proxy = await rig.start()
        squatter = rig.route("b", "a", listen=down)
        answer = await control(proxy, {"cmd": "route_add", "route": squatter})
        assert answer["ok"] is False
        assert "route a's upstream" in answer["error"]
        rows = (await control(proxy, {"cmd": "route_list"}))["routes"]
        assert [row["name"] for row in rows] == ["a"]


async def test_reload_applies_the_difference(
    tmp_path: Path, keyring_path: Path, socket_dir: Path, logs: LogRecords
) -> None:
    async with host(tmp_path, keyring_path, socket_dir) as rig:
        for name in ("a", "b", "b2", "c", "d", "e"):
            await rig.server(name)
        rig.write([rig.route("a", "a"), rig.route("b", "b"), rig.route("c", "c")])
        proxy = await rig.start()
        await control(proxy, {"cmd": "route_add", "route": rig.route("e", "e")})
        on_a = await rig.link("a", "a")
        on_b = await rig.link("b", "b")
        on_c = await rig.link("c", "c")

        # a unchanged, b moved to another spice-server, c removed, d added; e is the control's.
        rig.write([rig.route("a", "a"), rig.route("b", "b2"), rig.route("d", "d")])
        answer = await control(proxy, {"cmd": "reload"})
        assert answer["ok"] is True
        assert answer["routes"] == {
            "added": ["d"],
            "removed": ["c"],
            "replaced": ["b"],
            "unchanged": ["a"],
            "failed": {},
        }
        # Connections of every old route carry on, the unchanged one untouched.
        for tag, (client, server) in enumerate((on_a, on_b, on_c), start=10):
            await relays(client, server, tag)
        assert refused(rig.ports["c"])
        assert rig.servers["a"].accepted == 1
        # New connections follow the new config; the control's route survived the reload.
        await relays(*await rig.link("b", "b2"), 20)
        await relays(*await rig.link("d", "d"), 21)
        await relays(*await rig.link("e", "e"), 22)
        assert rig.servers["b"].accepted == 1
        rows = by_name((await control(proxy, {"cmd": "route_list"}))["routes"])
        assert rows["b", "draining"]["connections"] == 1
        assert rows["e", "serving"]["origin"] == "control"
        reloaded = logs.audit("config_reloaded")
        assert len(reloaded) == 1
        assert reloaded[0]["removed"] == ["c"]
        assert logs.audit("route_replaced", route="b")


@pytest.mark.parametrize("problem", ["host_id", "syntax", "bad route", "busy"])
async def test_a_refused_reload_changes_nothing(
    tmp_path: Path, keyring_path: Path, socket_dir: Path, logs: LogRecords, problem: str
) -> None:
    async with host(tmp_path, keyring_path, socket_dir) as rig:
        await rig.server("a")
        await rig.server("b")
        rig.write([rig.route("a", "a")])
        proxy = await rig.start()
        on_a = await rig.link("a", "a")
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            if problem == "host_id":
                rig.write([rig.route("a", "a"), rig.route("b", "b")], host_id="host-z")
            elif problem == "syntax":
                rig.config_path.write_text("host_id = \n")
            elif problem == "bad route":
                rig.write([rig.route("a", "a"), rig.route("b", "b", upstream_ca="/ca.pem")])
            else:
                rig.ports["b"] = busy.getsockname()[1]
                rig.write([rig.route("a", "a"), rig.route("b", "b")])
            answer = await control(proxy, {"cmd": "reload"})
        if problem == "busy":
            # The config itself was fine: what can be applied is, the failure is reported.
            assert answer["ok"] is True
            assert "cannot listen" in answer["routes"]["failed"]["b"]
            assert logs.audit("config_reloaded", outcome="partial")
        else:
            assert answer["ok"] is False
            assert answer["error"].startswith("ConfigError")
            assert logs.audit("config_reload_refused")
            assert proxy.config.host_id == "host-a"
        assert list(proxy.routes.routes) == ["a"]
        await relays(*on_a, 30)


async def test_reload_without_a_config_file_reloads_keys_only(
    tmp_path: Path, keyring_path: Path, socket_dir: Path
) -> None:
    async with host(tmp_path, keyring_path, socket_dir) as rig:
        await rig.server("a")
        rig.write([rig.route("a", "a")])
        rig.proxy = ProxyServer(load_config(rig.config_path))
        await rig.proxy.start()
        assert await rig.proxy.lifecycle.reload() == {"keys": 1}
        with pytest.raises(ConfigError, match="no route named"):
            await rig.proxy.routes.remove("nope")


async def test_a_replacement_that_cannot_listen_leaves_the_route_as_it_was(
    tmp_path: Path, keyring_path: Path, socket_dir: Path, logs: LogRecords
) -> None:
    async with host(tmp_path, keyring_path, socket_dir) as rig:
        await rig.server("a")
        await rig.server("a2")
        route_a = rig.route("a", "a")
        rig.write([route_a])
        proxy = await rig.start()
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            moved = {**rig.route("a", "a2"), "listen": f"127.0.0.1:{busy.getsockname()[1]}"}
            answer = await control(proxy, {"cmd": "route_add", "route": moved, "replace": True})
        assert answer["ok"] is False
        assert "cannot listen on" in answer["error"]
        assert proxy.routes.routes["a"].listen == route_a["listen"]
        await relays(*await rig.link("a", "a"), 40)
        assert logs.audit("route_replaced") == []
        # Moving to a free address works, and the old address stops listening.
        moved["listen"] = f"127.0.0.1:{free_port()}"
        answer = await control(proxy, {"cmd": "route_add", "route": moved, "replace": True})
        assert answer["outcome"] == "replaced"
        assert refused(rig.ports["a"])
