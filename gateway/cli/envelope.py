"""``seal``, ``open`` and ``inspect``: the sealed envelope from the command line.

``seal`` takes spice-server's native payload, validates it and seals it for a context given as
options; ``open`` checks a blob against the expected context, records it in the replay database
and writes the native payload back; ``inspect`` shows what a blob carries in the clear (header,
context, lifetime), unauthenticated.
"""

from __future__ import annotations

import argparse
import datetime as dt
import time
import uuid
from typing import Any

from gateway import native
from gateway.cli._io import read_input, refuse_terminal, write_output
from gateway.envelope import (
    ANY_MIGRATION,
    DEFAULT_CLOCK_SKEW,
    DEFAULT_POLICY,
    DEFAULT_TTL,
    MAX_TTL,
    Context,
    Direction,
    ExpectedContext,
    Policy,
    open_envelope,
    read_unauthenticated,
    seal,
)
from gateway.errors import ConfigError
from gateway.keys import load_keyring
from gateway.replay import ReplayGuard
from schemas import latest_version
from schemas.display import JPEG_WAN_COMPRESSION

__all__ = ["add_parsers"]

_DIRECTIONS = {d.name.lower().replace("_", "-"): d for d in Direction}


def _channel_names() -> list[str]:
    return sorted(native.CHANNEL_NAMES, key=lambda name: native.CHANNEL_NAMES[name])


def _add_context_options(parser: argparse.ArgumentParser, *, opening: bool) -> None:
    channels = _channel_names()
    parser.add_argument(
        "--channel",
        required=True,
        choices=channels,
        metavar="CHANNEL",
        help=f"the SPICE channel the blob is for: {', '.join(channels)}",
    )
    parser.add_argument(
        "--channel-id", required=True, type=int, metavar="N", help="the channel id, 0..255"
    )
    parser.add_argument("--vm", required=True, metavar="UUID", help="the VM's UUID")
    if opening:
        parser.add_argument(
            "--migration",
            required=True,
            metavar="UUID|any",
            help="the migration id, or 'any' for the first channel of a client session",
        )
        parser.add_argument(
            "--source",
            required=True,
            action="append",
            metavar="HOST",
            help="a trusted source host id (repeat for several)",
        )
    else:
        parser.add_argument(
            "--migration",
            required=True,
            metavar="UUID",
            help="this migration's id, the same for every channel of the migration",
        )
        parser.add_argument("--source", required=True, metavar="HOST", help="this host's id")
    parser.add_argument("--target", required=True, metavar="HOST", help="the target host id")
    parser.add_argument(
        "--direction",
        choices=list(_DIRECTIONS),
        default="source-to-target",
        help="which way the state travels",
    )
    parser.add_argument(
        "--keyring",
        required=True,
        metavar="FILE",
        help="the keyring file (mode 0600; see 'keys generate')",
    )
    parser.add_argument("--out", metavar="FILE", help="output file (default: stdout, binary)")
    parser.add_argument("file", metavar="FILE", help="input ('-' for stdin)")


def add_parsers(subparsers: argparse._SubParsersAction[Any]) -> None:
    sealer = subparsers.add_parser(
        "seal",
        help="validate a native payload and seal it for one migration",
        description=(
            "Decode CHANNEL's native MIGRATE_DATA body strictly, validate it, and seal it for "
            "the given context with the keyring's active key."
        ),
    )
    _add_context_options(sealer, opening=False)
    sealer.add_argument(
        "--ttl",
        type=int,
        default=DEFAULT_TTL,
        metavar="SECONDS",
        help=f"lifetime in seconds, at most {MAX_TTL}",
    )
    sealer.set_defaults(func=_seal)

    opener = subparsers.add_parser(
        "open",
        help="verify a sealed blob and write the native payload",
        description=(
            "Authenticate and decrypt a sealed blob, validate its state, check it against the "
            "expected context, its lifetime and the replay database, and write the native "
            "bytes the target spice-server expects."
        ),
    )
    _add_context_options(opener, opening=True)
    opener.add_argument("--replay-db", required=True, metavar="FILE", help="SQLite replay guard")
    opener.add_argument(
        "--jpeg-wan-compression",
        choices=JPEG_WAN_COMPRESSION,
        default="auto",
        help=(
            "the target QEMU's jpeg-wan-compression setting (default: auto, QEMU's): a display "
            "state's surface list is written in the format its spice-server reads"
        ),
    )
    opener.add_argument(
        "--schema-version",
        type=int,
        metavar="N",
        help="expected schema version (default: the newest this gateway knows)",
    )
    opener.add_argument(
        "--clock-skew",
        type=int,
        default=DEFAULT_CLOCK_SKEW,
        metavar="SECONDS",
        help="allowed clock difference between the hosts, in seconds",
    )
    opener.add_argument(
        "--max-size",
        type=int,
        default=DEFAULT_POLICY.max_blob_size,
        metavar="BYTES",
        help="largest blob accepted",
    )
    opener.set_defaults(func=_open)

    inspector = subparsers.add_parser(
        "inspect",
        help="show what a blob carries in the clear (unauthenticated)",
        description=(
            "Print the fixed header and the context a sealed blob carries in the clear\n"
            "(channel, VM, migration, hosts, issued and expiry times with the time left),\n"
            "without verifying it: useful to see why a blob would be refused as expired or\n"
            "mismatched. Nothing shown is authenticated; only 'open' verifies."
        ),
    )
    inspector.add_argument("file", metavar="FILE", help="sealed blob ('-' for stdin)")
    inspector.set_defaults(func=_inspect)


def _uuid(text: str, option: str) -> uuid.UUID:
    try:
        return uuid.UUID(text)
    except ValueError:
        raise ConfigError(f"{option} is not a UUID") from None


def _seal(args: argparse.Namespace) -> int:
    refuse_terminal(args.out)
    channel = native.channel_by_name(args.channel)
    keyring = load_keyring(args.keyring)
    state = native.decode(channel, read_input(args.file))
    context = Context(
        channel_type=channel,
        channel_id=args.channel_id,
        vm_id=_uuid(args.vm, "--vm"),
        migration_id=_uuid(args.migration, "--migration"),
        source_host=args.source,
        target_host=args.target,
        schema_version=type(state).schema_version,
        direction=_DIRECTIONS[args.direction],
    )
    write_output(args.out, seal(state, context, keyring, ttl=args.ttl))
    return 0


def _open(args: argparse.Namespace) -> int:
    refuse_terminal(args.out)
    channel = native.channel_by_name(args.channel)
    policy = Policy(max_blob_size=args.max_size, clock_skew=args.clock_skew)
    expected = ExpectedContext(
        channel_type=channel,
        channel_id=args.channel_id,
        vm_id=_uuid(args.vm, "--vm"),
        migration_id=(
            ANY_MIGRATION if args.migration == "any" else _uuid(args.migration, "--migration")
        ),
        sources=frozenset(args.source),
        target_host=args.target,
        schema_version=(
            latest_version(channel) if args.schema_version is None else args.schema_version
        ),
        direction=_DIRECTIONS[args.direction],
    )
    keyring = load_keyring(args.keyring)
    blob = read_input(args.file, limit=policy.max_blob_size)
    with ReplayGuard(args.replay_db) as guard:
        opened = open_envelope(blob, expected, keyring, guard, policy=policy)
    write_output(
        args.out,
        native.encode(opened.state, channel, jpeg_wan_compression=args.jpeg_wan_compression),
    )
    return 0


def _when(seconds: int) -> str:
    try:
        moment = dt.datetime.fromtimestamp(seconds, dt.UTC)
    except (OverflowError, OSError, ValueError):
        return f"{seconds} (not a representable time)"
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _left(expires_at: int, now: int) -> str:
    if now > expires_at:
        return f"expired {now - expires_at} s ago"
    return f"{expires_at - now} s left"


def _inspect(args: argparse.Namespace) -> int:
    blob = read_input(args.file, limit=DEFAULT_POLICY.max_blob_size)
    header, context, issued_at, expires_at = read_unauthenticated(blob)
    now = int(time.time())
    lines = [
        "UNAUTHENTICATED: read without verifying the blob; do not trust these values",
        f"format_version: {header.format_version}",
        f"suite:          {header.suite}",
        f"key_id:         {header.key_id.hex()}",
        f"blob_id (salt): {header.salt.hex()}",
        f"context_length: {header.context_length}",
        f"body_length:    {header.body_length}",
        f"total_length:   {header.total_length}",
        f"channel:        {context.channel_type.name.lower()}",
        f"channel_id:     {context.channel_id}",
        f"vm:             {context.vm_id}",
        f"migration:      {context.migration_id}",
        f"source:         {context.source_host}",
        f"target:         {context.target_host}",
        f"direction:      {context.direction.name.lower().replace('_', '-')}",
        f"schema_version: {context.schema_version}",
        f"issued_at:      {_when(issued_at)}",
        f"expires_at:     {_when(expires_at)} ({_left(expires_at, now)})",
    ]
    print("\n".join(lines))
    return 0
