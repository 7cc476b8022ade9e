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
            "in-flight migrations finish (bounded by limits.shutdown_grace); SIGHUP reloads "
            "the keyring. Logs are JSON lines on stderr."
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
        help="validate the config, keyring, identity and trust store, then exit",
    )
    proxy.set_defaults(func=_proxy)

    control = subparsers.add_parser(
        "control",
        help="query a running proxy through its control socket",
        description=(
            "Send one command to a running proxy and print its answer on stdout. Exit codes:\n"
            "0 the proxy answered ok; 1 it answered that the command failed (the reason on\n"
            "stderr) or did not answer; 2 the socket cannot be reached (named on stderr)."
        ),
    )
    control.add_argument(
        "--socket",
        required=True,
        metavar="PATH",
        help="the proxy's control socket (control_socket in its config)",
    )
    control.add_argument(
        "command",
        choices=["health", "metrics", "prometheus", "reload"],
        help="health, metrics (JSON), prometheus (text) or reload (re-read the keyring)",
    )
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
    if config.identity_peers:
        # Fail closed: the running proxy cannot yet agree per-attempt keys (that needs the
        # gateway-to-gateway peer link), and must not fall back to the shared keyring for a
        # peer that requires identities.
        raise ConfigError(
            f'{args.config}: peers with suite = "identity" '
            f"({', '.join(sorted(config.identity_peers))}) need the gateway-to-gateway peer "
            "link, which this proxy does not run yet"
        )
    configure_logging(args.log_level)
    from gateway.proxy.server import run_proxy

    asyncio.run(run_proxy(config))
    return 0


def _control(args: argparse.Namespace) -> int:
    from gateway.service.control import request

    try:
        answer = request(args.socket, {"cmd": args.command})
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
