"""Fixtures for the proxy tests: keyrings, TLS certificates, TOML configs, and a rig of two
proxies (source and target host) with scripted spice-servers behind them, all on 127.0.0.1.

``async def`` tests run in a fresh event loop each, bounded as a whole by TEST_TIMEOUT.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import inspect
import ipaddress
import json
import logging
import os
import socket
import ssl
import stat
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateway.identity import HostIdentity, TrustStore, save_identity, save_trust_store
from gateway.keys import Keyring, save_keyring
from gateway.proxy import server
from gateway.proxy.config import ProxyConfig, parse_config
from gateway.proxy.server import ProxyServer
from gateway.service.logs import LOG
from gateway.spice.constants import ChannelType

from .peers import ALL_CHANNELS, TIMEOUT, ClientSession, ScriptedServer, native_payloads

#: Bound on one whole async test.
TEST_TIMEOUT = 60.0

SOURCE_HOST = "source-host"
TARGET_HOST = "target-host"


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    """Run ``async def`` tests of this folder in their own event loop, bounded."""
    if not inspect.iscoroutinefunction(pyfuncitem.obj):
        return None
    names = pyfuncitem._fixtureinfo.argnames
    kwargs = {name: pyfuncitem.funcargs[name] for name in names}

    async def bounded() -> None:
        await asyncio.wait_for(pyfuncitem.obj(**kwargs), TEST_TIMEOUT)

    asyncio.run(bounded())
    return True


def free_port() -> int:
    """A port nothing listens on right now (bound and released at once)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- keys and certificates ----------------------------------------------------------------------


@pytest.fixture
def keyring_path(tmp_path: Path) -> Path:
    """One keyring file shared by both hosts, owner-only as the loader demands."""
    path = tmp_path / "keyring.json"
    save_keyring(Keyring.create(), path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    return path


@dataclass(frozen=True)
class TlsFiles:
    cert: Path
    key: Path

    def server_context(self) -> ssl.SSLContext:
        """What a TLS spice-server presenting this certificate uses."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(str(self.cert), str(self.key))
        return context

    def client_context(self) -> ssl.SSLContext:
        """What a client that trusts this self-signed certificate uses."""
        context = ssl.create_default_context(cafile=str(self.cert))
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        return context


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    """A self-signed certificate for 127.0.0.1, made at test time."""
    folder = tmp_path_factory.mktemp("tls")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "spice proxy test")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    os.chmod(key_path, 0o600)
    return TlsFiles(cert_path, key_path)


# --- logs ---------------------------------------------------------------------------------------


class LogRecords(logging.Handler):
    """Every gateway log and audit record of one test."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def fields(self, record: logging.LogRecord) -> dict[str, Any]:
        found = getattr(record, "fields", None)
        return dict(found) if isinstance(found, dict) else {}

    def audit(self, event: str, **match: Any) -> list[dict[str, Any]]:
        """The fields of every audit event named ``event`` whose fields include ``match``."""
        found = []
        for record in self.records:
            fields = self.fields(record)
            if fields.get("event") == event and all(fields.get(k) == v for k, v in match.items()):
                found.append(fields)
        return found

    def messages(self, text: str) -> list[dict[str, Any]]:
        """Fields (with the message under "msg") of every record whose message is ``text``."""
        return [
            {"msg": r.getMessage(), **self.fields(r)}
            for r in self.records
            if r.getMessage() == text
        ]


@pytest.fixture
def logs() -> Iterator[LogRecords]:
    handler = LogRecords()
    level = LOG.level
    LOG.addHandler(handler)
    LOG.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        LOG.removeHandler(handler)
        LOG.setLevel(level)


# --- configs ------------------------------------------------------------------------------------


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string for everything the tests write
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    raise TypeError(f"no TOML form for {value!r}")


def config_toml(
    *,
    host_id: str,
    keyring: Path,
    replay_db: Path,
    routes: Sequence[Mapping[str, Any]],
    peers: Sequence[Mapping[str, Any]] = (),
    limits: Mapping[str, Any] | None = None,
    control_socket: Path | None = None,
    settings: Mapping[str, Any] | None = None,
    metrics_listen: str | None = None,
) -> str:
    """The TOML text of a proxy config (``settings``: more top-level keys)."""
    lines = [
        f"host_id = {_toml_value(host_id)}",
        f"keyring = {_toml_value(str(keyring))}",
        f"replay_db = {_toml_value(str(replay_db))}",
        *(f"{k} = {_toml_value(v)}" for k, v in (settings or {}).items()),
    ]
    if metrics_listen is not None:
        lines.append(f"metrics_listen = {_toml_value(metrics_listen)}")
    if control_socket is not None:
        lines.append(f"control_socket = {_toml_value(str(control_socket))}")
    if limits:
        lines += ["", "[limits]", *(f"{k} = {_toml_value(v)}" for k, v in limits.items())]
    for name, tables in (("peers", peers), ("routes", routes)):
        for table in tables:
            lines += ["", f"[[{name}]]", *(f"{k} = {_toml_value(v)}" for k, v in table.items())]
    return "\n".join(lines) + "\n"


#: Short shutdown grace: a test that leaves a migration unfinished must not wait for it.
TEST_LIMITS: dict[str, Any] = {"shutdown_grace": 1.0}


@dataclass
class VmRig:
    """One VM's route on both hosts: its spice-servers and the proxies' listen addresses."""

    name: str
    vm_id: uuid.UUID
    source_server: ScriptedServer
    target_server: ScriptedServer
    source: tuple[str, int]
    target: tuple[str, int]


@dataclass
class Rig:
    """Two proxies (source host, target host) and the scripted servers behind them."""

    source_proxy: ProxyServer
    target_proxy: ProxyServer
    source_config: ProxyConfig
    target_config: ProxyConfig
    vms: dict[str, VmRig]
    tls: ssl.SSLContext | None
    payloads: dict[ChannelType, bytes] = field(default_factory=native_payloads)
    sessions: list[ClientSession] = field(default_factory=list)

    @property
    def vm(self) -> VmRig:
        return next(iter(self.vms.values()))

    def session(
        self,
        session_id: int,
        *,
        vm: str | None = None,
        mini_header: bool = True,
        channels: Sequence[tuple[ChannelType, int]] = ALL_CHANNELS,
    ) -> ClientSession:
        rig = self.vms[vm] if vm else self.vm
        session = ClientSession(
            channels=channels,
            session_id=session_id,
            source=rig.source,
            target=rig.target,
            source_server=rig.source_server,
            target_server=rig.target_server,
            mini_header=mini_header,
            tls=self.tls,
        )
        self.sessions.append(session)
        return session


@dataclass
class HostFiles:
    """What one host's proxy needs on disk, and its config text."""

    config: Path
    replay_db: Path
    control_socket: Path


class Proxies:
    """Builds proxy configs and rigs for one test (files under its tmp_path)."""

    def __init__(
        self, tmp_path: Path, keyring: Path, tls_files: TlsFiles, socket_dir: Path
    ) -> None:
        self.tmp_path = tmp_path
        self.keyring = keyring
        self.tls_files = tls_files
        self.socket_dir = socket_dir
        self.identities: dict[str, HostIdentity] = {}

    def identity(self, host_id: str) -> HostIdentity:
        """``host_id``'s identity, made once per test; its file is ``<host>/identity.json``."""
        if host_id not in self.identities:
            identity = HostIdentity.create(host_id)
            folder = self.tmp_path / host_id
            folder.mkdir(exist_ok=True)
            save_identity(identity, folder / "identity.json")
            self.identities[host_id] = identity
        return self.identities[host_id]

    def identity_settings(self, host_id: str, trusted: Sequence[str]) -> dict[str, str]:
        """Config keys for ``host_id``'s identity and a trust store of ``trusted`` hosts."""
        self.identity(host_id)
        store = TrustStore()
        for other in trusted:
            store, _ = store.with_peer(self.identity(other).public)
        folder = self.tmp_path / host_id
        save_trust_store(store, folder / "trust.json")
        return {
            "identity": str(folder / "identity.json"),
            "trust_store": str(folder / "trust.json"),
        }

    def host_files(self, host_id: str) -> HostFiles:
        folder = self.tmp_path / host_id
        folder.mkdir(exist_ok=True)
        return HostFiles(
            folder / "proxy.toml",
            folder / "replay.sqlite",
            # A Unix socket path must stay under 108 bytes; tmp_path can be longer.
            self.socket_dir / f"{host_id}.sock",
        )

    def configs(
        self,
        vms: Mapping[str, tuple[uuid.UUID, tuple[str, int], tuple[str, int]]],
        *,
        tls: bool = False,
        upstream_tls: bool = False,
        source_limits: Mapping[str, Any] | None = None,
        target_limits: Mapping[str, Any] | None = None,
        control: bool = True,
        peer_link: bool = True,
        target_settings: Mapping[str, Any] | None = None,
        metrics: tuple[int, int] | None = None,
        target_route: Mapping[str, Any] | None = None,
        suite: str = "shared-key",
        target_peers: Sequence[str] = (),
        target_suite: str | None = None,
    ) -> tuple[str, str, dict[str, tuple[int, int]]]:
        """TOML of both hosts for ``vms`` (name -> vm id, source upstream, target upstream);
        also the listen ports picked for each VM (source, target).

        With ``peer_link`` each host's peer link listens on a port of its own, and each names
        the other's in ``[[peers]]``; ``target_settings`` adds top-level keys to the target's.
        With ``suite = "identity"`` each host gets an identity, trusts the other's, and names
        the other as an identity peer. ``target_peers``: more hosts the target trusts as
        sources (in the same suite), such as a third host of the fleet; ``target_suite``, the
        target's own choice when it differs from the source's.
        """
        ports = {name: (free_port(), free_port()) for name in vms}
        peer_ports = (free_port(), free_port())
        tls_keys: dict[str, Any] = (
            {"tls_cert": str(self.tls_files.cert), "tls_key": str(self.tls_files.key)}
            if tls
            else {}
        )
        if upstream_tls:
            tls_keys |= {
                "upstream_tls": True,
                "upstream_ca": str(self.tls_files.cert),
                "upstream_server_name": "127.0.0.1",
            }

        def routes(side: int) -> list[dict[str, Any]]:
            tables = []
            for name, (vm_id, source_upstream, target_upstream) in vms.items():
                host, port = (source_upstream, target_upstream)[side]
                tables.append(
                    {
                        "name": name,
                        "listen": f"127.0.0.1:{ports[name][side]}",
                        "upstream": f"{host}:{port}",
                        "vm_id": str(vm_id),
                        **tls_keys,
                        **((target_route or {}) if side else {}),
                    }
                )
            return tables

        def addresses(side: int) -> list[str]:
            return [f"127.0.0.1:{ports[name][side]}" for name in vms]

        texts = []
        hosts = ((SOURCE_HOST, TARGET_HOST), (TARGET_HOST, SOURCE_HOST))
        for side, (me, other) in enumerate(hosts):
            files = self.host_files(me)
            limits = {**TEST_LIMITS, **((source_limits, target_limits)[side] or {})}
            peer: dict[str, Any] = {"host_id": other, "addresses": addresses(1 - side)}
            settings: dict[str, Any] = {}
            extra = list(target_peers) if side == 1 else []
            mine = (target_suite or suite) if side == 1 else suite
            peers = [peer] + [
                {"host_id": host, "addresses": [f"127.0.0.1:{free_port()}"], "suite": mine}
                for host in extra
            ]
            if mine == "identity":
                peer["suite"] = mine
                settings |= self.identity_settings(me, [other, *extra])
            if peer_link:
                peer["peer_address"] = f"127.0.0.1:{peer_ports[1 - side]}"
                settings["peer_listen"] = f"127.0.0.1:{peer_ports[side]}"
            if side == 1:
                settings |= target_settings or {}
            texts.append(
                config_toml(
                    host_id=me,
                    keyring=self.keyring,
                    replay_db=files.replay_db,
                    routes=routes(side),
                    peers=peers,
                    limits=limits,
                    control_socket=files.control_socket if control else None,
                    settings=settings,
                    metrics_listen=f"127.0.0.1:{metrics[side]}" if metrics else None,
                )
            )
        return texts[0], texts[1], ports

    @contextlib.asynccontextmanager
    async def pair(
        self,
        *,
        vms: Sequence[str] = ("vm",),
        tls: bool = False,
        upstream_tls: bool = False,
        server_mini: bool = True,
        source_limits: Mapping[str, Any] | None = None,
        target_limits: Mapping[str, Any] | None = None,
        peer_link: bool = True,
        target_settings: Mapping[str, Any] | None = None,
        metrics: tuple[int, int] | None = None,
        target_route: Mapping[str, Any] | None = None,
        suite: str = "shared-key",
        target_peers: Sequence[str] = (),
        target_suite: str | None = None,
    ) -> AsyncIterator[Rig]:
        """Scripted servers, then both proxies in this event loop; all torn down after."""
        servers: list[ScriptedServer] = []
        proxies: list[ProxyServer] = []
        rig: Rig | None = None
        try:
            plan: dict[str, tuple[uuid.UUID, tuple[str, int], tuple[str, int]]] = {}
            pairs: dict[str, tuple[ScriptedServer, ScriptedServer]] = {}
            server_tls = self.tls_files.server_context() if upstream_tls else None
            for name in vms:
                source = ScriptedServer(f"{name} source", mini_header=server_mini, tls=server_tls)
                target = ScriptedServer(f"{name} target", mini_header=server_mini, tls=server_tls)
                await source.start()
                await target.start()
                servers += [source, target]
                pairs[name] = (source, target)
                plan[name] = (uuid.uuid4(), source.address, target.address)
            source_text, target_text, ports = self.configs(
                plan,
                tls=tls,
                upstream_tls=upstream_tls,
                source_limits=source_limits,
                target_limits=target_limits,
                peer_link=peer_link,
                target_settings=target_settings,
                metrics=metrics,
                target_route=target_route,
                suite=suite,
                target_peers=target_peers,
                target_suite=target_suite,
            )
            source_config = parse_config(source_text.encode(), "source config")
            target_config = parse_config(target_text.encode(), "target config")
            for config in (source_config, target_config):
                proxy = ProxyServer(config)
                proxies.append(proxy)
                await proxy.start()
            rig = Rig(
                source_proxy=proxies[0],
                target_proxy=proxies[1],
                source_config=source_config,
                target_config=target_config,
                vms={
                    name: VmRig(
                        name,
                        plan[name][0],
                        *pairs[name],
                        source=("127.0.0.1", ports[name][0]),
                        target=("127.0.0.1", ports[name][1]),
                    )
                    for name in vms
                },
                tls=self.tls_files.client_context() if tls else None,
            )
            yield rig
        finally:
            if rig is not None:
                for session in rig.sessions:
                    await session.close()
            for proxy in proxies:
                await asyncio.wait_for(proxy.stop(), TIMEOUT)
            for server in servers:
                await server.close()


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="smg-") as folder:
        yield Path(folder)


@pytest.fixture
def proxies(tmp_path: Path, keyring_path: Path, tls_files: TlsFiles, socket_dir: Path) -> Proxies:
    return Proxies(tmp_path, keyring_path, tls_files, socket_dir)


def record_connections(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every proxied connection (the server's per-connection object) made from now on."""
    connections: list[Any] = []
    original = server._Connection.__init__

    def record(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        connections.append(self)

    monkeypatch.setattr(server._Connection, "__init__", record)
    return connections
