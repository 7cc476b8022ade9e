"""``proxy`` (run the inline SPICE proxy) and ``control`` (ask a running one over its socket)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from gateway.cli import EXIT_FAILURE, EXIT_OK
from gateway.cli._io import UsageError
from gateway.errors import ConfigError
from gateway.proxy.config import load_config
from gateway.service.logs import configure_logging

__all__ = ["add_parsers"]


def add_parsers(subparsers: argparse._SubParsersAction[Any]) -> None:
    proxy = subparsers.add_parser(
        "proxy",
        help="run the inline SPICE proxy beside spice-server",
        description=(
            "Listen where SPICE clients connect, forward to spice-server, seal migration data "
            "leaving this host and open migration data arriving here. SIGTERM stops it after "
            "in-flight migrations finish (bounded by limits.shutdown_grace); SIGHUP re-reads "
            "the whole config and the keyring. Logs are JSON lines on stderr."
        ),
    )
    proxy.add_argument("--config", required=True, metavar="FILE", help="the proxy's TOML config")
    proxy.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="the least severe log records written",
    )
    proxy.add_argument(
        "--check",
        action="store_true",
        help=(
            "check everything starting needs (config, keyring, identity and trust store, files "
            "and their modes, TLS pairs, free listen addresses and control socket), then exit"
        ),
    )
    proxy.set_defaults(func=_proxy)

    control = subparsers.add_parser(
        "control",
        help="query a running proxy through its control socket",
        description=(
            "Send one command to a running proxy and print its answer on stdout: health, "
            "metrics (JSON), prometheus (text), reload (the whole config and the keyring, like "
            "SIGHUP), or route add|remove|list. Exit codes: 0 the proxy answered ok; 1 it "
            "answered that the command failed (the reason on stderr) or did not answer; 2 the "
            "socket cannot be reached (named on stderr)."
        ),
    )
    control.add_argument(
        "--socket",
        required=True,
        metavar="PATH",
        help="the proxy's control socket (control_socket in its config)",
    )
    commands = control.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True
    for name, text in (
        ("health", "whether the proxy serves, and what"),
        ("metrics", "the counters, as JSON"),
        ("prometheus", "the counters, in the Prometheus text format"),
        ("reload", "re-read the whole config and the keyring, like SIGHUP"),
    ):
        commands.add_parser(name, help=text, description=text[0].upper() + text[1:] + ".")
    route = commands.add_parser(
        "route",
        help="add, remove or list routes of the running proxy",
        description="Add, remove or list routes of the running proxy.",
    )
    ops = route.add_subparsers(dest="op", metavar="OP")
    ops.required = True
    add = ops.add_parser(
        "add",
        help="serve a route (an identical one is left as it is)",
        description="Serve a route at once; an identical one is left as it is.",
    )
    add.add_argument("--name", required=True, help="the route's name")
    add.add_argument("--listen", required=True, metavar="HOST:PORT", help="where clients connect")
    add.add_argument(
        "--upstream", required=True, metavar="HOST:PORT", help="the VM's spice-server (loopback)"
    )
    add.add_argument("--vm-id", required=True, metavar="UUID", help="the VM's id (domain UUID)")
    add.add_argument("--tls-cert", metavar="FILE", help="certificate for the client leg")
    add.add_argument("--tls-key", metavar="FILE", help="its private key")
    add.add_argument("--upstream-tls", action="store_true", help="spice-server speaks TLS")
    add.add_argument("--upstream-ca", metavar="FILE", help="CA that signs spice-server's cert")
    add.add_argument(
        "--upstream-server-name", metavar="NAME", help="name expected in spice-server's cert"
    )
    add.add_argument(
        "--jpeg-wan-compression",
        choices=["auto", "never", "always"],
        default="auto",
        help="the VM's QEMU jpeg-wan-compression setting on this host",
    )
    add.add_argument(
        "--replace", action="store_true", help="replace a route of that name with other settings"
    )
    remove = ops.add_parser(
        "remove",
        help="stop listening; the route's connections drain",
        description="Stop listening on a route at once; its open connections finish.",
    )
    remove.add_argument("name", help="the route's name")
    remove.add_argument(
        "--missing-ok", action="store_true", help="succeed when no such route exists"
    )
    ops.add_parser(
        "list",
        help="every route, serving or draining",
        description="List every route, serving or draining.",
    )
    control.set_defaults(func=_control)


def _proxy(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    if args.check:
        from gateway.keys import load_keyring
        from gateway.proxy.preflight import preflight

        problems = preflight(config)
        if problems:
            raise ConfigError(f"{args.config}: " + "; ".join(problems))
        keyring = load_keyring(config.keyring)
        print(f"config ok: {len(config.routes)} route(s), {len(keyring)} key(s)")
        if config.identity is not None and config.trust_store is not None:
            from gateway.identity import check_identity_files

            summary = check_identity_files(
                config.identity, config.trust_store, config.host_id, config.identity_peers
            )
            print(f"identity ok: {summary}")
        return 0
    try:
        config.check_servable()  # the proxy checks it again on start and on every reload
    except ConfigError as error:
        raise ConfigError(f"{args.config}: {error}") from None
    configure_logging(args.log_level)
    from gateway.proxy.server import run_proxy

    asyncio.run(run_proxy(config, config_path=args.config))
    return 0


def control_request(args: argparse.Namespace) -> dict[str, Any]:
    """The control API request a parsed ``control`` command line stands for."""
    if args.command != "route":
        return {"cmd": args.command}
    if args.op == "list":
        return {"cmd": "route_list"}
    if args.op == "remove":
        return {"cmd": "route_remove", "name": args.name, "missing_ok": args.missing_ok}
    route: dict[str, Any] = {
        "name": args.name,
        "listen": args.listen,
        "upstream": args.upstream,
        "vm_id": args.vm_id,
    }
    for key in ("tls_cert", "tls_key", "upstream_ca", "upstream_server_name"):
        if getattr(args, key) is not None:
            route[key] = getattr(args, key)
    if args.upstream_tls:
        route["upstream_tls"] = True
    if args.jpeg_wan_compression != "auto":
        route["jpeg_wan_compression"] = args.jpeg_wan_compression
    return {"cmd": "route_add", "route": route, "replace": args.replace}


def _control(args: argparse.Namespace) -> int:
    from gateway.service.control import request

    try:
        answer = request(args.socket, control_request(args))
    except TimeoutError:
        print(f"error: control socket {args.socket}: no answer in time", file=sys.stderr)
        return EXIT_FAILURE
    except OSError as error:
        reason = error.strerror or type(error).__name__
        if isinstance(error, ConnectionRefusedError):
            reason += " (is the proxy running?)"
        raise UsageError(f"control socket {args.socket}: {reason}") from None
    except ValueError as error:
        print(f"error: control socket {args.socket}: {error}", file=sys.stderr)
        return EXIT_FAILURE
    if not answer.get("ok"):
        detail = " ".join(str(answer.get("error", "no reason given")).split())
        print(f"error: {args.command} failed: {detail}", file=sys.stderr)
        return EXIT_FAILURE
    if args.command == "prometheus":
        sys.stdout.write(str(answer.get("text", "")))
    else:
        print(json.dumps(answer, indent=2))
    return EXIT_OK
