"""``keys generate|rotate|list|retire``: manage a keyring file; ``keys host-*`` and
``keys trust-*``: this host's identity and the trust store of its peers' (the identity suite).

Rotation across several hosts that share one keyring (see SECURITY.md, "Key management"):
``generate`` adds a pending key, which every host accepts once it has the file; ``rotate`` then
makes it the sealing key and keeps the old one as decrypt-only; ``retire`` drops the old key
once no blob sealed under it can still be valid.
"""

from __future__ import annotations

import argparse
import hmac
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.cli._io import read_input, write_output
from gateway.errors import GatewayError, IdentityError, KeyringError
from gateway.identity import (
    MAX_PUBLIC_FILE,
    HostIdentity,
    IdentityState,
    TrustStore,
    dump_public,
    load_identity,
    load_trust_store,
    parse_fingerprint,
    parse_public,
    save_identity,
    save_trust_store,
)
from gateway.keys import KEY_ID_SIZE, Key, Keyring, KeyState, load_keyring, save_keyring

__all__ = ["add_parsers"]


#: One verb's handler: the parsed arguments in, the exit status out.
Handler = Callable[[argparse.Namespace], int]
#: One argument of a verb: ``add_argument``'s positional and keyword arguments.
Argument = tuple[tuple[str, ...], dict[str, Any]]


def _argument(*flags: str, **options: Any) -> Argument:
    return flags, options


@dataclass(frozen=True)
class _Verb:
    """One ``keys`` action: its name, handler, help line, description and own arguments."""

    name: str
    handler: Handler
    help: str
    description: str
    arguments: tuple[Argument, ...] = ()


def _add_verbs(
    verbs: argparse._SubParsersAction[Any], file_option: str, file_help: str, *specs: _Verb
) -> None:
    """A sub-parser per verb, in order: its own arguments, then ``file_option`` (the file it
    works on, required), and the handler to run."""
    for spec in specs:
        parser = verbs.add_parser(spec.name, help=spec.help, description=spec.description)
        for flags, options in spec.arguments:
            parser.add_argument(*flags, **options)
        parser.add_argument(file_option, required=True, metavar="FILE", help=file_help)
        parser.set_defaults(func=spec.handler)


def _key_id(what: str) -> Argument:
    return _argument("key_id", metavar="KEY_ID", help=f"{what}, 32 hex digits")


def add_parsers(subparsers: argparse._SubParsersAction[Any]) -> None:
    keys = subparsers.add_parser(
        "keys",
        help="manage the keyring, this host's identity and the trust store",
        description=(
            "Create, rotate, list and retire the keys of a keyring file (mode 0600); create, "
            "rotate and export this host's identity; add, list and retire trusted peers."
        ),
    )
    verbs = keys.add_subparsers(dest="keys_verb", metavar="ACTION", parser_class=type(keys))
    verbs.required = True
    _add_verbs(
        verbs,
        "--keyring",
        "the keyring file (mode 0600)",
        _Verb(
            "generate",
            _generate,
            "create a keyring, or add a pending key to one",
            "Without an existing FILE: create it with one active key. With one: add a new key "
            "in the pending state, which opens but does not seal until 'rotate' promotes it.",
        ),
        _Verb(
            "rotate",
            _rotate,
            "promote the pending key (or a new one) to active",
            "Make the pending key active (or create a fresh active key when none is pending); "
            "the previously active key becomes decrypt-only so blobs in flight still open.",
        ),
        _Verb(
            "list",
            _list,
            "list key ids, states and creation times (never secrets)",
            "Print one line per key: its id (32 hex digits), its state (active, pending,\n"
            "decrypt-only, retired) and when it was created. Secrets are never shown.",
        ),
        _Verb(
            "retire",
            _retire,
            "retire a key: it opens nothing any more and its secret is erased",
            "Retire a pending or decrypt-only key. The active key cannot be retired.",
            (_key_id("the key id"),),
        ),
    )
    add_identity_parsers(verbs)


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
    key_id = _key_id_arg(args.key_id, KeyringError)
    save_keyring(load_keyring(args.keyring).retired(key_id), args.keyring)
    print(f"retired {key_id.hex()}")
    return 0


# --- host identities and the trust store ---------------------------------------------------


def add_identity_parsers(verbs: argparse._SubParsersAction[Any]) -> None:
    _add_verbs(
        verbs,
        "--identity",
        "the private identity file",
        _Verb(
            "host-init",
            _host_init,
            "create this host's identity, or add a pending generation to it",
            "Without an existing FILE: create it (mode 0600) with one active generation of "
            "signing (Ed25519 + ML-DSA-65) and KEM (ML-KEM-768 + X25519) keys. With one: add "
            "a pending generation; export it to every peer, then run 'host-rotate'.",
            (_argument("--host-id", metavar="ID", help="this host's id (required to create)"),),
        ),
        _Verb(
            "host-rotate",
            _host_rotate,
            "make the pending generation the one that signs; retire the old one",
            "Promote the pending generation to active and retire the old one, erasing its "
            "private keys. Run it once every peer trusts the pending generation.",
        ),
        _Verb(
            "host-export",
            _host_export,
            "write the public identity (self-signed) and print its fingerprint",
            "Write one generation's public identity (the active one unless --key-id names "
            "another) as JSON, and print its fingerprint on stderr: give the file to the "
            "peers and compare the fingerprint with them out of band.",
            (
                _argument("--key-id", metavar="KEY_ID", help="the generation, 32 hex digits"),
                _argument("--output", metavar="FILE", help="where to write (default stdout)"),
            ),
        ),
        _Verb(
            "host-list",
            _host_list,
            "list this host's generations: id, state, created, fingerprint",
            "List this host's identity generations (never a private key).",
        ),
    )
    _add_verbs(
        verbs,
        "--trust-store",
        "the trust store file",
        _Verb(
            "trust-add",
            _trust_add,
            "trust a peer's exported public identity",
            "Add a peer's public identity (as 'host-export' wrote it) to the trust store, "
            "creating the store if needed. --fingerprint must be the fingerprint the peer's "
            "operator read from that host: it is what makes the file trustworthy. The first "
            "generation of a peer becomes active; later ones pending, until 'trust-retire' "
            "retires the old one.",
            (
                _argument("public", metavar="PUBLIC_FILE", help="the peer's public identity"),
                _argument(
                    "--fingerprint", required=True, metavar="FP", help="as the peer printed it"
                ),
            ),
        ),
        _Verb(
            "trust-list",
            _trust_list,
            "list trusted peer generations: host, id, state, fingerprint",
            "List every peer generation in the trust store, with its state.",
        ),
        _Verb(
            "trust-retire",
            _trust_retire,
            "stop trusting a peer generation (retiring the active one promotes a pending one)",
            "Retire a peer generation: nothing it signs is accepted any more. Retiring a "
            "peer's active generation promotes its pending one, if any.",
            (_key_id("the generation"),),
        ),
    )


def _key_id_arg(text: str, error: type[GatewayError] = IdentityError) -> bytes:
    """A key id from the command line (keyring keys and identity generations alike)."""
    try:
        key_id = bytes.fromhex(text.strip().lower())
    except ValueError:
        key_id = b""
    if len(key_id) != KEY_ID_SIZE:
        raise error(f"key id must be {2 * KEY_ID_SIZE} hex digits")
    return key_id


def _host_init(args: argparse.Namespace) -> int:
    path = Path(args.identity)
    if not path.exists() and not path.is_symlink():
        if not args.host_id:
            raise IdentityError("creating an identity needs --host-id")
        identity = HostIdentity.create(args.host_id)
        save_identity(identity, path)
        public = identity.public
        print(f"created {path} for {identity.host_id}: active generation {public.key_id.hex()}")
        print(f"fingerprint {public.fingerprint_text}")
        return 0
    identity = load_identity(path)
    if args.host_id and args.host_id != identity.host_id:
        raise IdentityError(f"{path} is the identity of {identity.host_id}, not {args.host_id}")
    identity, key = identity.with_new_generation()
    save_identity(identity, path)
    print(
        f"added pending generation {key.key_id.hex()}; export it (host-export --key-id) to "
        "every peer, then run 'keys host-rotate'"
    )
    print(f"fingerprint {key.public.fingerprint_text}")
    return 0


def _host_rotate(args: argparse.Namespace) -> int:
    before = load_identity(args.identity)
    identity, promoted = before.rotated()
    save_identity(identity, args.identity)
    print(
        f"generation {promoted.key_id.hex()} now signs; {before.active.key_id.hex()} is retired "
        "(peers retire it with 'keys trust-retire')"
    )
    return 0


def _host_export(args: argparse.Namespace) -> int:
    identity = load_identity(args.identity)
    key = identity.active
    if args.key_id:
        found = identity.get(_key_id_arg(args.key_id))
        if found is None or found.state is IdentityState.RETIRED:
            raise IdentityError("no such live generation in the identity")
        key = found
    write_output(args.output, dump_public(key))
    print(
        f"{key.host_id} {key.key_id.hex()} fingerprint {key.public.fingerprint_text}",
        file=sys.stderr,
    )
    return 0


def _host_list(args: argparse.Namespace) -> int:
    for key in load_identity(args.identity).keys:
        fingerprint = "" if key.state is IdentityState.RETIRED else key.public.fingerprint_text
        print(f"{key.key_id.hex()}  {key.state.value:<8}  {fingerprint}".rstrip())
    return 0


def _trust_add(args: argparse.Namespace) -> int:
    public = parse_public(read_input(args.public, MAX_PUBLIC_FILE))
    if not hmac.compare_digest(parse_fingerprint(args.fingerprint), public.fingerprint):
        raise IdentityError(
            f"the fingerprint given is not that of {args.public}: do not trust this file"
        )
    path = Path(args.trust_store)
    store = TrustStore() if not path.exists() and not path.is_symlink() else load_trust_store(path)
    store, entry = store.with_peer(public)
    save_trust_store(store, path)
    print(f"trusted {entry.host_id} generation {entry.key_id.hex()} as {entry.state.value}")
    return 0


def _trust_list(args: argparse.Namespace) -> int:
    for entry in load_trust_store(args.trust_store).entries:
        fingerprint = "" if entry.public is None else entry.public.fingerprint_text
        print(
            f"{entry.host_id}  {entry.key_id.hex()}  {entry.state.value:<8}  {fingerprint}".rstrip()
        )
    return 0


def _trust_retire(args: argparse.Namespace) -> int:
    key_id = _key_id_arg(args.key_id)
    store, promoted = load_trust_store(args.trust_store).retired(key_id)
    save_trust_store(store, args.trust_store)
    print(f"retired {key_id.hex()}")
    if promoted is not None:
        print(f"{promoted.host_id} generation {promoted.key_id.hex()} is now active")
    return 0
