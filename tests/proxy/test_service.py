"""Running as a service: systemd's notify protocol (the test plays systemd, a datagram socket),
the HTTP monitoring listener (``/metrics``, ``/healthz``), SIGHUP re-reading the config file,
and the ``control route`` commands, against a real ``proxy`` process or a real listener."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest

from gateway import replay
from gateway.errors import GatewayError, ProtocolError, TooLarge
from gateway.proxy import server as server_module
from gateway.proxy.config import ProxyConfig, parse_config
from gateway.proxy.server import ProxyServer
from gateway.service import http as http_module
from gateway.service.http import (
    MAX_HEAD,
    PROMETHEUS_CONTENT_TYPE,
    MonitoringServer,
    parse_request_head,
)
from gateway.service.metrics import FAMILIES
from gateway.service.notify import Notifier

from ..tools import require
from .conftest import TEST_LIMITS, config_toml, free_port
from .peers import ScriptedServer, bounded, link_client
from .test_cli import ProxyProcess, run_cli
from .test_live_routes import DISPLAY, relays


class FakeSystemd:
    """The service manager's end of ``$NOTIFY_SOCKET``: a datagram socket that collects."""

    def __init__(self, path: Path | str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path) if isinstance(path, Path) else "\0" + path[1:])
        self.sock.setblocking(False)
        self.address = str(path)

    async def next(self) -> dict[str, str]:
        data = await bounded(asyncio.get_running_loop().sock_recv(self.sock, 4096), "a notice")
        return dict(line.split("=", 1) for line in data.decode().split("\n"))

    async def until(self, key: str) -> dict[str, str]:
        """Notices up to and including the first with ``key``; the last one."""
        while True:
            notice = await self.next()
            if key in notice:
                return notice

    def close(self) -> None:
        self.sock.close()


@pytest.mark.parametrize("abstract", [False, True])
async def test_notifier_speaks_the_notify_protocol(socket_dir: Path, abstract: bool) -> None:
    where: Path | str = f"@smg-test-{uuid.uuid4().hex}" if abstract else socket_dir / "notify"
    systemd = FakeSystemd(where)
    notifier = Notifier({"NOTIFY_SOCKET": str(where), "WATCHDOG_USEC": "40000"})
    try:
        assert notifier.watchdog_interval == 0.04
        notifier.ready("serving")
        ready = await systemd.next()
        assert ready == {"READY": "1", "STATUS": "serving", "MAINPID": str(os.getpid())}
        # The watchdog pings from the event loop, again and again.
        for _ in range(3):
            assert await systemd.next() == {"WATCHDOG": "1"}
        notifier.stopping()
        assert (await systemd.until("STOPPING"))["STOPPING"] == "1"
        with pytest.raises(ValueError, match="line break"):
            notifier.notify(status="two\nlines")
    finally:
        await notifier.close()
        systemd.close()


def test_notifier_without_systemd_does_nothing() -> None:
    assert Notifier({}).notify(ready=1) is False
    assert Notifier({"NOTIFY_SOCKET": "relative"}).enabled is False
    other_pid = Notifier({"WATCHDOG_USEC": "1000", "WATCHDOG_PID": str(os.getpid() + 1)})
    assert other_pid.watchdog_interval is None


async def http(address: tuple[str, int], raw: bytes) -> tuple[int, dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection(*address)
    try:
        writer.write(raw)
        answer = await bounded(reader.read(), "the HTTP answer")
    finally:
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split(" ")[1]), headers, body


def get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode()


def monitored_config(
    folder: Path, keyring: Path, port: int, upstream: str, metrics_port: int
) -> ProxyConfig:
    """One route ``vm`` on ``port`` to ``upstream``, with the HTTP monitoring listener."""
    text = config_toml(
        host_id="host-a",
        keyring=keyring,
        replay_db=folder / "replay.sqlite",
        routes=[
            {
                "name": "vm",
                "listen": f"127.0.0.1:{port}",
                "upstream": upstream,
                "vm_id": str(uuid.uuid4()),
            }
        ],
        limits=TEST_LIMITS,
    )
    return parse_config(f'metrics_listen = "127.0.0.1:{metrics_port}"\n{text}'.encode())


async def test_metrics_and_health_over_http(
    tmp_path: Path, keyring_path: Path, socket_dir: Path
) -> None:
    server = await ScriptedServer("vm").start()
    port, metrics_port = free_port(), free_port()
    upstream = "{}:{}".format(*server.address)
    proxy = ProxyServer(monitored_config(tmp_path, keyring_path, port, upstream, metrics_port))
    await proxy.start()
    address = ("127.0.0.1", metrics_port)
    try:
        status, headers, body = await http(address, get("/metrics"))
        assert status == 200
        assert headers["Content-Type"] == PROMETHEUS_CONTENT_TYPE
        exposition = body.decode()
        # Every family is there before anything happened, its series at zero.
        for name, (kind, _) in FAMILIES.items():
            assert f"# TYPE {name} {kind}\n" in exposition
        assert 'smg_sealed_total{channel="display"} 0\n' in exposition
        assert 'smg_refused_total{channel="main",reason="open"} 0\n' in exposition
        assert 'smg_connections_total{route="vm"} 0\n' in exposition
        assert "smg_replay_store_errors_total 0\n" in exposition

        client = await link_client(("127.0.0.1", port), DISPLAY)
        upstream = await server.channel(DISPLAY)
        await relays(client, upstream, 1)
        _, _, body = await http(address, get("/metrics?x=1"))
        assert 'smg_connections_total{route="vm"} 1\n' in body.decode()
        await client.close()
        await upstream.close()

        status, headers, body = await http(address, get("/healthz"))
        assert status == 200
        assert headers["Content-Type"] == "application/json"
        assert json.loads(body)["status"] == "serving"
        status, _, body = await http(address, b"HEAD /healthz HTTP/1.1\r\n\r\n")
        assert (status, body) == (200, b"")
        assert (await http(address, get("/")))[0] == 404
        assert (await http(address, b"POST /metrics HTTP/1.1\r\n\r\n"))[0] == 405
        assert (await http(address, b"GARBAGE\r\n\r\n"))[0] == 400
        oversized = b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 10000 + b"\r\n\r\n"
        assert (await http(address, oversized))[0] == 400
        # Truncated: the client gives up half-way; the listener still serves the next one.
        _, writer = await asyncio.open_connection(*address)
        writer.write(b"GET /met")
        writer.close()
        assert (await http(address, get("/metrics")))[0] == 200
    finally:
        await bounded(proxy.stop(), "the proxy to stop")
        await server.close()
    # promtool lints the exposition as Prometheus itself would read it.
    promtool = require("promtool", "prometheus")
    lint = subprocess.run(
        [promtool, "check", "metrics"], input=exposition.encode(), capture_output=True, timeout=60
    )
    assert lint.returncode == 0, lint.stdout.decode() + lint.stderr.decode()


async def test_service_process_notifies_reloads_on_sighup_and_takes_control_routes(
    tmp_path: Path, keyring_path: Path, socket_dir: Path
) -> None:
    servers = [await ScriptedServer(name).start() for name in ("a", "b", "c")]
    ports = [free_port() for _ in servers]
    control_socket = socket_dir / "control.sock"

    def route(index: int) -> dict[str, Any]:
        return {
            "name": f"vm{index}",
            "listen": f"127.0.0.1:{ports[index]}",
            "upstream": "{}:{}".format(*servers[index].address),
            "vm_id": str(uuid.UUID(int=index + 1)),
        }

    def write(*indexes: int) -> None:
        config.write_text(
            config_toml(
                host_id="host-a",
                keyring=keyring_path,
                replay_db=tmp_path / "replay.sqlite",
                routes=[route(i) for i in indexes],
                limits=TEST_LIMITS,
                control_socket=control_socket,
            )
        )

    config = tmp_path / "proxy.toml"
    write(0)
    systemd = FakeSystemd(socket_dir / "notify")
    env = {**os.environ, "NOTIFY_SOCKET": systemd.address, "WATCHDOG_USEC": "2000000"}
    proxy = await ProxyProcess.start(config, "proxy", env=env)
    try:
        ready = await systemd.until("READY")
        assert ready["MAINPID"] == str(proxy.process.pid)
        assert ready["STATUS"] == "serving 1 route(s)"
        assert await systemd.until("WATCHDOG") == {"WATCHDOG": "1"}

        # SIGHUP: vm1 appears, vm0 goes; systemd hears RELOADING then READY.
        write(1)
        proxy.process.send_signal(1)
        assert (await systemd.until("RELOADING"))["RELOADING"] == "1"
        await proxy.wait_for(lambda line: line.get("event") == "config_reloaded", "to reload")
        assert (await systemd.until("READY"))["STATUS"] == "serving 1 route(s)"
        client = await link_client(("127.0.0.1", ports[1]), DISPLAY)
        await relays(client, await servers[1].channel(DISPLAY), 2)
        await client.close()

        # The control command line adds and lists a route.
        code, out, err = await run_cli(
            "control", "--socket", str(control_socket), "route", "add",
            "--name", "vm2", "--listen", route(2)["listen"],
            "--upstream", route(2)["upstream"], "--vm-id", route(2)["vm_id"],
        )  # fmt: skip
        assert code == 0, err
        assert json.loads(out)["outcome"] == "added"
        code, out, _ = await run_cli("control", "--socket", str(control_socket), "route", "list")
        assert [row["name"] for row in json.loads(out)["routes"]] == ["vm1", "vm2"]
        client = await link_client(("127.0.0.1", ports[2]), DISPLAY)
        await relays(client, await servers[2].channel(DISPLAY), 3)
        await client.close()
        code, out, _ = await run_cli(
            "control", "--socket", str(control_socket), "route", "remove", "vm2"
        )
        assert (code, json.loads(out)["outcome"]) == (0, "removed")

        assert await proxy.stop() == 0
        assert (await systemd.until("STOPPING"))["STOPPING"] == "1"
        added = [(e["route"], e["origin"]) for e in proxy.events("route_added")]
        assert added == [("vm0", "config"), ("vm1", "config"), ("vm2", "control")]
    finally:
        proxy.kill()
        systemd.close()
        for server in servers:
            await server.close()


REQUEST = b"GET /metrics?name[]=smg_sealed_total HTTP/1.1\r\nHost: 127.0.0.1:9864\r\n\r\n"


async def test_idle_and_slow_http_clients_hold_nothing_for_long(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Slowloris on the monitoring listener: with every slot held by idle or trickling
    connections a scraper is still served (the oldest connection makes room), a client that
    never reads a large answer is dropped at the deadline."""
    big = "x" * (32 * 1024 * 1024)
    monitoring = MonitoringServer(
        "127.0.0.1", 0, lambda: big, lambda: {"status": "serving"}
    )
    await monitoring.start()
    assert monitoring.address is not None
    address = monitoring.address
    idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    try:
        for index in range(http_module.MAX_CONNECTIONS):
            reader, writer = await asyncio.open_connection(*address)
            if index % 2:
                writer.write(b"GET /hea")  # a trickle: part of a request line, no more
            idle.append((reader, writer))

        async def all_accepted() -> None:
            while len(monitoring._open) < http_module.MAX_CONNECTIONS:
                await asyncio.sleep(0.02)

        await bounded(all_accepted(), "the listener to accept every idle connection")
        reader, writer = await asyncio.open_connection(*address)
        writer.write(get("/healthz"))
        answer = await bounded(reader.read(), "the scraper's answer")
        writer.close()
        assert answer.startswith(b"HTTP/1.1 200 ")
        oldest = idle[0][0]
        with contextlib.suppress(ConnectionResetError):  # aborted: a reset is a close too
            assert await bounded(oldest.read(), "the oldest connection to be closed") == b""
        for _, other in idle:
            other.close()
        idle.clear()

        # A scraper that asks for /metrics and never reads: dropped at the deadline.
        monkeypatch.setattr(http_module, "HEAD_TIMEOUT", 0.2)
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(address)
        sock.sendall(get("/metrics"))


        async def dropped() -> None:
            while monitoring._open:
                await asyncio.sleep(0.02)

        try:
            await bounded(dropped(), "the listener to drop a client that does not read")
        finally:
            sock.close()
    finally:
        for _, other in idle:
            other.close()
        await bounded(monitoring.close(), "the listener to close")


def test_request_head_parses_the_request_line_only() -> None:
    assert parse_request_head(REQUEST) == ("GET", "/metrics")
    assert parse_request_head(b"HEAD /healthz HTTP/1.0\r\n\r\n") == ("HEAD", "/healthz")


@pytest.mark.parametrize(
    "head",
    [
        *(REQUEST[:cut] for cut in (0, 3, 14, len(REQUEST) - 1)),
        b"GET /metrics HTTP/2\r\n\r\n",
        b"GET  /metrics HTTP/1.1\r\n\r\n",
        b"get /metrics HTTP/1.1\r\n\r\n",
        b"GET metrics HTTP/1.1\r\n\r\n",
        b"GET http://h/metrics HTTP/1.1\r\n\r\n",
        b"GET /m\x00 HTTP/1.1\r\n\r\n",
        b"GET /metrics HTTP/1.1 extra\r\n\r\n",
    ],
)
def test_malformed_request_heads_are_refused(head: bytes) -> None:
    with pytest.raises(ProtocolError):
        parse_request_head(head)


def test_oversized_and_bit_flipped_request_heads() -> None:
    with pytest.raises(TooLarge):
        parse_request_head(REQUEST[:-4] + b"\r\nX: " + b"a" * MAX_HEAD + b"\r\n\r\n")
    for position in range(len(REQUEST)):
        for bit in (0x01, 0x20, 0x80):
            flipped = bytearray(REQUEST)
            flipped[position] ^= bit
            try:
                method, path = parse_request_head(bytes(flipped))
            except GatewayError:
                continue
            assert method.isupper()
            assert path.startswith("/")
            assert "?" not in path


async def test_health_says_starting_until_every_route_listens(
    tmp_path: Path, keyring_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # /healthz answers during the warm-up, before any route's port is open: a load balancer or
    # an orchestrator polling it must not send a migration to a proxy that cannot take it yet.
    port, metrics_port = free_port(), free_port()
    upstream = f"127.0.0.1:{free_port()}"  # never reached: no client links
    config = monitored_config(tmp_path, keyring_path, port, upstream, metrics_port)
    warming, release = asyncio.Event(), asyncio.Event()

    async def slow_warm_up(guard: object) -> None:
        warming.set()
        await release.wait()

    monkeypatch.setattr(server_module, "warm_up", slow_warm_up)
    proxy = ProxyServer(config)
    starting = asyncio.create_task(proxy.start())
    try:
        await asyncio.wait_for(warming.wait(), 10)
        assert proxy.health()["status"] == "starting"
        assert proxy.health()["routes"] == {}
        status, _, body = await http(("127.0.0.1", metrics_port), get("/healthz"))
        assert (status, json.loads(body)["status"]) == (503, "starting")
        release.set()
        await starting
        assert proxy.health()["status"] == "serving"
        status, _, body = await http(("127.0.0.1", metrics_port), get("/healthz"))
        assert (status, json.loads(body)["status"]) == (200, "serving")
    finally:
        release.set()
        if not starting.done():
            starting.cancel()
        await asyncio.gather(starting, return_exceptions=True)
        await proxy.stop()


def test_replay_fsync_makes_every_replay_record_wait_for_the_disk(
    tmp_path: Path, keyring_path: Path
) -> None:
    for setting in (False, True):
        text = config_toml(
            host_id="host-a",
            keyring=keyring_path,
            replay_db=tmp_path / f"replay-{setting}.sqlite",
            routes=[
                {
                    "name": "vm",
                    "listen": f"127.0.0.1:{free_port()}",
                    "upstream": f"127.0.0.1:{free_port()}",
                    "vm_id": str(uuid.uuid4()),
                }
            ],
            settings={"replay_fsync": setting},
        )
        guard = ProxyServer(parse_config(text.encode())).replay_guard
        try:
            # Without a boot id to rely on, every commit is an fsync anyway.
            assert guard.fsync_each_commit is (setting or replay.boot_id() is None)
        finally:
            guard.close()
