"""``decode`` and ``encode``: native payload <-> the schema model as JSON."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from pydantic import ValidationError

from gateway import native
from gateway.cli._io import read_input, write_output
from gateway.errors import SchemaViolation, schema_violation

__all__ = ["add_parsers"]


def add_parsers(subparsers: argparse._SubParsersAction[Any]) -> None:
    channels = sorted(native.CHANNEL_NAMES, key=lambda n: native.CHANNEL_NAMES[n])
    decode = subparsers.add_parser(
        "decode",
        help="print a native migration payload as JSON",
        description=(
            "Decode spice-server's native MIGRATE_DATA body for CHANNEL strictly and print "
            "the validated model as JSON. Byte fields are base64 in the URL-safe alphabet "
            "('-' and '_'); encode accepts either alphabet."
        ),
    )
    decode.add_argument("--channel", required=True, choices=channels)
    decode.add_argument("file", metavar="FILE", help="native payload ('-' for stdin)")
    decode.set_defaults(func=_decode)

    encode = subparsers.add_parser(
        "encode",
        help="write native bytes from JSON",
        description=(
            "Validate a JSON model of CHANNEL's migration state and write the exact native "
            "bytes spice-server expects."
        ),
    )
    encode.add_argument("--channel", required=True, choices=channels)
    encode.add_argument("file", metavar="FILE.json", help="the model as JSON ('-' for stdin)")
    encode.add_argument("--out", help="output file (default: stdout)")
    encode.set_defaults(func=_encode)


def _decode(args: argparse.Namespace) -> int:
    channel = native.channel_by_name(args.channel)
    state = native.decode(channel, read_input(args.file))
    sys.stdout.write(state.model_dump_json(indent=2) + "\n")
    return 0


def _encode(args: argparse.Namespace) -> int:
    channel = native.channel_by_name(args.channel)
    layout = native.layout_for(channel)
    text = read_input(args.file)
    try:
        state = layout.model.model_validate_json(text)
    except ValidationError as error:
        raise schema_violation(layout.channel, error) from None
    except ValueError as error:  # pragma: no cover - pydantic reports JSON errors as above
        raise SchemaViolation(f"{layout.channel}: {error}") from None
    write_output(args.out, native.encode(state, channel))
    return 0
