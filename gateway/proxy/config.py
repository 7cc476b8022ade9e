"""The proxy's TOML configuration: this host, its keys, its trusted peers and its routes."""

from __future__ import annotations

import ipaddress
import tomllib
import uuid
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from gateway.envelope import DEFAULT_CLOCK_SKEW, MAX_CLOCK_SKEW
from gateway.errors import ConfigError, shorten
from schemas.display import JpegWanCompression

__all__ = [
    "LibvirtHook",
    "Limits",
    "Peer",
    "ProxyConfig",
    "Route",
    "load_config",
    "parse_address",
]

#: A config file is small; refuse anything that is not before parsing it.
MAX_CONFIG_BYTES = 1024 * 1024

HostId = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:-]+$")]


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6) -> (host, port)."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise ValueError(f"{shorten(repr(text), 60)} is not HOST:PORT")
    port = int(port_text) if len(port_text) <= 5 else 0
    if not 0 < port < 65536:
        raise ValueError(f"port {shorten(port_text, 12)} out of range")
    if host.startswith("[") and host.endswith("]"):
        host = str(ipaddress.IPv6Address(host[1:-1]))
    return host, port


#: Short enough to survive the 120-character cut of a config problem.
_PLAINTEXT_UNDER_TLS = (
    "upstream_tls without tls_cert: a plaintext client leg that spice-server takes for TLS "
    "(allow_plaintext_client_leg)"
)


class _Strict(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        strict=True,
        hide_input_in_errors=True,
        use_attribute_docstrings=True,
    )

    #: When a change to each key takes effect (``docs/config.md`` is generated from this and
    #: the fields' docstrings): "reload" (SIGHUP or ``control reload``), "reload (new
    #: connections)", or "restart".
    RELOAD: ClassVar[dict[str, str]] = {}


class Limits(_Strict):
    """Resource bounds; every one of them applies per process."""

    RELOAD: ClassVar[dict[str, str]] = {
        "max_connections": "reload (new connections)",
        "max_connections_per_route": "reload (new connections)",
        "max_connections_per_client": "reload (new connections)",
        "max_message_size": "reload (new connections)",
        "max_buffered_bytes": "reload (new connections)",
        "max_buffered_total": "reload",
        "link_timeout": "reload (new connections)",
        "shutdown_grace": "reload",
        "blob_ttl": "reload",
        "clock_skew": "reload",
        "peer_timeout": "reload",
    }

    max_connections: Annotated[int, Field(ge=1, le=65536)] = 1024
    """Proxied channel connections open at once, all routes together; more are refused."""
    max_connections_per_route: Annotated[int, Field(ge=1, le=65536)] = 256
    """One VM's port cannot take every connection slot from the others."""
    max_connections_per_client: Annotated[int, Field(ge=1, le=65536)] = 128
    """Connections from one client address, over all routes (a SPICE session uses ~10)."""
    max_message_size: Annotated[int, Field(ge=4096, le=1 << 30)] = 64 * 1024 * 1024
    """Largest SPICE message body accepted in either direction (bytes); a sealed blob may
    exceed it by the envelope's framing."""
    max_buffered_bytes: Annotated[int, Field(ge=65536, le=1 << 30)] = 4 * 1024 * 1024
    """Write buffer per direction of a connection (bytes) before reading from the other side
    pauses."""
    max_buffered_total: Annotated[int, Field(ge=65536, le=1 << 40)] = 512 * 1024 * 1024
    """Partial messages held over all connections and both directions: one memory budget,
    where each connection alone may hold up to max_message_size per direction."""
    link_timeout: Annotated[float, Field(gt=0, le=600)] = 10.0
    """Seconds a connection may take to finish the SPICE link stage (and the TLS handshake),
    and to reach spice-server."""
    shutdown_grace: Annotated[float, Field(ge=0, le=600)] = 10.0
    """Seconds SIGTERM waits for migrations in flight before closing every connection."""
    blob_ttl: Annotated[int, Field(ge=1, le=3600)] = 10
    """Seconds a blob sealed here stays valid. A blob is sealed when spice-server hands the
    channel over and relayed at once (tens of milliseconds in the end-to-end runs); the target
    spice-server itself gives up on the display's data after 10 s, so an older blob serves no
    migration (SECURITY.md, "Blob lifetime in the proxy")."""
    clock_skew: Annotated[int, Field(ge=0, le=MAX_CLOCK_SKEW)] = DEFAULT_CLOCK_SKEW
    """Seconds of clock difference between hosts tolerated when checking a blob's lifetime
    (SECURITY.md, "Clock skew")."""
    peer_timeout: Annotated[float, Field(gt=0, le=60)] = 5.0
    """Seconds the source waits for the target's peer link to take an announcement; the
    client's MIGRATE_BEGIN_SEAMLESS is held that long at most."""


class Peer(_Strict):
    """Another gateway host, and the addresses by which clients are told to reach it."""

    RELOAD: ClassVar[dict[str, str]] = {
        "host_id": "reload",
        "addresses": "reload",
        "suite": "reload",
        "peer_address": "reload",
    }

    host_id: HostId
    """The peer's ``host_id``: blobs are sealed for it, and accepted from it."""
    addresses: Annotated[tuple[str, ...], Field(min_length=1, max_length=64)]
    """``HOST:PORT`` of the peer's routes, written exactly as ``client_migrate_info`` names them
    (the source compares host strings, not resolved addresses)."""
    suite: Literal["shared-key", "identity"] = "shared-key"
    """Which keys seal this peer's blobs: the shared keyring, or a per-attempt key agreed
    under both hosts' identities (then the shared keyring is refused for this peer)."""
    peer_address: str | None = None
    """``HOST:PORT`` where that host's gateway takes migration announcements (its
    ``peer_listen``); none: attempts to it cannot be announced."""

    @field_validator("addresses")
    @classmethod
    def _addresses(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for address in value:
            parse_address(address)
        return value

    @field_validator("peer_address")
    @classmethod
    def _peer_address(cls, value: str | None) -> str | None:
        if value is not None:
            parse_address(value)
        return value


class Route(_Strict):
    """One VM's SPICE endpoint: where clients connect, and the spice-server behind it."""

    RELOAD: ClassVar[dict[str, str]] = {
        "name": "reload",
        "listen": "reload (the route is replaced)",
        "upstream": "reload (the route is replaced)",
        "vm_id": "reload (the route is replaced)",
        "tls_cert": "reload (the route is replaced)",
        "tls_key": "reload (the route is replaced)",
        "upstream_tls": "reload (the route is replaced)",
        "upstream_ca": "reload (the route is replaced)",
        "upstream_server_name": "reload (the route is replaced)",
        "jpeg_wan_compression": "reload (the route is replaced)",
        "allow_plaintext_client_leg": "reload (the route is replaced)",
    }

    name: Annotated[str, Field(min_length=1, max_length=128)]
    """Unique name of the route (logs, metrics, the control API); usually the VM's name."""
    listen: str
    """``HOST:PORT`` where SPICE clients connect to this VM on this host."""
    upstream: str
    """``HOST:PORT`` of the VM's spice-server, on loopback; never the same as ``listen``."""
    vm_id: Annotated[uuid.UUID, Field(strict=False)]
    """The VM's identity, the same on every host (its libvirt domain UUID); blobs are bound
    to it."""
    tls_cert: str | None = None
    """PEM certificate chain presented to clients; with ``tls_key``, the route speaks TLS."""
    tls_key: str | None = None
    """PEM private key of ``tls_cert`` (owner-only file)."""
    upstream_tls: bool = False
    """Connect to spice-server with TLS (its ``tls-port``)."""
    upstream_ca: str | None = None
    """PEM CA bundle that signed spice-server's certificate; the system's CAs when unset."""
    upstream_server_name: str | None = None
    """Name checked in spice-server's certificate; the upstream host when unset."""
    jpeg_wan_compression: JpegWanCompression = "auto"
    """The upstream QEMU's ``-spice jpeg-wan-compression=`` (QEMU's default is ``auto``): the
    target proxy writes the display surface list in the format that spice-server reads."""
    allow_plaintext_client_leg: bool = False
    """With ``upstream_tls`` and no client certificate, serve the client in plaintext anyway.

    spice-server then treats the channel as secure (it came over TLS) while the client's bytes,
    ticket included, cross the network in the clear: only for a client leg protected otherwise
    (a loopback client, an IPsec or WireGuard link)."""

    @field_validator("listen", "upstream")
    @classmethod
    def _address(cls, value: str) -> str:
        parse_address(value)
        return value

    @model_validator(mode="after")
    def _tls_pair(self) -> Route:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together")
        if self.upstream_ca is not None and not self.upstream_tls:
            raise ValueError("upstream_ca needs upstream_tls = true")
        if parse_address(self.listen) == parse_address(self.upstream):
            raise ValueError("listen and upstream are the same address")
        if self.upstream_tls and self.tls_cert is None and not self.allow_plaintext_client_leg:
            raise ValueError(_PLAINTEXT_UNDER_TLS)
        return self


class LibvirtHook(_Strict):
    """What the libvirt hook (``spice-migration-gateway libvirt-hook``) registers for a domain:
    a route per SPICE port, listening on ``listen_host`` at the SPICE port plus
    ``port_offset``, forwarding to the domain's loopback SPICE port."""

    RELOAD: ClassVar[dict[str, str]] = {
        "listen_host": "next hook run",
        "port_offset": "next hook run",
        "tls_cert": "next hook run",
        "tls_key": "next hook run",
        "upstream_ca": "next hook run",
    }

    listen_host: Annotated[str, Field(min_length=1, max_length=253)]
    """Address (or name) where clients connect to this host's VMs; IPv6 without brackets."""
    port_offset: Annotated[int, Field(ge=-65535, le=65535)] = 0
    """A domain's route listens on its SPICE port plus this (e.g. SPICE on 127.0.0.1:15901,
    ``port_offset = -10000``: clients connect to ``listen_host:5901``)."""
    tls_cert: str | None = None
    """Certificate for the routes in front of a domain's SPICE ``tlsPort``."""
    tls_key: str | None = None
    """Private key of ``tls_cert``."""
    upstream_ca: str | None = None
    """CA of spice-server's TLS certificate (libvirt's ``spice_tls_x509_cert_dir``
    ``ca-cert.pem``); the system's CAs when unset."""

    @model_validator(mode="after")
    def _tls_pair(self) -> LibvirtHook:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together")
        return self


class ProxyConfig(_Strict):
    """One proxy process: this host, its keys, its trusted peers and its routes."""

    RELOAD: ClassVar[dict[str, str]] = {
        "host_id": "restart",
        "keyring": "restart (the file's keys: reload)",
        "replay_db": "restart",
        "replay_fsync": "restart",
        "control_socket": "restart",
        "metrics_listen": "restart",
        "identity": "restart (the file's keys: reload)",
        "trust_store": "restart (the file's entries: reload)",
        "peer_listen": "restart",
        "peer_link_down": "reload",
        "limits": "see [limits]",
        "peers": "reload",
        "routes": "reload (the difference is applied)",
        "libvirt": "next hook run",
    }

    host_id: HostId
    """This host's identity in sealed blobs: what sources seal for, what targets check."""
    keyring: str
    """Path of the keyring file (owner-only, mode 0600), shared by the hosts that migrate to
    each other."""
    replay_db: str
    """Path of the replay database (SQLite) on persistent local storage: the single-use
    guarantee."""
    replay_fsync: bool = False
    """Wait for the disk (an fsync) at every replay record, before the blob's state is passed
    on: a millisecond or more on each migration's critical path. Off, a record reaches the
    kernel and a restart after a crash is detected by the boot id (SECURITY.md, "The replay
    guard"); on, records also survive a failing disk that drops what it could not write."""
    identity: str | None = None
    """This host's private identity file (``keys host-init``), for the identity suite."""
    trust_store: str | None = None
    """The peers' public identities this host trusts (``keys trust-add``)."""
    control_socket: str | None = None
    """Path of the control API's Unix socket (mode 0600); none when unset. Needed for
    ``control route ...`` and the libvirt hook."""
    metrics_listen: str | None = None
    """``HOST:PORT`` of the HTTP listener serving ``/metrics`` (Prometheus text format) and
    ``/healthz``; none when unset. No authentication: loopback or a management network."""
    peer_listen: str | None = None
    """``HOST:PORT`` where this host takes migration announcements from its peers (the peer
    link); none: no peer link, and blobs are refused unless ``peer_link_down`` says otherwise."""
    peer_link_down: Literal["refuse", "first-blob"] = "refuse"
    """What a target does with a blob of a VM for which no attempt was announced (the peer link
    was down, or is not configured): ``"refuse"`` (fail closed, audited and counted), or
    ``"first-blob"``, the weaker behaviour without a peer link (the session's first blob pins
    the migration id; only while rolling the link out)."""
    limits: Limits = Limits()
    """Resource bounds (the ``[limits]`` table)."""
    peers: Annotated[tuple[Peer, ...], Field(max_length=4096)] = ()
    """The other gateway hosts this one migrates to and from (``[[peers]]`` tables)."""
    routes: Annotated[tuple[Route, ...], Field(max_length=4096)] = ()
    """One ``[[routes]]`` table per VM served from the config; routes may also be added at
    runtime through the control API (the libvirt hook does)."""

    libvirt: LibvirtHook | None = None
    """Settings of the libvirt hook (the ``[libvirt]`` table); the hook refuses to run
    without it."""

    @field_validator("metrics_listen")
    @classmethod
    def _metrics_address(cls, value: str | None) -> str | None:
        if value is not None:
            parse_address(value)
        return value

    @model_validator(mode="after")
    def _unique(self) -> ProxyConfig:
        if not self.routes and not self.control_socket:
            raise ValueError("no routes and no control_socket to add them: nothing to serve")
        names = [route.name for route in self.routes]
        if len(set(names)) != len(names):
            raise ValueError("route names must be unique")
        listens = [parse_address(route.listen) for route in self.routes]
        if len(set(listens)) != len(listens):
            raise ValueError("two routes listen on the same address")
        if not {parse_address(route.upstream) for route in self.routes}.isdisjoint(listens):
            raise ValueError("a route's upstream is a route's listen address")
        peer_ids = [peer.host_id for peer in self.peers]
        if len(set(peer_ids)) != len(peer_ids) or self.host_id in peer_ids:
            raise ValueError("peer host ids must be unique and differ from host_id")
        if (self.identity is None) != (self.trust_store is None):
            raise ValueError("identity and trust_store go together")
        if self.identity_peers and self.identity is None:
            raise ValueError('a peer with suite = "identity" needs identity and trust_store')
        if self.peer_listen is not None and parse_address(self.peer_listen) in listens:
            raise ValueError("peer_listen is also a route's listen address")
        return self

    @property
    def identity_peers(self) -> frozenset[str]:
        """Peers whose blobs must use the identity suite."""
        return frozenset(peer.host_id for peer in self.peers if peer.suite == "identity")

    def peer(self, host_id: str) -> Peer | None:
        for peer in self.peers:
            if peer.host_id == host_id:
                return peer
        return None

    def peer_for_address(self, host: str, port: int) -> str | None:
        """The host id of the trusted peer clients reach at ``host:port``, if any."""
        for peer in self.peers:
            for address in peer.addresses:
                if parse_address(address) == (host, port):
                    return peer.host_id
        return None

    @property
    def trusted_sources(self) -> frozenset[str]:
        return frozenset(peer.host_id for peer in self.peers)


def _frozen(node: Any) -> Any:
    if isinstance(node, list):
        return tuple(_frozen(item) for item in node)
    if isinstance(node, dict):
        return {key: _frozen(value) for key, value in node.items()}
    return node


def _problems(error: ValidationError) -> str:
    """The first few problems, each as ``dotted.location: message``.

    A sequence whose item failed also reports itself as too short (the failed item does not
    count); that echo would send a reader looking for a missing table, so it is dropped.
    """
    items = error.errors(include_input=False, include_url=False)
    locations = [item["loc"] for item in items]
    problems = []
    for item in items:
        loc = item["loc"]
        if item["type"] == "too_short" and any(
            other[: len(loc)] == loc and len(other) > len(loc) for other in locations
        ):
            continue
        where = ".".join(shorten(str(part), 40) for part in loc) or "config"
        problems.append(f"{where}: {shorten(item['msg'].removeprefix('Value error, '), 120)}")
    more = f" (+{len(problems) - 3} more)" if len(problems) > 3 else ""
    return shorten("; ".join(problems[:3]), 600) + more


def parse_config(text: bytes, origin: str = "config") -> ProxyConfig:
    """Parse TOML bytes into a validated config (ConfigError on any problem)."""
    if len(text) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{origin}: larger than {MAX_CONFIG_BYTES} bytes")
    try:
        document = tomllib.loads(text.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        raise ConfigError(f"{origin}: not valid TOML: {error}") from None
    # TOML arrays become lists; the strict model wants tuples for its immutable sequences.
    document = _frozen(document)
    try:
        return ProxyConfig.model_validate(document)
    except ValidationError as error:
        raise ConfigError(f"{origin}: {_problems(error)}") from None


def load_config(path: str | Path) -> ProxyConfig:
    path = Path(path)
    try:
        with path.open("rb") as handle:
            text = handle.read(MAX_CONFIG_BYTES + 1)
    except OSError as error:
        raise ConfigError(f"{path}: {error.strerror}") from None
    return parse_config(text, str(path))
