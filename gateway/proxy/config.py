"""The proxy's TOML configuration: this host, its keys, its trusted peers and its routes."""

from __future__ import annotations

import ipaddress
import tomllib
import uuid
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from gateway.errors import ConfigError, shorten

__all__ = ["Limits", "Peer", "ProxyConfig", "Route", "load_config", "parse_address"]

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
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, hide_input_in_errors=True)


class Limits(_Strict):
    """Resource bounds; every one of them applies per process."""

    max_connections: Annotated[int, Field(ge=1, le=65536)] = 1024
    max_connections_per_route: Annotated[int, Field(ge=1, le=65536)] = 256
    """One VM's port cannot take every connection slot from the others."""
    max_connections_per_client: Annotated[int, Field(ge=1, le=65536)] = 128
    """Connections from one client address, over all routes (a SPICE session uses ~10)."""
    max_message_size: Annotated[int, Field(ge=4096, le=1 << 30)] = 64 * 1024 * 1024
    max_buffered_bytes: Annotated[int, Field(ge=65536, le=1 << 30)] = 4 * 1024 * 1024
    max_buffered_total: Annotated[int, Field(ge=65536, le=1 << 40)] = 512 * 1024 * 1024
    """Partial messages held over all connections and both directions: one memory budget,
    where each connection alone may hold up to max_message_size per direction."""
    link_timeout: Annotated[float, Field(gt=0, le=600)] = 10.0
    shutdown_grace: Annotated[float, Field(ge=0, le=600)] = 10.0
    blob_ttl: Annotated[int, Field(ge=1, le=3600)] = 300
    clock_skew: Annotated[int, Field(ge=0, le=300)] = 5


class Peer(_Strict):
    """Another gateway host, and the addresses by which clients are told to reach it."""

    host_id: HostId
    addresses: Annotated[tuple[str, ...], Field(min_length=1, max_length=64)]

    @field_validator("addresses")
    @classmethod
    def _addresses(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for address in value:
            parse_address(address)
        return value


class Route(_Strict):
    """One VM's SPICE endpoint: where clients connect, and the spice-server behind it."""

    name: Annotated[str, Field(min_length=1, max_length=128)]
    listen: str
    upstream: str
    vm_id: Annotated[uuid.UUID, Field(strict=False)]
    tls_cert: str | None = None
    tls_key: str | None = None
    upstream_tls: bool = False
    upstream_ca: str | None = None
    upstream_server_name: str | None = None
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
        if self.upstream_tls and self.tls_cert is None and not self.allow_plaintext_client_leg:
            raise ValueError(_PLAINTEXT_UNDER_TLS)
        return self


class ProxyConfig(_Strict):
    host_id: HostId
    keyring: str
    replay_db: str
    control_socket: str | None = None
    limits: Limits = Limits()
    peers: Annotated[tuple[Peer, ...], Field(max_length=4096)] = ()
    routes: Annotated[tuple[Route, ...], Field(min_length=1, max_length=4096)]

    @model_validator(mode="after")
    def _unique(self) -> ProxyConfig:
        names = [route.name for route in self.routes]
        if len(set(names)) != len(names):
            raise ValueError("route names must be unique")
        listens = [parse_address(route.listen) for route in self.routes]
        if len(set(listens)) != len(listens):
            raise ValueError("two routes listen on the same address")
        peer_ids = [peer.host_id for peer in self.peers]
        if len(set(peer_ids)) != len(peer_ids) or self.host_id in peer_ids:
            raise ValueError("peer host ids must be unique and differ from host_id")
        return self

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
