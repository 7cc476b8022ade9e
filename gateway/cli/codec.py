"""``decode`` and ``encode``: native payload <-> the schema model as JSON."""

from __future__ import annotations

import argparse
import re
import sys
from typing import Any

from pydantic import ValidationError

from gateway import native
from gateway.cli._io import read_input, refuse_terminal, write_output
from gateway.errors import SchemaViolation, TooLarge, schema_violation
from gateway.native._layout import BytesBlock, Layout
from schemas import ChannelType

__all__ = ["JSON_STRUCTURE_ALLOWANCE", "add_parsers", "check_json_structure", "json_limit"]

#: JSON for everything but raw byte fields: field names, numbers, lists (the display's 1024
#: surfaces with their rectangles are about 150 KiB pretty-printed), whitespace.
JSON_STRUCTURE_ALLOWANCE = 1024 * 1024


#: A JSON string literal (escapes included), in the unrolled form that runs in linear time.
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')


def check_json_structure(text: bytes, channel: str) -> None:
    """Refuse JSON whose structure (everything outside string literals: brackets, numbers,
    whitespace) exceeds what any valid model needs, before a parser builds it in memory: a
    file of millions of tiny array items costs far more memory to parse than its size."""
    inside = sum(match.end() - match.start() - 2 for match in _STRING.finditer(text))
    structure = len(text) - inside
    if structure > JSON_STRUCTURE_ALLOWANCE:
        raise TooLarge(
            f"{channel}: {structure} bytes of JSON outside strings, more than any valid model "
            f"needs ({JSON_STRUCTURE_ALLOWANCE})"
        )


def json_limit(channel: ChannelType) -> int:
    """The largest JSON model ``encode`` reads for ``channel``, refused before it is parsed.

    Derived from the channel's native limit, as native inputs are capped: byte fields travel
    as base64 (4 characters for 3 bytes), everything else fits the structure allowance.
    """
    layout: Layout[Any] = native.layout_for(channel)
    carries_bytes = any(isinstance(block, BytesBlock) for block in layout.blocks)
    payload = -(-4 * layout.max_size // 3) if carries_bytes else 0
    return JSON_STRUCTURE_ALLOWANCE + payload


def _channel_option(parser: argparse.ArgumentParser) -> None:
    channels = sorted(native.CHANNEL_NAMES, key=lambda n: native.CHANNEL_NAMES[n])
    parser.add_argument(
        "--channel",
        required=True,
        choices=channels,
        metavar="CHANNEL",
        help=f"the SPICE channel whose migration data this is: {', '.join(channels)}",
    )


def add_parsers(subparsers: argparse._SubParsersAction[Any]) -> None:
    decode = subparsers.add_parser(
        "decode",
        help="print a native migration payload as JSON",
        description=(
            "Decode spice-server's native MIGRATE_DATA body for CHANNEL strictly and print\n"
            "the validated model as JSON. Byte fields are base64 in the URL-safe alphabet\n"
            "('-' and '_'); encode accepts either alphabet."
        ),
    )
    _channel_option(decode)
    decode.add_argument("file", metavar="FILE", help="native payload ('-' for stdin)")
    decode.add_argument("--out", metavar="FILE", help="output file (default: stdout)")
    decode.set_defaults(func=_decode)

    encode = subparsers.add_parser(
        "encode",
        help="write native bytes from JSON",
        description=(
            "Validate a JSON model of CHANNEL's migration state and write the exact native\n"
            "bytes spice-server expects. The JSON is refused unread when it is larger than\n"
            "any valid model of CHANNEL can be."
        ),
    )
    _channel_option(encode)
    encode.add_argument("file", metavar="FILE.json", help="the model as JSON ('-' for stdin)")
    encode.add_argument("--out", metavar="FILE", help="output file (default: stdout, binary)")
    encode.set_defaults(func=_encode)


def _decode(args: argparse.Namespace) -> int:
    channel = native.channel_by_name(args.channel)
    state = native.decode(channel, read_input(args.file))
    text = state.model_dump_json(indent=2) + "\n"
    if args.out is None or args.out == "-":
        sys.stdout.write(text)
    else:
        write_output(args.out, text.encode())
    return 0


def _encode(args: argparse.Namespace) -> int:
    refuse_terminal(args.out)
    channel = native.channel_by_name(args.channel)
    layout = native.layout_for(channel)
    text = read_input(args.file, limit=json_limit(channel))
    check_json_structure(text, layout.channel)
    try:
        state = layout.model.model_validate_json(text)
    except ValidationError as error:
        raise schema_violation(layout.channel, error) from None
    except ValueError as error:  # pragma: no cover - pydantic reports JSON errors as above
        raise SchemaViolation(f"{layout.channel}: {error}") from None
    write_output(args.out, native.encode(state, channel))
    return 0
