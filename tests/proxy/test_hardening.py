"""Attack catalogue, proxy level: the hardening findings shown with real sockets."""

from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path
from typing import Any

import pytest

from gateway.errors import ConfigError
from gateway.proxy.server import ProxyServer
from gateway.service.control import ControlServer, request

from .conftest import Proxies, free_port


async def control(path: str | Path, command: str) -> dict[str, Any]:
    return await asyncio.to_thread(request, path, {"cmd": command})


# --- finding 10: one control socket, one proxy ---------------------------------------------------


async def test_second_proxy_on_a_live_control_socket_refuses_to_start(
    proxies: Proxies, tmp_path: Path
) -> None:
    async with proxies.pair() as rig:
        first = rig.source_config
        assert first.control_socket is not None
        route = first.routes[0].model_copy(update={"listen": f"127.0.0.1:{free_port()}"})
        second_config = first.model_copy(
            update={"routes": (route,), "replay_db": str(tmp_path / "second.sqlite")}
        )
        second = ProxyServer(second_config)
        try:
            with pytest.raises(ConfigError, match="in use by a running process"):
                await second.start()
            # It opened no port before refusing.
            assert second.addresses == {}
        finally:
            await second.stop()
        # The first proxy still owns and answers its socket.
        assert os.path.exists(first.control_socket)
        health = await control(first.control_socket, "health")
        assert health["ok"] is True
        assert health["host_id"] == first.host_id


async def test_control_server_never_removes_a_socket_it_does_not_own(socket_dir: Path) -> None:
    path = socket_dir / "c.sock"
    first = ControlServer(path, {"who": lambda _: {"me": "first"}})
    await first.start()
    # Someone removes the first server's path; a successor then binds the same path.
    os.unlink(path)
    second = ControlServer(path, {"who": lambda _: {"me": "second"}})
    await second.start()
    try:
        await first.close()
        # The first server's stop left the successor's socket alone.
        assert path.exists()
        assert (await control(path, "who"))["me"] == "second"
    finally:
        await second.close()
    assert not path.exists()


async def test_stale_control_socket_of_a_dead_process_is_replaced(socket_dir: Path) -> None:
    path = socket_dir / "stale.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
        dead.bind(str(path))  # bound, never listening, then closed: a crashed server's leftover
    server = ControlServer(path, {"ping": lambda _: {"pong": True}})
    await server.start()
    try:
        assert (await control(path, "ping"))["pong"] is True
    finally:
        await server.close()


async def test_a_regular_file_at_the_control_path_is_never_removed(socket_dir: Path) -> None:
    path = socket_dir / "file.sock"
    path.write_text("not a socket")
    server = ControlServer(path, {})
    with pytest.raises(ConfigError, match="control socket"):
        await server.start()
    await server.close()
    assert path.read_text() == "not a socket"
