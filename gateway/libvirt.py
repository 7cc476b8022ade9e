"""libvirt integration: the domain XML a qemu hook receives, and the routes it stands for.

libvirt runs ``/etc/libvirt/hooks/qemu`` (and every executable in ``/etc/libvirt/hooks/qemu.d/``)
with the arguments ``DOMAIN OPERATION SUB-OPERATION EXTRA`` and the domain's full XML on
standard input, and waits for it; a non-zero exit from ``prepare`` or ``start`` aborts the
domain's start (or the incoming migration), with the hook's standard error in libvirt's error
message. The hook registers the domain's route(s) with the running proxy through its control
socket on ``prepare``/``start``/``reconnect``, and removes them on ``release``.

The XML comes from libvirtd, but it describes a domain whose definition any libvirt user with
write access may have written, so it is parsed like any outside input: bounded in size, no
document type declarations (hence no entities), bounded counts, strict attribute checks.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Any

from gateway.errors import HookRefused, MalformedInput, TooLarge, shorten
from gateway.proxy.config import LibvirtHook

__all__ = [
    "MAX_DOMAIN_XML",
    "REGISTER",
    "UNREGISTER",
    "Domain",
    "SpiceGraphics",
    "parse_domain",
    "route_names",
    "routes_for",
]

#: Domain XML is a few KiB; a domain with hundreds of devices stays well below this.
MAX_DOMAIN_XML = 4 * 1024 * 1024
#: ``<graphics>`` elements considered; libvirt accepts a handful at most.
MAX_GRAPHICS = 16
MAX_LISTENS = 16
_DECLARATION = re.compile(rb"<!\s*(?:DOCTYPE|ENTITY|ELEMENT|ATTLIST|NOTATION)", re.IGNORECASE)

#: (operation, sub-operation) pairs that register the routes: before QEMU starts, for a start
#: as for an incoming migration (``prepare``), at start, and when libvirtd reconnects to a
#: running domain after its own restart.
REGISTER = frozenset({("prepare", "begin"), ("start", "begin"), ("reconnect", "begin")})
#: ... and those that remove them: resources released after the domain stopped, on any host.
UNREGISTER = frozenset({("release", "end")})


@dataclass(frozen=True)
class SpiceGraphics:
    """One ``<graphics type='spice'>``: where its spice-server listens."""

    port: int | None
    tls_port: int | None
    autoport: bool
    #: Every TCP listen address (``listen`` attribute and ``<listen>`` children), in order.
    addresses: tuple[str, ...]
    #: A ``<listen type='socket'>`` or ``type='none'``: not a TCP endpoint at all.
    non_tcp: str | None
    #: ``<jpeg compression=...>``, QEMU's ``jpeg-wan-compression`` (``auto`` when absent): the
    #: target proxy writes the display state in the format this spice-server reads.
    jpeg_wan_compression: str = "auto"


@dataclass(frozen=True)
class Domain:
    name: str
    uuid: uuid.UUID
    graphics: tuple[SpiceGraphics, ...]


def _port(element: ET.Element, attribute: str) -> int | None:
    text = element.get(attribute)
    if text is None or text == "-1":
        return None
    if not text.isdigit() or len(text) > 5 or not 0 < int(text) < 65536:
        raise MalformedInput(
            f"domain XML: graphics {attribute} {shorten(repr(text), 20)} is not a port"
        )
    return int(text)


def parse_domain(data: bytes) -> Domain:
    """The parts of a libvirt domain XML the gateway uses (MalformedInput, TooLarge)."""
    if len(data) > MAX_DOMAIN_XML:
        raise TooLarge(f"domain XML larger than {MAX_DOMAIN_XML} bytes")
    # libvirt writes UTF-8. In UTF-16 or UTF-32 (which the parser would also read) markup is
    # not ASCII bytes, and the search for declarations below would not see it.
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedInput("domain XML: not UTF-8") from None
    if b"\0" in data:
        raise MalformedInput("domain XML: a NUL byte (not UTF-8 text)")
    if _DECLARATION.search(data):
        # A DOCTYPE (and with it any entity) or a declaration: libvirt never writes one.
        raise MalformedInput("domain XML: declarations (<!DOCTYPE, <!ENTITY) are not accepted")
    try:
        root = ET.fromstring(data)  # noqa: S314 - size bounded, no DTD: nothing to expand
    except ET.ParseError as error:
        raise MalformedInput(f"domain XML: not well-formed ({shorten(str(error), 80)})") from None
    if root.tag != "domain":
        raise MalformedInput(f"domain XML: root element {shorten(root.tag, 40)!r}, not 'domain'")
    name = (root.findtext("name") or "").strip()
    if not name:
        raise MalformedInput("domain XML: no <name>")
    try:
        domain_uuid = uuid.UUID((root.findtext("uuid") or "").strip())
    except ValueError:
        raise MalformedInput(f"domain XML: domain {shorten(name, 60)}: no valid <uuid>") from None
    graphics: list[SpiceGraphics] = []
    for element in root.iterfind("devices/graphics"):
        if element.get("type") != "spice":
            continue
        if len(graphics) == MAX_GRAPHICS:
            raise MalformedInput(f"domain XML: more than {MAX_GRAPHICS} SPICE graphics")
        graphics.append(_graphics(element))
    return Domain(name, domain_uuid, tuple(graphics))


def _graphics(element: ET.Element) -> SpiceGraphics:
    addresses: list[str] = []
    non_tcp = None
    attribute = element.get("listen")
    if attribute:
        addresses.append(attribute)
    listens = element.findall("listen")
    if len(listens) > MAX_LISTENS:
        raise MalformedInput(f"domain XML: more than {MAX_LISTENS} <listen> in one graphics")
    for listen in listens:
        kind = listen.get("type", "address")
        if kind in ("socket", "none"):
            non_tcp = kind
            continue
        # type='network' carries the network's resolved address in the live XML.
        address = listen.get("address")
        if address and address not in addresses:
            addresses.append(address)
    jpeg = element.find("jpeg")
    compression = "auto" if jpeg is None else jpeg.get("compression", "auto")
    if compression not in ("auto", "never", "always"):
        raise MalformedInput(
            f"domain XML: <jpeg compression> is {shorten(compression, 20)!r}, not auto, never "
            "or always"
        )
    return SpiceGraphics(
        port=_port(element, "port"),
        tls_port=_port(element, "tlsPort"),
        autoport=element.get("autoport") == "yes",
        addresses=tuple(addresses),
        non_tcp=non_tcp,
        jpeg_wan_compression=compression,
    )


def _is_loopback(address: str) -> bool:
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def routes_for(domain: Domain, settings: LibvirtHook) -> list[dict[str, Any]]:
    """The route tables (as the control API takes them) for every SPICE port of ``domain``.

    ``settings`` is the config's ``[libvirt]`` table: ``listen_host`` (where clients connect),
    ``port_offset`` (a route listens on the SPICE port plus this), and the TLS files for
    routes of a ``tlsPort``. Refuses (HookRefused) a domain whose SPICE listens anywhere but
    loopback, on a Unix socket, or without a known port.
    """
    routes: list[dict[str, Any]] = []
    label = shorten(domain.name, 60)
    for index, graphics in enumerate(domain.graphics):
        where = f"domain {label}" + (f" (SPICE graphics #{index + 1})" if index else "")
        if graphics.non_tcp is not None and not graphics.addresses:
            raise HookRefused(
                f"{where}: SPICE listens on a {graphics.non_tcp} endpoint, not TCP on loopback; "
                "the gateway can only proxy <listen type='address' address='127.0.0.1'/>"
            )
        if not graphics.addresses:
            raise HookRefused(
                f"{where}: SPICE has no listen address in the domain XML; set "
                "<listen type='address' address='127.0.0.1'/>"
            )
        outside = [a for a in graphics.addresses if not _is_loopback(a)]
        if outside:
            raise HookRefused(
                f"{where}: SPICE listens on {shorten(outside[0], 60)}, not on loopback: clients "
                "could bypass the gateway; set <listen type='address' address='127.0.0.1'/>"
            )
        upstream_host = graphics.addresses[0]
        if upstream_host == "localhost":
            upstream_host = "127.0.0.1"
        if graphics.port is None and graphics.tls_port is None:
            raise HookRefused(f"{where}: SPICE has no port allocated (autoport before start?)")
        suffix = f"-{index}" if index else ""
        base: dict[str, Any] = {"vm_id": str(domain.uuid)}
        if graphics.jpeg_wan_compression != "auto":  # the route's default is QEMU's
            base["jpeg_wan_compression"] = graphics.jpeg_wan_compression
        for port, tls in ((graphics.port, False), (graphics.tls_port, True)):
            if port is None:
                continue
            listen_port = port + settings.port_offset
            if not 0 < listen_port < 65536:
                raise HookRefused(f"{where}: port {port} + port_offset is not a port")
            route: dict[str, Any] = {
                **base,
                "name": _route_name(domain.name, suffix + ("-tls" if tls else "")),
                "listen": _hostport(settings.listen_host, listen_port),
                "upstream": _hostport(upstream_host, port),
            }
            if tls:
                if settings.tls_cert is None or settings.tls_key is None:
                    raise HookRefused(
                        f"{where}: SPICE has a tlsPort but [libvirt] has no tls_cert/tls_key "
                        "for the route in front of it"
                    )
                route |= {
                    "tls_cert": settings.tls_cert,
                    "tls_key": settings.tls_key,
                    "upstream_tls": True,
                }
                if settings.upstream_ca is not None:
                    route["upstream_ca"] = settings.upstream_ca
            routes.append(route)
    return routes


def route_names(domain: Domain) -> list[str]:
    """Every route name :func:`routes_for` may give ``domain`` (for removal: no checks)."""
    names = []
    for index, _ in enumerate(domain.graphics):
        suffix = f"-{index}" if index else ""
        names += [_route_name(domain.name, suffix), _route_name(domain.name, suffix + "-tls")]
    return names


def _route_name(name: str, suffix: str) -> str:
    """A route name within the config's 128 characters, unique per domain and port."""
    limit = 128 - len(suffix)
    return (name if len(name) <= limit else name[: limit - 9] + "~" + _digest(name)) + suffix


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:8]
