"""``keys generate|rotate|list|retire``: manage a keyring file.

Rotation across several hosts that share one keyring (see SECURITY.md, "Key management"):
``generate`` adds a pending key, which every host accepts once it has the file; ``rotate`` then
makes it the sealing key and keeps the old one as decrypt-only; ``retire`` drops the old key
once no blob sealed under it can still be valid.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from gateway.errors import KeyringError
from gateway.keys import KEY_ID_SIZE, Key, Keyring, KeyState, load_keyring, save_keyring

__all__ = ["add_parsers"]


def add_parsers(subparsers: argparse._SubParsersAction[Any]) -> None:
    keys = subparsers.add_parser(
        "keys",
        help="manage the keyring that seals and opens envelopes",
        description="Create, rotate, list and retire the keys of a keyring file (mode 0600).",
    )
    verbs = keys.add_subparsers(dest="keys_verb", metavar="ACTION", parser_class=type(keys))
    verbs.required = True

    generate = verbs.add_parser(
        "generate",
        help="create a keyring, or add a pending key to one",
        description=(
            "Without an existing FILE: create it with one active key. With one: add a new key "
            "in the pending state, which opens but does not seal until 'rotate' promotes it."
        ),
    )
    rotate = verbs.add_parser(
        "rotate",
        help="promote the pending key (or a new one) to active",
        description=(
            "Make the pending key active (or create a fresh active key when none is pending); "
            "the previously active key becomes decrypt-only so blobs in flight still open."
        ),
    )
    listing = verbs.add_parser(
        "list",
        help="list key ids, states and creation times (never secrets)",
        description=(
            "Print one line per key: its id (32 hex digits), its state (active, pending,\n"
            "decrypt-only, retired) and when it was created. Secrets are never shown."
        ),
    )
    retire = verbs.add_parser(
        "retire",
        help="retire a key: it opens nothing any more and its secret is erased",
        description="Retire a pending or decrypt-only key. The active key cannot be retired.",
    )
    retire.add_argument("key_id", metavar="KEY_ID", help="the key id, 32 hex digits")
    for parser, handler in (
        (generate, _generate),
        (rotate, _rotate),
        (listing, _list),
        (retire, _retire),
    ):
        parser.add_argument(
            "--keyring", required=True, metavar="FILE", help="the keyring file (mode 0600)"
        )
        parser.set_defaults(func=handler)


def _describe(key: Key) -> str:
    return f"{key.id_hex}  {key.state.value:<12}  {key.created_iso}"


def _generate(args: argparse.Namespace) -> int:
    path = Path(args.keyring)
    if not path.exists() and not path.is_symlink():
        keyring = Keyring.create()
        save_keyring(keyring, path)
        print(f"created {path} with active key {keyring.active.id_hex}")
        return 0
    keyring, key = load_keyring(path).with_new_key(KeyState.PENDING)
    save_keyring(keyring, path)
    print(f"added pending key {key.id_hex}; run 'keys rotate' once every host has it")
    return 0


def _rotate(args: argparse.Namespace) -> int:
    before = load_keyring(args.keyring)
    keyring, promoted = before.rotated()
    save_keyring(keyring, args.keyring)
    print(
        f"active key is now {promoted.id_hex}; {before.active.id_hex} is decrypt-only "
        "(retire it once blobs sealed under it have expired)"
    )
    return 0


def _list(args: argparse.Namespace) -> int:
    for key in load_keyring(args.keyring).keys:
        print(_describe(key))
    return 0


def _retire(args: argparse.Namespace) -> int:
    text = args.key_id.strip().lower()
    try:
        key_id = bytes.fromhex(text)
    except ValueError:
        key_id = b""
    if len(key_id) != KEY_ID_SIZE:
        raise KeyringError(f"key id must be {2 * KEY_ID_SIZE} hex digits")
    save_keyring(load_keyring(args.keyring).retired(key_id), args.keyring)
    print(f"retired {key_id.hex()}")
    return 0
