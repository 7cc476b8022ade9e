"""``demo``: the gateway's whole job on the bundled samples, on one machine."""

from __future__ import annotations

import argparse
import tempfile
import time
import uuid
from importlib import resources
from pathlib import Path
from typing import Any

from gateway import native
from gateway.envelope import (
    ANY_MIGRATION,
    Context,
    ExpectedContext,
    Opened,
    open_envelope,
    seal,
)
from gateway.errors import GatewayError
from gateway.keys import Keyring
from gateway.replay import ReplayGuard

__all__ = ["add_parsers", "run_demo"]


_DESCRIPTION = """\
For every channel's sample payload: decode and validate it as the source gateway does,
seal it, then open it as the target gateway does (authenticate, decrypt, validate, check
the context, record it as used) and rebuild the native bytes, which must equal the
original. It shows what one sealed blob is bound to and for how long, then three refusals
a malicious client would meet: a flipped bit, a replay, and a blob moved to another
channel, each with its reason. Nothing outside a temporary directory is touched.
Exit code 0 when every step went as it should, 1 otherwise."""


def add_parsers(subparsers: argparse._SubParsersAction[Any]) -> None:
    demo = subparsers.add_parser(
        "demo",
        help="seal and open the bundled sample payloads end to end",
        description=_DESCRIPTION,
    )
    demo.add_argument(
        "--samples", metavar="DIR", help="a folder of <channel>.bin payloads (default: bundled)"
    )
    demo.set_defaults(func=lambda args: run_demo(args.samples))


def _samples(folder: str | None) -> dict[str, bytes]:
    found: dict[str, bytes] = {}
    for name in native.CHANNEL_NAMES:
        if folder is None:
            item = resources.files("gateway") / "samples" / f"{name}.bin"
            if item.is_file():
                found[name] = item.read_bytes()
        else:
            path = Path(folder) / f"{name}.bin"
            if path.is_file():
                found[name] = path.read_bytes()
    return found


def run_demo(folder: str | None = None) -> int:
    samples = _samples(folder)
    if not samples:
        print("no sample payloads found")
        return 1
    keyring = Keyring.create()
    vm, migration = uuid.uuid4(), uuid.uuid4()
    failures = 0
    sealed: dict[str, bytes] = {}
    opened_blobs: dict[str, bytes] = {}
    shown: Opened | None = None

    def expected(name: str) -> ExpectedContext:
        return ExpectedContext(
            channel_type=native.channel_by_name(name),
            channel_id=0,
            vm_id=vm,
            migration_id=ANY_MIGRATION,
            sources=frozenset({"source-host"}),
            target_host="target-host",
            schema_version=1,
        )

    with tempfile.TemporaryDirectory() as scratch:
        guard = ReplayGuard(Path(scratch) / "replay.sqlite")
        try:
            print(f"{'channel':<10} {'native':>8} {'sealed':>8}  result")
            for name, payload in samples.items():
                channel = native.channel_by_name(name)
                try:
                    state = native.decode(channel, payload)
                    context = Context(
                        channel_type=channel,
                        channel_id=0,
                        vm_id=vm,
                        migration_id=migration,
                        source_host="source-host",
                        target_host="target-host",
                        schema_version=type(state).schema_version,
                    )
                    blob = seal(state, context, keyring)
                    opened_blobs[name] = blob
                    # A second blob of the same state, never opened: what the attacks tamper
                    # with (an opened blob is refused as Replayed before anything else).
                    sealed[name] = seal(state, context, keyring)
                    opened = open_envelope(blob, expected(name), keyring, guard)
                    if shown is None or name == "display":
                        shown = opened
                    rebuilt = native.encode(opened.state, channel)
                    result = "byte-identical" if rebuilt == payload else "MISMATCH"
                    failures += rebuilt != payload
                    print(f"{name:<10} {len(payload):>8} {len(blob):>8}  {result}")
                except GatewayError as error:
                    failures += 1
                    print(f"{name:<10} {len(payload):>8} {'-':>8}  {type(error).__name__}: {error}")
            if shown is not None:
                _show_binding(shown)
            failures += _show_refusals(sealed, opened_blobs, expected, keyring, guard)
        finally:
            guard.close()
    print("demo passed" if not failures else f"demo FAILED ({failures})")
    return 0 if not failures else 1


def _show_binding(opened: Opened) -> None:
    """What one blob was bound to, as the target authenticated it."""
    context = opened.context
    print()
    print(f"the {context.channel_type.name.lower()} blob is bound to (authenticated):")
    print(f"  channel {context.channel_type.name.lower()}, id {context.channel_id}")
    print(f"  VM {context.vm_id}, migration {context.migration_id}")
    print(f"  from host {context.source_host!r} to host {context.target_host!r}")
    direction = context.direction.name.lower().replace("_", "-")
    print(f"  schema version {context.schema_version}, {direction}")
    issued = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(opened.issued_at))
    print(
        f"  issued {issued}, valid {opened.expires_at - opened.issued_at} s, "
        "single-use (now recorded as used)"
    )


def _show_refusals(
    sealed: dict[str, bytes],
    opened: dict[str, bytes],
    expected: Any,
    keyring: Keyring,
    guard: ReplayGuard,
) -> int:
    """Each attack must be refused; returns how many were not."""
    if "display" not in sealed or "inputs" not in sealed or "display" not in opened:
        return 0
    flipped = bytearray(sealed["display"])
    flipped[len(flipped) // 2] ^= 0x01
    attacks = [
        ("a flipped bit in the display blob", bytes(flipped), "display"),
        ("the display blob replayed", opened["display"], "display"),
        ("the inputs blob sent on the display channel", sealed["inputs"], "display"),
    ]
    missed = 0
    print()
    for what, blob, channel in attacks:
        try:
            open_envelope(blob, expected(channel), keyring, guard)
        except GatewayError as error:
            print(f"refused {what}: {type(error).__name__}: {error}")
        else:
            missed += 1
            print(f"ACCEPTED {what}")
    return missed
