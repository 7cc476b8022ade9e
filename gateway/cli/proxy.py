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
            "the keyring, and the host identity and trust store when configured. Logs are "
            "JSON lines on stderr."
        ),
    )
    proxy.add_argument("--config", required=True, metavar="FILE", help="the proxy's TOML config")
    proxy.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    proxy.add_argument(
        "--check",
        action="store_true",
        help="validate the config, keyring, identity and trust store, then exit",
    )
    proxy.set_defaults(func=_proxy)

    control = subparsers.add_parser(
        "control",
        help="query a running proxy through its control socket",
        description="Send one command (health, metrics, prometheus, reload) to a running proxy.",
    )
    control.add_argument("--socket", required=True, metavar="PATH")
    control.add_argument("command", choices=["health", "metrics", "prometheus", "reload"])
    control.set_defaults(func=_control)


def _proxy(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    if args.check:
        from gateway.keys import load_keyring

        keyring = load_keyring(config.keyring)
        print(f"config ok: {len(config.routes)} route(s), {len(keyring)} key(s)")
        if config.identity is not None and config.trust_store is not None:
            from gateway.identity import check_identity_files

            summary = check_identity_files(
                config.identity, config.trust_store, config.host_id, config.identity_peers
            )
            print(f"identity ok: {summary}")
        return 0
    configure_logging(args.log_level)
    from gateway.proxy.server import run_proxy

    asyncio.run(run_proxy(config))
    return 0


def _control(args: argparse.Namespace) -> int:
    from gateway.service.control import request

    answer = request(args.socket, {"cmd": args.command})
    if args.command == "prometheus" and answer.get("ok"):
        sys.stdout.write(str(answer.get("text", "")))
    else:
        print(json.dumps(answer, indent=2))
    return 0 if answer.get("ok") else 1
