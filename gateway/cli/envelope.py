"""``seal``, ``open`` and ``inspect``: the sealed envelope from the command line.

``seal`` takes spice-server's native payload, validates it and seals it for a context given as
options; ``open`` checks a blob against the expected context, records it in the replay database
and writes the native payload back; ``inspect`` shows the unauthenticated fixed header only.
"""

from __future__ import annotations

import argparse
import uuid
from typing import Any

from gateway import native
from gateway.cli._io import read_input, write_output
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
    read_header,
    seal,
)
from gateway.errors import ConfigError
from gateway.keys import load_keyring
from gateway.replay import ReplayGuard
from schemas import latest_version

__all__ = ["add_parsers"]

_DIRECTIONS = {d.name.lower().replace("_", "-"): d for d in Direction}


def _channel_names() -> list[str]:
    return sorted(native.CHANNEL_NAMES, key=lambda name: native.CHANNEL_NAMES[name])


def _add_context_options(parser: argparse.ArgumentParser, *, opening: bool) -> None:
    parser.add_argument("--channel", required=True, choices=_channel_names())
    parser.add_argument("--channel-id", required=True, type=int, metavar="N", help="0..255")
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
        parser.add_argument("--migration", required=True, metavar="UUID")
        parser.add_argument("--source", required=True, metavar="HOST", help="this host's id")
    parser.add_argument("--target", required=True, metavar="HOST", help="the target host id")
    parser.add_argument("--direction", choices=list(_DIRECTIONS), default="source-to-target")
    parser.add_argument("--keyring", required=True, metavar="FILE")
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
        help=f"lifetime (default {DEFAULT_TTL}, at most {MAX_TTL})",
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
        help=f"allowed clock difference between hosts (default {DEFAULT_CLOCK_SKEW})",
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
        help="show a blob's fixed header (unauthenticated)",
        description=(
            "Print the fixed header fields of a sealed blob without verifying it. Nothing shown "
            "is authenticated; use 'open' to verify."
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
    write_output(args.out, native.encode(opened.state, channel))
    return 0


def _inspect(args: argparse.Namespace) -> int:
    header = read_header(read_input(args.file, limit=DEFAULT_POLICY.max_blob_size))
    print("UNAUTHENTICATED: fixed header only, not verified; do not trust these values")
    print(f"format_version: {header.format_version}")
    print(f"suite:          {header.suite}")
    print(f"key_id:         {header.key_id.hex()}")
    print(f"blob_id (salt): {header.salt.hex()}")
    print(f"context_length: {header.context_length}")
    print(f"body_length:    {header.body_length}")
    print(f"total_length:   {header.total_length}")
    return 0
