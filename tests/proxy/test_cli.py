"""The real command: two ``spice-migration-gateway proxy --config FILE`` processes (source and
target host) with TOML configs, a migration through them, SIGHUP reload after a key rotation,
``control`` queries, and SIGTERM for a clean exit."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway.envelope import read_header
from gateway.keys import load_keyring, save_keyring
from gateway.spice.constants import ChannelType, Msgc

from .conftest import Proxies
from .peers import ClientSession, ScriptedServer, bounded, native_payloads


def command() -> list[str]:
    script = Path(sys.executable).with_name("spice-migration-gateway")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "gateway.cli"]


class ProxyProcess:
    """One proxy subprocess and the JSON log lines it wrote to stderr."""

    def __init__(self, process: asyncio.subprocess.Process, name: str) -> None:
        self.process = process
        self.name = name
        self.lines: list[dict[str, Any]] = []
        self.raw: list[str] = []
        self._new = asyncio.Event()
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def start(
        cls, config: Path, name: str, env: dict[str, str] | None = None
    ) -> ProxyProcess:
        process = await asyncio.create_subprocess_exec(
            *command(),
            "proxy",
            "--config",
            str(config),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            env=env,
        )
        proxy = cls(process, name)
        await proxy.wait_for(lambda line: line.get("event") == "proxy_started", "to start")
        return proxy

    async def _read(self) -> None:
        assert self.process.stderr is not None
        async for raw in self.process.stderr:
            text = raw.decode(errors="replace").rstrip("\n")
            self.raw.append(text)
            with contextlib.suppress(ValueError):
                self.lines.append(json.loads(text))
            self._new.set()
        self._new.set()

    async def wait_for(self, check: Callable[[dict[str, Any]], bool], what: str) -> dict[str, Any]:
        async def scan() -> dict[str, Any]:
            seen = 0
            while True:
                for line in self.lines[seen:]:
                    if check(line):
                        return line
                seen = len(self.lines)
                if self._reader.done():
                    raise AssertionError(f"{self.name} exited: {self.raw[-5:]}")
                self._new.clear()
                await self._new.wait()

        return await bounded(scan(), f"{self.name} {what}")

    def events(self, name: str) -> list[dict[str, Any]]:
        return [line for line in self.lines if line.get("event") == name]

    async def stop(self) -> int:
        """SIGTERM, then the exit code (bounded)."""
        self.process.send_signal(signal.SIGTERM)
        code = await bounded(self.process.wait(), f"{self.name} to exit after SIGTERM")
        await bounded(self._reader, f"{self.name}'s stderr to end")
        return code

    def kill(self) -> None:
        if self.process.returncode is None:
            self.process.kill()


async def run_cli(*args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        *command(), *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await bounded(process.communicate(), f"the command {args[0]} to finish")
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def migrate(session: ClientSession, payloads: dict[ChannelType, bytes]) -> list[bytes]:
    await session.link_source()
    await session.exchange(1)
    await session.begin_migration()
    blobs = []
    for channel, legs in session.legs.items():
        payload = payloads[ChannelType(channel[0])]
        blobs.append(await session.migrate_channel(channel, payload))
        assert legs.server_target is not None
        assert (await legs.server_target.expect(Msgc.MIGRATE_DATA)).body == payload
    await session.exchange(2, target=True)
    return blobs


async def test_cli_proxies_migrate_reload_and_stop_cleanly(
    proxies: Proxies, keyring_path: Path
) -> None:
    source_server = await ScriptedServer("source").start()
    target_server = await ScriptedServer("target").start()
    vm = uuid.uuid4()
    source_text, target_text, ports = proxies.configs(
        {"vm": (vm, source_server.address, target_server.address)}
    )
    running: list[ProxyProcess] = []
    sessions: list[ClientSession] = []
    try:
        files = {}
        for host, text in (("source-host", source_text), ("target-host", target_text)):
            files[host] = proxies.host_files(host)
            files[host].config.write_text(text)
            running.append(await ProxyProcess.start(files[host].config, host))
        source, target = running

        def session(session_id: int) -> ClientSession:
            new = ClientSession(
                session_id=session_id,
                source=("127.0.0.1", ports["vm"][0]),
                target=("127.0.0.1", ports["vm"][1]),
                source_server=source_server,
                target_server=target_server,
            )
            sessions.append(new)
            return new

        payloads = native_payloads()
        first = await migrate(session(0x501), payloads)
        old_key = load_keyring(keyring_path).active.key_id
        assert {read_header(blob).key_id for blob in first} == {old_key}

        code, out, _ = await run_cli(
            "control", "--socket", str(files["target-host"].control_socket), "health"
        )
        assert code == 0
        health = json.loads(out)
        assert health["status"] == "serving"
        assert health["host_id"] == "target-host"

        # Rotate the shared keyring; SIGHUP makes both processes re-read it.
        rotated, new = load_keyring(keyring_path).rotated()
        save_keyring(rotated, keyring_path)
        for proxy in running:
            proxy.process.send_signal(signal.SIGHUP)
            reloaded = await proxy.wait_for(
                lambda line: line.get("msg") == "keyring reloaded", "to reload its keyring"
            )
            assert reloaded["keys"] == 2
        second = await migrate(session(0x502), payloads)
        assert {read_header(blob).key_id for blob in second} == {new.key_id}

        accepted = target.events("migration_accepted")
        assert [line["channels"] for line in accepted] == [7, 7]
        assert len({line["migration"] for line in accepted}) == 2
        assert len(source.events("blob_sealed")) == 14
        assert not target.events("channel_refused")

        for item in sessions:
            await item.close()
        for proxy in running:
            assert await proxy.stop() == 0, proxy.raw[-5:]
            assert proxy.events("proxy_stopped")
        assert not files["source-host"].control_socket.exists()
    finally:
        for proxy in running:
            proxy.kill()
        for server in (source_server, target_server):
            await server.close()


async def test_check_accepts_a_good_config_and_refuses_a_bad_one(
    proxies: Proxies, tmp_path: Path
) -> None:
    source_text, _, _ = proxies.configs({"vm": (uuid.uuid4(), ("127.0.0.1", 1), ("127.0.0.1", 2))})
    good = tmp_path / "good.toml"
    good.write_text(source_text)
    code, out, err = await run_cli("proxy", "--config", str(good), "--check")
    assert (code, err) == (0, "")
    assert out == "config ok: 1 route(s), 1 key(s)\n"

    bad = tmp_path / "bad.toml"
    bad.write_text(source_text.replace("[limits]", "[limits]\nmax_connections = 0"))
    code, out, err = await run_cli("proxy", "--config", str(bad), "--check")
    assert code == 2
    assert err.startswith("ConfigError: ")
    assert "limits.max_connections" in err
    assert err.count("\n") == 1
