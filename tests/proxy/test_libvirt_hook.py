"""The ``libvirt-hook`` command as libvirtd runs it (arguments, domain XML on standard input)
against a running proxy: routes registered on prepare and served, removed on release, refusals
on standard error with a non-zero exit (which aborts the domain's start in libvirt)."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

from gateway.proxy.config import load_config
from gateway.proxy.server import ProxyServer
from gateway.spice.constants import ChannelType

from ..test_libvirt import FIXED, UUID, domain_xml
from .conftest import TEST_LIMITS, LogRecords, config_toml, free_port
from .peers import ScriptedServer, bounded, link_client
from .test_cli import command
from .test_live_routes import relays


def hook_config(tmp_path: Path, keyring: Path, socket_dir: Path, port_offset: int) -> Path:
    """A proxy config without routes, with a control socket and a [libvirt] table."""
    config = tmp_path / "proxy.toml"
    config.write_text(
        config_toml(
            host_id="host-a",
            keyring=keyring,
            replay_db=tmp_path / "replay.sqlite",
            routes=[],
            limits=TEST_LIMITS,
            control_socket=socket_dir / "control.sock",
        )
        + f'\n[libvirt]\nlisten_host = "127.0.0.1"\nport_offset = {port_offset}\n'
    )
    return config


async def hook(config: Path, name: str, op: str, sub: str, xml: bytes) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        *command(), "libvirt-hook", "--config", str(config), name, op, sub, "-",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await bounded(process.communicate(xml), f"the hook ({op} {sub})")
    assert out == b""  # libvirt would take output of some operations as a new XML
    assert process.returncode is not None
    return process.returncode, err.decode()


async def test_hook_registers_serves_and_removes(
    tmp_path: Path, keyring_path: Path, socket_dir: Path, logs: LogRecords
) -> None:
    server = await ScriptedServer("web01").start()
    spice_port = server.address[1]
    listen_port = free_port()
    config = hook_config(tmp_path, keyring_path, socket_dir, listen_port - spice_port)
    xml = domain_xml(FIXED.replace("15901", str(spice_port)))
    proxy = ProxyServer(load_config(config), config_path=config)
    await proxy.start()
    try:
        assert await hook(config, "web01", "migrate", "begin", xml) == (0, "")
        assert len(proxy.routes) == 0
        code, err = await hook(config, "web01", "prepare", "begin", xml)
        assert code == 0, err
        assert f"route web01 added: 127.0.0.1:{listen_port} -> 127.0.0.1:{spice_port}" in err
        # A second registration (start after prepare) changes nothing.
        code, err = await hook(config, "web01", "start", "begin", xml)
        assert (code, "unchanged" in err) == (0, True)
        client = await link_client(("127.0.0.1", listen_port), ChannelType.DISPLAY)
        await relays(client, await server.channel(ChannelType.DISPLAY), 1)
        await client.close()
        (added,) = logs.audit("route_added", route="web01")
        assert added["origin"] == "control"
        assert added["vm"] == "9b1c1f1e-5a38-4d3f-a3f0-6a2b8d1c7e42"

        # The XML of another domain than the one named is refused, as is SPICE off loopback.
        code, err = await hook(config, "db01", "prepare", "begin", xml)
        assert code == 2
        assert err.startswith("HookRefused: the domain XML describes 'web01'")
        exposed = domain_xml(FIXED.replace("127.0.0.1", "0.0.0.0"), name="web02")
        code, err = await hook(config, "web02", "prepare", "begin", exposed)
        assert code == 2
        assert err.count("\n") == 1
        assert "HookRefused: domain web02: SPICE listens on 0.0.0.0, not on loopback" in err
        code, err = await hook(config, "web01", "prepare", "begin", xml[:100])
        assert (code, err.startswith("MalformedInput: domain XML")) == (2, True)
        assert list(proxy.routes.routes) == ["web01"]

        assert await hook(config, "web01", "stopped", "end", xml) == (0, "")
        assert list(proxy.routes.routes) == ["web01"]
        assert await hook(config, "web01", "release", "end", xml) == (0, "")
        assert len(proxy.routes) == 0
        assert logs.audit("route_removed", route="web01")
        # Released twice (libvirt may): nothing left to remove, still fine.
        assert await hook(config, "web01", "release", "end", xml) == (0, "")
    finally:
        await bounded(proxy.stop(), "the proxy to stop")
        await server.close()

    # The proxy is gone: a start fails clearly, a release still succeeds.
    code, err = await hook(config, "web01", "prepare", "begin", xml)
    assert code == 2
    assert "cannot reach the spice-migration-gateway proxy" in err
    code, err = await hook(config, "web01", "release", "end", xml)
    assert code == 0
    assert "cannot reach" in err
    # A domain without SPICE needs no proxy at all.
    assert await hook(config, "web01", "prepare", "begin", domain_xml("")) == (0, "")


async def test_a_domain_named_like_a_config_route_leaves_that_route_alone(
    tmp_path: Path, keyring_path: Path, socket_dir: Path
) -> None:
    """Whoever may define a libvirt domain picks its name: a domain named like a route of the
    config neither replaces that route when it starts nor removes it when it is released."""
    server = await ScriptedServer("web01 (config)").start()
    listen_port = free_port()
    config = tmp_path / "proxy.toml"
    config.write_text(
        config_toml(
            host_id="host-a",
            keyring=keyring_path,
            replay_db=tmp_path / "replay.sqlite",
            routes=[
                {
                    "name": "web01",
                    "listen": f"127.0.0.1:{listen_port}",
                    "upstream": "{}:{}".format(*server.address),
                    "vm_id": "6f1c1b9e-0d5e-4d8a-9a53-2f43c0a5f0a1",
                }
            ],
            limits=TEST_LIMITS,
            control_socket=socket_dir / "control.sock",
        )
        + '\n[libvirt]\nlisten_host = "127.0.0.1"\nport_offset = 1\n'
    )
    xml = domain_xml(FIXED.replace("15901", str(free_port())))
    proxy = ProxyServer(load_config(config), config_path=config)
    await proxy.start()
    try:
        configured = proxy.routes.routes["web01"]
        code, err = await hook(config, "web01", "prepare", "begin", xml)
        assert code == 2
        assert "route web01 is served from the config" in err
        assert await hook(config, "web01", "release", "end", xml) == (0, "")
        assert proxy.routes.routes == {"web01": configured}
        assert proxy.routes.origin("web01") == "config"
        client = await link_client(("127.0.0.1", listen_port), ChannelType.DISPLAY)
        await relays(client, await server.channel(ChannelType.DISPLAY), 1)
        await client.close()
    finally:
        await bounded(proxy.stop(), "the proxy to stop")
        await server.close()


async def test_a_domain_named_like_another_domains_route_leaves_it_alone(
    tmp_path: Path, keyring_path: Path, socket_dir: Path
) -> None:
    """web01's second SPICE graphics is route ``web01-1``; a domain named ``web01-1`` (anyone
    who may define a domain picks its name) neither replaces that route nor removes it."""
    first, second = await ScriptedServer("web01").start(), await ScriptedServer("web01 #2").start()
    offset = _free_offset(first.address[1], second.address[1])
    config = hook_config(tmp_path, keyring_path, socket_dir, offset)
    graphics = FIXED.replace("15901", str(first.address[1])) + FIXED.replace(
        "15901", str(second.address[1])
    )
    xml = domain_xml(graphics)
    # Its graphics port maps to a real port under the offset (any free port may not: port +
    # offset can pass 65535, a refusal for another reason than the one under test).
    hostile = domain_xml(FIXED.replace("15901", str(second.address[1])), name="web01-1").replace(
        UUID.encode(), b"0badc0de-0000-4000-8000-000000000000"
    )
    proxy = ProxyServer(load_config(config), config_path=config)
    await proxy.start()
    try:
        code, err = await hook(config, "web01", "prepare", "begin", xml)
        assert code == 0, err
        served = proxy.routes.routes["web01-1"]
        code, err = await hook(config, "web01-1", "prepare", "begin", hostile)
        assert code == 2
        assert "route web01-1 serves VM" in err
        assert await hook(config, "web01-1", "release", "end", hostile) == (0, "")
        assert proxy.routes.routes["web01-1"] == served
        client = await link_client(
            ("127.0.0.1", second.address[1] + offset), ChannelType.DISPLAY
        )
        await relays(client, await second.channel(ChannelType.DISPLAY), 1)
        await client.close()
    finally:
        await bounded(proxy.stop(), "the proxy to stop")
        await first.close()
        await second.close()


def _free_offset(*ports: int) -> int:
    """A port offset that puts every one of ``ports`` on a free port."""
    while True:
        offset = free_port() - ports[0]
        if all(_bindable(port + offset) for port in ports[1:]):
            return offset


def _bindable(port: int) -> bool:
    if not 0 < port < 65536:
        return False
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True
