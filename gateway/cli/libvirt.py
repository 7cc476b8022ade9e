"""``libvirt-hook``: libvirt's qemu hook, registering each domain's SPICE route(s) with the
running proxy (see :mod:`gateway.libvirt`)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from gateway.errors import HookRefused

__all__ = ["add_parsers"]

DEFAULT_CONFIG = "/etc/spice-migration-gateway/proxy.toml"


def add_parsers(subparsers: argparse._SubParsersAction[Any]) -> None:
    hook = subparsers.add_parser(
        "libvirt-hook",
        help="libvirt's qemu hook: register and remove each domain's SPICE routes",
        description=(
            "Run by libvirtd as /etc/libvirt/hooks/qemu (or from /etc/libvirt/hooks/qemu.d/) "
            "with the domain XML on standard input. On prepare/start/reconnect it adds a route "
            "per SPICE port to the running proxy (control socket and [libvirt] table of "
            "--config); on release it removes them. A domain whose SPICE listens anywhere but "
            "loopback is refused: its start fails with this command's error. Domains without "
            "SPICE and other operations are left alone."
        ),
    )
    hook.add_argument(
        "--config", default=DEFAULT_CONFIG, metavar="FILE", help="the proxy's TOML config"
    )
    hook.add_argument("object", help="the domain's name")
    hook.add_argument("operation", help="libvirt's operation (prepare, start, release, ...)")
    hook.add_argument("suboperation", help="libvirt's sub-operation (begin, end, ...)")
    hook.add_argument("extra", nargs="?", default="-", help="libvirt's extra argument")
    hook.set_defaults(func=_hook)

    sync = subparsers.add_parser(
        "libvirt-sync",
        help="register the routes of every running libvirt domain (after a proxy restart)",
        description=(
            "Routes added by the hook live in the running proxy only. After the proxy "
            "restarts, this asks libvirt (virsh) for every running domain's live XML and "
            "registers its routes as the hook does; a refused domain is reported and the "
            "others still register. The systemd unit runs it after each start."
        ),
    )
    sync.add_argument(
        "--config", default=DEFAULT_CONFIG, metavar="FILE", help="the proxy's TOML config"
    )
    sync.add_argument("--connect", default="qemu:///system", metavar="URI", help="libvirt URI")
    sync.set_defaults(func=_sync)


def _hook(args: argparse.Namespace) -> int:
    from gateway.libvirt import MAX_DOMAIN_XML, REGISTER, UNREGISTER, parse_domain

    # Always read what libvirt writes, so that it never meets a closed pipe.
    data = sys.stdin.buffer.read(MAX_DOMAIN_XML + 1)
    step = (args.operation, args.suboperation)
    if step not in REGISTER and step not in UNREGISTER:
        return 0
    domain = parse_domain(data)
    if domain.name != args.object:
        raise HookRefused(
            f"the domain XML describes {domain.name!r}, not the hook's domain {args.object!r}"
        )
    if not domain.graphics:
        return 0
    from gateway.proxy.config import load_config

    config = load_config(args.config)
    if config.libvirt is None or not config.control_socket:
        raise HookRefused(
            f"{args.config} needs a [libvirt] table and a control_socket for the libvirt hook"
        )
    if step in UNREGISTER:
        return _unregister(config.control_socket, domain)
    return _register(config.control_socket, domain, config.libvirt)


def _virsh(uri: str, *args: str) -> bytes:
    import subprocess

    try:
        result = subprocess.run(
            ["virsh", "-c", uri, *args], capture_output=True, timeout=60, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        raise HookRefused(f"virsh {args[0]}: {error}") from None
    if result.returncode != 0:
        message = result.stderr.decode(errors="replace").strip().splitlines()
        raise HookRefused(f"virsh {args[0]}: {message[0] if message else result.returncode}")
    return result.stdout


def _sync(args: argparse.Namespace) -> int:
    from gateway.errors import GatewayError
    from gateway.libvirt import MAX_DOMAIN_XML, parse_domain
    from gateway.proxy.config import load_config

    config = load_config(args.config)
    if config.libvirt is None or not config.control_socket:
        raise HookRefused(f"{args.config} needs a [libvirt] table and a control_socket")
    names = [n for n in _virsh(args.connect, "list", "--name").decode().split() if n]
    failed = 0
    for name in names:
        try:
            data = _virsh(args.connect, "dumpxml", name)
            if len(data) > MAX_DOMAIN_XML:
                raise HookRefused(f"domain {name}: XML larger than {MAX_DOMAIN_XML} bytes")
            _register(config.control_socket, parse_domain(data), config.libvirt)
        except GatewayError as error:
            failed += 1
            print(f"spice-migration-gateway: {type(error).__name__}: {error}", file=sys.stderr)
    print(
        f"spice-migration-gateway: {len(names) - failed} of {len(names)} running domain(s) synced",
        file=sys.stderr,
    )
    return 2 if failed else 0


def _ask(socket: str, command: dict[str, Any]) -> dict[str, Any]:
    from gateway.service.control import request

    try:
        return request(socket, command, timeout=30.0)
    except (OSError, ValueError) as error:
        raise HookRefused(
            f"cannot reach the spice-migration-gateway proxy at {socket}: "
            f"{getattr(error, 'strerror', None) or error}"
        ) from None


def _register(socket: str, domain: Any, settings: Any) -> int:
    from gateway.libvirt import routes_for

    for route in routes_for(domain, settings):
        answer = _ask(
            socket, {"cmd": "route_add", "route": route, "replace": True, "origin": "control"}
        )
        if not answer.get("ok"):
            raise HookRefused(
                f"domain {domain.name}: the proxy refused route {route['name']}: "
                f"{answer.get('error')}"
            )
        print(
            f"spice-migration-gateway: route {route['name']} {answer.get('outcome')}: "
            f"{route['listen']} -> {route['upstream']}",
            file=sys.stderr,
        )
    return 0


def _unregister(socket: str, domain: Any) -> int:
    from gateway.libvirt import route_names

    try:
        for name in route_names(domain):
            # Only the routes the hook registered for this domain: a config route or another
            # domain's route of the same name stays.
            answer = _ask(
                socket,
                {
                    "cmd": "route_remove",
                    "name": name,
                    "missing_ok": True,
                    "origin": "control",
                    "vm_id": str(domain.uuid),
                },
            )
            if not answer.get("ok"):
                print(f"spice-migration-gateway: {answer.get('error')}", file=sys.stderr)
    except HookRefused as error:
        # Never stand in the way of a domain's teardown.
        print(f"spice-migration-gateway: {error}", file=sys.stderr)
    return 0
