"""``proxy`` (run the inline SPICE proxy) and ``control`` (ask a running one over its socket)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

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
            "in-flight migrations finish (bounded by limits.shutdown_grace); SIGHUP reloads "
            "the keyring. Logs are JSON lines on stderr."
        ),
    )
    proxy.add_argument("--config", required=True, metavar="FILE", help="the proxy's TOML config")
    proxy.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    proxy.add_argument(
        "--check", action="store_true", help=(
            "check everything starting needs (config, keyring, files and their modes, TLS "
            "pairs, free listen addresses and control socket), then exit"
        ),
    )
    proxy.set_defaults(func=_proxy)

    control = subparsers.add_parser(
        "control",
        help="query a running proxy through its control socket",
        description=(
            "Send one command to a running proxy: health, metrics, prometheus, reload (the "
            "whole config and the keyring, like SIGHUP), or route add|remove|list."
        ),
    )
    control.add_argument("--socket", required=True, metavar="PATH")
    commands = control.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True
    for name in ("health", "metrics", "prometheus", "reload"):
        commands.add_parser(name)
    route = commands.add_parser("route", help="add, remove or list routes of the running proxy")
    ops = route.add_subparsers(dest="op", metavar="OP")
    ops.required = True
    add = ops.add_parser("add", help="serve a route (an identical one is left as it is)")
    add.add_argument("--name", required=True)
    add.add_argument("--listen", required=True, metavar="HOST:PORT")
    add.add_argument("--upstream", required=True, metavar="HOST:PORT")
    add.add_argument("--vm-id", required=True, metavar="UUID")
    add.add_argument("--tls-cert", metavar="FILE")
    add.add_argument("--tls-key", metavar="FILE")
    add.add_argument("--upstream-tls", action="store_true")
    add.add_argument("--upstream-ca", metavar="FILE")
    add.add_argument("--upstream-server-name", metavar="NAME")
    add.add_argument(
        "--replace", action="store_true", help="replace a route of that name with other settings"
    )
    remove = ops.add_parser("remove", help="stop listening; the route's connections drain")
    remove.add_argument("name")
    remove.add_argument("--missing-ok", action="store_true")
    ops.add_parser("list", help="every route, serving or draining")
    control.set_defaults(func=_control)


def _proxy(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    if args.check:
        from gateway.errors import ConfigError
        from gateway.keys import load_keyring
        from gateway.proxy.preflight import preflight

        problems = preflight(config)
        if problems:
            raise ConfigError(f"{args.config}: " + "; ".join(problems))
        keyring = load_keyring(config.keyring)
        print(f"config ok: {len(config.routes)} route(s), {len(keyring)} key(s)")
        return 0
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
    return {"cmd": "route_add", "route": route, "replace": args.replace}


def _control(args: argparse.Namespace) -> int:
    from gateway.service.control import request

    answer = request(args.socket, control_request(args))
    if args.command == "prometheus" and answer.get("ok"):
        sys.stdout.write(str(answer.get("text", "")))
    else:
        print(json.dumps(answer, indent=2))
    return 0 if answer.get("ok") else 1
